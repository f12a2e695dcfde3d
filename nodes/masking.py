"""Mask Video: per-subject masks for an exemplar clip, from MASK inputs, a colour-coded folder or tracked boxes."""
from __future__ import annotations

import numpy as np
import torch

from comfy_api.latest import io

from ..dreamrelation_core.data import read_colour_masks
from ..dreamrelation_core.tracking import box_masks, grabcut_masks, overlay, parse_box, track_box
from .common import CATEGORY, image_to_uint8, prompt_server, uint8_to_image


def _check(mask: torch.Tensor, frames: int, height: int, width: int, name: str) -> np.ndarray:
    if mask.dim() == 2:
        mask = mask[None].expand(frames, -1, -1)
    if mask.shape[0] != frames or tuple(mask.shape[1:]) != (height, width):
        raise ValueError(f"{name}: mask is {tuple(mask.shape)} but the video is {frames} frames of {height}x{width}; "
                         "masks need one frame per video frame at the video's size")
    return (mask > 0.5).float().cpu().numpy()


def subject_masks(images, subject1_mask=None, subject2_mask=None, mask_folder="", subject1_box="",
                  subject2_box="", refine=True) -> np.ndarray:
    """[F, 2, H, W] float 0/1 for the clip `images` (IMAGE [F, H, W, C]): per subject the MASK input, else the box
    tracked through the clip; a colour-coded mask folder (reference format) provides both at once."""
    frames = image_to_uint8(images)
    count, height, width = frames.shape[:3]
    if mask_folder.strip():
        masks = read_colour_masks(mask_folder.strip(), max_frames=count)
        if masks.shape[0] < count or masks.shape[2:] != (height, width):
            raise ValueError(f"mask_folder: {masks.shape[0]} masks of {masks.shape[2]}x{masks.shape[3]} for "
                             f"{count} frames of {height}x{width}")
        return masks
    out = []
    for name, mask, box in (("subject1", subject1_mask, subject1_box), ("subject2", subject2_mask, subject2_box)):
        if mask is not None:
            out.append(_check(mask, count, height, width, f"{name}_mask"))
        elif box.strip():
            boxes = track_box(frames, parse_box(box, width, height, f"{name}_box"))
            out.append(grabcut_masks(frames, boxes) if refine else box_masks(boxes, height, width))
        else:
            raise ValueError(f"{name}: connect {name}_mask, draw {name}'s box on the node's first frame (or type "
                             f"{name}_box as 'x,y,width,height'), or give a mask_folder")
    return np.stack(out, axis=1)


class MaskVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamRelationMaskVideo",
            display_name="Mask Video (DreamRelation)",
            category=CATEGORY,
            description="Per-subject masks of an exemplar video: from mask sequences (e.g. SAM 2), a colour-coded "
                        "mask folder, or a first-frame box per subject tracked with OpenCV.",
            inputs=[
                io.Image.Input("images", tooltip="The exemplar video's frames."),
                io.Mask.Input("subject1_mask", optional=True, tooltip="Subject 1 mask per frame (e.g. from SAM 2)."),
                io.Mask.Input("subject2_mask", optional=True, tooltip="Subject 2 mask per frame."),
                io.String.Input("mask_folder", default="", optional=True,
                                tooltip="Folder of colour-coded mask PNGs (black background, one colour per "
                                        "subject; subject 1 = the smaller RGB colour), sorted naturally."),
                io.String.Input("subject1_box", default="", optional=True,
                                tooltip="'x,y,width,height' of subject 1 on the first frame, tracked through the clip."),
                io.String.Input("subject2_box", default="", optional=True,
                                tooltip="'x,y,width,height' of subject 2 on the first frame."),
                io.Boolean.Input("refine_boxes", default=True, optional=True,
                                 tooltip="Refine tracked boxes to silhouettes with GrabCut."),
            ],
            outputs=[
                io.Mask.Output(display_name="subject1_mask", tooltip="Subject 1's mask on every frame."),
                io.Mask.Output(display_name="subject2_mask", tooltip="Subject 2's mask on every frame."),
                io.Image.Output(display_name="preview", tooltip="Frames with the masks tinted."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, images, subject1_mask=None, subject2_mask=None, mask_folder="", subject1_box="",
                subject2_box="", refine_boxes=True):
        node_id = getattr(getattr(cls, "hidden", None), "unique_id", None)
        frames = image_to_uint8(images)
        # The box editor on the node (js/dreamrelation.js) draws on the first frame: send it before anything can
        # fail, so that a first run without boxes still shows the frame to draw them on.
        send_frame(node_id, frames[0], masked=False)
        masks = subject_masks(images, subject1_mask, subject2_mask, mask_folder, subject1_box, subject2_box,
                              refine_boxes)
        tinted = overlay(frames, masks)
        send_frame(node_id, tinted[0], masked=True)
        return io.NodeOutput(torch.from_numpy(masks[:, 0]), torch.from_numpy(masks[:, 1]), uint8_to_image(tinted))


def send_frame(node_id, frame: np.ndarray, masked: bool) -> None:
    """Show `frame` (uint8 [H, W, 3]) in the node's box editor: the plain first frame, or with the masks tinted."""
    server = prompt_server()
    if server is None or node_id is None:
        return
    import base64
    import io as bytes_io

    from PIL import Image

    png = bytes_io.BytesIO()
    Image.fromarray(frame).save(png, format="PNG")
    server.send_sync("dreamrelation.frame", {
        "node": str(node_id), "width": int(frame.shape[1]), "height": int(frame.shape[0]), "masked": masked,
        "image": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()})
