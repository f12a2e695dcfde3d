"""Benchmarks (`python -m dreamrelation_core bench ...`): they print their figures and write them to
docs/benchmarks.md in a checkout, else to `--out` (one section per benchmark, replaced in place)."""
from __future__ import annotations

import collections
import dataclasses
import random
import re
from pathlib import Path

from tqdm.auto import tqdm

from .files import atomic_write_json, atomic_write_text

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def default_doc() -> Path:
    """docs/benchmarks.md of the checkout this package runs from; ./benchmarks.md for an installed package (whose
    parent folder is site-packages, no place for our docs)."""
    return DOC if DOC.is_file() or (DOC.parents[1] / ".git").exists() else Path.cwd() / "benchmarks.md"


def write_section(name: str, markdown: str, doc: Path = DOC) -> Path:
    """Replace (or append) the section between `<!-- bench:name -->` markers in docs/benchmarks.md."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n\nFigures written by `python -m dreamrelation_core bench ...`.\n"
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    return atomic_write_text(doc, text)


def degrade(video, rng):
    """Blur (σ 0.8) and noise (σ 10) a clip: a stand-in for a generator's soft, noisy output."""
    import cv2
    import numpy as np

    noise = np.random.default_rng(rng.randrange(1 << 30))
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 0.8) for f in video]).astype(np.float32)
    return np.clip(blurred + noise.normal(0, 10, blurred.shape), 0, 255).astype(np.uint8)


def evaluator_benchmark(clips_per_relation: int = 50, seed: int = 0, progress: bool = True,
                        degraded: bool = False) -> dict:
    """The SynthRel evaluator on protocol v2 ground truth (random textured subjects, 9 frames of 40×40), crisp or
    `degraded` (blurred and noisy): relation accuracy and confusion, subjects found, and per attribute how often
    the named value is read (texture confusion per frame: what each true texture is read as)."""
    from .synthrel import RELATIONS
    from .synthrel.evaluate import colour_map, evaluate_video, find
    from .synthrel.protocol import V2
    from .synthrel.render import TEXTURES, random_pair, render_clip

    rng = random.Random(seed)
    confusion, textures = collections.Counter(), collections.Counter()
    counts = collections.Counter()
    jobs = [(r, k) for r in RELATIONS for k in range(clips_per_relation)]
    for relation, k in tqdm(jobs, desc="evaluator on ground truth", disable=not progress):
        s1, s2 = random_pair(rng, textured=True)
        video, _, _ = render_clip(relation, s1, s2, V2.frames, V2.size, rng.randrange(1 << 30), V2.look)
        video = degrade(video, rng) if degraded else video
        result = evaluate_video(video, s1, s2)
        confusion[(relation, result["relation"] or "none")] += 1
        counts.update(k for k in ("subjects_present", "shapes_match", "textures_match", "attributes_match")
                      if result[k])
        for frame in video:
            cmap = colour_map(frame)
            for subject in (s1, s2):
                blob = find(frame, subject.colour, cmap)
                textures[(subject.texture, blob.texture if blob and blob.texture else "none")] += 1
    total = len(jobs)
    return {"protocol": "v2", "clips": total,
            "relation_accuracy": sum(n for (a, b), n in confusion.items() if a == b) / total,
            **{k: counts[k] / total for k in ("subjects_present", "shapes_match", "textures_match",
                                              "attributes_match")},
            "confusion": {a: {b: n for (x, b), n in confusion.items() if x == a} for a in RELATIONS},
            "texture_confusion": {a: {b: n for (x, b), n in textures.items() if x == a} for a in TEXTURES}}


def _confusion_table(confusion: dict, names: list) -> list:
    lines = ["| true \\ found | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    return lines + [f"| {name} | " + " | ".join(str(row.get(n, 0)) for n in names) + " |"
                    for name, row in confusion.items()]


def evaluator_markdown(result: dict, degraded: dict) -> str:
    from .synthrel import RELATIONS
    from .synthrel.render import TEXTURES

    def row(name, r):
        return (f"| {name} | {r['relation_accuracy']:.3f} | {r['subjects_present']:.3f} | {r['shapes_match']:.3f} | "
                f"{r['textures_match']:.3f} | {r['attributes_match']:.3f} |")

    lines = ["## SynthRel evaluator on ground truth",
             "",
             f"Protocol v2: {result['clips']} ground-truth clips (9 frames, 40×40, two random subjects of 6 colours × "
             "7 textures × 4 shapes, half-size 5 px, random backgrounds, placements and mirroring), one run. The "
             "rules were fixed here, before any method was judged on v2.",
             "",
             "| renders | relation accuracy | both subjects found | shapes read | textures read | every named "
             "attribute read |",
             "|---|---|---|---|---|---|",
             row("crisp", result), row("blurred (σ 0.8) + noise (σ 10)", degraded),
             "",
             "Relations, presence and textures rest on hue, trajectories and brightness patterns fitted with a "
             "contrast gain, and survive soft, noisy frames; shapes are read by overlap with rasterised outlines. "
             "The quality benchmark reports subject presence and each attribute apart.",
             "",
             "Relation confusion, crisp (rows: true relation, columns: evaluator's answer):",
             "", *_confusion_table(result["confusion"], list(RELATIONS) + ["none"]),
             "",
             "Texture confusion per subject and frame, blurred + noisy (rows: true texture, columns: read as; "
             "'none': blob missing or too small; crisp: every texture read as itself):",
             "", *_confusion_table(degraded["texture_confusion"], list(TEXTURES) + ["none"])]
    return "\n".join(lines)


