"""Speed benchmark (`python -m dreamrelation_core bench speed`): what the triplet costs over a plain LoRA.

Each ratio is measured side by side in one process, the two steps interleaved (A, B, A, B, ...) after a warm-up,
so that the machine's load and clock changes hit both alike; a ratio is the quotient of the two medians.
- `triplet_over_plain`: a DreamRelation training step (`RelationTrainer.train_step`: the drawn group's adapters,
  hybrid-mask loss, RCL) over a plain LoRA step (one peft adapter on the same modules at the same rank, MSE on the
  velocity, AdamW) on the same transformer and inputs.
- `merged_sampling_over_base`: one sampling step (a CFG pair of forward passes) with the inference set merged over
  the same step on the base: after the merge no adapter is left (triplet.merge_inference_set), so ≈ 1.
The default case is the SynthRel transformer on its own clip (a CPU smoke run, under a minute).
"""
from __future__ import annotations

import copy
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import torch

from .archs import ARCHITECTURES, INFERENCE_ROLES


@dataclass(frozen=True)
class SpeedCase:
    name: str
    arch: str
    transformer: dict                   # diffusers config of the transformer (random weights)
    latent: tuple                       # (C, f, h, w) of one clip
    text_length: int
    train: dict = field(default_factory=dict)   # TrainConfig overrides (memory options)
    rank: int = 16


