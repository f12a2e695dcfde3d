"""Render SynthRel clips: two coloured, textured shapes acting out a relation by a kinematic program.

Each relation is a program of normalised time t ∈ [0, 1] and random parameters giving both subjects' centres in
frame units (x, y ∈ [0, 1]). Programs are mirrored left/right at random, sizes and backgrounds vary. Masks are the
exact visible pixels of each subject (subject1 is drawn on top).

A subject is (colour, texture, shape). A texture is a two-tone pattern of the subject's colour and its half-bright
tone at the subject's own scale, anchored at its centre so that it moves with it; both tones keep the colour's hue, so a subject is
still found by its colour (docs/method.md, SynthRel v2). (colour, shape) pairs are plain subjects (protocol v1).
A caption names, per subject, any subset of its attributes: "a red striped circle", "a circle", "a shape".
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from ..files import atomic_write_text

COLORS = {"red": (220, 40, 40), "green": (40, 190, 70), "blue": (50, 90, 230), "yellow": (235, 215, 40),
          "purple": (160, 60, 210), "cyan": (40, 210, 220)}
SHAPES = ("circle", "square", "triangle", "diamond")
TEXTURES = ("plain", "striped", "banded", "checked", "dotted", "ringed", "shaded")
ATTRIBUTES = ("colour", "texture", "shape")
GENERIC_NOUN = "shape"      # the noun of a subject whose shape the caption does not name
DARK_TONE = 0.6             # the second tone of a texture: the subject's colour at this brightness


class Subject(NamedTuple):
    colour: str
    texture: str
    shape: str


def as_subject(subject) -> Subject:
    """A Subject from (colour, texture, shape) or a plain (colour, shape); ValueError naming the allowed values."""
    if len(subject) == 2:
        subject = (subject[0], "plain", subject[1])
    if len(subject) != 3 or subject[0] not in COLORS or subject[1] not in TEXTURES or subject[2] not in SHAPES:
        raise ValueError(f"unknown subject {tuple(subject)}; expected (colour, texture, shape) or (colour, shape) "
                         f"with colours {sorted(COLORS)}, textures {list(TEXTURES)}, shapes {list(SHAPES)}")
    return Subject(*subject)


def random_pair(rng: random.Random, textured: bool):
    """Two random subjects of distinct colours (the evaluator tracks subjects by colour): (colour, texture, shape)
    Subjects when `textured`, else plain (colour, shape) pairs. Draws colours, then each subject's texture and shape."""
    colours = rng.sample(sorted(COLORS), 2)
    if textured:
        return tuple(Subject(c, rng.choice(TEXTURES), rng.choice(SHAPES)) for c in colours)
    return tuple((c, rng.choice(SHAPES)) for c in colours)


@dataclass(frozen=True)
class Look:
    """How a protocol draws: subject half-size max(min_radius, int(short side · U(radius))) pixels, background
    grey level U(0, background) plus a tint U(0, tint) per channel."""

    radius: tuple = (0.075, 0.1)
    min_radius: int = 3
    background: int = 50
    tint: int = 12


LOOKS = {"v1": Look(), "v2": Look(radius=(0.125, 0.125), min_radius=5, background=24, tint=8)}
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


def draw_shape(canvas: np.ndarray, shape: str, center, radius: int, colour) -> None:
    """Fill `shape` (circle, axis-aligned square, upward triangle, diamond) of half-size `radius` at `center`."""
    x, y = center
    if shape == "circle":
        cv2.circle(canvas, (x, y), radius, colour, -1, lineType=cv2.LINE_8)
        return
    if shape == "square":
        pts = [(x - radius, y - radius), (x + radius, y - radius), (x + radius, y + radius), (x - radius, y + radius)]
    elif shape == "triangle":
        pts = [(x, y - radius), (x + radius, y + radius), (x - radius, y + radius)]
    elif shape == "diamond":
        pts = [(x, y - radius), (x + radius, y), (x, y + radius), (x - radius, y)]
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    cv2.fillPoly(canvas, [np.array(pts, dtype=np.int32)], colour, lineType=cv2.LINE_8)


