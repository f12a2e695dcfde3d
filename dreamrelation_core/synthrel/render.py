"""Render SynthRel clips: two flat-coloured shapes acting out a relation by a kinematic program.

Each relation is a program of normalised time t ∈ [0, 1] and random parameters giving both subjects' centres in
frame units (x, y ∈ [0, 1]). Programs are mirrored left/right at random, sizes and backgrounds vary. Masks are the
exact visible pixels of each subject (subject1 is drawn on top).
"""
from __future__ import annotations

import math
import random
import re
from pathlib import Path

import cv2
import numpy as np

COLORS = {"red": (220, 40, 40), "green": (40, 190, 70), "blue": (50, 90, 230), "yellow": (235, 215, 40),
          "purple": (160, 60, 210), "cyan": (40, 210, 220)}
SHAPES = ("circle", "square", "triangle", "diamond")
# Colour-coded mask colours (reference format): subject1 sorts before subject2 as an RGB tuple.
MASK_COLORS = ((102, 221, 225), (179, 62, 234))


def _ease(t: float) -> float:
    return 0.5 - 0.5 * math.cos(math.pi * min(max(t, 0.0), 1.0))


def _approaches(t, p):
    x1 = p["far"] + (p["near"] - p["far"]) * _ease(t)
    return (x1, p["y"]), (p["x2"], p["y"])


def _moves_away(t, p):
    x1 = p["near"] + (p["far"] - p["near"]) * _ease(t)
    return (x1, p["y"]), (p["x2"], p["y"])


def _bounces_off(t, p):
    k = _ease(2 * t) if t < 0.5 else _ease(2 * (1 - t))
    return (p["far"] + (p["contact"] - p["far"]) * k, p["y"]), (p["x2"], p["y"])


def _pushes(t, p):
    if t < 0.45:
        return (p["far"] + (p["contact"] - p["far"]) * _ease(t / 0.45), p["y"]), (p["x2"], p["y"])
    shift = p["push"] * _ease((t - 0.45) / 0.55)
    return (p["contact"] + shift, p["y"]), (p["x2"] + shift, p["y"])


def _follows(t, p):
    lead = p["start"] + p["travel"] * t
    return (lead - p["gap"], p["y"]), (lead, p["y"])


def _orbits(t, p):
    angle = p["phase"] + 2 * math.pi * t
    return (p["cx"] + p["radius"] * math.cos(angle), p["cy"] + p["radius"] * math.sin(angle)), (p["cx"], p["cy"])


def _jumps_over(t, p):
    x1 = p["far"] + (p["land"] - p["far"]) * t
    return (x1, p["y"] - p["height"] * math.sin(math.pi * t)), (p["x2"], p["y"])


def _swaps(t, p):
    k = _ease(t)
    arc = p["arc"] * math.sin(math.pi * t)
    return ((p["xa"] + (p["xb"] - p["xa"]) * k, p["y"] - arc), (p["xb"] + (p["xa"] - p["xb"]) * k, p["y"] + arc))


def _params(relation: str, rng: random.Random, r1: float, r2: float) -> dict:
    """Random parameters in the un-mirrored frame: subject1 acts from the left of subject2."""
    contact = r1 + r2 + 0.01
    y = rng.uniform(0.4, 0.6)
    x2 = rng.uniform(0.58, 0.7)
    if relation in ("approaches", "moves away from", "bounces off"):
        return {"y": y, "x2": x2, "far": rng.uniform(0.1, 0.16), "near": x2 - contact - rng.uniform(0.01, 0.04),
                "contact": x2 - contact}
    if relation == "pushes":
        x2 = rng.uniform(0.42, 0.5)
        return {"y": y, "x2": x2, "far": rng.uniform(0.08, 0.14), "contact": x2 - contact,
                "push": rng.uniform(0.28, 0.36)}
    if relation == "follows":
        gap = contact + rng.uniform(0.08, 0.14)
        return {"y": y, "gap": gap, "start": rng.uniform(0.3, 0.36) + gap / 2, "travel": rng.uniform(0.34, 0.42)}
    if relation == "orbits":
        return {"cx": rng.uniform(0.45, 0.55), "cy": rng.uniform(0.45, 0.55), "radius": contact + rng.uniform(0.1, 0.16),
                "phase": rng.uniform(0, 2 * math.pi)}
    if relation == "jumps over":
        x2 = rng.uniform(0.45, 0.55)
        return {"y": rng.uniform(0.58, 0.68), "x2": x2, "far": rng.uniform(0.08, 0.14), "land": rng.uniform(0.86, 0.92),
                "height": contact + rng.uniform(0.12, 0.18)}
    if relation == "swaps places with":
        return {"y": y, "xa": rng.uniform(0.16, 0.24), "xb": rng.uniform(0.76, 0.84), "arc": rng.uniform(0.14, 0.2)}
    raise ValueError(f"unknown relation {relation!r}; expected one of {sorted(RELATIONS)}")


RELATIONS = {"approaches": _approaches, "moves away from": _moves_away, "bounces off": _bounces_off,
             "pushes": _pushes, "follows": _follows, "orbits": _orbits, "jumps over": _jumps_over,
             "swaps places with": _swaps}


