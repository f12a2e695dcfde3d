"""SynthRel evaluator: find the subjects in RGB frames with OpenCV, extract trajectories, name the relation.

Only what is visible counts: subjects are found by colour (nearest palette hue among saturated, bright enough
pixels, so both tones of a texture and slightly off colours from a generator match), their shape is read off the
largest blob (the best-overlapping rasterised shape, `shape_of`) and their texture off its pixels' brightness
(the texture whose pattern fits best, `texture_of`). The relation classifier is a fixed set of rules on the two
trajectories. All rules were fixed on ground-truth renders (docs/benchmarks.md) before any method was judged with
them; the evaluator never looks at how a video was made.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .render import COLORS, SHAPES, TEXTURES, as_subject, draw_shape, texture_tone

PALETTE_NAMES = list(COLORS)
PALETTE = np.array([COLORS[c] for c in PALETTE_NAMES], dtype=np.uint8)
PALETTE_HUES = cv2.cvtColor(PALETTE[None], cv2.COLOR_RGB2HSV)[0, :, 0].astype(np.int16)   # OpenCV hue, 0..179
PALETTE_VALUES = PALETTE.max(axis=1).astype(np.float32)
# Thresholds (OpenCV HSV units): a subject pixel is saturated (S ≥ 100 of 255) and bright (V ≥ 80: a texture's dark
# tone is 0.6 of its colour's value, ≥ 114 for every palette colour; backgrounds stay below 63) and lies within 12 of
# 180 hue units of a palette hue (the closest two palette hues, cyan and blue, are 20 apart).
MIN_SATURATION, MIN_VALUE, MAX_HUE_GAP = 100, 80, 12


@dataclass
class Blob:
    x: float          # centroid, frame units
    y: float
    area: int         # pixels
    shape: str | None
    texture: str | None = None


def colour_map(frame: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> palette index per pixel [H, W] (−1: background, too grey, dark or far from all)."""
    hsv = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2HSV).astype(np.int16)
    gap = np.abs(hsv[..., :1] - PALETTE_HUES)
    gap = np.minimum(gap, 180 - gap)
    index = gap.argmin(axis=-1)
    index[(gap.min(axis=-1) > MAX_HUE_GAP) | (hsv[..., 1] < MIN_SATURATION) | (hsv[..., 2] < MIN_VALUE)] = -1
    return index


def shape_of(mask: np.ndarray) -> str | None:
    """circle / square / triangle / diamond for one binary blob (None when too small to tell): the shape whose
    rasterised outline (render.draw_shape), sized and centred by the blob's box within ±1 px, overlaps the blob
    best (intersection over union). Soft frames grow or shrink a blob by a pixel; that moves every shape's overlap
    alike, where fill-ratio thresholds flip."""
    ys, xs = np.nonzero(mask)
    if len(xs) < 9:
        return None
    top, left = ys.min() - 3, xs.min() - 3
    crop = np.zeros((ys.max() - top + 4, xs.max() - left + 4), bool)
    crop[ys - top, xs - left] = True
    cy, cx = (ys.min() + ys.max()) / 2 - top, (xs.min() + xs.max()) / 2 - left
    radius = int(round(max(ys.max() - ys.min(), xs.max() - xs.min()) / 2))
    best, best_iou = None, -1.0
    for shape in SHAPES:
        for r in (radius - 1, radius, radius + 1):
            for oy in (-1, 0, 1):
                for ox in (-1, 0, 1):
                    outline = np.zeros(crop.shape, np.uint8)
                    draw_shape(outline, shape, (int(round(cx)) + ox, int(round(cy)) + oy), max(r, 1), 1)
                    outline = outline.astype(bool)
                    iou = (outline & crop).sum() / float((outline | crop).sum())
                    if iou > best_iou:
                        best, best_iou = shape, iou
    return best


