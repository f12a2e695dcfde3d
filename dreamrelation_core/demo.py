"""The no-download demo: learn a relation the SynthRel base has never seen from 8 exemplars, then render it with
subjects the exemplars never showed. It writes a grid, one row per seed: exemplar | base | DreamRelation | direct
LoRA | DreamRelation without hybrid masks (the setting docs/method.md recommends on Wan-shaped models), then the same
three LoRAs applied at high noise only (docs/method.md recommends that too), each clip labelled with the evaluator's
verdict; the metrics; and the relation LoRAs."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

DEMO_RELATION = "pushes"
DEMO_SEEDS = (0, 1, 2, 3)          # fixed before any result was seen, never picked by outcome
# Trained and sampled as the quality benchmark's rows; a `…_high_noise` column samples its row's LoRAs again with the
# LoRA on σ ≥ recipe.HIGH_NOISE_SIGMA only (quality.INFERENCE_ONLY), without training them twice.
COLUMNS = ("exemplar", "base", "dreamrelation", "direct_lora", "no_hmt",
           "dreamrelation_high_noise", "direct_lora_high_noise", "no_hmt_high_noise")
TITLES = {"exemplar": "exemplar", "base": "base", "dreamrelation": "DreamRelation", "direct_lora": "direct LoRA",
          "no_hmt": "no HMT"}
LABEL_HEIGHT = 26


def _title(column: str) -> str:
    trained_as = column.removesuffix("_high_noise")
    return TITLES[trained_as] + (", high noise" if trained_as != column else "")


def _cell(frames: np.ndarray, lines: tuple[str, ...], ok: bool | None, factor: int = 4) -> np.ndarray:
    """Frames upscaled `factor`× under a label strip of up to two lines (green: the prompt's relation seen, red: not,
    grey: none)."""
    big = frames.repeat(factor, axis=1).repeat(factor, axis=2)
    strip = np.zeros((len(big), LABEL_HEIGHT, big.shape[2], 3), np.uint8)
    strip[:] = {True: (20, 110, 40), False: (120, 30, 30), None: (60, 60, 60)}[ok]
    for frame in strip:
        for row, line in enumerate(lines):
            cv2.putText(frame, line, (3, 10 + 12 * row), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (255, 255, 255), 1,
                        cv2.LINE_AA)
    return np.concatenate([strip, big], axis=1)


def run_demo(out: Path, steps: int | None = None, progress: bool = True, relation: str = DEMO_RELATION,
             protocol=None, seeds=DEMO_SEEDS) -> dict:
    """Write exemplars of the held-out `relation`, train DreamRelation, direct LoRA and DreamRelation without hybrid
    masks `steps` steps each (default: the quality benchmark's) on the SynthRel base of `protocol` (default: the
    shipped base's), sample the base and every LoRA (on every step, then at high noise only) on one unseen subject
    pair with every seed, judge each clip. Returns the written paths."""
    from tqdm.auto import tqdm

    from .files import atomic_write_json
    from .synthrel import quality, recipe
    from .synthrel.base import build_synthrel_base
    from .synthrel.evaluate import evaluate_video
    from .synthrel.protocol import DEFAULT
    from .synthrel.render import caption, write_exemplars
    from .trainer import RelationTrainer
    from .triplet import activate
    from .videoio import read_video, write_video

    protocol = protocol or DEFAULT
    out = Path(out)
    exemplars = write_exemplars(out / "exemplars", relation, 8, protocol.exemplar_pairs, protocol.frames,
                                protocol.size, look=protocol.look, named=protocol.exemplar_naming,
                                lossless=protocol.lossless)
    subjects = protocol.test_subjects(1)[0]
    prompt = caption(relation, *subjects)
    steps = recipe.TRAIN_STEPS if steps is None else steps
    models, loras = {"base": (build_synthrel_base(protocol.weights), (), None)}, {}
    trained = {}            # quality.training_key -> the base with those trained LoRAs
    for method in COLUMNS[2:]:
        overrides, roles = quality.METHODS[method]
        key = quality.training_key(overrides)
        if key not in trained:
            folder = out if method == "dreamrelation" else out / method
            config = recipe.run_config(folder, exemplars, steps, overrides, 0, protocol)
            trainer = RelationTrainer.from_config(config, base=build_synthrel_base(protocol.weights),
                                                  progress=progress, overwrite=True)
            loras[method] = trainer.train()
            trained[key] = trainer.backend.base
        models[method] = (trained[key], roles, overrides.get("lora_sigma_min"))

    metrics = {"relation": relation, "prompt": prompt, "seeds": list(seeds), "protocol": protocol.name}
    cells = {name: [] for name in COLUMNS}
    for row, seed in enumerate(seeds):
        exemplar, _ = read_video(exemplars / (f"clip_{row % 8:02d}" + ("" if protocol.lossless else ".mp4")))
        cells["exemplar"].append(_cell(exemplar[:protocol.frames], ("exemplar",), None))
    bar = tqdm(total=len(models) * len(seeds), desc="sampling the demo grid", disable=not progress)
    for name, (base, roles, lora_sigma_min) in models.items():
        base.transformer.eval()
        if roles:
            activate(base.transformer, roles)
        verdicts = []
        for seed in seeds:
            clip = recipe.sample_clip(base, prompt, seed, recipe.STEPS, recipe.CFG, protocol, lora_sigma_min)
            verdict = evaluate_video(clip, *subjects, protocol.exemplar_subjects)
            verdicts.append(verdict)
            seen = verdict["relation"] or "no relation"
            cells[name].append(_cell(clip, (_title(name), seen + (" LEAK" if verdict["leaked"] else "")),
                                     verdict["relation"] == relation))
            bar.update(1)
        metrics[name] = {"lora_sigma_min": lora_sigma_min,
                         "relation_accuracy": sum(v["relation"] == relation for v in verdicts) / len(verdicts),
                         "leakage": sum(bool(v["leaked"]) for v in verdicts) / len(verdicts),
                         "attributes_match": sum(v["attributes_match"] for v in verdicts) / len(verdicts),
                         "verdicts": [{"seed": s, "relation": v["relation"], "leaked": v["leaked"]}
                                      for s, v in zip(seeds, verdicts)]}
    bar.close()
    grid = np.concatenate([np.concatenate([cells[name][row] for name in COLUMNS], axis=2)
                           for row in range(len(seeds))], axis=1)
    video = write_video(out / "demo_grid.gif", grid, fps=4)
    atomic_write_json(out / "metrics.json", metrics)
    if progress:
        print(f"prompt: {prompt!r}, seeds {list(seeds)}")
        for name in models:
            m = metrics[name]
            print(f"{name:24s} relation accuracy {m['relation_accuracy']:.2f}  leakage {m['leakage']:.2f}")
    return {"lora": loras["dreamrelation"], "video": video, "metrics": out / "metrics.json",
            "log": out / "log.jsonl"}