def _write_json(result: dict, json_path) -> None:
    if json_path:
        atomic_write_json(json_path, result)


def _rows(chosen, available: dict) -> tuple:
    """The benchmark's rows: `chosen` (in the benchmark's order) or, when None, all of `available`."""
    if chosen is None:
        return tuple(available)
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        raise ValueError(f"methods: {unknown} are not rows of this benchmark; expected some of {list(available)}")
    return tuple(m for m in available if m in chosen)


def run(kind: str, clips: int = 50, json_path=None, progress: bool = True, quick: bool = False,
        protocol: str | None = None, work=None, out=None, suite: str = "cpu", study: bool = False,
        comfyui=None, base_weights=None, relations=None, prompts: int | None = None, methods=None,
        seeds: int | None = None) -> dict:
    """`evaluator`: the SynthRel evaluator on ground truth; `base`: what the SynthRel base renders per relation;
    `quality`: DreamRelation (per placement) vs. direct LoRA vs. ablations vs. base on held-out relations;
    `speed`: what the triplet costs over a plain LoRA, training and sampling (speed.py).
    `protocol`: the SynthRel protocol (default: the shipped base's, protocol.DEFAULT); `work` (quality): a folder
    that keeps each judged (relation, method), so that a rerun resumes; `study` (quality): the variants of
    quality.STUDY instead of the methods; `comfyui` (speed): a ComfyUI checkout, to time the ComfyUI path too;
    `out`: the markdown file for the figures (default `default_doc()`). `base_weights`, `relations`, `prompts`,
    `seeds`, `methods` (quality): another base of the protocol, a subset of the held-out relations, another number
    of prompts or of sampling seeds (0 … seeds − 1), a subset of the rows; such a run is not the shipped one, so its
    table goes only to an `out` that is named."""
    from .synthrel import quality, recipe
    from .synthrel.base import HELD_OUT, held_out_only
    from .synthrel.protocol import DEFAULT, get_protocol

    if any(option is not None for option in (relations, prompts, seeds, methods)) and kind != "quality":
        raise ValueError("relations, prompts, seeds and methods: options of the quality benchmark only")
    if base_weights is not None and kind not in ("base", "quality"):
        raise ValueError("base_weights: an option of the base and quality benchmarks only")

    chosen = DEFAULT if protocol is None else get_protocol(protocol)
    if base_weights is not None:
        chosen = dataclasses.replace(chosen, weights=Path(base_weights))
    custom = any(option is not None for option in (base_weights, relations, prompts, seeds, methods))
    doc = Path(out) if out else default_doc()
    if kind in ("base", "quality") and not chosen.weights.is_file():
        raise FileNotFoundError(f"no SynthRel {chosen.name} base at {chosen.weights}: pretrain it first "
                                f"(python -m dreamrelation_core pretrain-synthrel --protocol {chosen.name})")
    if kind == "base":
        result = quality.base_report(prompts_per_relation=2 if quick else 6, progress=progress, protocol=chosen)
        markdown = quality.base_markdown(result, chosen.name)
    elif kind == "quality":
        result = quality.benchmark(relations=held_out_only(relations or HELD_OUT, "relations"),
                                   steps=30 if quick else recipe.TRAIN_STEPS,
                                   methods=_rows(methods, quality.STUDY if study else quality.METHODS),
                                   prompts=prompts or (2 if quick else quality.PROMPTS),
                                   seeds=(0,) if quick else tuple(range(seeds or 3)),
                                   progress=progress, protocol=chosen, work=None if work is None else Path(work))
        markdown = quality.markdown(result, study)
    elif kind == "evaluator":
        return _evaluator(clips, json_path, progress, doc)
    elif kind == "speed":
        from . import speed

        result = speed.benchmark(reps=3 if quick else (10 if suite == "cpu" else 3), suite=suite, progress=progress,
                                 comfyui=comfyui)
        markdown = speed.markdown(result)
        print(markdown)
        if not quick:
            print(f"figures written to {write_section('speed' if suite == 'cpu' else 'speed_gpu', markdown, doc)}")
        _write_json(result, json_path)
        return result
    else:
        raise ValueError(f"unknown benchmark {kind!r}; expected evaluator, base, quality or speed")
    print(markdown)
    if custom and not out:
        print("not written to docs: a run with another base, relations, prompts, seeds or methods goes only to "
              "--out")
    elif not quick:      # each protocol has its own section: the v1 tables stay as history
        section = (kind if chosen.name == "v1" else f"{kind}_{chosen.name}") + ("_study" if study else "")
        print(f"figures written to {write_section(section, markdown, doc)}")
    _write_json(result, json_path)
    return result


def _evaluator(clips: int, json_path, progress: bool, doc: Path) -> dict:
    result = evaluator_benchmark(clips, progress=progress)
    degraded = evaluator_benchmark(clips, seed=1, progress=progress, degraded=True)
    markdown = evaluator_markdown(result, degraded)
    print(markdown)
    print(f"figures written to {write_section('evaluator', markdown, doc)}")
    _write_json({"crisp": result, "degraded": degraded}, json_path)
    return {"crisp": result, "degraded": degraded}
