"""Benchmarks (`python -m dreamrelation_core bench ...`): they print their figures and write them to
docs/benchmarks.md (one section per benchmark, replaced in place)."""
from __future__ import annotations

import collections
import json
import random
import re
from pathlib import Path

from tqdm.auto import tqdm

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_section(name: str, markdown: str, doc: Path = DOC) -> Path:
    """Replace (or append) the section between `<!-- bench:name -->` markers in docs/benchmarks.md."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n\nFigures written by `python -m dreamrelation_core bench ...`.\n"
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    return doc


def degrade(video, rng):
    """Blur (σ 0.8) and noise (σ 10) a clip: a stand-in for a generator's soft, noisy output."""
    import cv2
    import numpy as np

    noise = np.random.default_rng(rng.randrange(1 << 30))
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 0.8) for f in video]).astype(np.float32)
    return np.clip(blurred + noise.normal(0, 10, blurred.shape), 0, 255).astype(np.uint8)


def evaluator_benchmark(clips_per_relation: int = 50, seed: int = 0, progress: bool = True,
                        degraded: bool = False) -> dict:
    """Relation accuracy and confusion of the SynthRel evaluator on ground-truth renders (random subjects),
    crisp or `degraded` (blurred and noisy)."""
    from .synthrel import COLORS, RELATIONS, SHAPES, render_clip
    from .synthrel.evaluate import evaluate_video

    rng = random.Random(seed)
    confusion = collections.Counter()
    shapes = present = 0
    jobs = [(r, k) for r in RELATIONS for k in range(clips_per_relation)]
    for relation, k in tqdm(jobs, desc="evaluator on ground truth", disable=not progress):
        c1, c2 = rng.sample(sorted(COLORS), 2)
        s1, s2 = (c1, rng.choice(SHAPES)), (c2, rng.choice(SHAPES))
        video, _, _ = render_clip(relation, s1, s2, seed=rng.randrange(1 << 30))
        result = evaluate_video(degrade(video, rng) if degraded else video, s1, s2)
        confusion[(relation, result["relation"] or "none")] += 1
        present += result["subjects_present"]
        shapes += result["shapes_match"]
    total = len(jobs)
    return {"clips": total, "relation_accuracy": sum(n for (a, b), n in confusion.items() if a == b) / total,
            "subjects_present": present / total, "shapes_match": shapes / total,
            "confusion": {a: {b: n for (x, b), n in confusion.items() if x == a} for a in RELATIONS}}


def evaluator_markdown(result: dict, degraded: dict) -> str:
    from .synthrel import RELATIONS

    names = list(RELATIONS) + ["none"]
    lines = ["## SynthRel evaluator on ground truth",
             "",
             f"{result['clips']} ground-truth clips (17 frames, 64×64, random subjects, sizes, backgrounds and "
             f"mirroring), one run:",
             "",
             "| renders | relation accuracy | both subjects found | shapes read correctly |",
             "|---|---|---|---|",
             f"| crisp | **{result['relation_accuracy']:.3f}** | {result['subjects_present']:.3f} | "
             f"{result['shapes_match']:.3f} |",
             f"| blurred (σ 0.8) + noise (σ 10) | {degraded['relation_accuracy']:.3f} | "
             f"{degraded['subjects_present']:.3f} | {degraded['shapes_match']:.3f} |",
             "",
             "Relations and subject presence rest on colour and trajectories and survive soft, noisy frames; the shape "
             "reading (fill ratio and centroid height of small blobs) does not, so the quality benchmark reports "
             "presence by colour and shape agreement separately.",
             "",
             "Confusion (rows: true relation, columns: evaluator's answer):",
             "",
             "| true \\ found | " + " | ".join(names) + " |",
             "|---" * (len(names) + 1) + "|"]
    for name in RELATIONS:
        row = result["confusion"][name]
        lines.append(f"| {name} | " + " | ".join(str(row.get(n, 0)) for n in names) + " |")
    return "\n".join(lines)


def _write_json(result: dict, json_path) -> None:
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")


def run(kind: str, clips: int = 50, json_path=None, progress: bool = True, quick: bool = False) -> dict:
    """`evaluator`: the SynthRel evaluator on ground truth; `base`: what the SynthRel base renders per relation;
    `quality`: DreamRelation vs. direct LoRA vs. ablations vs. base on held-out relations."""
    from .synthrel import quality

    if kind == "base":
        result = quality.base_report(prompts_per_relation=2 if quick else 6, progress=progress)
        markdown = quality.base_markdown(result)
    elif kind == "quality":
        result = quality.benchmark(steps=30 if quick else quality.TRAIN_STEPS,
                                   prompts=2 if quick else quality.PROMPTS, seeds=(0,) if quick else (0, 1, 2),
                                   progress=progress)
        markdown = quality.markdown(result)
    elif kind == "evaluator":
        return _evaluator(clips, json_path, progress)
    else:
        raise ValueError(f"unknown benchmark {kind!r}; expected evaluator, base or quality")
    print(markdown)
    if not quick:
        write_section(kind, markdown)
    _write_json(result, json_path)
    return result


def _evaluator(clips: int, json_path, progress: bool) -> dict:
    result = evaluator_benchmark(clips, progress=progress)
    degraded = evaluator_benchmark(clips, seed=1, progress=progress, degraded=True)
    markdown = evaluator_markdown(result, degraded)
    print(markdown)
    write_section("evaluator", markdown)
    _write_json({"crisp": result, "degraded": degraded}, json_path)
    return {"crisp": result, "degraded": degraded}
