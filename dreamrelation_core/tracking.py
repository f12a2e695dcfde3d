"""Subject masks from a first-frame box: tracked through the clip by template matching, optionally refined with
GrabCut. We depend on opencv-python-headless (no GUI, no contrib modules): it has no CSRT tracker, and its MIL
drifts off small or fast subjects, so the tracker is our own."""
from __future__ import annotations

import cv2
import numpy as np


def _match_template(frames_bgr, box) -> list:
    """Normalised cross-correlation of the first-frame patch (with a margin of background, so that flat-coloured
    subjects still have contrast), searched around the last position."""
    x, y, w, h = box
    height, width = frames_bgr[0].shape[:2]
    mx, my = max(2, w // 3), max(2, h // 3)
    tx0, ty0 = max(0, x - mx), max(0, y - my)
    tx1, ty1 = min(width, x + w + mx), min(height, y + h + my)
    template = frames_bgr[0][ty0:ty1, tx0:tx1]
    tw, th = tx1 - tx0, ty1 - ty0
    offset = (x - tx0, y - ty0)
    positions = [(tx0, ty0)]
    for frame in frames_bgr[1:]:
        px, py = positions[-1]
        x0, y0 = max(0, px - 2 * tw), max(0, py - 2 * th)
        x1, y1 = min(width, px + 3 * tw), min(height, py + 3 * th)
        window = frame[y0:y1, x0:x1]
        if window.shape[0] < th or window.shape[1] < tw:
            positions.append(positions[-1])
            continue
        score = np.nan_to_num(cv2.matchTemplate(window, template, cv2.TM_CCOEFF_NORMED), nan=-1.0)
        _, best, _, (bx, by) = cv2.minMaxLoc(score)
        positions.append((x0 + bx, y0 + by) if best > 0.3 else positions[-1])
    return [(px + offset[0], py + offset[1], w, h) for px, py in positions]


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

    Template matching (`_match_template`); a frame where the subject is lost keeps the last box.
    """
    bgr = [cv2.cvtColor(f, cv2.COLOR_RGB2BGR) for f in frames]
    return np.array(_match_template(bgr, tuple(int(v) for v in box)), dtype=np.int64)


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


def overlay(frames: np.ndarray, masks: np.ndarray, colours=((102, 221, 225), (179, 62, 234)), opacity=0.5):
    """Preview: uint8 frames [F, H, W, 3] with per-subject masks [F, S, H, W] tinted in the reference colours."""
    out = frames.astype(np.float32)
    for s in range(masks.shape[1]):
        m = masks[:, s, :, :, None] * opacity
        out = out * (1 - m) + np.array(colours[s % len(colours)], np.float32) * m
    return out.round().clip(0, 255).astype(np.uint8)
