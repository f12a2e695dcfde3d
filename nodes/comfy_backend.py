"""Training backend for ComfyUI's native MODEL (Wan 2.1/2.2 T2V, Mochi).

The triplet lives in a `NativeTriplet` (core) and reaches the model through ComfyUI's own weight wrappers
(`ModelPatcher.add_weight_wrapper`), so fp8 weights, offloading and the native key names keep working; or, in
bypass mode (dynamically loaded models), through forward hooks the patcher injects, which never touch a weight. The model
is called the way ComfyUI samples it: a `CFGGuider` (cfg 1) prepares the model and the conditioning, and its
`Sampler` hook runs the DreamRelation trainer inside. ComfyUI's guider returns x0 predictions for
x = (1 − σ)·z0 + σ·ε; the canonical velocity ε − z0 the core trains on is (x − x0̂)/σ.
"""
from __future__ import annotations

import torch

import comfy.model_base
import comfy.model_management
import comfy.patcher_extension
import comfy.samplers

from ..dreamrelation_core.archs import INFERENCE_ROLES, MODEL_FAMILIES, get_architecture
from ..dreamrelation_core.flow import sampling_schedule
from ..dreamrelation_core.native import NativeTriplet, native_targets
from ..dreamrelation_core.sampling import euler, lora_runs_at, to_uint8_frames
from ..dreamrelation_core.videoio import write_video

NATIVE_ARCHITECTURES = tuple((getattr(comfy.model_base, a.comfy_model_class), a) for a in MODEL_FAMILIES.values())
SIGMA_FLOOR = 1e-3      # σ below this is not drawn: v = (x − x0̂)/σ
INJECTION_KEY = "dreamrelation_bypass"


def native_architecture(model_patcher):
    """The core `Architecture` of a native MODEL; ValueError for anything we cannot train."""
    model = model_patcher.model
    tagged = getattr(getattr(model, "model_config", None), "dreamrelation_arch", None)   # e.g. the SynthRel base
    if tagged:
        return get_architecture(tagged)
    for cls, arch in NATIVE_ARCHITECTURES:
        # The exact class: newer ComfyUI derives many other Wan variants from WAN21 (VACE, camera, causal, …),
        # not all of them flagged image-to-video (docs/comfyui.md, "Current ComfyUI").
        if type(model) is cls:
            # Wan 2.2 TI2V-5B is flagged image_to_video, but takes its image through the denoise mask: without one it
            # is a text-to-video model. Wan 2.1 I2V models concatenate image latents to their input.
            i2v = getattr(model, "image_to_video", False) and arch.name != "wan22-5b"
            if i2v or getattr(model, "concat_keys", ()):
                raise ValueError("MODEL is an image-to-video model; DreamRelation trains text-to-video Wan or Mochi")
            return arch
    raise ValueError(f"MODEL is a {type(model).__name__}; DreamRelation trains native Wan 2.1/2.2 (text-to-video) "
                     "and Mochi models")


def _make_trainable_copies(model: torch.nn.Module) -> None:
    """Models loaded while ComfyUI runs a prompt hold inference-mode tensors, which autograd cannot save for the
    backward pass (they have no version counter, and assigning `.data` does not give them one): replace such
    parameters and buffers by ordinary copies, one tensor at a time. Must run under `torch.inference_mode(False)`."""
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and param.is_inference():
                module._parameters[name] = torch.nn.Parameter(param.detach().clone(), requires_grad=False)
        for name, buffer in list(module._buffers.items()):
            if buffer is not None and buffer.is_inference():
                module._buffers[name] = buffer.clone()


class _RunInside(comfy.samplers.Sampler):
    """A Sampler whose `sample` hands the prepared guider to `fn` instead of sampling."""

    def __init__(self, fn):
        self.fn = fn

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        self.fn(model_wrap, extra_args, latent_image)
        return latent_image


