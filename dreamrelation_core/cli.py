"""Command line: train / sample / inspect / demo (`python -m dreamrelation_core ...`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _train(args) -> int:
    from . import distributed
    from .config import load_config
    from .trainer import RelationTrainer

    distributed.init_from_env()             # under torchrun: data parallel over exemplars
    config = load_config(args.config)
    trainer = RelationTrainer.from_config(config, output_dir=args.out, overwrite=args.overwrite)
    if args.resume:
        print(f"resumed at step {trainer.resume(args.resume)}")
    lora = trainer.train(max_steps=args.max_steps)
    print(f"relation LoRA: {lora}")
    return 0


def _sample(args) -> int:
    from .bases import is_expert_pair, load_base
    from .formats import load_lora_with_subjects
    from .sampling import generate, to_uint8_frames
    from .triplet import apply_lora, merge_inference_set, run_inference_set
    from .videoio import write_video

    lora = load_lora_with_subjects(args.lora, subjects=bool(args.subject_strength)) if args.lora else None
    # A Wan 2.2 A14B pair samples with both experts; the LoRA goes on the one it was trained on.
    pair = is_expert_pair(args.base)
    expert = (lora.info.get("expert") if lora else None) if pair else None
    base = load_base(args.base, args.components, expert=expert, companion=pair)
    if lora:
        if lora.arch != base.arch.name:
            raise ValueError(f"{args.lora} is a {lora.arch} LoRA but the base is {base.arch.name}")
        strengths = {"relation": args.relation_strength, "ffn": args.ffn_strength,
                     "subject1": args.subject_strength, "subject2": args.subject_strength}
        apply_lora(base.transformer, lora, [r for r, s in strengths.items() if s and r in lora.weights])
        if args.lora_sigma_min is None:
            merge_inference_set(base.transformer, strengths, undoable=False)
        else:                                   # switched off at low noise, so left unmerged
            run_inference_set(base.transformer, strengths)
    video = generate(base, args.prompt, args.frames, args.height, args.width, args.steps, args.cfg, args.seed,
                     args.negative_prompt, lora_sigma_min=args.lora_sigma_min)
    path = write_video(args.out, to_uint8_frames(video), base.arch.fps)
    print(f"wrote {path}")
    return 0


def _inspect(args) -> int:
    from .archs import get_architecture
    from .formats import METADATA_KEY, comfyui_unmapped_keys, load_lora, read_safetensors

    path = Path(args.file)
    lora = load_lora(path)
    meta = {}
    if path.suffix == ".safetensors":
        tensors, raw = read_safetensors(path)
        meta = json.loads(raw.get(METADATA_KEY, "{}"))
    layout = meta.get("layout", "official DreamRelation checkpoint")
    print(f"file:         {path}")
    print(f"layout:       {layout}" + (f" (format {meta['format']} v{meta['version']})" if meta else ""))
    print(f"architecture: {lora.arch}")
    for role, modules in lora.weights.items():
        print(f"role {role:9s} rank {lora.rank(role):3d}  alpha {lora.alphas[role]:g}  modules {len(modules)}")
    print("metadata:     " + json.dumps(lora.info))
    if layout == "comfyui":
        unmapped = comfyui_unmapped_keys(tensors, get_architecture(lora.arch))
        verdict = (f"yes, all {len(tensors)} keys map to the native {lora.arch} model" if not unmapped
                   else f"NO: {len(unmapped)} keys would not load, e.g. {unmapped[:3]}")
    else:
        verdict = "no (not ComfyUI-native keys): convert with `convert IN OUT --to comfyui`"
    print(f"stock ComfyUI LoraLoaderModelOnly: {verdict}")
    return 0


def _convert(args) -> int:
    from .formats import load_lora, save_lora, subjects_path

    lora = load_lora(args.input)
    if args.arch and args.arch != lora.arch:
        raise ValueError(f"{args.input} holds a {lora.arch} LoRA, not {args.arch}")
    out = save_lora(args.output, lora, args.to)
    print(f"wrote {out} ({args.to}: {', '.join(r for r in ('relation', 'ffn') if r in lora.weights)})")
    if args.subjects and {"subject1", "subject2"} & set(lora.weights):
        print(f"wrote {save_lora(subjects_path(args.output), lora, 'subjects')} (subject LoRAs)")
    return 0


def _bench(args) -> int:
    from .bench import run

    run(args.kind, clips=args.clips, json_path=args.json, quick=args.quick, protocol=args.protocol, work=args.work,
        out=args.out, suite=args.suite, study=args.study, comfyui=args.comfyui, base_weights=args.base_weights,
        relations=args.relation or None, prompts=args.prompts, methods=args.method or None,
        seeds=args.seeds)
    return 0


def _pretrain_synthrel(args) -> int:
    from .synthrel.base import pretrain

    path = pretrain(Path(args.out), steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
                    max_steps=args.max_steps, protocol=args.protocol, init=args.init,
                    sigma_shift=args.sigma_shift, ema_decay=args.ema_decay, prior=tuple(args.prior_relation))
    stopped = path.name != "synthrel_base.safetensors"
    print(f"{'weights so far (rerun without --max-steps to go on)' if stopped else 'weights'}: {path}")
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    result = run_demo(Path(args.out), steps=args.steps)
    print(json.dumps({k: str(v) for k, v in result.items()}, indent=2))
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dreamrelation_core",
                                     description="DreamRelation: relation LoRA triplets for video DiTs")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a relation LoRA triplet from a YAML config")
    p.add_argument("config", help="YAML run config")
    p.add_argument("--out", help="output folder (default: output_dir of the config)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps in total (the LR schedule is unchanged)")
    p.add_argument("--resume", help="checkpoint folder, or a run folder to continue from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="train anew into an output folder that holds checkpoints of an earlier run (deletes them)")
    p.set_defaults(func=_train)

    p = sub.add_parser("sample", help="generate a video with a relation LoRA (relation + ffn)")
    p.add_argument("--base", required=True, help="tiny-wan | tiny-mochi | diffusers folder | single-file checkpoint")
    p.add_argument("--components", help="diffusers folder with vae/text_encoder/tokenizer for a single-file base")
    p.add_argument("--lora", help="relation LoRA .safetensors (omit for the plain base)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt")
    p.add_argument("--frames", type=_positive_int)
    p.add_argument("--height", type=_positive_int)
    p.add_argument("--width", type=_positive_int)
    p.add_argument("--steps", type=_positive_int)
    p.add_argument("--cfg", type=_finite_float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--relation-strength", type=float, default=1.0)
    p.add_argument("--ffn-strength", type=float, default=1.0)
    p.add_argument("--subject-strength", type=float, default=0.0,
                   help="experiments only: also apply the subject LoRAs (from <lora>.subjects.safetensors)")
    p.add_argument("--lora-sigma-min", type=_finite_float,
                   help="apply the LoRA only on steps with σ ≥ this (0–1), the base alone below: fewer of the "
                        "exemplars' looks (docs/method.md, \"The relation LoRA at high noise only\")")
    p.add_argument("--out", required=True, help="output video (.mp4 or .gif)")
    p.set_defaults(func=_sample)

    p = sub.add_parser("inspect", help="describe a relation LoRA file and whether stock ComfyUI maps every key")
    p.add_argument("file")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("convert", help="convert between LoRA layouts / import an official DreamRelation checkpoint")
    p.add_argument("input", help="our .safetensors (any layout) or an official model_N.lora.pt")
    p.add_argument("output")
    p.add_argument("--arch", choices=["mochi", "wan", "wan22-5b"], help="expected architecture (checked)")
    p.add_argument("--to", choices=["comfyui", "diffusers"], default="comfyui")
    p.add_argument("--subjects", action="store_true", help="also write <output>.subjects.safetensors")
    p.set_defaults(func=_convert)

    p = sub.add_parser("bench", help="benchmarks; figures go to docs/benchmarks.md")
    p.add_argument("kind", choices=["evaluator", "base", "quality", "speed"],
                   help="evaluator: the SynthRel evaluator on ground truth; base: the SynthRel base per relation; "
                        "quality: DreamRelation vs. direct LoRA vs. ablations vs. base on held-out relations; "
                        "speed: what the triplet costs over a plain LoRA (training and merged sampling)")
    p.add_argument("--clips", type=int, default=50, help="evaluator: clips per relation")
    p.add_argument("--suite", choices=("cpu", "gpu"), default="cpu",
                   help="speed: cpu (a smoke run, under a minute) or gpu (real sizes, random weights, on CUDA)")
    p.add_argument("--quick", action="store_true", help="a fast mini run (not written to docs/benchmarks.md)")
    p.add_argument("--json", help="also write the figures as JSON here")
    p.add_argument("--out", help="markdown file for the figures (default: docs/benchmarks.md in a checkout, else "
                                 "./benchmarks.md)")
    p.add_argument("--protocol", choices=("v1", "v2"), default=None,
                   help="SynthRel protocol of base and quality (default: the shipped base's)")
    p.add_argument("--work", help="quality: keep each judged relation × method here; rerun to resume")
    p.add_argument("--comfyui", help="speed: also time the ComfyUI Train node's path against this ComfyUI checkout "
                                     "(comfy_over_cli; run in ComfyUI's Python environment)")
    p.add_argument("--study", action="store_true",
                   help="quality: run the hybrid-mask study's variants (steps, mask weight) instead of the methods")
    p.add_argument("--base-weights", help="base, quality: these SynthRel base weights instead of the protocol's "
                                          "shipped ones (the table then goes only to --out)")
    p.add_argument("--relation", action="append", default=[],
                   help="quality: judge this held-out relation only (repeatable; default: all)")
    p.add_argument("--prompts", type=_positive_int, help="quality: test prompts per relation (default 8)")
    p.add_argument("--seeds", type=_positive_int, help="quality: sampling seeds per prompt (default 3)")
    p.add_argument("--method", action="append", default=[],
                   help="quality: run this row only, e.g. no_hmt (repeatable; default: every method)")
    p.set_defaults(func=_bench)

    p = sub.add_parser("pretrain-synthrel", help="pretrain the SynthRel base (all relations but the held-out ones)")
    p.add_argument("--out", default="runs/synthrel_base")
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many steps in all (the cosine still spans --steps); rerun to resume")
    p.add_argument("--protocol", choices=("v1", "v2"), default="v1",
                   help="v1: plain subjects, 32×32; v2: textured subjects, partly generic captions, 40×40")
    p.add_argument("--init", help="start from these weights (e.g. the shipped v1 base) instead of a random init")
    p.add_argument("--sigma-shift", type=float, default=2.0,
                   help="noise-level shift s of σ = s·u / (1 + (s − 1)·u): above 1, more steps at high noise")
    p.add_argument("--ema-decay", type=float, default=0.999, help="decay of the weights' moving average")
    p.add_argument("--prior-relation", action="append", default=[],
                   help="also show this held-out relation (as often as a known one), for a base that renders it "
                        "weakly; stop early with --max-steps to keep it weak (repeatable)")
    p.set_defaults(func=_pretrain_synthrel)

    p = sub.add_parser("demo", help="no-download demo: learn a held-out SynthRel relation and render it on new "
                                    "subjects (exemplars | base | DreamRelation | direct LoRA | without hybrid masks)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--steps", type=int, default=None, help="LoRA training steps (default: the quality benchmark's)")
    p.set_defaults(func=_demo)
    return parser


CLI_EXTRA = ("peft", "accelerate", "transformers")    # requirements-cli.txt, the "cli" extra


def main(argv=None) -> int:
    """Errors a user can fix print one line and exit 2 (`--debug` shows the traceback); Ctrl-C exits 130 and
    SIGTERM 143, saying whether a checkpoint was saved."""
    import signal

    from .trainer import TrainingInterrupted

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TrainingInterrupted as stop:
        print(f"interrupted after step {stop.step}: checkpoint saved in {stop.checkpoint}; continue with "
              f"--resume {stop.checkpoint.parent.parent}", file=sys.stderr)
        return 143 if stop.signum == signal.SIGTERM else 130
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("interrupted before a training step finished: no new checkpoint" if args.command == "train"
              else "interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        if args.debug or exc.name not in CLI_EXTRA:
            raise
        print(f"error: the headless trainer needs {exc.name}, which the ComfyUI pack's requirements leave out: "
              "pip install -r requirements-cli.txt (or pip install \".[cli]\")", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        if args.debug:
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    """A user-facing message: the error's own, with a full disk or a refused write named as such."""
    import errno

    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"no space left on the device writing {exc.filename or 'a file'}"
    if isinstance(exc, PermissionError):
        return f"permission denied: cannot write {exc.filename}"
    return " ".join(str(exc).split()) or type(exc).__name__
