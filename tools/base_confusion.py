"""Which textures and shapes a SynthRel base draws for the ones a prompt names: confusion tables per subject and
frame, read by the benchmark's evaluator, on the prompts and seeds of `bench base` (known relations only), beside
the same prompts rendered as ground truth (which the evaluator reads right: docs/benchmarks.md). A diagnostic for
the base's prompt fidelity, not a benchmark figure.

    python tools/base_confusion.py [--weights FILE] [--prompts 12] [--json FILE]
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dreamrelation_core.files import atomic_write_json  # noqa: E402
from dreamrelation_core.synthrel import quality  # noqa: E402
from dreamrelation_core.synthrel.base import HELD_OUT  # noqa: E402
from dreamrelation_core.synthrel.evaluate import colour_map, find  # noqa: E402
from dreamrelation_core.synthrel.protocol import DEFAULT  # noqa: E402
from dreamrelation_core.synthrel.recipe import CFG, STEPS  # noqa: E402
from dreamrelation_core.synthrel.render import SHAPES, TEXTURES, caption, render_clip  # noqa: E402

MISSING = "none"     # the subject's colour not found in the frame


def confusion(prompts_per_relation: int = 12, seeds=(0, 1), protocol=DEFAULT) -> dict:
    """{"clips": n, "texture" | "shape": {"sample" | "truth": {named: {read: count}}}}, counted per subject and
    frame, on `quality.base_prompts` (with 6 a relation, `bench base`'s own clips) of the known relations."""
    base = quality.build_synthrel_base(protocol.weights)
    counts = {attribute: {kind: collections.defaultdict(collections.Counter) for kind in ("sample", "truth")}
              for attribute in ("texture", "shape")}
    clips = 0
    for relation, *subjects, seed in quality.base_prompts(prompts_per_relation, seeds, protocol):
        if relation in HELD_OUT:
            continue
        videos = {"sample": quality.sample_clip(base, caption(relation, *subjects), seed, STEPS, CFG, protocol),
                  "truth": render_clip(relation, *subjects, protocol.frames, protocol.size, seed, protocol.look)[0]}
        clips += 1
        for kind, video in videos.items():
            for frame in video:
                maps = colour_map(frame)
                for subject in subjects:
                    blob = find(frame, subject.colour, maps)
                    for attribute in ("texture", "shape"):
                        read = getattr(blob, attribute) if blob else MISSING
                        counts[attribute][kind][getattr(subject, attribute)][str(read)] += 1
    return {"clips": clips, "prompts_per_relation": prompts_per_relation, "seeds": list(seeds),
            **{attribute: {kind: {named: dict(row) for named, row in table.items()} for kind, table in by_kind.items()}
               for attribute, by_kind in counts.items()}}


def markdown(result: dict) -> str:
    lines = []
    for attribute, names in (("texture", TEXTURES), ("shape", SHAPES)):
        columns = [*names, MISSING, "None"]
        for kind in ("sample", "truth"):
            table = result[attribute][kind]
            lines += ["", f"{attribute}s, {kind} ({result['clips']} clips; rows: named, columns: read as, per subject "
                          "and frame; 'None': no reading):", "",
                      "| named \\ read | " + " | ".join(columns) + " | read right |", "|---" * (len(columns) + 2) + "|"]
            for name, row in ((n, table[n]) for n in names if n in table):
                lines.append(f"| {name} | " + " | ".join(str(row.get(c, 0)) for c in columns)
                             + f" | {row.get(name, 0) / sum(row.values()):.2f} |")
    return "\n".join(lines[1:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT.weights, help="base weights (default: the shipped v2)")
    parser.add_argument("--prompts", type=int, default=12, help="prompts per known relation, each with seeds 0 and 1")
    parser.add_argument("--json", type=Path, help="also write the counts here")
    args = parser.parse_args(argv)
    result = confusion(args.prompts, protocol=dataclasses.replace(DEFAULT, weights=args.weights))
    print(markdown(result))
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
