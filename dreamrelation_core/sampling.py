"""Text-to-video sampling: Euler on the flow ODE with classifier-free guidance (docs/method.md, "Flow matching conventions")."""
from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from .flow import sampling_schedule


def latent_shape(base, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(C, f, h, w) of the latent for a video of `frames` × `height` × `width`; ValueError on sizes the model
    cannot represent (frames must be r·k+1, sizes multiples of the VAE factor times the patch size)."""
    arch, config = base.arch, base.transformer.config
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[-1]
    multiple = arch.spatial_ratio * patch
    if height % multiple or width % multiple or height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive multiples of {multiple} for {arch.name} "
                         f"(got {height}x{width})")
    return (config.in_channels, arch.latent_frames(frames), height // arch.spatial_ratio, width // arch.spatial_ratio)


MAX_SIZE_FACTOR = 4       # largest video, in latent values, relative to the architecture's default one


def _given(name: str, value, default: int) -> int:
    """`value`, or `default` when None; a ValueError naming `name` unless it is a positive whole number."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
    return value


def transformer_device_dtype(transformer):
    param = next(transformer.parameters())
    return param.device, param.dtype


@torch.no_grad()
def euler(velocity, noise: torch.Tensor, sigmas, progress: bool = True, callback=None) -> torch.Tensor:
    """Integrate z from σ = sigmas[0] to sigmas[-1] with Euler steps z ← z + (σ_{i+1} − σ_i)·velocity(z, σ_i).

    `velocity(z, sigma: float)` returns the (already guided) canonical velocity ε − z0 for z [B, C, f, h, w].
    `callback(i, total)` is called after every step (progress, interruption). Works in fp32.
    """
    z = noise.float()
    steps = len(sigmas) - 1
    for i in tqdm(range(steps), desc="sampling", disable=not progress, leave=False):
        z = z + (float(sigmas[i + 1]) - float(sigmas[i])) * velocity(z, float(sigmas[i])).float()
        if callback is not None:
            callback(i + 1, steps)
    return z


def expert_for(transformer, sigma_range, companion):
    """Which transformer denoises at σ (a Wan 2.2 A14B pair, split at its boundary: the high-noise expert from the
    boundary up, as diffusers' pipeline does): `transformer` inside `sigma_range`, `companion` outside."""
    if companion is None or sigma_range is None:
        return lambda sigma: transformer
    low, high = sigma_range
    return lambda sigma: transformer if (low <= sigma if high >= 1.0 else sigma < high) else companion


def lora_runs_at(sigma: float, lora_sigma_min: float | None) -> bool:
    """Whether a step that starts at `sigma` runs the LoRA under a high-noise switch at `lora_sigma_min` (None: every
    step)."""
    return lora_sigma_min is None or sigma >= lora_sigma_min


def lora_switch(transformer, lora_sigma_min: float | None):
    """A function of σ that runs `transformer`'s LoRA layers on steps with σ ≥ `lora_sigma_min` and the base alone
    below (docs/method.md, "The relation LoRA at high noise only"); a no-op for None. The LoRAs must be unmerged
    adapters (peft layers), since a merged one cannot be switched off."""
    if lora_sigma_min is None:
        return lambda sigma: None
    if isinstance(lora_sigma_min, bool) or not 0.0 <= lora_sigma_min <= 1.0:
        raise ValueError(f"lora_sigma_min must be a σ in [0, 1], got {lora_sigma_min!r}")
    from peft.tuners.tuners_utils import BaseTunerLayer   # lazy: only sampling with a switch needs peft

    layers = [m for m in transformer.modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        raise ValueError("lora_sigma_min: the transformer holds no unmerged LoRA to switch off at low noise "
                         "(apply the LoRA without merging it)")
    state = {"on": not layers[0].disable_adapters}

    def switch(sigma: float) -> None:
        on = lora_runs_at(sigma, lora_sigma_min)
        if on != state["on"]:
            for layer in layers:
                layer.enable_adapters(on)
            state["on"] = on
    return switch


def denoise(arch, transformer, noise, text, text_mask, null_text, null_mask, sigmas, cfg: float,
            progress: bool = True, callback=None, sigma_range=None, companion=None,
            lora_sigma_min: float | None = None) -> torch.Tensor:
    """Euler with classifier-free guidance on a diffusers transformer: v = v_null + cfg·(v_text − v_null), the
    two passes batched (cfg 1 skips the unconditional one). `noise` [B, C, f, h, w]; text/null [B, L, D] with
    masks [B, L]. With a `companion` (the other Wan 2.2 expert) each step runs `expert_for` its σ. With
    `lora_sigma_min` the transformer's LoRAs run only on steps with σ ≥ it (`lora_switch`)."""
    device, dtype = transformer_device_dtype(transformer)
    model_at = expert_for(transformer, sigma_range, companion)
    switch = lora_switch(transformer, lora_sigma_min)
    guided = cfg != 1.0
    cond = (torch.cat([null_text, text]) if guided else text).to(device, dtype)
    cond_mask = (torch.cat([null_mask, text_mask]) if guided else text_mask).to(device)

    def velocity(z, sigma):
        switch(sigma)
        batch = torch.cat([z, z]) if guided else z
        sigmas_b = torch.full((batch.shape[0],), sigma, device=device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32 and device.type == "cuda"):
            v = arch.velocity(model_at(sigma), batch.to(dtype), sigmas_b, cond, cond_mask).float()
        if not guided:
            return v
        v_null, v_text = v.chunk(2)
        return v_null + cfg * (v_text - v_null)

    try:
        return euler(velocity, noise.to(device), sigmas, progress, callback)
    finally:
        switch(1.0)           # the LoRAs on again, as the caller left them


def generate(base, prompt: str, frames: int | None = None, height: int | None = None, width: int | None = None,
             steps: int | None = None, cfg: float | None = None, seed: int = 0, negative_prompt: str | None = None,
             shift: float | None = None, progress: bool = True, callback=None,
             lora_sigma_min: float | None = None) -> torch.Tensor:
    """Sample one video for `prompt` with whatever LoRAs are active/merged in `base.transformer` (and, for a Wan 2.2
    A14B pair, its `companion` expert below or above the boundary); with `lora_sigma_min`, the active (unmerged)
    LoRAs only on steps with σ ≥ it and the base alone below (`lora_switch`).

    Defaults are the architecture's (Mochi 61×480×848, 64 steps, CFG 6; Wan 81×480×832, 50 steps, CFG 5).
    Returns the decoded video [3, F, H, W] in [-1, 1] (CPU, float32).
    """
    arch = base.arch
    frames, steps = _given("frames", frames, arch.default_frames), _given("steps", steps, arch.sample_steps)
    height = _given("height", height, arch.default_size[0])
    width = _given("width", width, arch.default_size[1])
    cfg = arch.sample_cfg if cfg is None else cfg
    if not math.isfinite(cfg):
        raise ValueError(f"cfg must be a finite number, got {cfg}")
    shape = latent_shape(base, frames, height, width)
    default = latent_shape(base, arch.default_frames, *arch.default_size)
    if math.prod(shape) > MAX_SIZE_FACTOR * math.prod(default):
        raise ValueError(f"{frames} frames of {height}x{width} is more than {MAX_SIZE_FACTOR}× the {arch.name} default "
                         f"video ({arch.default_frames} frames of {arch.default_size[0]}x{arch.default_size[1]}) "
                         "and would not fit in memory")
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((1, *shape), generator=generator)
    text, text_mask = base.text_encoder.encode([prompt])
    null, null_mask = base.text_encoder.encode([negative_prompt]) if negative_prompt else base.null_text(1)
    sigmas = sampling_schedule(arch, steps, shift)
    latents = denoise(arch, base.transformer, noise, text, text_mask, null, null_mask, sigmas, cfg, progress, callback,
                      base.sigma_range, base.companion, lora_sigma_min)
    if not torch.isfinite(latents).all():
        raise ValueError("the sampled video is NaN or infinite: a LoRA applied to the model holds non-finite weights "
                         "(a diverged training run?), or its strength is too large")
    with torch.no_grad():
        video = base.codec.decode(latents)
    return video[0].float().cpu().clamp(-1, 1)


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """[3, F, H, W] in [-1, 1] -> uint8 RGB frames [F, H, W, 3]."""
    frames = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).cpu().numpy()
