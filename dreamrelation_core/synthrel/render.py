"""Render SynthRel clips: two flat-coloured shapes acting out a relation by a kinematic program.

Each relation is a function of normalised time t ∈ [0, 1] and random parameters giving both subjects' centres
(in units of the frame size). Masks are the exact pixel footprint of each subject (subject1 drawn on top).
"""
from __future__ import annotations

import math
import random
from pathlib import Path

import cv2
import numpy as np

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40),
          "purple": (150, 60, 200), "orange": (240, 140, 30)}
SHAPES = ("circle", "square", "triangle", "diamond")
# Colour-coded mask colours (reference format): subject1 must sort before subject2 as an RGB tuple.
MASK_COLORS = ((102, 221, 225), (179, 62, 234))


def _approaches(t, p):
    gap = p["gap"] * (1 - t) + 0.22 * t
    return (0.5 - gap / 2, p["y"]), (0.5 + gap / 2, p["y"])


def _moves_away(t, p):
    gap = 0.22 * (1 - t) + p["gap"] * t
    return (0.5 - gap / 2, p["y"]), (0.5 + gap / 2, p["y"])


def _orbits(t, p):
    angle = p["phase"] + 2 * math.pi * t
    return (0.5 + 0.3 * math.cos(angle), 0.5 + 0.3 * math.sin(angle)), (0.5, 0.5)


RELATIONS = {"approaches": _approaches, "moves away from": _moves_away, "orbits": _orbits}


def _draw(canvas, shape, center, radius, color):
    x, y = center
    if shape == "circle":
        cv2.circle(canvas, (x, y), radius, color, -1)
        return
    if shape == "square":
        pts = [(x - radius, y - radius), (x + radius, y - radius), (x + radius, y + radius), (x - radius, y + radius)]
    elif shape == "triangle":
        pts = [(x, y - radius), (x + radius, y + radius), (x - radius, y + radius)]
    else:
        pts = [(x, y - radius), (x + radius, y), (x, y + radius), (x - radius, y)]
    cv2.fillPoly(canvas, [np.array(pts, dtype=np.int32)], color)


def render_clip(relation: str, subject1: tuple[str, str], subject2: tuple[str, str], frames: int = 25,
                size: tuple[int, int] = (64, 64), seed: int = 0):
    """One clip of `subject1` (colour, shape) `relation` `subject2`.

    Returns (frames uint8 [F, H, W, 3] RGB, masks float32 [F, 2, H, W] of 0/1, caption "a red circle ...").
    """
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; expected one of {sorted(RELATIONS)}")
    rng = random.Random(seed)
    height, width = size
    params = {"gap": rng.uniform(0.55, 0.7), "y": rng.uniform(0.35, 0.65), "phase": rng.uniform(0, 2 * math.pi)}
    radius = max(2, int(min(height, width) * rng.uniform(0.08, 0.12)))
    background = np.array([rng.randint(0, 60)] * 3, dtype=np.uint8)
    video = np.empty((frames, height, width, 3), np.uint8)
    masks = np.zeros((frames, 2, height, width), np.float32)
    for i in range(frames):
        t = i / max(1, frames - 1)
        centers = RELATIONS[relation](t, params)
        canvas = np.broadcast_to(background, (height, width, 3)).copy()
        layers = []
        for (color, shape), (cx, cy) in zip((subject1, subject2), centers):
            layer = np.zeros((height, width), np.uint8)
            center = (int(round(cx * width)), int(round(cy * height)))
            _draw(layer, shape, center, radius, 1)
            layers.append(layer.astype(bool))
        # Subject2 first, subject1 on top: subject1's mask is exactly what is visible of it.
        canvas[layers[1]] = COLORS[subject2[0]]
        canvas[layers[0]] = COLORS[subject1[0]]
        video[i] = canvas
        masks[i, 0] = layers[0]
        masks[i, 1] = layers[1] & ~layers[0]
    caption = f"a {subject1[0]} {subject1[1]} {relation} a {subject2[0]} {subject2[1]}"
    return video, masks, caption


def write_exemplars(folder, relation: str, count: int, pairs, frames: int = 25, size=(64, 64), seed: int = 0):
    """Write `count` clips as `<folder>/clip_NN.mp4` + caption `.txt` + colour-coded mask folder
    `<folder>/masks/clip_NN/frame_K.png`, cycling through `pairs` of ((colour, shape), (colour, shape))."""
    from ..videoio import write_video

    folder = Path(folder)
    for n in range(count):
        s1, s2 = pairs[n % len(pairs)]
        video, masks, caption = render_clip(relation, s1, s2, frames, size, seed=seed + n)
        name = f"clip_{n:02d}"
        write_video(folder / f"{name}.mp4", video, fps=16)
        (folder / f"{name}.txt").write_text(caption + "\n")
        mask_dir = folder / "masks" / name
        mask_dir.mkdir(parents=True, exist_ok=True)
        for k in range(frames):
            coded = np.zeros((*size, 3), np.uint8)
            coded[masks[k, 1] > 0] = MASK_COLORS[1]
            coded[masks[k, 0] > 0] = MASK_COLORS[0]
            cv2.imwrite(str(mask_dir / f"frame{k}.png"), coded[..., ::-1])
    return folder
