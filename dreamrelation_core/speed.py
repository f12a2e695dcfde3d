"""Speed benchmark (`python -m dreamrelation_core bench speed`): what the triplet costs over a plain LoRA.

Each ratio is measured side by side in one process, the two steps interleaved (A, B, A, B, ...) after a warm-up,
so that the machine's load and clock changes hit both alike; a ratio is the quotient of the two medians.
- `triplet_over_plain`: a DreamRelation training step (`RelationTrainer.train_step`: the drawn group's adapters,
  hybrid-mask loss, RCL) over a plain LoRA step (one peft adapter on the same modules at the same rank, MSE on the
  velocity, AdamW) on the same transformer and inputs.
- `merged_sampling_over_base`: one sampling step (a CFG pair of forward passes) with the inference set merged over
  the same step on the base: after the merge no adapter is left (triplet.merge_inference_set), so ≈ 1.
- `comfy_over_cli` (with `comfyui`, a ComfyUI checkout): the same training step through the ComfyUI Train node's
  path (ComfyUI's native model, weight wrappers, guider) over the CLI's diffusers path, on the SynthRel base.
  The core never imports ComfyUI, so `tools/speed_comfyui.py` measures it in a process of its own.
The default case is the SynthRel transformer on its own clip (a CPU smoke run, under a minute).
"""
from __future__ import annotations

import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

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

    return SpeedCase("synthrel transformer, 9×40×40 clip", "synthrel", dict(SYNTHREL.tiny_transformer),
                     _latent("synthrel", DEFAULT.frames, *DEFAULT.size), SYNTHREL.text_max_length)


def _template(name: str) -> dict:
    """A shipped transformer config (the single-file loader's templates, bases.CONFIG_DIR) as constructor kwargs."""
    import json

    from .bases import CONFIG_DIR

    config = json.loads((CONFIG_DIR / name / "config.json").read_text())
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _latent(arch_name: str, frames: int, height: int, width: int) -> tuple:
    arch = ARCHITECTURES[arch_name]
    return (arch.latent_channels, arch.latent_frames(frames), height // arch.spatial_ratio,
            width // arch.spatial_ratio)


def gpu_cases() -> list[SpeedCase]:
    """`--suite gpu`: real sizes, random weights (issue 16's targets). Each memory option of a model is a case."""
    wan13 = dict(arch="wan", transformer=_template("wan2.1-t2v-1.3b"), latent=_latent("wan", 81, 480, 832),
                 text_length=512)
    wan14 = dict(arch="wan", transformer=_template("wan2.1-t2v-14b"), latent=_latent("wan", 81, 480, 832),
                 text_length=512)
    mochi = dict(arch="mochi", transformer=_template("mochi-1-preview"), latent=_latent("mochi", 61, 480, 848),
                 text_length=256)
    return [
        SpeedCase("Wan2.1-1.3B 81×480×832, checkpointing", **wan13),
        SpeedCase("Wan2.1-1.3B 81×480×832, no checkpointing", **wan13, train={"gradient_checkpointing": False}),
        SpeedCase("Wan2.1-1.3B 81×480×832, fp8", **wan13, train={"fp8_storage": True}),
        SpeedCase("Mochi 61×480×848, checkpointing", **mochi),
        SpeedCase("Mochi 61×480×848, fp8 + activation offload", **mochi,
                  train={"fp8_storage": True, "offload_activations": True}),
        SpeedCase("Mochi 61×480×848, fp8 + block swap 24", **mochi, train={"fp8_storage": True, "block_swap": 24}),
        SpeedCase("Wan2.1-14B 81×480×832, fp8 + block swap 30", **wan14, train={"fp8_storage": True, "block_swap": 30}),
    ]


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


def timed(steps: dict, reps: int, warmup: int, device: torch.device, interleave: bool) -> dict:
    """name -> (median seconds, peak GPU bytes or None) of `steps[name]()` after `warmup` calls each. Interleaved
    (A, B, A, B, …: on the CPU, whose load changes under a run) or one after the other (on a GPU)."""
    cuda = device.type == "cuda"
    times, peaks = {name: [] for name in steps}, {name: None for name in steps}
    rounds = ([list(steps)] * (warmup + reps) if interleave
              else [[name] for name in steps for _ in range(warmup + reps)])
    for names in rounds:
        for name in names:
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            steps[name]()
            if cuda:
                torch.cuda.synchronize(device)
                peaks[name] = max(peaks[name] or 0, torch.cuda.max_memory_allocated(device))
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t[warmup:]), peaks[name]) for name, t in times.items()}


