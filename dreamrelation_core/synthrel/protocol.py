"""SynthRel protocols: what a base is pretrained on, what the exemplars show and which subjects are tested.

v1: flat subjects on 9-frame 32×32 clips, every caption naming colour and shape (the shipped base so far).
v2: textured subjects on 9-frame 40×40 clips; base captions name a random subset of attributes, exemplars are
captioned "a shape … a shape" as the paper's "a person … a person", and test prompts name subjects whose colours,
textures and shapes no exemplar shows (docs/method.md, "Protocols").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .render import COLORS, LOOKS, SHAPES, TEXTURES, Look, Subject

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class Protocol:
    name: str
    frames: int
    size: tuple                 # (height, width)
    look: Look
    textured: bool              # pretraining: random textures and captions naming a random subset of attributes
    weights: Path               # the base pretrained on it
    exemplar_pairs: tuple       # the subject pairs every exemplar set cycles through
    exemplar_naming: tuple | None   # attributes exemplar captions name (None: the protocol's full caption)
    lossless: bool              # exemplars as PNG frames (textures do not survive mp4)

    @property
    def exemplar_subjects(self) -> list:
        return [s for pair in self.exemplar_pairs for s in pair]

    @property
    def exemplar_colours(self) -> list:
        return sorted({s[0] for s in self.exemplar_subjects})

    @property
    def test_colours(self) -> list:
        return sorted(set(COLORS) - set(self.exemplar_colours))

    def test_subjects(self, count: int) -> list:
        """`count` distinct subject pairs for test prompts, none of whose colours (v2: and textures and shapes) an
        exemplar shows, in a fixed order; ValueError past the last distinct pair (a repeated pair sampled with the
        same seeds repeats its clips, which a paired bootstrap would count as independent)."""
        colours = self.test_colours
        if not self.textured:
            pairs = [((colours[k % 2], SHAPES[k % len(SHAPES)]),
                      (colours[(k + 1) % 2], SHAPES[(k // len(SHAPES) + 1 + k) % len(SHAPES)]))
                     for k in range(len(SHAPES) ** 2)]      # distinct until the cycle repeats
        else:
            seen = self.exemplar_subjects
            textures = [t for t in TEXTURES if t not in {s.texture for s in seen}]
            shapes = [s for s in SHAPES if s not in {s.shape for s in seen}]
            texture_pairs = [(a, b) for a in textures for b in textures if a != b]
            pairs = []
            # the first 12 as before (shipped runs use 8); the colour order ties to the texture pair's parity there,
            # so the next 12 flip it: every (texture pair, colour order, shape order) once
            for k in range(len(texture_pairs) * 4):
                t1, t2 = texture_pairs[k % len(texture_pairs)]
                flip = k // (len(texture_pairs) * 2)
                c1, c2 = colours[(k + flip) % 2], colours[(k + flip + 1) % 2]
                h1, h2 = shapes[(k // 2) % 2], shapes[(k // 2 + 1) % 2]
                pairs.append((Subject(c1, t1, h1), Subject(c2, t2, h2)))
        if not 1 <= count <= len(pairs):
            raise ValueError(f"test prompts: protocol {self.name} has {len(pairs)} distinct unseen subject pairs; "
                             f"expected 1 to {len(pairs)}, got {count}")
        return pairs[:count]


V1 = Protocol(name="v1", frames=9, size=(32, 32), look=LOOKS["v1"], textured=False,
              weights=WEIGHTS_DIR / "synthrel_base.safetensors",
              exemplar_pairs=((("red", "circle"), ("blue", "square")), (("green", "triangle"), ("yellow", "diamond"))),
              exemplar_naming=None, lossless=False)
# v2 exemplars: two fixed textured pairs on circles and squares; tests: purple and cyan triangles and diamonds,
# plain, banded or shaded.
V2 = Protocol(name="v2", frames=9, size=(40, 40), look=LOOKS["v2"], textured=True,
              weights=WEIGHTS_DIR / "synthrel_base_v2.safetensors",
              exemplar_pairs=((Subject("red", "striped", "circle"), Subject("blue", "checked", "square")),
                              (Subject("green", "dotted", "square"), Subject("yellow", "ringed", "circle"))),
              exemplar_naming=(), lossless=True)
PROTOCOLS = {p.name: p for p in (V1, V2)}
# The protocol whose base the demo, the SynthRel nodes and workflow 4 use, and the benchmarks' default.
DEFAULT = V2


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown SynthRel protocol {name!r}; expected one of {sorted(PROTOCOLS)}") from None
