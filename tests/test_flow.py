"""Flow conventions: our schedules and each architecture's timestep/sign convention against diffusers' own."""
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.mochi.pipeline_mochi import linear_quadratic_schedule as diffusers_lq

from dreamrelation_core.archs import MOCHI, SYNTHREL, WAN
from dreamrelation_core.flow import (X0_SIGMA_FLOOR, linear_quadratic_schedule, noisy_latents, sampling_schedule,
                                     shifted_schedule, train_sigmas, velocity_from_x0, velocity_target)
from dreamrelation_core.losses import hybrid_mask_loss
from dreamrelation_core.sampling import denoise


def test_mochi_schedule_matches_genmo_and_diffusers():
    ours = linear_quadratic_schedule(64)
    assert ours[0] == 1.0 and ours[-1] == 0.0 and len(ours) == 65
    assert np.allclose(ours[:-1].numpy(), np.array(diffusers_lq(64, 0.025)), atol=1e-6)
    assert torch.all(ours[1:] < ours[:-1])


def test_wan_schedule_matches_flow_match_scheduler_with_shift():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(sigmas=np.linspace(1, 0, 21)[:-1])
    assert torch.allclose(shifted_schedule(20, 3.0), scheduler.sigmas, atol=1e-6)
    assert torch.allclose(WAN.timestep_of_sigma(shifted_schedule(20, 3.0)[:-1]), scheduler.timesteps, atol=1e-3)


def test_mochi_timesteps_are_reversed_like_the_diffusers_pipeline():
    scheduler = FlowMatchEulerDiscreteScheduler(invert_sigmas=True)
    scheduler.set_timesteps(sigmas=np.array(diffusers_lq(16, 0.025)))
    ours = linear_quadratic_schedule(16)
    assert torch.allclose(MOCHI.timestep_of_sigma(ours[:-1]), scheduler.timesteps, atol=1e-3)


class ScriptedModel(torch.nn.Module):
    """A 'transformer' whose raw output is a fixed function of (latents, timestep): lets us run the same model
    through diffusers' scheduler loop and through our sampler."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False, **_):
        t = timestep.view(-1, 1, 1, 1, 1) / 1000.0
        return (torch.sin(3 * hidden_states) * (1 + t) + encoder_hidden_states.mean() * t,)


@pytest.mark.parametrize("arch", [WAN, MOCHI], ids=["wan", "mochi"])
def test_our_euler_sampler_equals_diffusers_scheduler_loop(arch):
    """The diffusers pipelines pass scheduler.timesteps to the model and step on its raw output; our sampler
    (canonical velocity through arch.velocity) must produce the same trajectory: this pins the sign and σ/timestep
    conventions of both families to diffusers' own."""
    model = ScriptedModel()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 2, 3, 4, 4, generator=g)
    text, mask = torch.randn(1, 5, 8, generator=g), torch.ones(1, 5, dtype=torch.bool)
    if arch is MOCHI:
        sigmas = linear_quadratic_schedule(12)
        scheduler = FlowMatchEulerDiscreteScheduler(invert_sigmas=True)
        scheduler.set_timesteps(sigmas=np.array(diffusers_lq(12, 0.025)))
    else:
        sigmas = shifted_schedule(12, 3.0)
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
        scheduler.set_timesteps(sigmas=np.linspace(1, 0, 13)[:-1])
    z = noise.clone()
    for t in scheduler.timesteps:
        out = model(z, t.expand(1), text)[0]
        z = scheduler.step(out, t, z, return_dict=False)[0]
    ours = denoise(arch, model, noise, text, mask, text, mask, sigmas, cfg=1.0, progress=False)
    assert torch.allclose(ours, z, atol=1e-5)


@pytest.mark.parametrize("arch", [WAN, MOCHI, SYNTHREL], ids=["wan", "mochi", "synthrel"])
def test_training_target_is_zero_for_the_exact_model(arch):
    """For data concentrated on one latent z0, the exact model in the family's own convention (Wan: ε − z0 at
    t = 1000σ; Mochi/finetrainers: z0 − ε at t = 1000(1 − σ); SynthRel: the clean latent z0 at t = 1000σ) has zero
    training loss, and sampling it on the family's schedule returns z0."""
    z0 = torch.randn(1, 2, 3, 4, 4)

    class Exact(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(()))   # device/dtype probe for the sampler

        def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False, **_):
            if arch is SYNTHREL:
                return (z0.expand_as(hidden_states),)
            sigma = timestep / 1000.0 if arch is WAN else 1.0 - timestep / 1000.0
            eps = (hidden_states - (1 - sigma.view(-1, 1, 1, 1, 1)) * z0) / sigma.view(-1, 1, 1, 1, 1)
            return ((eps - z0) if arch is WAN else (z0 - eps),)

    noise = torch.randn_like(z0)
    sigma = train_sigmas(1, torch.Generator().manual_seed(3)).clamp(min=0.05)
    text, mask = torch.zeros(1, 3, 4), torch.ones(1, 3, dtype=torch.bool)
    pred = arch.velocity(Exact(), noisy_latents(z0, noise, sigma), sigma, text, mask)
    loss = hybrid_mask_loss(pred, velocity_target(z0, noise), torch.ones(1, 3, 4, 4))
    assert loss.item() < 1e-8
    sampled = denoise(arch, Exact(), noise, text, mask, text, mask, sampling_schedule(arch, 20), cfg=1.0,
                      progress=False)
    assert torch.allclose(sampled, z0, atol=1e-4)


def test_x0_velocity_floors_sigma():
    """x-prediction: v = (z − x̂0)/σ, with σ floored below X0_SIGMA_FLOOR so near-clean samples don't explode."""
    z, x0 = torch.randn(2, 3, 1, 2, 2), torch.randn(2, 3, 1, 2, 2)
    v = velocity_from_x0(z, x0, torch.tensor([0.5, 0.001]))
    assert torch.allclose(v[0], (z[0] - x0[0]) / 0.5)
    assert torch.allclose(v[1], (z[1] - x0[1]) / X0_SIGMA_FLOOR)


def test_train_sigma_range_and_shift():
    g = torch.Generator().manual_seed(0)
    s = train_sigmas(4000, g, shift=1.0, low=0.875, high=1.0)
    assert s.min() >= 0.875 and s.max() <= 1.0 and abs(s.mean().item() - 0.9375) < 0.005
    shifted = train_sigmas(4000, torch.Generator().manual_seed(0), shift=3.0)
    assert shifted.mean() > 0.6                                   # shift moves mass towards noise
    with pytest.raises(ValueError, match="sigma range"):
        train_sigmas(1, g, low=0.5, high=0.5)


@pytest.mark.parametrize("arch", [WAN, MOCHI], ids=["wan", "mochi"])
def test_timestep_stays_fp32_with_bf16_latents(arch):
    """bf16 latents (CUDA training and sampling) must not round the noise-level conditioning: 1000·σ in bf16 is off
    by up to 2."""
    sigma = torch.tensor([0.123456, 0.987654])
    kwargs = arch.transformer_kwargs(torch.zeros(2, 4, 1, 2, 2, dtype=torch.bfloat16), sigma, None, None)
    assert kwargs["timestep"].dtype == torch.float32
    assert torch.allclose(kwargs["timestep"], arch.timestep_of_sigma(sigma.double()).float(), rtol=0, atol=1e-4)
    assert not torch.allclose(kwargs["timestep"], kwargs["timestep"].bfloat16().float(), rtol=0, atol=1e-2)