def describe(subject, named=None) -> str:
    """"a red striped circle" for the attributes in `named` (default: all of a Subject, colour and shape of a
    plain pair); an unnamed shape reads "shape"."""
    if len(subject) == 2 and named is None:
        named = ("colour", "shape")
    subject = as_subject(subject)
    named = ATTRIBUTES if named is None else named
    words = [subject.colour] * ("colour" in named) + [subject.texture] * ("texture" in named)
    return " ".join(["a", *words, subject.shape if "shape" in named else GENERIC_NOUN])


def caption(relation: str, subject1, subject2, named1=None, named2=None) -> str:
    """"a red striped circle pushes a shape": each subject described by its `named` attributes (`describe`)."""
    return f"{describe(subject1, named1)} {relation} {describe(subject2, named2)}"


def parse_caption(text: str):
    """Inverse of `caption`: (relation, spec1, spec2), each spec (colour, texture, shape) with None for what the
    caption leaves unnamed; ValueError naming what is expected."""
    colours, textures, shapes = "|".join(COLORS), "|".join(TEXTURES), "|".join((*SHAPES, GENERIC_NOUN))
    subject = rf"an? (?:({colours}) )?(?:({textures}) )?({shapes})"
    match = re.fullmatch(rf"\s*{subject} ({'|'.join(RELATIONS)}) {subject}[\s.]*", text.lower())
    if match is None:
        raise ValueError(f"prompt {text!r} is not a SynthRel caption; expected 'a [colour] [texture] <shape> "
                         f"<relation> a [colour] [texture] <shape>' with colours {sorted(COLORS)}, textures "
                         f"{list(TEXTURES)}, shapes {list(SHAPES)} or {GENERIC_NOUN!r}, relations {list(RELATIONS)}")
    c1, t1, s1, relation, c2, t2, s2 = match.groups()
    return (relation, Subject(c1, t1, None if s1 == GENERIC_NOUN else s1),
            Subject(c2, t2, None if s2 == GENERIC_NOUN else s2))