class ComfyBackend:
    """The trainer's backend (`dreamrelation_core.trainer.TrainerBackend`) on a native MODEL. Captions are
    ComfyUI conditionings: `conditioning_of` maps an exemplar's name to the index of its entry in `run`'s
    `positive`."""

    def __init__(self, model_patcher, triplet_config, seed: int = 0, bypass: bool | None = None):
        """`bypass`: add the LoRA path to the adapted linears' outputs (forward hooks) instead of wrapping their
        weights; None chooses it for dynamically loaded models (current ComfyUI's dynamic VRAM streams weights
        through reused buffers and gives small modules no weight wrappers; docs/comfyui.md)."""
        self.arch = native_architecture(model_patcher)
        self.dynamic = getattr(model_patcher, "is_dynamic", lambda: False)()
        self.bypass = self.dynamic if bypass is None else bool(bypass)
        if self.dynamic and not self.bypass:
            raise ValueError("MODEL is loaded with ComfyUI's dynamic VRAM, whose streamed weights take no weight "
                             "wrappers: train it in bypass mode, or start ComfyUI with --disable-dynamic-vram")
        _make_trainable_copies(model_patcher.model)
        self.patcher = model_patcher.clone()
        shapes = {k: tuple(v.shape) for k, v in self.patcher.model.state_dict().items()}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.triplet = NativeTriplet(self.arch, native_targets(self.arch, shapes, triplet_config),
                                         triplet_config)
        if self.bypass:
            self.patcher.set_injections(INJECTION_KEY, [self._bypass_injection()])
        else:
            for key in self.triplet.weight_keys():
                self.patcher.add_weight_wrapper(key, self.triplet.weight_delta(key))
        self.device = self.patcher.load_device
        self.triplet.to(self.device)
        self.name = "ComfyUI MODEL"
        self.conditioning_of = {}         # exemplar name -> index of its conditioning in `positive`
        self._guider = self._extra_args = self._positive = self._negative = None
        self.preview_conds = {}           # preview prompt -> index of its conditioning (after the exemplars')
        self.decode = None                # processed latents [1, C, f, h, w] -> video [3, F, H, W] in [-1, 1]
        self.last_preview = None          # uint8 frames [F, H, W, 3] of the newest preview

    def _bypass_injection(self):
        """Forward hooks on the adapted linears, installed when ComfyUI patches the model for a run and removed
        when it unpatches it (the patcher's injections, as its own bypass LoRAs)."""
        handles = []

        def inject(patcher):
            for key in self.triplet.weight_keys():
                module = patcher.model.get_submodule(key.removesuffix(".weight"))
                handles.append(module.register_forward_hook(self.triplet.output_delta(key)))

        def eject(patcher):
            while handles:
                handles.pop().remove()

        return comfy.patcher_extension.PatcherInjection(inject=inject, eject=eject)

    def parameters(self) -> dict:
        return self.triplet.lora_parameters()

    def activate(self, roles) -> None:
        self.triplet.activate(roles)

    # ComfyUI's guider applies one conditioning to a whole batch: one exemplar per pass (train.gradient_accumulation
    # gives more a step).
    max_batch = 1

    def velocity(self, latents, sigma, items) -> torch.Tensor:
        (item,) = items
        return self._velocity(latents, sigma, None if item is None else self.conditioning_of[item.name])

    def _velocity(self, latents, sigma, index: int | None) -> torch.Tensor:
        """Velocity with the `index`-th positive conditioning, or the negative one when None."""
        self._guider.conds["positive"] = [self._negative if index is None else self._positive[index]]
        denoised = self._guider(latents, sigma, **self._extra_args)
        return self.arch.velocity_from_denoised(latents.float(), denoised.float(), sigma.float())

    def lora(self, alphas: dict, info: dict):
        return self.triplet.to_relation_lora(info)

    def preview(self, prompts, path_of, frames, height, width, steps, cfg, seed, lora_sigma_min=None) -> list:
        """Sample `prompts` (registered in `preview_conds`) with the inference set, as the trainer's preview; with
        `lora_sigma_min`, on the steps that start at σ ≥ it only (the model alone below)."""
        latent = self._latent_shape
        steps = steps or self.arch.sample_steps
        cfg = self.arch.sample_cfg if cfg is None else cfg
        sigmas = sampling_schedule(self.arch, steps)
        paths = []
        for k, prompt in enumerate(prompts):
            index = self.preview_conds[prompt]
            noise = torch.randn(latent, generator=torch.Generator().manual_seed(seed)).to(self.device)

            def velocity(z, s, index=index):
                self.triplet.activate(INFERENCE_ROLES if lora_runs_at(s, lora_sigma_min) else ())
                sigma = torch.full((1,), s, device=self.device)
                v_text = self._velocity(z, sigma, index)
                if cfg == 1.0:
                    return v_text
                v_null = self._velocity(z, sigma, None)
                return v_null + cfg * (v_text - v_null)

            with torch.no_grad():
                frames_out = to_uint8_frames(self.decode(euler(velocity, noise, sigmas, progress=False)))
            self.last_preview = frames_out
            paths.append(write_video(path_of(k), frames_out, self.arch.fps))
        return paths

    def run(self, fn, latents: torch.Tensor, positive: list, negative: list, seed: int = 0):
        """Prepare the model and conditioning as ComfyUI samples, then call `fn(processed latents [N, C, f, h, w])`
        with this backend ready. `positive`: one conditioning entry per exemplar, then one per preview prompt
        (see `preview_conds`); `negative`: the unconditional one."""
        guider = comfy.samplers.CFGGuider(self.patcher)
        guider.set_conds(positive, negative)
        guider.set_cfg(1.0)
        # Current ComfyUI takes fused, non-differentiable kernels (Wan's RoPE and adaLN) unless it knows it trains.
        was_training = getattr(comfy.model_management, "in_training", None)
        if was_training is not None:
            comfy.model_management.in_training = True

        def inside(model_wrap, extra_args, processed):
            self._guider, self._extra_args = model_wrap, extra_args
            self._latent_shape = (1, *processed.shape[1:])
            self._positive = list(model_wrap.conds["positive"])
            self._negative = model_wrap.conds["negative"][0]
            try:
                fn(processed)
            finally:
                model_wrap.conds["positive"] = self._positive
                self._guider = self._extra_args = None

        try:
            # A non-zero latent is shifted into the model's space by the guider (process_latent_in).
            guider.sample(torch.zeros_like(latents), latents, _RunInside(inside), torch.tensor([1.0, 0.0]),
                          seed=seed)
        finally:
            if was_training is not None:
                comfy.model_management.in_training = was_training
            self.release()

    def release(self) -> None:
        """Unload our patched clone so the shared model carries no training wrappers afterwards."""
        loaded = comfy.model_management.current_loaded_models
        for i in range(len(loaded) - 1, -1, -1):
            if loaded[i].model is self.patcher:
                loaded.pop(i).model_unload()
