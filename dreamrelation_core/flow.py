"""Rectified-flow conventions shared by trainer and sampler (docs/method.md, "Flow matching conventions").

Canonical form: z_σ = (1 − σ)·z0 + σ·ε, velocity v = dz/dσ = ε − z0. Each architecture's own timestep and sign
conventions are applied in `Architecture.velocity`, so nothing here depends on the model family.
"""
from __future__ import annotations

import torch


def noisy_latents(z0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """z_σ = (1 − σ)·z0 + σ·ε for `z0`, `noise` [B, C, f, h, w] and σ [B]."""
    s = sigma.view(-1, *([1] * (z0.dim() - 1))).to(z0)
    return (1.0 - s) * z0 + s * noise


def velocity_target(z0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Canonical flow-matching target ε − z0."""
    return noise - z0


# x-prediction: v = (z − x̂0) / σ, with σ floored so that the division stays tame near σ = 0 (as in JiT, "Back to
# Basics: Let Denoising Generative Models Denoise", 2025). SynthRel's default 20-step schedule ends at σ = 0.05;
# a finer one leaves ≤ 1.2% noise in its last step (0.6 of σ = 0.02), below one 8-bit level after decoding.
X0_SIGMA_FLOOR = 0.05


def velocity_from_x0(latents: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor,
                     floor: float = X0_SIGMA_FLOOR) -> torch.Tensor:
    """Canonical velocity ε − z0 = (z − x̂0)/σ implied by a clean-latent estimate `x0` at noisy `latents`, σ [B]
    floored at `floor` (0: the plain conversion, for models that do not predict x0 themselves)."""
    s = sigma.to(x0).clamp_min(floor).view(-1, *([1] * (x0.dim() - 1)))
    return (latents.to(x0) - x0) / s


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """Time shift σ' = s·σ / (1 + (s − 1)·σ) used by Wan (and SD3); shift 1 is the identity."""
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def check_sigma_range(low: float, high: float) -> None:
    """ValueError unless [low, high] is a training σ range: 0 <= sigma_min < sigma_max <= 1."""
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"sigma range must satisfy 0 <= sigma_min < sigma_max <= 1 (got {low}, {high})")


def train_sigmas(batch: int, generator: torch.Generator, shift: float = 1.0, low: float = 0.0,
                 high: float = 1.0) -> torch.Tensor:
    """σ ~ U(0, 1) per sample (the reference), optionally time-shifted towards noise, then mapped affinely onto
    [low, high] (e.g. one Wan 2.2 expert's noise range). [B] float32 on CPU."""
    check_sigma_range(low, high)
    return low + (high - low) * shift_sigma(torch.rand(batch, generator=generator), shift)


def linear_quadratic_schedule(steps: int, threshold_noise: float = 0.025, linear_steps: int | None = None):
    """Mochi's sampling σ schedule, 1 → 0 ([steps + 1], terminal 0 included): the first half linear down to
    1 − threshold_noise, then quadratic. diffusers' own (genmo's) function; imported lazily, since its module
    loads the whole Mochi pipeline."""
    if steps == 1:                      # diffusers' divides by linear_steps = 0 here
        return torch.tensor([1.0, 0.0])
    from diffusers.pipelines.mochi.pipeline_mochi import linear_quadratic_schedule as mochi_schedule

    sigmas = mochi_schedule(steps, threshold_noise, linear_steps)
    return torch.tensor([*sigmas, 0.0], dtype=torch.float64).float()


def shifted_schedule(steps: int, shift: float):
    """Wan's sampling σ schedule: uniform in σ from 1 to 0, time-shifted ([steps + 1], terminal 0 included)."""
    return shift_sigma(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift).float()


def sampling_schedule(arch, steps: int, shift: float | None = None) -> torch.Tensor:
    """The σ schedule the architecture samples with (Mochi linear-quadratic, Wan shifted)."""
    if arch.sample_schedule == "linear_quadratic":
        return linear_quadratic_schedule(steps)
    return shifted_schedule(steps, arch.sample_shift if shift is None else shift)
