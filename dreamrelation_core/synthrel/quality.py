"""The SynthRel quality benchmark: does a method learn a held-out relation without copying the exemplars' looks?

For each held-out relation: exemplars whose subjects come from only two appearance pairs (colours EXEMPLAR_COLOURS),
a relation LoRA trained per method, then prompts with unseen subject pairs (the other colours) × seeds, judged by
the evaluator: relation accuracy (mean ± spread over seeds), appearance leakage (an exemplar colour shows up),
subjects present. Methods: DreamRelation, direct LoRA (all Q/K/V/out, no masks, no RCL, applied whole — the
paper's baseline), the paper's ablations without hybrid masks, without RCL and without subject LoRAs, and the
untrained base; and, as a diagnostic, the DreamRelation triplet applied with its subject LoRAs kept.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path


from ..archs import INFERENCE_ROLES, ROLES, SYNTHREL
from ..config import DataConfig, RCLConfig, RunConfig, SampleConfig, TrainConfig
from ..triplet import TripletConfig
from .base import HELD_OUT, build_synthrel_base
from .render import COLORS, SHAPES, caption as make_caption, write_exemplars

FRAMES, SIZE = SYNTHREL.default_frames, SYNTHREL.default_size
STEPS, CFG = SYNTHREL.sample_steps, SYNTHREL.sample_cfg        # how every SynthRel clip here is sampled
# LoRA training steps per method (benchmark, demo, workflow 4's widget). On the 48k-step base a LoRA rendered
# "pushes" on its own training subjects in 1 of 6 clips at 300 steps, 3 of 6 at 1500; on the shipped 72k base more
# steps still help a little (docs/benchmarks.md).
TRAIN_STEPS = 1500
# LoRA training σ range: U(TRAIN_SIGMA_MIN, 1) for every method. The base predicts x0 and trains on the velocity it
# implies, (z − x̂0)/σ, whose error is the x0 error weighted by 1/σ²: with σ ~ U(0, 1), nine tenths of that weight
# fall on σ < 0.2, where a clip's layout and motion are already fixed and only its colours and edges are refined.
# From 0.4 up, the relation's trajectories get the updates and the exemplars' colours fewer (docs/benchmarks.md).
TRAIN_SIGMA_MIN = 0.4
PROMPTS = 8               # unseen subject pairs per relation, each sampled with every seed
EXEMPLAR_PAIRS = [(("red", "circle"), ("blue", "square")), (("green", "triangle"), ("yellow", "diamond"))]
EXEMPLAR_COLOURS = sorted({s[0] for pair in EXEMPLAR_PAIRS for s in pair})
TEST_COLOURS = sorted(set(COLORS) - set(EXEMPLAR_COLOURS))
METHODS = {
    # name: (training overrides, roles applied at inference); methods with the same overrides share one training run
    "dreamrelation": ({}, INFERENCE_ROLES),
    "dreamrelation_all_roles": ({}, ROLES),       # diagnostic: the same triplet, subject LoRAs kept at inference
    "direct_lora": ({"hybrid_masks": False, "rcl": False}, ROLES),
    "no_hmt": ({"hybrid_masks": False}, INFERENCE_ROLES),
    "no_rcl": ({"rcl": False}, INFERENCE_ROLES),
    "no_subject_loras": ({"subject_loras": False}, INFERENCE_ROLES),
    "base": (None, ()),
}


def test_subjects(count: int):
    """Unseen subject pairs: test colours only, every shape combination in turn."""
    pairs = []
    for k in range(count):
        c1, c2 = TEST_COLOURS[k % 2], TEST_COLOURS[(k + 1) % 2]
        pairs.append(((c1, SHAPES[k % len(SHAPES)]), (c2, SHAPES[(k // len(SHAPES) + 1 + k) % len(SHAPES)])))
    return pairs


def run_config(out: Path, exemplars: Path, steps: int, overrides: dict, seed: int) -> RunConfig:
    return RunConfig(
        base="synthrel", name="relation", output_dir=str(out), device="cpu",
        data=DataConfig(videos=str(exemplars), frames=FRAMES, height=SIZE[0], width=SIZE[1]),
        lora=TripletConfig(rank=8, alpha=8),
        train=TrainConfig(steps=steps, learning_rate=1e-3, warmup_steps=min(50, steps // 5), checkpoint_every=0,
                          sigma_min=TRAIN_SIGMA_MIN,
                          gradient_checkpointing=False, hybrid_masks=overrides.get("hybrid_masks", True),
                          subject_loras=overrides.get("subject_loras", True), seed=seed),
        rcl=RCLConfig(enabled=overrides.get("rcl", True)),
        sample=SampleConfig())


def sample_clip(base, prompt: str, seed: int, steps: int, cfg: float):
    from ..sampling import generate, to_uint8_frames

    return to_uint8_frames(generate(base, prompt, FRAMES, SIZE[0], SIZE[1], steps, cfg, seed, progress=False))


def judge(base, relation: str, pairs, seeds, steps: int, cfg: float) -> dict:
    """Evaluator verdicts for every (pair, seed) sample of `base` (with whatever LoRA is active)."""
    from .evaluate import evaluate_video

    exemplar_subjects = [s for pair in EXEMPLAR_PAIRS for s in pair]
    per_seed, leaked, present = {s: [] for s in seeds}, [], []
    for s1, s2 in pairs:
        prompt = make_caption(relation, s1, s2)
        for seed in seeds:
            verdict = evaluate_video(sample_clip(base, prompt, seed, steps, cfg), s1, s2, exemplar_subjects)
            per_seed[seed].append(verdict["relation"] == relation)
            leaked.append(bool(verdict["leaked"]))
            present.append(verdict["subjects_present"])
    accuracies = [sum(v) / len(v) for v in per_seed.values()]
    return {"relation_accuracy": statistics.mean(accuracies),
            "relation_accuracy_spread": statistics.pstdev(accuracies) if len(accuracies) > 1 else 0.0,
            "per_seed": accuracies, "leakage": sum(leaked) / len(leaked), "subjects_present": sum(present) / len(present)}


def benchmark(relations=HELD_OUT, methods=tuple(METHODS), exemplars: int = 8, steps: int = TRAIN_STEPS,
              prompts: int = PROMPTS, seeds=(0, 1, 2), sample_steps: int = STEPS, cfg: float = CFG,
              progress: bool = True) -> dict:
    """Train every method on every held-out relation and judge it; returns the JSON-able result."""
    from ..trainer import RelationTrainer
    from ..triplet import activate

    results = {m: {"per_relation": {}} for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        for relation in relations:
            folder = write_exemplars(Path(tmp) / relation.replace(" ", "_"), relation, exemplars, EXEMPLAR_PAIRS,
                                     frames=FRAMES, size=SIZE)
            pairs = test_subjects(prompts)
            trained = {}      # training overrides -> (base with the trained triplet, seconds it took)
            for method in methods:
                overrides, roles = METHODS[method]
                if overrides is None:
                    base, train_seconds = build_synthrel_base(), 0.0
                else:
                    key = json.dumps(overrides, sort_keys=True)
                    if key not in trained:
                        start = time.time()
                        config = run_config(Path(tmp) / f"{relation}_{method}", folder, steps, overrides, seed=0)
                        trainer = RelationTrainer(config, progress=progress)
                        trainer.train()
                        trained[key] = (trainer.backend.base, time.time() - start)
                    base, train_seconds = trained[key]
                activate(base.transformer, roles)
                base.transformer.eval()
                verdict = judge(base, relation, pairs, seeds, sample_steps, cfg)
                verdict["train_seconds"] = train_seconds
                results[method]["per_relation"][relation] = verdict
    for method, result in results.items():
        rel = result["per_relation"].values()
        result["relation_accuracy"] = statistics.mean(v["relation_accuracy"] for v in rel)
        result["relation_accuracy_spread"] = statistics.mean(v["relation_accuracy_spread"] for v in rel)
        result["leakage"] = statistics.mean(v["leakage"] for v in rel)
        result["subjects_present"] = statistics.mean(v["subjects_present"] for v in rel)
        result["train_seconds"] = statistics.mean(v["train_seconds"] for v in rel)
    return {"methods": results, "relations": list(relations), "exemplars": exemplars, "steps": steps,
            "train_sigma_min": TRAIN_SIGMA_MIN, "prompts": prompts, "seeds": list(seeds),
            "sample_steps": sample_steps, "cfg": cfg, "exemplar_colours": EXEMPLAR_COLOURS,
            "test_colours": TEST_COLOURS}


def markdown(result: dict) -> str:
    lines = ["## SynthRel quality benchmark",
             "",
             f"Held-out relations {', '.join(result['relations'])}; {result['exemplars']} exemplars each (subjects "
             f"from two appearance pairs, colours {', '.join(result['exemplar_colours'])}); {result['steps']} "
             f"training steps on σ ∈ [{result['train_sigma_min']}, 1]; {result['prompts']} prompts with unseen "
             f"subjects (colours {', '.join(result['test_colours'])}) × seeds {result['seeds']}; "
             f"{result['sample_steps']} Euler steps, CFG {result['cfg']}.",
             "",
             "| method | relation accuracy (mean ± spread over seeds) | leakage | subjects present | train s |",
             "|---|---|---|---|---|"]
    for name, m in result["methods"].items():
        lines.append(f"| {name} | {m['relation_accuracy']:.3f} ± {m['relation_accuracy_spread']:.3f} | "
                     f"{m['leakage']:.3f} | {m['subjects_present']:.3f} | {m['train_seconds']:.0f} |")
    return "\n".join(lines)


def base_report(prompts_per_relation: int = 6, seeds=(0, 1), sample_steps: int = STEPS, cfg: float = CFG,
                progress: bool = True) -> dict:
    """Per-relation accuracy of the pretrained base on random subject pairs: known relations should be rendered
    well, held-out ones should not be."""
    import random

    from tqdm.auto import tqdm

    from .evaluate import evaluate_video
    from .render import RELATIONS

    base = build_synthrel_base()
    rng = random.Random(1234)
    report = {}
    for relation in tqdm(list(RELATIONS), desc="base per relation", disable=not progress):
        hits = present = total = 0
        for _ in range(prompts_per_relation):
            c1, c2 = rng.sample(sorted(COLORS), 2)
            s1, s2 = (c1, rng.choice(SHAPES)), (c2, rng.choice(SHAPES))
            for seed in seeds:
                verdict = evaluate_video(sample_clip(base, make_caption(relation, s1, s2), seed, sample_steps, cfg),
                                         s1, s2)
                hits += verdict["relation"] == relation
                present += verdict["subjects_present"]
                total += 1
        report[relation] = {"relation_accuracy": hits / total, "subjects_present": present / total,
                            "held_out": relation in HELD_OUT}
    return report


def base_markdown(report: dict) -> str:
    known = [v["relation_accuracy"] for v in report.values() if not v["held_out"]]
    lines = ["## SynthRel base: what it renders before any relation LoRA",
             "",
             f"Known relations: mean relation accuracy **{statistics.mean(known):.3f}**; held-out relations are "
             "not in its training data.",
             "",
             "| relation | held out | relation accuracy | subjects present |",
             "|---|---|---|---|"]
    for name, v in report.items():
        lines.append(f"| {name} | {'yes' if v['held_out'] else ''} | {v['relation_accuracy']:.3f} | "
                     f"{v['subjects_present']:.3f} |")
    return "\n".join(lines)
