"""Subject masks from a first-frame box: OpenCV tracking through the clip, optionally refined with GrabCut."""
from __future__ import annotations

import cv2
import numpy as np


def _tracker():
    # CSRT (opencv-contrib) is the accurate one; MIL ships with plain opencv and needs no model files.
    for name in ("TrackerCSRT_create", "TrackerMIL_create"):
        if hasattr(cv2, name):
            return getattr(cv2, name)()
    raise RuntimeError("this OpenCV build has neither the CSRT nor the MIL tracker")


def parse_box(text: str, width: int, height: int, name: str = "box") -> tuple[int, int, int, int]:
    """"x,y,w,h" in pixels of the first frame -> ints, validated against the frame size."""
    try:
        x, y, w, h = (int(round(float(v))) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise ValueError(f"{name}: expected 'x,y,width,height' in pixels, got {text!r}") from None
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(f"{name}: box {x},{y},{w},{h} must be non-empty and inside the {width}x{height} frame")
    return x, y, w, h


def track_box(frames: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Track `box` (x, y, w, h on frame 0) through uint8 RGB frames [F, H, W, 3] -> boxes int [F, 4].

    A frame where the tracker loses the subject keeps the last known box.
    """
    tracker = _tracker()
    bgr = [cv2.cvtColor(f, cv2.COLOR_RGB2BGR) for f in frames]
    tracker.init(bgr[0], tuple(int(v) for v in box))
    boxes = [tuple(box)]
    for frame in bgr[1:]:
        ok, found = tracker.update(frame)
        boxes.append(tuple(int(round(v)) for v in found) if ok else boxes[-1])
    return np.array(boxes, dtype=np.int64)


def box_masks(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boxes [F, 4] -> filled box masks float32 [F, H, W] (clipped to the frame)."""
    masks = np.zeros((len(boxes), height, width), np.float32)
    for mask, (x, y, w, h) in zip(masks, boxes):
        mask[max(0, y):max(0, min(height, y + h)), max(0, x):max(0, min(width, x + w))] = 1.0
    return masks


def grabcut_masks(frames: np.ndarray, boxes: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Refine each frame's box to the subject's silhouette with GrabCut -> float32 [F, H, W] of 0/1.

    Falls back to the box where GrabCut finds no foreground (flat or tiny subjects).
    """
    out = box_masks(boxes, frames.shape[1], frames.shape[2])
    for i, (frame, (x, y, w, h)) in enumerate(zip(frames, boxes)):
        if w < 2 or h < 2:
            continue
        mask = np.zeros(frame.shape[:2], np.uint8)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        try:
            cv2.grabCut(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), mask, (int(x), int(y), int(w), int(h)), bgd, fgd,
                        iterations, cv2.GC_INIT_WITH_RECT)
        except cv2.error:
            continue
        fg = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD))
        if fg.any():
            out[i] = fg.astype(np.float32)
    return out


def overlay(frames: np.ndarray, masks: np.ndarray, colors=((102, 221, 225), (179, 62, 234)), opacity=0.5):
    """Preview: uint8 frames [F, H, W, 3] with per-subject masks [F, S, H, W] tinted in the reference colours."""
    out = frames.astype(np.float32)
    for s in range(masks.shape[1]):
        m = masks[:, s, :, :, None] * opacity
        out = out * (1 - m) + np.array(colors[s % len(colors)], np.float32) * m
    return out.round().clip(0, 255).astype(np.uint8)
