"""Relation Sample: a one-node preview of a relation LoRA (empty latent -> ComfyUI sampler -> VAE decode), optionally
with the LoRA on the high-noise steps only (a second, LoRA-free model below a σ). Relation Switch Step: that switch as
a step, for two stock KSamplerAdvanced nodes with any sampler."""
from __future__ import annotations

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
from comfy_api.latest import io

from .comfy_backend import native_architecture
from .common import CATEGORY, MAX_RESOLUTION

# ComfyUI's scheduler for each family's own sampling schedule (`Architecture.sample_schedule`; docs/method.md,
# "Flow matching conventions"): Mochi linear-quadratic, Wan the model's shifted schedule.
SCHEDULERS = {"linear_quadratic": "linear_quadratic", "shifted": "simple"}


def empty_latent(model, arch, length: int, height: int, width: int) -> torch.Tensor:
    latent_format = model.model.latent_format
    ratio = getattr(latent_format, "spacial_downscale_ratio", arch.spatial_ratio)
    return torch.zeros([1, latent_format.latent_channels, arch.latent_frames(length), height // ratio,
                        width // ratio], device=comfy.model_management.intermediate_device())


def high_noise_steps(model, scheduler: str, steps: int, switch_sigma: float, sampler: str = "euler") -> int:
    """How many of the `steps` start at σ ≥ `switch_sigma` on the model's own schedule (those run `model`), as a
    stock KSampler with `sampler` steps it (a few samplers drop the penultimate σ of a longer schedule)."""
    sigmas = comfy.samplers.KSampler(model, steps, "cpu", sampler=sampler, scheduler=scheduler).sigmas
    return int((sigmas[:-1] >= switch_sigma).sum())


class RelationSwitchStep(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamRelationSwitchStep",
            display_name="Relation Switch Step",
            category=CATEGORY,
            description="Where a relation LoRA hands over to the plain model, as a step of the model's own schedule, "
                        "for two chained KSamplerAdvanced nodes (any sampler): the one with the LoRA ends at "
                        "switch_step (return_with_leftover_noise enable), the plain one starts there (add_noise "
                        "disable). Both use this node's steps and scheduler (docs/method.md).",
            inputs=[
                io.Model.Input("model", tooltip="The model either sampler runs (the LoRA does not change the "
                                                "schedule)."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="simple",
                               tooltip="The samplers' scheduler (simple for Wan, linear_quadratic for Mochi)."),
                io.Int.Input("steps", default=30, min=1, max=10000, tooltip="The samplers' steps."),
                io.Float.Input("switch_sigma", default=0.75, min=0.0, max=1.0, step=0.01, round=0.001,
                               tooltip="The LoRA runs on the steps that start at σ ≥ this, the plain model on the "
                                       "rest. 0.75 on SynthRel, where the relation is decided above it; 0.875 for "
                                       "Wan 2.2 A14B's experts (their boundary)."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler",
                               optional=True, tooltip="The samplers' sampler: dpm_2, dpm_2_ancestral, uni_pc and "
                                                      "uni_pc_bh2 step another schedule than the others."),
            ],
            outputs=[io.Int.Output(display_name="switch_step",
                                   tooltip="end_at_step of the sampler with the LoRA, start_at_step of the plain one."),
                     io.Int.Output(display_name="steps", tooltip="The steps, to wire into both samplers.")],
        )

    @classmethod
    def execute(cls, model, scheduler, steps, switch_sigma, sampler_name="euler"):
        switch = high_noise_steps(model, scheduler, steps, switch_sigma, sampler_name)
        if switch == 0:         # a stock sampler ending at step 0 returns its latent without adding the noise
            raise ValueError(f"switch_sigma {switch_sigma} is above every step's σ of the {scheduler} schedule, so "
                             "the LoRA would run on no step: lower switch_sigma (or sample with the plain model only)")
        return io.NodeOutput(switch, steps)


class RelationSample(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamRelationSample",
            display_name="Relation Sample",
            category=CATEGORY,
            description="Generates a short video with the model as given (load a relation LoRA first): Euler with "
                        "the family's schedule and classifier-free guidance, decoded to frames.",
            inputs=[
                io.Model.Input("model", tooltip="Native Wan or Mochi model, usually with a relation LoRA loaded."),
                io.Conditioning.Input("positive", tooltip="The prompt with new subjects, e.g. 'A bear high-fives a "
                                                          "raccoon.'"),
                io.Conditioning.Input("negative", tooltip="Negative prompt (an empty prompt is the paper's)."),
                io.Vae.Input("vae", tooltip="The model's VAE, to decode the frames."),
                io.Int.Input("width", default=832, min=16, max=MAX_RESOLUTION, step=16, tooltip="Video width."),
                io.Int.Input("height", default=480, min=16, max=MAX_RESOLUTION, step=16, tooltip="Video height."),
                io.Int.Input("length", default=49, min=1, max=MAX_RESOLUTION, step=1,
                             tooltip="Frames: 4k+1 for Wan, 6k+1 for Mochi."),
                io.Int.Input("steps", default=30, min=1, max=1000, tooltip="Euler steps (paper: 64 for Mochi)."),
                io.Float.Input("cfg", default=6.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale (paper: 6)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed."),
                io.Float.Input("switch_sigma", default=0.75, min=0.0, max=1.0, step=0.01, round=0.001, optional=True,
                               tooltip="With low_noise_model connected: the noise level σ below which it denoises "
                                       "instead of model. 0.75 on SynthRel, where the relation is decided above "
                                       "it; 0.875 with Wan 2.2 A14B's two experts (their boundary)."),
                io.Model.Input("low_noise_model", optional=True,
                               tooltip="Optional: the same model without the relation LoRA (wire the model from "
                                       "before Load Relation LoRA), or Wan 2.2 A14B's low-noise expert when model "
                                       "is the high-noise one. It denoises the steps below switch_sigma, so the "
                                       "LoRA sets the motion and the model alone draws the looks: fewer of the "
                                       "exemplars' looks (docs/method.md)."),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="The decoded frames of the video.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, vae, width, height, length, steps, cfg, seed, switch_sigma=0.75,
                low_noise_model=None):
        arch = native_architecture(model)
        other = None if low_noise_model is None else native_architecture(low_noise_model)
        if other is not None and other.name != arch.name:
            raise ValueError(f"low_noise_model is a {other.name} model but model is {arch.name}: connect the same "
                             "model without the relation LoRA")
        scheduler = SCHEDULERS[arch.sample_schedule]
        latent = empty_latent(model, arch, length, height, width)
        noise = comfy.sample.prepare_noise(latent, seed)
        switch = steps if low_noise_model is None else high_noise_steps(model, scheduler, steps, switch_sigma)
        if switch == steps:
            samples = comfy.sample.sample(model, noise, steps, cfg, "euler", scheduler, positive, negative, latent,
                                          seed=seed)
        else:       # two passes, as KSamplerAdvanced chains them: model to the switch, low_noise_model from it
            if switch > 0:
                latent = comfy.sample.sample(model, noise, steps, cfg, "euler", scheduler, positive, negative, latent,
                                             start_step=0, last_step=switch, force_full_denoise=False, seed=seed)
                noise = torch.zeros_like(noise)
            samples = comfy.sample.sample(low_noise_model, noise, steps, cfg, "euler", scheduler, positive, negative,
                                          latent, start_step=switch, last_step=steps, force_full_denoise=True,
                                          seed=seed)
        images = vae.decode(samples)
        return io.NodeOutput(images.reshape(-1, *images.shape[-3:]))