def texture_tone(texture: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    """Brightness in [DARK_TONE, 1] of `texture` at pixel offsets (dx, dy) from the centre of a subject of
    half-size `radius`. Patterns are drawn at the subject's own scale, at most two tone changes across it: the
    tiny base's tokens are 8×8 pixels, and a pattern finer than a subject's edge asks each token for an exact
    phase that sampling from noise does not reach (docs/benchmarks.md, "Reading the v2 base")."""
    band = radius / 3.0
    bright = {
        "plain": lambda: np.ones_like(dx, dtype=bool),
        "striped": lambda: np.abs(dy) > band,                        # a dark horizontal bar through the centre
        "banded": lambda: np.abs(dx) > band,                         # a dark vertical bar
        "checked": lambda: (dx >= 0) == (dy >= 0),                   # 2×2 checks: bright top-left and bottom-right
        "dotted": lambda: np.hypot(dx, dy) < radius / 2.0,           # a bright dot on the dark tone
        "ringed": lambda: np.hypot(dx, dy) >= radius / 2.0,          # a bright ring round a dark centre
    }
    if texture == "shaded":                                          # bright top to dark bottom
        return 1.0 - (1.0 - DARK_TONE) * np.clip((dy + radius) / (2.0 * radius), 0.0, 1.0)
    if texture not in bright:
        raise ValueError(f"unknown texture {texture!r}; expected one of {list(TEXTURES)}")
    return np.where(bright[texture](), 1.0, DARK_TONE)


def trajectories(relation: str, frames: int, seed: int, size=(64, 64), look: Look = LOOKS["v1"]):
    """Ground-truth centres [F, 2, 2] (subject, (x, y) in frame units) and radii (pixels) of one clip."""
    rng = random.Random(seed)
    height, width = size
    r1, r2 = (max(look.min_radius, int(min(height, width) * rng.uniform(*look.radius))) for _ in range(2))
    params = _params(relation, rng, r1 / width, r2 / width)
    mirror = rng.random() < 0.5
    centres = np.zeros((frames, 2, 2))
    for i in range(frames):
        for s, (cx, cy) in enumerate(RELATIONS[relation](i / max(1, frames - 1), params)):
            centres[i, s] = (1 - cx if mirror else cx, cy)
    return centres, (r1, r2), rng


def render_clip(relation: str, subject1, subject2, frames: int = 17, size: tuple[int, int] = (64, 64),
                seed: int = 0, look: Look = LOOKS["v1"], named1=None, named2=None):
    """One clip of `subject1` `relation` `subject2` (each (colour, texture, shape), or a plain (colour, shape)).

    Returns (frames uint8 [F, H, W, 3] RGB, masks float32 [F, 2, H, W] of 0/1, caption naming `named1`/`named2`
    of the subjects' attributes, `describe`).
    """
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; expected one of {sorted(RELATIONS)}")
    text = caption(relation, subject1, subject2, named1, named2)
    subjects = (as_subject(subject1), as_subject(subject2))
    height, width = size
    centres, radii, rng = trajectories(relation, frames, seed, size, look)
    level = rng.randint(0, look.background)
    tint = np.array([level + rng.randint(0, look.tint) for _ in range(3)], dtype=np.uint8)
    ys, xs = np.mgrid[:height, :width]
    video = np.empty((frames, height, width, 3), np.uint8)
    masks = np.zeros((frames, 2, height, width), np.float32)
    for i in range(frames):
        canvas = np.broadcast_to(tint, (height, width, 3)).copy()
        layers = []
        for s in (1, 0):                                   # subject1 is drawn on top
            colour, texture, shape = subjects[s]
            layer = np.zeros((height, width), np.uint8)
            x, y = int(round(centres[i, s, 0] * width)), int(round(centres[i, s, 1] * height))
            draw_shape(layer, shape, (x, y), radii[s], 1)
            inside = layer.astype(bool)
            tone = texture_tone(texture, xs[inside] - x, ys[inside] - y, radii[s])
            canvas[inside] = np.rint(tone[:, None] * np.array(COLORS[colour], np.float64)).astype(np.uint8)
            layers.insert(0, inside)
        video[i] = canvas
        masks[i, 0] = layers[0]
        masks[i, 1] = layers[1] & ~layers[0]
    return video, masks, text


def exemplar_clips(relation: str, count: int, pairs, frames: int = 17, size=(64, 64), seed: int = 0,
                   look: Look = LOOKS["v1"], named=None):
    """`count` clips (name, video, masks, caption) of `relation` as `render_clip` gives them, cycling through the
    subject `pairs`, clip n with seed `seed` + n; captions name `named` of each subject (() : "a shape")."""
    for n in range(count):
        s1, s2 = pairs[n % len(pairs)]
        yield (f"clip_{n:02d}", *render_clip(relation, s1, s2, frames, size, seed + n, look, named, named))


def write_exemplars(folder, relation: str, count: int, pairs, frames: int = 17, size=(64, 64), seed: int = 0,
                    look: Look = LOOKS["v1"], named=None, lossless: bool = False):
    """Write `exemplar_clips` as `<folder>/clip_NN.mp4` (`lossless`: a folder `<folder>/clip_NN/` of PNG frames,
    which keeps the textures' tones that mp4's chroma subsampling shifts) + caption `.txt` + colour-coded mask folder
    `<folder>/masks/clip_NN/frameK.png` (un-padded names, as the reference's)."""
    from ..videoio import write_video

    folder = Path(folder)
    for name, video, masks, text in exemplar_clips(relation, count, pairs, frames, size, seed, look, named):
        if lossless:
            _write_png_frames(folder / name, video)
        else:
            write_video(folder / f"{name}.mp4", video, fps=16)
        atomic_write_text(folder / f"{name}.txt", text + "\n")
        coded = np.zeros((frames, *size, 3), np.uint8)
        coded[masks[:, 1] > 0] = MASK_COLORS[1]
        coded[masks[:, 0] > 0] = MASK_COLORS[0]
        _write_png_frames(folder / "masks" / name, coded)
    return folder


def _write_png_frames(folder: Path, frames: np.ndarray) -> None:
    """RGB frames [F, H, W, 3] as `folder/frameK.png` (written whole into a temporary folder, then renamed)."""
    import shutil
    import tempfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    for k, frame in enumerate(frames):
        cv2.imwrite(str(tmp / f"frame{k}.png"), frame[..., ::-1])
    if folder.exists():
        shutil.rmtree(folder)
    tmp.replace(folder)
