"""SynthRel evaluator: find the subjects in RGB frames with OpenCV, extract trajectories, name the relation.

Only what is visible counts: subjects are found by colour (nearest palette colour, so slightly off colours from a
generator still match) and their shape is read off the largest blob (vertex count, fill ratio, centroid height).
The relation classifier is a fixed set of rules on the two trajectories, validated on ground-truth renders; it
never looks at how a video was made.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .render import COLORS

PALETTE_NAMES = list(COLORS)
PALETTE = np.array([COLORS[c] for c in PALETTE_NAMES], dtype=np.float32)


@dataclass
class Blob:
    x: float          # centroid, frame units
    y: float
    area: int         # pixels
    shape: str | None


def colour_map(frame: np.ndarray, max_distance: float = 90.0, min_saturation: int = 60) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> palette index per pixel [H, W] (−1: background, too grey or too far from all)."""
    pixels = frame.reshape(-1, 3).astype(np.float32)
    distance = np.linalg.norm(pixels[:, None, :] - PALETTE[None], axis=-1)
    index = distance.argmin(axis=1)
    saturated = (pixels.max(axis=1) - pixels.min(axis=1)) >= min_saturation
    index[(distance.min(axis=1) > max_distance) | ~saturated] = -1
    return index.reshape(frame.shape[:2])


def shape_of(mask: np.ndarray) -> str | None:
    """circle / square / triangle / diamond for one binary blob (None when too small to tell)."""
    ys, xs = np.nonzero(mask)
    if len(xs) < 9:
        return None
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = len(xs) / float(h * w)
    centre_y = (ys.mean() - ys.min()) / max(1, h - 1)
    # Small rasterised circles fill ~0.6 of their box, diamonds ~0.5, squares 1; a triangle's mass sits low.
    if fill > 0.88:
        return "square"
    if centre_y > 0.58:
        return "triangle"
    return "circle" if fill > 0.55 else "diamond"


def find(frame: np.ndarray, colour: str, colours: np.ndarray | None = None, min_area: int = 6) -> Blob | None:
    """The largest blob of `colour` in `frame` (uint8 RGB [H, W, 3]), or None."""
    colours = colour_map(frame) if colours is None else colours
    mask = (colours == PALETTE_NAMES.index(colour)).astype(np.uint8)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    area = int(stats[best, cv2.CC_STAT_AREA])
    if area < min_area:
        return None
    height, width = mask.shape
    cx, cy = centroids[best]
    return Blob(cx / width, cy / height, area, shape_of(labels == best))


def track(video: np.ndarray, colour: str, colour_maps=None) -> np.ndarray:
    """Centroid per frame [F, 2] (NaN where the colour is not found)."""
    maps = colour_maps if colour_maps is not None else [colour_map(f) for f in video]
    out = np.full((len(video), 2), np.nan)
    for i, (frame, cmap) in enumerate(zip(video, maps)):
        blob = find(frame, colour, cmap)
        if blob is not None:
            out[i] = (blob.x, blob.y)
    return out


def _fill(path: np.ndarray) -> np.ndarray | None:
    """Interpolate missing frames; None when the subject is missing in most frames."""
    ok = ~np.isnan(path[:, 0])
    if ok.sum() < max(3, 0.6 * len(path)):
        return None
    idx = np.arange(len(path))
    return np.stack([np.interp(idx, idx[ok], path[ok, k]) for k in range(2)], axis=1)


def _length(path: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(path, axis=0), axis=1).sum())


def classify(path1: np.ndarray, path2: np.ndarray) -> str | None:
    """Name the relation acted out by trajectories [F, 2] of subject1 and subject2 (None: no relation found)."""
    p1, p2 = _fill(path1), _fill(path2)
    if p1 is None or p2 is None:
        return None
    frames = len(p1)
    half = frames // 2
    rel = p1 - p2
    gap = np.linalg.norm(rel, axis=1)
    moved1, moved2 = _length(p1), _length(p2)
    net2 = float(np.linalg.norm(p2[-1] - p2[0]))
    sweep = float(np.abs(np.diff(np.unwrap(np.arctan2(rel[:, 1], rel[:, 0])))).sum())
    if moved1 < 0.08 and moved2 < 0.08:
        return None
    if moved2 < 0.06 or net2 < 0.04:                       # subject2 stays put
        if sweep > 1.5 * math.pi:
            return "orbits"
        side = np.sign(rel[:, 0])
        if side[0] != side[-1] and side[0] != 0:
            lift = float((p2[:, 1] - p1[:, 1]).max())     # image y grows downwards: above = smaller y
            return "jumps over" if lift > 0.08 else None
        closest = int(gap.argmin())
        if gap[-1] < 0.6 * gap[0] and closest >= frames - 3:
            return "approaches"
        if gap[-1] > gap[0] / 0.6 and closest <= 2:
            return "moves away from"
        if 2 < closest < frames - 3 and min(gap[0], gap[-1]) > 1.6 * gap[closest]:
            return "bounces off"
        return None
    swapped = max(np.linalg.norm(p1[-1] - p2[0]), np.linalg.norm(p2[-1] - p1[0]))
    if swapped < 0.12:
        return "swaps places with"
    early2 = _length(p2[:half - 1])
    if early2 < 0.03 and _length(p2[half:]) > 0.1:
        return "pushes"
    direction = np.sign(np.diff(p1[:, 0]).sum()) == np.sign(np.diff(p2[:, 0]).sum())
    if direction and early2 > 0.05 and gap.std() < 0.03:
        return "follows"
    return None


def evaluate_video(video: np.ndarray, subject1, subject2, exemplar_subjects=(), presence: float = 0.5) -> dict:
    """Judge one generated clip (uint8 RGB [F, H, W, 3]) against its prompt's (colour, shape) subjects.

    relation: named from the trajectories of the two prompt colours (None: none recognised);
    subjects_present: both prompt colours visible in at least `presence` of the frames;
    shapes_match: and their blobs read as the prompt's shapes there (crisp renders: always; blurred: less so);
    leaked: exemplar colours that are not prompt colours yet visible in at least `presence` of the frames.
    """
    maps = [colour_map(f) for f in video]
    blobs = {c: [find(f, c, m) for f, m in zip(video, maps)] for c in COLORS}
    paths = {c: np.array([(b.x, b.y) if b else (np.nan, np.nan) for b in bs]) for c, bs in blobs.items()}
    needed = presence * len(video)

    def seen(colour, shape=None) -> bool:
        return sum(b is not None and (shape is None or b.shape == shape) for b in blobs[colour]) >= needed

    prompt_colours = {subject1[0], subject2[0]}
    leaked = sorted({c for c, _ in exemplar_subjects if c not in prompt_colours and seen(c)})
    return {"relation": classify(paths[subject1[0]], paths[subject2[0]]),
            "subjects_present": seen(subject1[0]) and seen(subject2[0]),
            "shapes_match": seen(*subject1) and seen(*subject2), "leaked": leaked}

