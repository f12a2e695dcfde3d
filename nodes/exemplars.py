"""Exemplar set: (frames, subject masks, caption) items of one relation, built in the graph or from a folder."""
from __future__ import annotations

from pathlib import Path

import folder_paths
import torch
from comfy_api.latest import io

from ..dreamrelation_core.data import discover_exemplars, exemplar_masks, read_resampled
from .common import CATEGORY, Exemplars, uint8_to_image


def exemplar(frames: torch.Tensor, masks: torch.Tensor | None, caption: str, name: str) -> dict:
    """One exemplar; `masks` None for one trained without hybrid masks (Train refuses it with them)."""
    if masks is not None and (frames.shape[0] != masks.shape[0]
                              or tuple(frames.shape[1:3]) != tuple(masks.shape[-2:])):
        raise ValueError(f"exemplar {name}: {frames.shape[0]} frames of {tuple(frames.shape[1:3])} but masks "
                         f"{tuple(masks.shape)}")
    if not caption.strip():
        raise ValueError(f"exemplar {name}: the caption is empty")
    return {"frames": frames[..., :3].float(), "masks": None if masks is None else masks.float(),
            "caption": caption.strip(), "name": name}


class AddExemplar(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamRelationAddExemplar",
            display_name="Add Exemplar",
            category=CATEGORY,
            description="Adds one exemplar video (frames, two subject masks, caption) to an exemplar set; chain "
                        "several to collect the 5-30 videos of one relation. The masks may be left out when Train "
                        "runs without hybrid masks.",
            inputs=[
                io.Image.Input("images", tooltip="The exemplar video's frames."),
                io.Mask.Input("subject1_mask", optional=True,
                              tooltip="Subject 1 mask per frame (Mask Video); needed for hybrid mask training."),
                io.Mask.Input("subject2_mask", optional=True,
                              tooltip="Subject 2 mask per frame (Mask Video); needed for hybrid mask training."),
                io.String.Input("caption", multiline=True, default="A person is shaking hands with a person.",
                                tooltip="Plain caption of the relation, e.g. 'A person is high-fiving a person.'"),
                Exemplars.Input("exemplars", optional=True, tooltip="Set to add to (empty when not connected)."),
            ],
            outputs=[Exemplars.Output(display_name="exemplars",
                                      tooltip="The input set with this exemplar added; chain the next one or Train.")],
        )

    @classmethod
    def execute(cls, images, caption, subject1_mask=None, subject2_mask=None, exemplars=None):
        items = list(exemplars or [])
        name = f"exemplar_{len(items):02d}"
        if (subject1_mask is None) != (subject2_mask is None):
            raise ValueError(f"exemplar {name}: connect both subject masks, or neither (to train without hybrid "
                             "masks)")
        masks = None if subject1_mask is None else torch.stack([subject1_mask, subject2_mask], dim=1)
        items.append(exemplar(images, masks, caption, name))
        return io.NodeOutput(items)


class LoadExemplarFolder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamRelationLoadExemplarFolder",
            display_name="Load Exemplar Folder",
            category=CATEGORY,
            description="Loads every exemplar of a folder: videos (or frame folders), <name>.txt captions and "
                        "colour-coded masks in masks/<name>/.",
            inputs=[
                io.String.Input("folder", default="",
                                tooltip="Folder with the exemplar videos: absolute, or relative to ComfyUI's input "
                                        "folder."),
                io.String.Input("caption", default="", optional=True,
                                tooltip="Caption for videos without a <name>.txt."),
                io.Int.Input("max_frames", default=81, min=1, max=10000,
                             tooltip="Frames read per video, at the frame rate below (training uses the first "
                                     "ones)."),
                io.Float.Input("fps", default=16.0, min=0.0, max=240.0, step=1.0, optional=True,
                               tooltip="Resample each video to this frame rate: the model's, 16 for Wan, 30 for "
                                       "Mochi, so the relation keeps its speed. 0 keeps every frame; frame folders "
                                       "are taken as they are."),
            ],
            outputs=[Exemplars.Output(display_name="exemplars",
                                      tooltip="Every exemplar of the folder with its masks and caption, for Train.")],
        )

    @classmethod
    def execute(cls, folder, caption="", max_frames=81, fps=16.0):
        if not folder.strip():
            raise ValueError("folder: give the folder of exemplar videos (absolute, or relative to the input folder)")
        path = Path(folder).expanduser()
        if not path.is_absolute():                  # as every ComfyUI loader: relative to input/, not to the cwd
            path = Path(folder_paths.get_input_directory()) / path
        if not path.is_dir():
            raise ValueError(f"folder: {path} is not a folder (relative folders are read from the input folder)")
        items = []
        for ex in discover_exemplars(path, caption=caption or None):     # masks for all, or (no masks/) for none
            frames, picked = read_resampled(ex.video, max_frames, fps)
            masks = exemplar_masks(ex, picked)
            items.append(exemplar(uint8_to_image(frames), None if masks is None else torch.from_numpy(masks),
                                  ex.caption, ex.name))
        return io.NodeOutput(items)