def _synthrel_case() -> SpeedCase:
    from .archs import SYNTHREL
    from .synthrel.protocol import DEFAULT

    frames, (height, width) = DEFAULT.frames, DEFAULT.size
    return SpeedCase("synthrel transformer, 9×40×40 clip", "synthrel", dict(SYNTHREL.tiny_transformer),
                     (SYNTHREL.latent_channels, frames, height // 2, width // 2), SYNTHREL.text_max_length)


def _items(case: SpeedCase, text_dim: int, count: int = 2, seed: int = 0):
    from .data import TrainingItem

    g = torch.Generator().manual_seed(seed)
    c, f, h, w = case.latent
    items = []
    for k in range(count):
        masks = torch.zeros(f, 2, h, w)
        masks[:, 0, : h // 2, : w // 3] = 1
        masks[:, 1, h // 2:, w // 2:] = 1
        items.append(TrainingItem(f"clip_{k:02d}", "a shape pushes a shape", torch.randn(c, f, h, w, generator=g),
                                  torch.full((c, f, h, w), 0.1), torch.randn(case.text_length, text_dim, generator=g),
                                  torch.ones(case.text_length, dtype=torch.bool), masks))
    return items


def _interleaved(steps: dict, reps: int, warmup: int = 2) -> dict:
    """name -> median seconds of `steps[name]()`, the steps run in turn `reps` times after `warmup` rounds."""
    times = {name: [] for name in steps}
    for round_ in range(warmup + reps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def measure(case: SpeedCase, reps: int = 10, device: str = "cpu", progress: bool = False) -> dict:
    """Seconds per step of a DreamRelation step and a plain LoRA step, and of a merged and a base sampling step,
    on `case` (random weights); their ratios."""
    import diffusers
    from peft import LoraConfig

    from .components import Base, HashTextEncoder
    from .config import DataConfig, RCLConfig, RunConfig, TrainConfig
    from .flow import noisy_latents, velocity_target
    from .trainer import PeftBackend, RelationTrainer
    from .triplet import TripletConfig, merge_inference_set, resolve_targets

    arch = ARCHITECTURES[case.arch]
    torch.manual_seed(0)
    transformer = getattr(diffusers, arch.transformer_class)(**case.transformer).to(device).eval()
    transformer.requires_grad_(False)
    text_dim = case.transformer.get("text_dim", case.transformer.get("text_embed_dim"))
    text = HashTextEncoder(dim=text_dim, max_length=case.text_length)
    base = Base(arch=arch, transformer=copy.deepcopy(transformer), text_encoder=text, codec=None, name=case.name)
    items = _items(case, text_dim)
    dev = torch.device(device)
    results = {}
    with tempfile.TemporaryDirectory(prefix="dreamrelation-speed-") as out:
        config = RunConfig(base=case.name, name="speed", output_dir=out, device=device, data=DataConfig(videos=out),
                           lora=TripletConfig(rank=case.rank, alpha=case.rank),
                           train=TrainConfig(steps=10 ** 6, **case.train), rcl=RCLConfig())
        trainer = RelationTrainer(config, PeftBackend(base, config, dev), items, out, progress=progress,
                                  overwrite=True)

        plain = copy.deepcopy(transformer).train()
        targets = sorted({m for ms in resolve_targets(plain, arch, config.lora).values() for m in ms})
        plain.add_adapter(LoraConfig(r=case.rank, lora_alpha=case.rank, target_modules=targets))
        if config.train.gradient_checkpointing and getattr(plain, "_supports_gradient_checkpointing", False):
            plain.enable_gradient_checkpointing()
        params = [p for p in plain.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        g = torch.Generator().manual_seed(1)

        def plain_step():
            item = items[0]
            z0 = item.latent_mean[None].to(dev)
            noise = torch.randn(z0.shape, generator=g).to(dev)
            sigma = torch.rand(1, generator=g).to(dev)
            pred = arch.velocity(plain, noisy_latents(z0, noise, sigma), sigma, item.text[None].to(dev),
                                 item.text_mask[None].to(dev))
            (pred - velocity_target(z0, noise)).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        times = _interleaved({"dreamrelation_step": trainer.train_step, "plain_lora_step": plain_step}, reps)
        results.update(times)

    merged = base.transformer.eval()
    merge_inference_set(merged, {r: 1.0 for r in INFERENCE_ROLES}, undoable=False)
    z = torch.randn(2, *case.latent, generator=torch.Generator().manual_seed(2)).to(dev)
    sigma = torch.full((2,), 0.5, device=dev)
    cond = torch.stack([items[0].text, torch.zeros_like(items[0].text)]).to(dev)
    mask = torch.ones(2, case.text_length, dtype=torch.bool, device=dev)

    def sampling(model):
        def step():
            with torch.no_grad():
                arch.velocity(model, z, sigma, cond, mask)
        return step

    times = _interleaved({"merged_sampling_step": sampling(merged), "base_sampling_step": sampling(transformer)}, reps)
    results.update(times)
    results["triplet_over_plain"] = results["dreamrelation_step"] / results["plain_lora_step"]
    results["merged_sampling_over_base"] = results["merged_sampling_step"] / results["base_sampling_step"]
    return results


def benchmark(reps: int = 10, cases=None, progress: bool = True) -> dict:
    """The default CPU run (`cases` None: the SynthRel case). JSON-able: device, per case s/step and ratios, and the
    headline ratios of the first case."""
    cases = cases or [_synthrel_case()]
    device = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch " \
             f"{torch.__version__})"
    per_case = {case.name: measure(case, reps, progress=False) for case in cases}
    first = per_case[cases[0].name]
    return {"device": device, "reps": reps, "cases": per_case,
            "triplet_over_plain": first["triplet_over_plain"],
            "merged_sampling_over_base": first["merged_sampling_over_base"],
            # The ComfyUI path needs a ComfyUI install, which the core never imports: tests/comfyui measure it.
            "comfy_over_cli": None}


def markdown(result: dict) -> str:
    lines = ["## Speed: what the triplet costs", "",
             f"Device: {result['device']}; medians of {result['reps']} interleaved steps after a warm-up, random "
             "weights. Ratios are measured side by side in one process.", "",
             "| case | DreamRelation step (s) | plain LoRA step (s) | triplet / plain | merged sampling step (s) | "
             "base sampling step (s) | merged / base |", "|---|---|---|---|---|---|---|"]
    for name, r in result["cases"].items():
        lines.append(f"| {name} | {r['dreamrelation_step']:.4f} | {r['plain_lora_step']:.4f} | "
                     f"{r['triplet_over_plain']:.2f} | {r['merged_sampling_step']:.4f} | "
                     f"{r['base_sampling_step']:.4f} | {r['merged_sampling_over_base']:.2f} |")
    lines += ["", "A DreamRelation step runs only the drawn group's adapters (all four for the relation group, two "
              "for a subject group) and adds the masked loss and RCL; the plain LoRA carries one adapter on the "
              "same modules at the same rank. After the merge no adapter is left, so sampling costs what the base "
              "costs. `comfy_over_cli` (the ComfyUI path) is not measured here: the core never imports ComfyUI."]
    return "\n".join(lines)