def texture_of(frame: np.ndarray, mask: np.ndarray, colour: str) -> str | None:
    """The texture of one subject's blob (`mask` [H, W] bool) in `frame`, read off the brightness of its inner
    pixels relative to `colour`'s (tone: 1 bright, render.DARK_TONE dark). Each texture's pattern
    (render.texture_tone), centred within 1 px of the centre of the blob's box (soft edges and occlusion move it),
    is fitted with a contrast gain in [0, 1] (soft frames lose contrast, not level); the texture with the least
    residual plus squared difference of mean tone wins. The mean keeps a uniformly dark blob (a blurred dotted
    one) apart from a uniformly bright one (plain). None on blobs too small to tell."""
    ys, xs = np.nonzero(mask)
    if len(xs) < 12:
        return None
    radius = max(ys.max() - ys.min(), xs.max() - xs.min()) / 2.0
    cx, cy = int(round((xs.min() + xs.max()) / 2)), int(round((ys.min() + ys.max()) / 2))
    inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    if inner.sum() >= 12:                 # edge pixels blend with the background in soft frames
        ys, xs = np.nonzero(inner)
    tone = frame[ys, xs].max(axis=1) / PALETTE_VALUES[PALETTE_NAMES.index(colour)]
    centred = tone - tone.mean()

    def error(pattern: np.ndarray) -> float:
        shape = pattern - pattern.mean()
        gain = float(np.clip((centred @ shape) / max(float(shape @ shape), 1e-9), 0.0, 1.0))
        return float(np.mean((centred - gain * shape) ** 2)) + (tone.mean() - pattern.mean()) ** 2

    errors = {texture: min(error(texture_tone(texture, xs - cx - ox, ys - cy - oy, radius))
                           for oy in range(-1, 2) for ox in range(-1, 2))
              for texture in TEXTURES}
    return min(errors, key=errors.get)


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
    blob = labels == best
    return Blob(cx / width, cy / height, area, shape_of(blob), texture_of(frame, blob, colour))


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
        if gap[-1] < 0.7 * gap[0] and closest >= frames - 3:
            return "approaches"
        if gap[-1] > gap[0] / 0.7 and closest <= 2:
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
    """Judge one generated clip (uint8 RGB [F, H, W, 3]) against its prompt's subjects: (colour, texture, shape)
    specs with None for an attribute the prompt leaves unnamed, or plain (colour, shape) pairs (texture unchecked).

    relation: named from the trajectories of the two prompt colours (None: none recognised);
    subjects_present: both prompt colours visible in at least `presence` of the frames;
    shapes_match / textures_match: and their blobs read as the named shapes / textures there;
    attributes_match: every named attribute of both subjects rendered (prompt fidelity);
    leaked: the exemplar looks (`exemplar_subjects`) that are no prompt look yet show in at least `presence` of
    the frames: an exemplar colour as a blob of its own, or an exemplar texture on a prompt subject.
    """
    specs = [_spec(s) for s in (subject1, subject2)]
    maps = [colour_map(f) for f in video]
    blobs = {c: [find(f, c, m) for f, m in zip(video, maps)] for c in COLORS}
    paths = {c: np.array([(b.x, b.y) if b else (np.nan, np.nan) for b in bs]) for c, bs in blobs.items()}
    needed = presence * len(video)

    def seen(colour, shape=None, texture=None) -> bool:
        return sum(b is not None and shape in (None, b.shape) and texture in (None, b.texture)
                   for b in blobs[colour]) >= needed

    prompt_colours = {s[0] for s in specs}
    prompt_textures = {s[1] for s in specs}
    exemplars = [_spec(s) for s in exemplar_subjects]
    leaked = {c for c, _, _ in exemplars if c not in prompt_colours and seen(c)}
    leaked |= {t for _, t, _ in exemplars if t is not None and t not in prompt_textures
               and any(seen(c, texture=t) for c in prompt_colours)}
    shapes = all(seen(c, shape=s) for c, _, s in specs)
    textures = all(seen(c, texture=t) for c, t, _ in specs)
    return {"relation": classify(paths[specs[0][0]], paths[specs[1][0]]),
            "subjects_present": all(seen(c) for c, _, _ in specs), "shapes_match": shapes,
            "textures_match": textures, "attributes_match": all(seen(c, s, t) for c, t, s in specs),
            "leaked": sorted(leaked)}


def _spec(subject) -> tuple:
    """(colour, texture or None, shape or None); the colour must be named, as subjects are tracked by it."""
    if len(subject) == 2:
        return subject[0], None, subject[1]
    colour, texture, shape = subject
    if colour is None:
        raise ValueError(f"subject {tuple(subject)}: the evaluator needs its colour named")
    as_subject((colour, texture or "plain", shape or "circle"))        # the named values must exist
    return colour, texture, shape
