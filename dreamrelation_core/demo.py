"""The no-download demo: learn a relation the SynthRel base has never seen from 8 exemplars, then render it with
subjects the exemplars never showed — exemplars | base | DreamRelation side by side, metrics and the LoRA."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DEMO_RELATION = "pushes"


def _upscale(frames: np.ndarray, factor: int = 4) -> np.ndarray:
    return frames.repeat(factor, axis=1).repeat(factor, axis=2)


def run_demo(out: Path, steps: int | None = None, progress: bool = True, relation: str = DEMO_RELATION) -> dict:
    """Write exemplars of the held-out `relation`, train DreamRelation `steps` steps (default: the quality
    benchmark's) on the SynthRel base, sample the base and the relation LoRA on unseen subjects, judge both with the
    evaluator. Returns the written paths."""
    from .synthrel.base import build_synthrel_base
    from .synthrel.quality import (CFG, EXEMPLAR_PAIRS, FRAMES, SIZE, STEPS, TRAIN_STEPS, judge, run_config,
                                    sample_clip, test_subjects)
    from .synthrel.render import caption, write_exemplars
    from .trainer import RelationTrainer
    from .videoio import read_video, write_video

    out = Path(out)
    exemplars = write_exemplars(out / "exemplars", relation, 8, EXEMPLAR_PAIRS, frames=FRAMES, size=SIZE)
    pairs = test_subjects(2)
    prompt = caption(relation, *pairs[0])
    base = build_synthrel_base()
    before = sample_clip(base, prompt, 0, STEPS, CFG)
    metrics = {"relation": relation, "prompt": prompt, "base": judge(base, relation, pairs, (0, 1), STEPS, CFG)}

    config = run_config(out, exemplars, TRAIN_STEPS if steps is None else steps, {}, seed=0)
    trainer = RelationTrainer(config, progress=progress)
    lora = trainer.train()
    trainer.backend.activate(("relation", "ffn"))
    trained = trainer.backend.base
    after = sample_clip(trained, prompt, 0, STEPS, CFG)
    metrics["dreamrelation"] = judge(trained, relation, pairs, (0, 1), STEPS, CFG)

    exemplar, _ = read_video(exemplars / "clip_00.mp4")
    side_by_side = np.concatenate([_upscale(exemplar[:len(before)]), _upscale(before), _upscale(after)], axis=2)
    video = write_video(out / "exemplar_base_dreamrelation.gif", side_by_side, fps=8)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if progress:
        for name in ("base", "dreamrelation"):
            m = metrics[name]
            print(f"{name:14s} relation accuracy {m['relation_accuracy']:.2f}  leakage {m['leakage']:.2f}")
    return {"lora": lora, "video": video, "metrics": out / "metrics.json", "log": out / "log.jsonl"}