def _random_transformer(arch, config: dict, device, dtype, seed: int = 0):
    """A transformer of `config` with random weights made on `device` in `dtype` (no CPU copy of a real-size
    model): matrices N(0, 0.02), norm scales 1, biases 0; buffers (RoPE tables) as the class computes them."""
    import diffusers
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = getattr(diffusers, arch.transformer_class)(**config)
    g = torch.Generator(device=device).manual_seed(seed)
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None:
                continue
            t = torch.empty(p.shape, device=device, dtype=dtype)
            if p.ndim >= 2:
                t.normal_(0.0, 0.02, generator=g)
            else:
                t.fill_(1.0 if name == "weight" else 0.0)
            module._parameters[name] = torch.nn.Parameter(t, requires_grad=False)
    return model.to(device).eval()


def measure(case: SpeedCase, reps: int = 10, device: str = "cpu", warmup: int = 2) -> dict:
    """Seconds per step (and on a GPU peak memory) of a DreamRelation step and a plain LoRA step, and of a merged
    and a base sampling step, on `case` (random weights); their ratios. On the CPU both models are resident and the
    steps interleaved; on a GPU one model at a time, its steps in a row, so that each peak is its own."""
    from peft import LoraConfig

    from .components import Base, HashTextEncoder
    from .config import DataConfig, RCLConfig, RunConfig, TrainConfig
    from .flow import noisy_latents, velocity_target
    from .trainer import PeftBackend, RelationTrainer
    from .triplet import TripletConfig, inject_triplet, merge_inference_set, resolve_targets

    arch, dev = ARCHITECTURES[case.arch], torch.device(device)
    cuda = dev.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    precision = "bf16" if cuda else "fp32"
    text_dim = case.transformer.get("text_dim", case.transformer.get("text_embed_dim"))
    text = HashTextEncoder(dim=text_dim, max_length=case.text_length)
    items = _items(case, text_dim)
    results = {}

    def run_config(out):
        return RunConfig(base=case.name, name="speed", output_dir=out, device=device, data=DataConfig(videos=out),
                         lora=TripletConfig(rank=case.rank, alpha=case.rank),
                         train=TrainConfig(steps=10 ** 6, base_dtype=precision, mixed_precision=precision,
                                           **case.train), rcl=RCLConfig())

    def dreamrelation(config):
        base = Base(arch=arch, transformer=_random_transformer(arch, case.transformer, dev, dtype), text_encoder=text,
                    codec=None, name=case.name)
        trainer = RelationTrainer(config, PeftBackend(base, config, dev), items, config.output_dir, progress=False,
                                  overwrite=True)
        return trainer.train_step

    def plain_lora(config):
        model = _random_transformer(arch, case.transformer, dev, dtype).train()
        targets = sorted({m for ms in resolve_targets(model, arch, config.lora).values() for m in ms})
        model.add_adapter(LoraConfig(r=case.rank, lora_alpha=case.rank, target_modules=targets))
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        if config.train.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        g = torch.Generator().manual_seed(1)

        def step():
            item = items[0]
            z0 = item.latent_mean[None].to(dev)
            noise = torch.randn(z0.shape, generator=g).to(dev)
            sigma = torch.rand(1, generator=g).to(dev)
            with torch.autocast(dev.type, dtype=dtype, enabled=cuda):
                pred = arch.velocity(model, noisy_latents(z0, noise, sigma).to(dtype), sigma,
                                     item.text[None].to(dev, dtype), item.text_mask[None].to(dev))
            (pred.float() - velocity_target(z0, noise)).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    z = torch.randn(2, *case.latent, generator=torch.Generator().manual_seed(2)).to(dev, dtype)
    sigma = torch.full((2,), 0.5, device=dev)
    cond = torch.stack([items[0].text, torch.zeros_like(items[0].text)]).to(dev, dtype)
    mask = torch.ones(2, case.text_length, dtype=torch.bool, device=dev)

    def sampling(model):
        def step():
            with torch.no_grad():
                arch.velocity(model, z, sigma, cond, mask)
        return step

    def merged():
        model = _random_transformer(arch, case.transformer, dev, dtype)
        inject_triplet(model, arch, TripletConfig(rank=case.rank, alpha=case.rank))
        merge_inference_set(model, {r: 1.0 for r in INFERENCE_ROLES}, undoable=False)
        return sampling(model)

    with tempfile.TemporaryDirectory(prefix="dreamrelation-speed-") as out:
        config = run_config(out)
        makers = {"dreamrelation_step": lambda: dreamrelation(config), "plain_lora_step": lambda: plain_lora(config),
                  "merged_sampling_step": merged,
                  "base_sampling_step": lambda: sampling(_random_transformer(arch, case.transformer, dev, dtype))}
        if cuda:                      # one model on the GPU at a time
            for name, make in makers.items():
                step = make()
                seconds, peak = timed({name: step}, reps, warmup, dev, False)[name]
                results[name], results[f"{name}_peak_gb"] = seconds, peak / 2 ** 30
                del step
                torch.cuda.empty_cache()
        else:
            for pair in (("dreamrelation_step", "plain_lora_step"), ("merged_sampling_step", "base_sampling_step")):
                measured = timed({name: makers[name]() for name in pair}, reps, warmup, dev, True)
                results.update({name: seconds for name, (seconds, _) in measured.items()})
    results["triplet_over_plain"] = results["dreamrelation_step"] / results["plain_lora_step"]
    results["merged_sampling_over_base"] = results["merged_sampling_step"] / results["base_sampling_step"]
    return results


