"""SynthRel: procedural two-subject relation clips with exact subject masks (a no-download toy domain)."""

from .render import COLORS, RELATIONS, SHAPES, render_clip, write_exemplars

__all__ = ["COLORS", "RELATIONS", "SHAPES", "render_clip", "write_exemplars"]
