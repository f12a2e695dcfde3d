"""Relation Sample: a one-node preview of a relation LoRA (empty latent -> ComfyUI sampler -> VAE decode)."""
from __future__ import annotations

import torch

import comfy.model_management
import comfy.sample
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
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="The decoded frames of the video.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, vae, width, height, length, steps, cfg, seed):
        arch = native_architecture(model)
        latent = empty_latent(model, arch, length, height, width)
        noise = comfy.sample.prepare_noise(latent, seed)
        samples = comfy.sample.sample(model, noise, steps, cfg, "euler", SCHEDULERS[arch.sample_schedule], positive, negative,
                                      latent, seed=seed)
        images = vae.decode(samples)
        return io.NodeOutput(images.reshape(-1, *images.shape[-3:]))