COMFYUI_TOOL = Path(__file__).resolve().parents[1] / "tools" / "speed_comfyui.py"


def comfy_over_cli(comfyui, reps: int = 10) -> dict:
    """`tools/speed_comfyui.py` run against the ComfyUI checkout `comfyui` in the Python running this: the ComfyUI
    path's and the CLI path's step seconds and `comfy_over_cli`. RuntimeError with the tool's last words when it
    fails (ComfyUI's own requirements missing, say)."""
    import json
    import subprocess
    import sys

    if not COMFYUI_TOOL.is_file():
        raise FileNotFoundError(f"bench speed --comfyui needs {COMFYUI_TOOL}, which ships in the repository (a "
                                "checkout of the pack), not in an installed dreamrelation_core")
    run = subprocess.run([sys.executable, str(COMFYUI_TOOL), "--comfyui", str(comfyui), "--reps", str(reps)],
                         capture_output=True, text=True)
    lines = run.stdout.strip().splitlines()
    if run.returncode != 0 or not lines:
        raise RuntimeError(f"measuring the ComfyUI path against {comfyui} failed (exit {run.returncode}):\n"
                           f"{run.stderr[-2000:]}")
    return json.loads(lines[-1])


def benchmark(reps: int = 10, suite: str = "cpu", progress: bool = True, comfyui=None) -> dict:
    """`suite` "cpu": the SynthRel case on the CPU (a smoke run, under a minute); "gpu": `gpu_cases` on CUDA.
    `comfyui`: a ComfyUI checkout, to measure `comfy_over_cli` too.
    JSON-able: device, per case s/step (GPU: and peak GB) and ratios, and the first case's ratios as headline."""
    from tqdm.auto import tqdm

    if suite not in ("cpu", "gpu"):
        raise ValueError(f"unknown speed suite {suite!r}; expected cpu or gpu")
    if suite == "gpu" and not torch.cuda.is_available():
        raise ValueError("bench speed --suite gpu needs a CUDA GPU; the default suite runs on the CPU")
    cases, device = ([_synthrel_case()], "cpu") if suite == "cpu" else (gpu_cases(), "cuda")
    name = (f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads" if suite == "cpu"
            else f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2 ** 30:.0f} GB")
    per_case = {}
    for case in tqdm(cases, desc="speed", disable=not progress or len(cases) == 1):
        try:
            per_case[case.name] = measure(case, reps, device, warmup=2 if suite == "cpu" else 1)
        except torch.OutOfMemoryError as error:       # a memory option that does not fit is a figure too
            per_case[case.name] = {"error": f"out of memory: {str(error).splitlines()[0]}"}
            torch.cuda.empty_cache()
    first = per_case[cases[0].name]
    result = {"device": f"{name}, torch {torch.__version__})", "suite": suite, "reps": reps, "cases": per_case,
              "triplet_over_plain": first.get("triplet_over_plain"),
              "merged_sampling_over_base": first.get("merged_sampling_over_base"), "comfy_over_cli": None}
    if comfyui is not None:
        result["comfy"] = comfy_over_cli(comfyui, reps)
        result["comfy_over_cli"] = result["comfy"]["comfy_over_cli"]
    return result


