"""The SynthRel quality benchmark: does a method learn a held-out relation without copying the exemplars' looks?

For each held-out relation: exemplars whose subjects come from only two appearance pairs (the protocol's,
protocol.py), a relation LoRA trained per method, then prompts with unseen subject pairs × seeds, judged by the
evaluator: relation accuracy (mean ± spread over seeds), appearance leakage (an exemplar colour or texture shows
up), subjects present, prompt fidelity (every named attribute rendered). Methods: DreamRelation with the reference
placement and with each other placement of the roles, direct LoRA (all Q/K/V/out, no masks, no RCL, applied
whole — the paper's baseline), the paper's ablations without hybrid masks, without RCL and without subject LoRAs,
and the untrained base; and, as a diagnostic, the DreamRelation triplet applied with its subject LoRAs kept.
"Beyond noise" is a paired bootstrap over the judged clips (same relation, prompt and seed for both methods).
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path


from ..archs import INFERENCE_ROLES, ROLES, SYNTHREL
from ..files import atomic_write_json
from .base import HELD_OUT, build_synthrel_base
from .protocol import DEFAULT, Protocol
from .recipe import CFG, HIGH_NOISE_SIGMA, STEPS, TRAIN_SIGMA_MIN, TRAIN_STEPS, run_config, sample_clip
from .render import caption as make_caption, write_exemplars

PROMPTS = 8               # unseen subject pairs per relation, each sampled with every seed
# The base report's fidelity columns, in table order (a subject is tracked by its colour, so "present" means both
# named colours are seen).
BASE_COLUMNS = {"subjects_present": "subjects present", "shapes_match": "named colours and shapes",
                "textures_match": "named textures", "attributes_match": "named attributes rendered"}
BASE_FIDELITY = tuple(BASE_COLUMNS)
BOOTSTRAP_RESAMPLES = 10000
METHODS = {
    # name: (training overrides, roles applied at inference); methods with the same overrides share one training run
    "dreamrelation": ({}, INFERENCE_ROLES),
    "dreamrelation_all_roles": ({}, ROLES),       # diagnostic: the same triplet, subject LoRAs kept at inference
    **{f"dreamrelation_{p}": ({"placement": p}, INFERENCE_ROLES) for p in SYNTHREL.placements if p != "reference"},
    "direct_lora": ({"hybrid_masks": False, "rcl": False}, ROLES),
    "no_hmt": ({"hybrid_masks": False}, INFERENCE_ROLES),
    "no_rcl": ({"rcl": False}, INFERENCE_ROLES),
    "no_subject_loras": ({"subject_loras": False}, INFERENCE_ROLES),
}
GATED = ("dreamrelation", "direct_lora", "no_hmt")      # the rows also sampled with the LoRA at high noise only
# The same trained LoRAs sampled with the LoRA on the high-noise steps only (recipe.HIGH_NOISE_SIGMA), then the base.
METHODS |= {f"{m}_high_noise": ({**METHODS[m][0], "lora_sigma_min": HIGH_NOISE_SIGMA}, METHODS[m][1])
            for m in GATED}
# ... and LoRAs trained on those noise levels only (σ ∈ [HIGH_NOISE_SIGMA, 1]), sampled the same way: as one trains
# the high-noise expert of Wan 2.2 A14B on its own range (docs/benchmarks.md, "Training where the LoRA is applied").
METHODS |= {f"{m}_high_noise_trained": ({**METHODS[m][0], "train_sigma_min": HIGH_NOISE_SIGMA,
                                         "lora_sigma_min": HIGH_NOISE_SIGMA}, METHODS[m][1])
            for m in GATED}
METHODS["base"] = (None, ())
INFERENCE_ONLY = ("lora_sigma_min",)     # overrides that change sampling, not training: they share a training run


def training_key(overrides: dict) -> str:
    """Methods with the same key share one training run: their overrides differ in INFERENCE_ONLY ones at most."""
    return json.dumps({k: v for k, v in overrides.items() if k not in INFERENCE_ONLY}, sort_keys=True)


# The study of why hybrid mask training keeps the relation out (`bench quality --study`, docs/benchmarks.md): each
# variant changes one thing from DreamRelation's row. A step trains one group, so at the benchmark's steps the
# relation group gets a third of direct LoRA's updates; the mask weight sets how much of each step goes to the
# group's subjects.
STUDY = {
    "dreamrelation": METHODS["dreamrelation"],
    "dreamrelation_3x_steps": ({"steps_factor": 3}, INFERENCE_ROLES),
    "direct_lora": METHODS["direct_lora"],
    "direct_lora_3x_steps": ({"hybrid_masks": False, "rcl": False, "steps_factor": 3}, ROLES),
    "dreamrelation_mask_weight_10": ({"mask_weight": 10.0}, INFERENCE_ROLES),
    "dreamrelation_mask_weight_0": ({"mask_weight": 0.0}, INFERENCE_ROLES),
    "dreamrelation_mask_weight_0_3x_steps": ({"mask_weight": 0.0, "steps_factor": 3}, INFERENCE_ROLES),
    "dreamrelation_relation_steps_only": ({"group_weights": [1.0, 0.0, 0.0]}, INFERENCE_ROLES),
    "dreamrelation_relation_half": ({"group_weights": [2.0, 1.0, 1.0]}, INFERENCE_ROLES),
    "no_hmt": METHODS["no_hmt"],
}
VARIANTS = {**METHODS, **STUDY}
# The paired comparisons every table reports when both methods ran: (a, b, outcome) for a − b. Hybrid mask training
# is the one ablation that moved on every SynthRel run (docs/benchmarks.md).
COMPARISONS = (("dreamrelation", "direct_lora", "relation"), ("dreamrelation", "direct_lora", "relation_without_leak"),
               ("no_hmt", "dreamrelation", "relation_without_leak"), ("no_hmt", "dreamrelation", "leaked"),
               ("direct_lora_high_noise", "direct_lora", "leaked"), ("direct_lora_high_noise", "direct_lora", "relation"),
               ("dreamrelation_high_noise", "direct_lora_high_noise", "relation"),
               ("dreamrelation_high_noise", "direct_lora_high_noise", "relation_without_leak"),
               ("no_hmt_high_noise", "direct_lora_high_noise", "relation_without_leak"),   # both recommendations
               *((f"{m}_high_noise_trained", f"{m}_high_noise", key) for m in ("direct_lora", "no_hmt")
                 for key in ("relation_without_leak", "leaked")))
OUTCOME_NAMES = {"relation": ("", ""), "relation_without_leak": ("_without_leak", ", relation without a leak"),
                 "leaked": ("_leakage", ", leakage")}      # outcome: (suffix of its JSON key, of its table label)


def _comparison_key(a: str, b: str, key: str) -> str:
    return f"{a}_vs_{b}{OUTCOME_NAMES[key][0]}"


def judge(base, relation: str, pairs, seeds, steps: int, cfg: float, protocol: Protocol = DEFAULT,
          lora_sigma_min: float | None = None) -> dict:
    """Evaluator verdicts for every (pair, seed) sample of `base` (with whatever LoRA is active, on σ ≥
    `lora_sigma_min` if given); `clips` keeps each verdict in (pair, seed) order for paired comparisons."""
    from .evaluate import evaluate_video

    per_seed, clips = {s: [] for s in seeds}, []
    for s1, s2 in pairs:
        prompt = make_caption(relation, s1, s2)
        for seed in seeds:
            verdict = evaluate_video(sample_clip(base, prompt, seed, steps, cfg, protocol, lora_sigma_min), s1, s2,
                                     protocol.exemplar_subjects)
            per_seed[seed].append(verdict["relation"] == relation)
            clips.append({"relation": verdict["relation"] == relation, "leaked": bool(verdict["leaked"]),
                          "present": verdict["subjects_present"], "attributes": verdict["attributes_match"]})
    accuracies = [sum(v) / len(v) for v in per_seed.values()]
    return {"relation_accuracy": statistics.mean(accuracies),
            "relation_accuracy_spread": statistics.pstdev(accuracies) if len(accuracies) > 1 else 0.0,
            "per_seed": accuracies, "clips": clips, **{name: statistics.mean(outcomes(clips, key)) for name, key in
                                                       (("leakage", "leaked"), ("subjects_present", "present"),
                                                        ("attributes_match", "attributes"),
                                                        ("relation_without_leak", "relation_without_leak"))}}


def outcomes(clips, key: str) -> list:
    """Each clip's `key` verdict; "relation_without_leak": the relation rendered with no exemplar look, the
    paper's claim in one outcome (a relation carried over to new subjects without the exemplars' looks)."""
    if key == "relation_without_leak":
        return [c["relation"] and not c["leaked"] for c in clips]
    return [c[key] for c in clips]


def paired_bootstrap(a, b, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """Mean of a − b over paired 0/1 outcomes with its 95% percentile bootstrap interval; `beyond_noise` when the
    interval excludes 0."""
    import numpy as np

    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"paired_bootstrap needs two equally long, non-empty outcome lists (got {len(a)}, {len(b)})")
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    means = diff[np.random.default_rng(seed).integers(0, len(diff), (resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"difference": float(diff.mean()), "low": float(low), "high": float(high),
            "beyond_noise": bool(low > 0 or high < 0)}


def compare(results: dict, a: str, b: str, key: str = "relation") -> dict:
    """paired_bootstrap of methods `a` and `b` over every judged clip of every relation."""
    paired = {m: outcomes([c for r in results[m]["per_relation"].values() for c in r["clips"]], key) for m in (a, b)}
    return paired_bootstrap(paired[a], paired[b])


def benchmark(relations=HELD_OUT, methods=tuple(METHODS), exemplars: int = 8, steps: int = TRAIN_STEPS,
              prompts: int = PROMPTS, seeds=(0, 1, 2), sample_steps: int = STEPS, cfg: float = CFG,
              progress: bool = True, protocol: Protocol = DEFAULT, work: Path | None = None) -> dict:
    """Train every method on every held-out relation and judge it; returns the JSON-able result.

    `work`: a folder that keeps each judged (relation, method) as `<relation>/<method>.json`, so that a rerun with
    the same settings and base weights resumes after the last one judged (a run takes hours on a CPU); a file
    written under other settings is refused by name, never silently reused."""
    from ..trainer import RelationTrainer
    from ..triplet import activate

    settings = {"protocol": protocol.name, "base_sha256": _sha256(protocol.weights), "exemplars": exemplars,
                "steps": steps, "prompts": prompts, "seeds": list(seeds), "sample_steps": sample_steps, "cfg": cfg,
                "train_sigma_min": TRAIN_SIGMA_MIN}
    results = {m: {"per_relation": {}} for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) if work is None else Path(work)
        for relation in relations:
            folder = root / relation.replace(" ", "_")
            exemplar_folder = write_exemplars(folder / "exemplars", relation, exemplars, protocol.exemplar_pairs,
                                              protocol.frames, protocol.size, seed=0, look=protocol.look,
                                              named=protocol.exemplar_naming, lossless=protocol.lossless)
            pairs = protocol.test_subjects(prompts)
            trained = {}      # training overrides -> (base with the trained triplet, seconds it took)
            for method in methods:
                done = folder / f"{method}.json"
                overrides, roles = VARIANTS[method]
                judged = {**settings, "overrides": overrides}
                if done.is_file():
                    results[method]["per_relation"][relation] = _cached_verdict(done, judged)
                    continue
                if overrides is None:
                    base, train_seconds = build_synthrel_base(protocol.weights), 0.0
                else:
                    key = training_key(overrides)
                    if key not in trained:
                        start = time.time()
                        config = run_config(folder / method, exemplar_folder, steps, overrides, 0, protocol)
                        trainer = RelationTrainer.from_config(config, base=build_synthrel_base(protocol.weights),
                                                  progress=progress, overwrite=True)   # an unjudged earlier try
                        trainer.train()
                        trained[key] = (trainer.backend.base, time.time() - start)
                    base, train_seconds = trained[key]
                activate(base.transformer, roles)
                base.transformer.eval()
                verdict = judge(base, relation, pairs, seeds, sample_steps, cfg, protocol,
                                (overrides or {}).get("lora_sigma_min"))
                verdict["train_seconds"] = train_seconds
                results[method]["per_relation"][relation] = verdict
                if work is not None:
                    atomic_write_json(done, {"settings": judged, "verdict": verdict})
    for method, result in results.items():
        rel = result["per_relation"].values()
        result["relation_accuracy"] = statistics.mean(v["relation_accuracy"] for v in rel)
        result["relation_accuracy_spread"] = statistics.mean(v["relation_accuracy_spread"] for v in rel)
        result["leakage"] = statistics.mean(v["leakage"] for v in rel)
        # from the clips, not the verdict's own field: verdicts cached in a work folder before it existed lack it
        result["relation_without_leak"] = statistics.mean(statistics.mean(outcomes(v["clips"], "relation_without_leak"))
                                                          for v in rel)
        result["subjects_present"] = statistics.mean(v["subjects_present"] for v in rel)
        result["attributes_match"] = statistics.mean(v["attributes_match"] for v in rel)
        result["train_seconds"] = statistics.mean(v["train_seconds"] for v in rel)
    placements = {}
    for method in methods:
        overrides = VARIANTS[method][0]
        if method == "dreamrelation" or (overrides and set(overrides) == {"placement"}):
            name = overrides.get("placement", "reference")
            placements[name] = {"method": method, **{k: results[method][k] for k in ("relation_accuracy", "leakage")}}
            if method != "dreamrelation" and "dreamrelation" in results:
                placements[name]["vs_reference"] = compare(results, method, "dreamrelation")
                placements[name]["leakage_vs_reference"] = compare(results, method, "dreamrelation", "leaked")
    comparisons = {_comparison_key(a, b, key): compare(results, a, b, key) for a, b, key in COMPARISONS
                   if {a, b} <= set(results)}
    return {"protocol": protocol.name, "base_weights": protocol.weights.name, "base_sha256": settings["base_sha256"],
            "methods": results, "placements": placements, "comparisons": comparisons,
            "relations": list(relations), "exemplars": exemplars, "steps": steps,
            "train_sigma_min": TRAIN_SIGMA_MIN, "prompts": prompts, "seeds": list(seeds),
            "sample_steps": sample_steps, "cfg": cfg,
            "exemplar_subjects": [list(s) for s in protocol.exemplar_subjects],
            "exemplar_colours": protocol.exemplar_colours,
            "test_colours": protocol.test_colours}


def _sha256(path: Path) -> str | None:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if Path(path).is_file() else None


def _cached_verdict(path: Path, settings: dict) -> dict:
    saved = json.loads(path.read_text())
    if saved.get("settings") != settings:
        differ = sorted(k for k in settings.keys() | saved.get("settings", {}).keys()
                        if saved.get("settings", {}).get(k) != settings.get(k))
        raise ValueError(f"{path} was judged with other settings ({', '.join(differ)} differ): use another work "
                         "folder, or delete it to start over")
    return saved["verdict"]


def markdown(result: dict, study: bool = False) -> str:
    lines = [f"## SynthRel quality benchmark (protocol {result.get('protocol', 'v1')})"
             + (": the hybrid-mask study" if study else ""),
             "",
             f"Held-out relations {', '.join(result['relations'])}; {result['exemplars']} exemplars each (subjects "
             f"from two appearance pairs, colours {', '.join(result['exemplar_colours'])}); {result['steps']} "
             f"training steps on σ ∈ [{result['train_sigma_min']}, 1]; {result['prompts']} prompts with unseen "
             f"subjects (colours {', '.join(result['test_colours'])}) × seeds {result['seeds']}; "
             f"{result['sample_steps']} Euler steps, CFG {result['cfg']}"
             + (f"; base `{result['base_weights']}`." if "base_weights" in result else ".")
             + (f" Rows `…_high_noise_trained` train on σ ∈ [{HIGH_NOISE_SIGMA}, 1] only."
                if any(name.endswith("_high_noise_trained") for name in result["methods"]) else ""),
             "",
             "| method | relation accuracy (mean ± spread over seeds) | leakage | relation without a leak | "
             "subjects present | named attributes rendered | train s |",
             "|---|---|---|---|---|---|---|"]
    for name, m in result["methods"].items():
        lines.append(f"| {name} | {m['relation_accuracy']:.3f} ± {m['relation_accuracy_spread']:.3f} | "
                     f"{m['leakage']:.3f} | {m['relation_without_leak']:.3f} | {m['subjects_present']:.3f} | "
                     f"{m.get('attributes_match', 0.0):.3f} | {m['train_seconds']:.0f} |")
    labels = {_comparison_key(a, b, key): f"{a} − {b}{OUTCOME_NAMES[key][1]}" for a, b, key in COMPARISONS}
    pairs = [(f"{p} − reference", v["vs_reference"]) for p, v in result.get("placements", {}).items()
             if "vs_reference" in v] + [(labels[k], c) for k, c in result.get("comparisons", {}).items()]
    if pairs:
        lines += ["", "Paired bootstrap of the difference over the same judged clips, in relation accuracy unless "
                      "named (95% interval; beyond noise when it excludes 0); \"relation without a leak\": the "
                      "relation rendered with no exemplar colour or texture, the paper's claim in one outcome:", "",
                  "| comparison | difference | 95% interval | beyond noise |", "|---|---|---|---|"]
        lines += [f"| {name} | {c['difference']:+.3f} | [{c['low']:+.3f}, {c['high']:+.3f}] | "
                  f"{'yes' if c['beyond_noise'] else 'no'} |" for name, c in pairs]
    return "\n".join(lines)


def base_prompts(prompts_per_relation: int = 6, seeds=(0, 1), protocol: Protocol = DEFAULT):
    """The base report's draw: (relation, subject1, subject2, seed) for `prompts_per_relation` random subject pairs
    (named whole) per relation, each with every seed, relation by relation."""
    import random

    from .render import RELATIONS, random_pair

    rng = random.Random(1234)
    for relation in RELATIONS:
        for _ in range(prompts_per_relation):
            s1, s2 = random_pair(rng, protocol.textured)
            for seed in seeds:
                yield relation, s1, s2, seed


def base_report(prompts_per_relation: int = 6, seeds=(0, 1), sample_steps: int = STEPS, cfg: float = CFG,
                progress: bool = True, protocol: Protocol = DEFAULT) -> dict:
    """Per-relation accuracy of the pretrained base on `base_prompts`: known relations should be rendered well,
    held-out ones should not be, and the named attributes should show (prompt fidelity). Fidelity is also split: both
    subjects' named colours and shapes (`shapes_match`, colours being how subjects are tracked), and both named
    textures (`textures_match`)."""
    import itertools

    from tqdm.auto import tqdm

    from .evaluate import evaluate_video
    from .render import RELATIONS

    base = build_synthrel_base(protocol.weights)
    report = {}
    draws = itertools.groupby(base_prompts(prompts_per_relation, seeds, protocol), key=lambda draw: draw[0])
    for relation, draw in tqdm(draws, total=len(RELATIONS), desc="base per relation", disable=not progress):
        verdicts = [evaluate_video(sample_clip(base, make_caption(relation, s1, s2), seed, sample_steps, cfg,
                                               protocol), s1, s2) for _, s1, s2, seed in draw]
        report[relation] = {"relation_accuracy": sum(v["relation"] == relation for v in verdicts) / len(verdicts),
                            **{key: sum(v[key] for v in verdicts) / len(verdicts) for key in BASE_FIDELITY
                               if protocol.textured or key != "textures_match"},     # v1: no textures to read
                            "held_out": relation in HELD_OUT}
    return report


def base_markdown(report: dict, protocol: str = DEFAULT.name) -> str:
    known = [v for v in report.values() if not v["held_out"]]
    columns = [key for key in BASE_FIDELITY if key in known[0]]     # older reports and v1 lack some

    def mean(key):
        return statistics.mean(v[key] for v in known)

    fidelity = ""
    if "attributes_match" in columns:
        split = ", ".join(f"{BASE_COLUMNS[key]} in {mean(key):.3f}" for key in ("shapes_match", "textures_match")
                          if key in columns)
        fidelity = (f", named attributes rendered in **{mean('attributes_match'):.3f}** of the clips"
                    + (f" ({split})" if split else ""))
    lines = [f"## SynthRel base (protocol {protocol}): what it renders before any relation LoRA",
             "",
             f"Known relations: mean relation accuracy **{mean('relation_accuracy'):.3f}**{fidelity}; held-out "
             "relations are not in its training data.",
             "",
             "| relation | held out | relation accuracy | " + " | ".join(BASE_COLUMNS[k] for k in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for name, v in report.items():
        lines.append(f"| {name} | {'yes' if v['held_out'] else ''} | {v['relation_accuracy']:.3f} | "
                     + " | ".join(f"{v[key]:.3f}" for key in columns) + " |")
    return "\n".join(lines)
