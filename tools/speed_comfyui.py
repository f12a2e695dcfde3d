"""`comfy_over_cli`: a DreamRelation training step on ComfyUI's native MODEL over the same step on the CLI's diffusers
model. Run by `python -m dreamrelation_core bench speed --comfyui DIR` in a process of its own, since the core never
imports ComfyUI; prints one line of JSON.

Both paths train the shipped SynthRel base (the same weights, as the core's diffusers `WanTransformer3DModel` and as
ComfyUI's `WanModel` from Load SynthRel Base) on the same two exemplars with the same settings (the SynthRel recipe)
and seeds, so they draw the same groups, exemplars and noise levels. The ComfyUI step runs as the Train node runs it:
the triplet in ComfyUI's weight wrappers (or bypass hooks), the model called through ComfyUI's guider. The two steps
are interleaved (A, B, A, B, ...) after a warm-up, as every ratio of `bench speed`.

    python tools/speed_comfyui.py --comfyui ~/ComfyUI [--reps 10] [--bypass]
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PACK = "dreamrelation_pack"


def import_pack(comfyui: Path):
    """ComfyUI's library on the path (CPU unless there is CUDA) and this repository imported as ComfyUI imports a
    custom node package (relative imports)."""
    if not (comfyui / "comfy").is_dir():
        raise SystemExit(f"--comfyui {comfyui}: not a ComfyUI checkout (no comfy/ package in it)")
    sys.path.insert(0, str(comfyui))
    import comfy.cli_args

    comfy.cli_args.args.cpu = not torch.cuda.is_available()    # before comfy.model_management, which expects CUDA
    # PyTorch's attention, as ComfyUI chooses on NVIDIA GPUs with torch 2 (on the CPU it would take its
    # sub-quadratic attention, whose backward pass costs 1.5× SDPA's here): the ratio is then the pack's own cost.
    comfy.cli_args.args.use_pytorch_cross_attention = True
    spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = module
    spec.loader.exec_module(module)
    return importlib.import_module(f"{PACK}.nodes")


# (frames, height, width): the protocol's clip (225 tokens, where per-call overheads weigh most) and a larger one
# (1700 tokens), nearer to real training, where the model's own arithmetic dominates.
CLIPS = ((9, 40, 40), (17, 80, 80))


def measure(comfyui: Path, reps: int = 10, warmup: int = 2, bypass: bool = False, clips=CLIPS) -> dict:
    nodes = import_pack(comfyui)
    import folder_paths

    core = f"{PACK}.dreamrelation_core"
    TrainingItem = importlib.import_module(f"{core}.data").TrainingItem
    latent_masks = importlib.import_module(f"{core}.masks").latent_masks
    RelationTrainer = importlib.import_module(f"{core}.trainer").RelationTrainer
    run_config = importlib.import_module(f"{core}.synthrel.recipe").run_config
    protocol = importlib.import_module(f"{core}.synthrel.protocol").DEFAULT
    exemplar_clips = importlib.import_module(f"{core}.synthrel.render").exemplar_clips
    build_synthrel_base = importlib.import_module(f"{core}.synthrel.base").build_synthrel_base
    timed = importlib.import_module(f"{core}.speed").timed
    training = importlib.import_module(f"{PACK}.nodes.training")
    exemplar = importlib.import_module(f"{PACK}.nodes.exemplars").exemplar
    uint8_to_image = importlib.import_module(f"{PACK}.nodes.common").uint8_to_image
    ComfyBackend = importlib.import_module(f"{PACK}.nodes.comfy_backend").ComfyBackend

    model, clip, vae = nodes.synthrel.LoadSynthRelBase.execute().result
    cases = {}
    for frames, height, width in clips:
        exemplars = [exemplar(uint8_to_image(video), torch.from_numpy(masks).float(), text, name)
                     for name, video, masks, text in exemplar_clips("pushes", 2, protocol.exemplar_pairs, frames,
                                                                    (height, width), 0, protocol.look,
                                                                    protocol.exemplar_naming)]
        with tempfile.TemporaryDirectory(prefix="dreamrelation-speed-comfyui-") as tmp, \
                torch.inference_mode(False), torch.enable_grad():
            tmp = Path(tmp)
            folder_paths.set_output_directory(str(tmp / "output"))
            config = run_config(tmp / "cli", tmp, 10 ** 6, {}, 0, protocol)
            backend = ComfyBackend(model, config.lora, 0, bypass=bypass or None)
            config.device = str(backend.device)                # both paths on ComfyUI's device
            encoded_clips, positive = training._encode_exemplars(exemplars, clip, vae, frames, height, width)
            negative = training._unconditional(backend.arch, clip, positive)
            backend.conditioning_of = {ex["name"]: i for i, (ex, _, _) in enumerate(encoded_clips)}
            cli_base, result = build_synthrel_base(protocol.weights), {}

            def items(processed, text_of):
                return [TrainingItem(ex["name"], ex["caption"], processed[i].float().cpu(),
                                     torch.zeros_like(processed[i].float().cpu()), *text_of(ex["caption"]),
                                     latent_masks(masks, tuple(processed.shape[-3:]), backend.arch.temporal_ratio))
                        for i, (ex, masks, _) in enumerate(encoded_clips)]

            def encoded(caption):
                text, mask = cli_base.text_encoder.encode([caption])
                return text[0], mask[0]

            def inside(processed):
                trainers = {"cli_step": RelationTrainer.from_config(config, tmp / "cli", base=cli_base,
                                                                    items=items(processed, encoded), progress=False,
                                                                    overwrite=True),
                            "comfy_step": RelationTrainer(config, backend, items(processed, lambda _: (None, None)),
                                                          tmp / "comfy", progress=False, overwrite=True)}
                losses = {name: [] for name in trainers}

                def step(name):
                    return lambda: losses[name].append(trainers[name].train_step()["loss"])

                result.update({name: seconds for name, (seconds, _) in
                               timed({name: step(name) for name in trainers}, reps, warmup, backend.device,
                                     interleave=True).items()})
                # The same training on both paths: their first losses agree (the models differ by rounding).
                result["first_losses"] = [losses["cli_step"][0], losses["comfy_step"][0]]

            backend.run(inside, torch.cat([c[2] for c in encoded_clips]).float(), positive, negative, 0)
        tokens = frames * (height // 8) * (width // 8)                  # the base's tokens are 8×8 pixels
        cases[f"synthrel base, {frames}×{height}×{width} clip ({tokens} tokens)"] = {
            **result, "comfy_over_cli": result["comfy_step"] / result["cli_step"]}
    device = (f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
              if backend.device.type == "cpu" else torch.cuda.get_device_name(backend.device))
    return {"device": f"{device}, torch {torch.__version__})", "attention": "pytorch",
            "mode": "bypass hooks" if backend.bypass else "weight wrappers", "reps": reps, "cases": cases,
            "comfy_over_cli": list(cases.values())[-1]["comfy_over_cli"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="a ComfyUI checkout (its comfy/ package)")
    parser.add_argument("--reps", type=int, default=10, help="timed steps of each path, after the warm-up")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--bypass", action="store_true", help="the triplet as forward hooks (dynamic VRAM's mode)")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.comfyui.expanduser(), args.reps, args.warmup, args.bypass)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