def draw_shape(canvas: np.ndarray, shape: str, center, radius: int, color) -> None:
    """Fill `shape` (circle, axis-aligned square, upward triangle, diamond) of half-size `radius` at `center`."""
    x, y = center
    if shape == "circle":
        cv2.circle(canvas, (x, y), radius, color, -1, lineType=cv2.LINE_8)
        return
    if shape == "square":
        pts = [(x - radius, y - radius), (x + radius, y - radius), (x + radius, y + radius), (x - radius, y + radius)]
    elif shape == "triangle":
        pts = [(x, y - radius), (x + radius, y + radius), (x - radius, y + radius)]
    elif shape == "diamond":
        pts = [(x, y - radius), (x + radius, y), (x, y + radius), (x - radius, y)]
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    cv2.fillPoly(canvas, [np.array(pts, dtype=np.int32)], color, lineType=cv2.LINE_8)


def caption(relation: str, subject1, subject2) -> str:
    return f"a {subject1[0]} {subject1[1]} {relation} a {subject2[0]} {subject2[1]}"


def parse_caption(text: str):
    """Inverse of `caption`: (relation, (colour, shape), (colour, shape)); ValueError naming what is expected."""
    colours, shapes = "|".join(COLORS), "|".join(SHAPES)
    match = re.fullmatch(rf"\s*an? ({colours}) ({shapes}) ({'|'.join(RELATIONS)}) an? ({colours}) ({shapes})[\s.]*",
                         text.lower())
    if match is None:
        raise ValueError(f"prompt {text!r} is not a SynthRel caption; expected 'a <colour> <shape> <relation> a "
                         f"<colour> <shape>' with colours {sorted(COLORS)}, shapes {list(SHAPES)} and relations "
                         f"{list(RELATIONS)}")
    c1, s1, relation, c2, s2 = match.groups()
    return relation, (c1, s1), (c2, s2)


def trajectories(relation: str, frames: int, seed: int, size=(64, 64)):
    """Ground-truth centres [F, 2, 2] (subject, (x, y) in frame units) and radii (pixels) of one clip."""
    rng = random.Random(seed)
    height, width = size
    r1, r2 = (max(3, int(min(height, width) * rng.uniform(0.075, 0.1))) for _ in range(2))
    params = _params(relation, rng, r1 / width, r2 / width)
    mirror = rng.random() < 0.5
    centres = np.zeros((frames, 2, 2))
    for i in range(frames):
        for s, (cx, cy) in enumerate(RELATIONS[relation](i / max(1, frames - 1), params)):
            centres[i, s] = (1 - cx if mirror else cx, cy)
    return centres, (r1, r2), rng


def render_clip(relation: str, subject1: tuple[str, str], subject2: tuple[str, str], frames: int = 17,
                size: tuple[int, int] = (64, 64), seed: int = 0):
    """One clip of `subject1` (colour, shape) `relation` `subject2`.

    Returns (frames uint8 [F, H, W, 3] RGB, masks float32 [F, 2, H, W] of 0/1, caption "a red circle ...").
    """
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; expected one of {sorted(RELATIONS)}")
    for subject in (subject1, subject2):
        if subject[0] not in COLORS or subject[1] not in SHAPES:
            raise ValueError(f"unknown subject {subject}; colours {sorted(COLORS)}, shapes {SHAPES}")
    height, width = size
    centres, radii, rng = trajectories(relation, frames, seed, size)
    level = rng.randint(0, 50)
    tint = np.array([level + rng.randint(0, 12) for _ in range(3)], dtype=np.uint8)
    video = np.empty((frames, height, width, 3), np.uint8)
    masks = np.zeros((frames, 2, height, width), np.float32)
    for i in range(frames):
        canvas = np.broadcast_to(tint, (height, width, 3)).copy()
        layers = []
        for s, (color, shape) in enumerate((subject1, subject2)):
            layer = np.zeros((height, width), np.uint8)
            cx, cy = centres[i, s]
            draw_shape(layer, shape, (int(round(cx * width)), int(round(cy * height))), radii[s], 1)
            layers.append(layer.astype(bool))
        canvas[layers[1]] = COLORS[subject2[0]]
        canvas[layers[0]] = COLORS[subject1[0]]
        video[i] = canvas
        masks[i, 0] = layers[0]
        masks[i, 1] = layers[1] & ~layers[0]
    return video, masks, caption(relation, subject1, subject2)


def exemplar_clips(relation: str, count: int, pairs, frames: int = 17, size=(64, 64), seed: int = 0):
    """`count` clips (name, video, masks, caption) of `relation` as `render_clip` gives them, cycling through the
    subject `pairs`, clip n with seed `seed` + n."""
    for n in range(count):
        s1, s2 = pairs[n % len(pairs)]
        yield (f"clip_{n:02d}", *render_clip(relation, s1, s2, frames, size, seed=seed + n))


def write_exemplars(folder, relation: str, count: int, pairs, frames: int = 17, size=(64, 64), seed: int = 0):
    """Write `exemplar_clips` as `<folder>/clip_NN.mp4` + caption `.txt` + colour-coded mask folder
    `<folder>/masks/clip_NN/frameK.png` (un-padded names, as the reference's)."""
    from ..videoio import write_video

    folder = Path(folder)
    for name, video, masks, text in exemplar_clips(relation, count, pairs, frames, size, seed):
        write_video(folder / f"{name}.mp4", video, fps=16)
        (folder / f"{name}.txt").write_text(text + "\n")
        mask_dir = folder / "masks" / name
        mask_dir.mkdir(parents=True, exist_ok=True)
        for k in range(frames):
            coded = np.zeros((*size, 3), np.uint8)
            coded[masks[k, 1] > 0] = MASK_COLORS[1]
            coded[masks[k, 0] > 0] = MASK_COLORS[0]
            cv2.imwrite(str(mask_dir / f"frame{k}.png"), coded[..., ::-1])
    return folder
