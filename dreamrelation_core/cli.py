"""Command line: train / sample / inspect / demo (`python -m dreamrelation_core ...`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _train(args) -> int:
    from .config import load_config
    from .trainer import RelationTrainer

    config = load_config(args.config)
    trainer = RelationTrainer(config, output_dir=args.out)
    if args.resume:
        print(f"resumed at step {trainer.resume(args.resume)}")
    lora = trainer.train(max_steps=args.max_steps)
    print(f"relation LoRA: {lora}")
    return 0


def _sample(args) -> int:
    from .bases import load_base
    from .formats import load_relation_lora
    from .sampling import generate, to_uint8_frames
    from .triplet import merge_inference_set
    from .videoio import write_video

    base = load_base(args.base, args.components)
    if args.lora:
        load_relation_lora(base.transformer, args.lora)
        merge_inference_set(base.transformer, {"relation": args.relation_strength, "ffn": args.ffn_strength})
    video = generate(base, args.prompt, args.frames, args.height, args.width, args.steps, args.cfg, args.seed,
                     args.negative_prompt)
    path = write_video(args.out, to_uint8_frames(video), base.arch.fps)
    print(f"wrote {path}")
    return 0


def _inspect(args) -> int:
    from .formats import read_relation_lora

    weights, meta = read_relation_lora(args.file)
    print(f"file:         {args.file}")
    print(f"format:       {meta['format']} v{meta['version']}")
    print(f"architecture: {meta['arch']}")
    for role, info in meta["roles"].items():
        print(f"role {role:9s} rank {info['rank']:3d}  alpha {info['alpha']:g}  modules {len(info['modules'])}  "
              f"tensors {2 * len(weights[role])}")
    extra = {k: v for k, v in meta.items() if k not in ("format", "version", "arch", "roles")}
    print("metadata:     " + json.dumps(extra))
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    result = run_demo(Path(args.out), steps=args.steps)
    print(json.dumps({k: str(v) for k, v in result.items()}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dreamrelation_core",
                                     description="DreamRelation: relation LoRA triplets for video DiTs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a relation LoRA triplet from a YAML config")
    p.add_argument("config", help="YAML run config")
    p.add_argument("--out", help="output folder (default: output_dir of the config)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps in total (the LR schedule is unchanged)")
    p.add_argument("--resume", help="checkpoint folder, or a run folder to continue from its latest checkpoint")
    p.set_defaults(func=_train)

    p = sub.add_parser("sample", help="generate a video with a relation LoRA (relation + ffn)")
    p.add_argument("--base", required=True, help="tiny-wan | tiny-mochi | diffusers folder | single-file checkpoint")
    p.add_argument("--components", help="diffusers folder with vae/text_encoder/tokenizer for a single-file base")
    p.add_argument("--lora", help="relation LoRA .safetensors (omit for the plain base)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt")
    p.add_argument("--frames", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--cfg", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--relation-strength", type=float, default=1.0)
    p.add_argument("--ffn-strength", type=float, default=1.0)
    p.add_argument("--out", required=True, help="output video (.mp4 or .gif)")
    p.set_defaults(func=_sample)

    p = sub.add_parser("inspect", help="describe a relation LoRA file")
    p.add_argument("file")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("demo", help="no-download demo: toy exemplars -> train on tiny-wan -> sample")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--steps", type=int, default=30)
    p.set_defaults(func=_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (a checkpoint was saved; continue with --resume)", file=sys.stderr)
        return 130