def markdown(result: dict) -> str:
    gpu = result.get("suite") == "gpu"
    lines = [f"## Speed: what the triplet costs{' (GPU, real sizes)' if gpu else ''}", "",
             f"Device: {result['device']}; medians of {result['reps']} steps after a warm-up, random weights"
             + ("; one model on the GPU at a time, peak memory per step kind." if gpu else
                ", the two steps of a ratio interleaved in one process."), "",
             "| case | DreamRelation step (s) | plain LoRA step (s) | triplet / plain | merged sampling step (s) | "
             "base sampling step (s) | merged / base |" + (" DreamRelation peak (GB) | plain LoRA peak (GB) |"
                                                         if gpu else ""),
             "|---|---|---|---|---|---|---|" + ("---|---|" if gpu else "")]
    for name, r in result["cases"].items():
        if "error" in r:
            lines.append(f"| {name} | {r['error']} |")
            continue
        row = (f"| {name} | {r['dreamrelation_step']:.4f} | {r['plain_lora_step']:.4f} | "
               f"{r['triplet_over_plain']:.2f} | {r['merged_sampling_step']:.4f} | "
               f"{r['base_sampling_step']:.4f} | {r['merged_sampling_over_base']:.2f} |")
        if gpu:
            row += f" {r['dreamrelation_step_peak_gb']:.1f} | {r['plain_lora_step_peak_gb']:.1f} |"
        lines.append(row)
    lines += ["", "A DreamRelation step runs only the drawn group's adapters (all four for the relation group, two "
              "for a subject group) and adds the masked loss and RCL; the plain LoRA carries one adapter on the "
              "same modules at the same rank. After the merge no adapter is left, so sampling costs what the base "
              "costs."]
    comfy = result.get("comfy")
    if comfy:
        lines += ["", f"The ComfyUI path ({comfy['device']}; ComfyUI's PyTorch attention, as on NVIDIA GPUs; the "
                      f"triplet as {comfy['mode']}; medians of {comfy['reps']} interleaved steps): a Train node "
                      "step against the CLI's on the same base, exemplars, settings and seeds.", "",
                  "| case | ComfyUI path step (s) | CLI path step (s) | comfy / cli |", "|---|---|---|---|"]
        lines += [f"| {name} | {c['comfy_step']:.4f} | {c['cli_step']:.4f} | {c['comfy_over_cli']:.2f} |"
                  for name, c in comfy["cases"].items()]
        lines += ["", "`comfy_over_cli` is the larger clip's: on the protocol's clip a step takes tens of "
                      "milliseconds, and ComfyUI's per-call work (its guider, weight casting, memory checks) weighs "
                      "more than it does in real training."]
    else:
        lines += ["", "`comfy_over_cli` (the ComfyUI path) needs a ComfyUI checkout: `bench speed --comfyui DIR`."]
    return "\n".join(lines)
