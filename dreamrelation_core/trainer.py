"""Relation LoRA triplet training: hybrid mask training + relational contrastive loss (docs/method.md).

One step: draw an exemplar and a group (relation / subject1 / subject2, 1/3 each), activate that group's adapters,
noise the cached VAE posterior sample at σ ~ U(0, 1), predict the velocity, and minimise
MSE + 50·masked MSE + 0.01·RCL. Checkpoints hold everything needed to continue the exact same trajectory, and the
run's fingerprint (checkpoints.py): Ctrl-C and SIGTERM finish the step under way, then checkpoint; an error inside a
step discards it, so the checkpoint holds the state before it (docs/reliability.md).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import shutil
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file, save
from tqdm.auto import tqdm

from .archs import INFERENCE_ROLES, ROLES, Architecture
from . import distributed
from .blockswap import BlockSwap
from .checkpoints import (checkpoint_step, checkpoints, differing_settings, items_digest, latest_checkpoint,
                          run_settings, stale_checkpoints)
from .config import RunConfig, config_to_dict
from .data import TrainingItem, prepare_training_set
from .flow import check_sigma_range, noisy_latents, train_sigmas, velocity_target
from .files import atomic_write_many, atomic_write_text
from .formats import RelationLora, file_digest, save_lora_pair
from .losses import RelationalContrastiveBank, as_random_state, frame_features, hybrid_mask_loss
from .masks import draw_group, group_mask
from .triplet import GROUP_ROLES, activate, inject_triplet, lora_from_model, lora_parameters

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA if there is one, else the CPU; under torchrun each rank takes its own GPU (LOCAL_RANK)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and distributed.active():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' -> bf16 on CUDA (where supported), fp32 elsewhere; else one of bf16/fp16/fp32/no."""
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if name == "no":
        return torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown precision {name!r}; expected auto, bf16, fp16, fp32 or no")
    return DTYPES[name]


COMPILE_MIN_DIFFUSERS = (0, 40)   # compiled Wan blocks of diffusers 0.36–0.39 give gradients 10 % off (test)


def _check_compile_support() -> None:
    import diffusers

    version = tuple(int(x) for x in diffusers.__version__.split(".")[:2])
    if version < COMPILE_MIN_DIFFUSERS:
        raise ValueError(f"train.compile needs diffusers >= {'.'.join(map(str, COMPILE_MIN_DIFFUSERS))} (found "
                         f"{diffusers.__version__}: its compiled blocks train on wrong gradients); upgrade diffusers "
                         "or set train.compile false")


def warmup_cosine(warmup: int, total: int):
    """LR factor: linear warm-up over `warmup` steps, then cosine decay to 0 at `total` (the reference schedule)."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


@dataclass
class StepInputs:
    """Everything random about one training step (drawn by `RelationTrainer.draw`)."""

    item: TrainingItem
    group: str | None          # None when hybrid mask training is off: all adapters, no mask weighting
    drop_caption: bool
    sigma: torch.Tensor        # [1]
    noise: torch.Tensor        # [1, C, f, h, w]
    posterior_noise: torch.Tensor


class TrainerBackend(Protocol):
    """What `RelationTrainer` trains through: the diffusers backend (`PeftBackend`) or ComfyUI's native MODEL
    (`nodes/comfy_backend.py`). `preview(...)` is optional."""

    arch: Architecture
    device: torch.device
    name: str

    def parameters(self) -> dict: ...                     # name -> every LoRA parameter of the triplet
    def activate(self, roles) -> None: ...                # run exactly these roles' adapters

    def velocity(self, latents, sigma, items: list) -> torch.Tensor:
        """Canonical ε − z0 [B, C, f, h, w] at `latents` [B, C, f, h, w], σ [B], each sample with its item's caption
        (`items`: B TrainingItems), or the unconditional input where None (caption dropout); each backend holds
        captions its own way. `max_batch` says how large B may be."""
    def lora(self, alphas: dict, info: dict) -> RelationLora: ...               # the triplet's weights


class PeftBackend:
    """The diffusers backend (`TrainerBackend`): a loaded `Base` whose transformer carries the triplet as named
    peft adapters."""

    def __init__(self, base, config: RunConfig, device: torch.device):
        self.base, self.arch, self.device, self.name = base, base.arch, device, base.name
        self.sigma_range = base.sigma_range
        t = config.train
        self.dtype = resolve_dtype(t.base_dtype, device)
        self.autocast_dtype = resolve_dtype(t.mixed_precision, device)
        self.transformer = base.transformer
        self.offload_activations = t.offload_activations
        with torch.random.fork_rng(devices=[]):   # LoRA A init from the run's seed: same config, same run
            torch.manual_seed(t.seed)
            self.targets = inject_triplet(self.transformer, self.arch, config.lora)
        if t.fp8_storage:
            # diffusers' layerwise casting: each layer's weights are upcast just for its forward pass. After the
            # adapters are added (peft would create them in the base's fp8), which it leaves alone by default.
            self.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=self.dtype)
        self._params = lora_parameters(self.transformer)
        if t.gradient_checkpointing and getattr(self.transformer, "_supports_gradient_checkpointing", False):
            self.transformer.enable_gradient_checkpointing()
        if t.compile:                 # block by block: small graphs, and the checkpointed blocks stay as they are
            _check_compile_support()
            for block in getattr(self.transformer, self.arch.diffusers_blocks):
                block.compile()
        self.block_swap = (BlockSwap(getattr(self.transformer, self.arch.diffusers_blocks), t.block_swap, device)
                           if t.block_swap else None)
        self.transformer.train()
        text, mask = base.null_text(1)
        self.null_text = (text[0], mask[0])      # one caption: [L, D], [L], like TrainingItem.text

    def parameters(self) -> dict:
        return self._params

    def activate(self, roles) -> None:
        activate(self.transformer, roles)

    max_batch = None          # any batch size

    def velocity(self, latents, sigma, items) -> torch.Tensor:
        texts = [self.null_text if item is None else (item.text, item.text_mask) for item in items]
        text, text_mask = (torch.stack(parts) for parts in zip(*texts))
        device = self.device
        offload = (torch.autograd.graph.save_on_cpu(pin_memory=device.type == "cuda") if self.offload_activations
                   else contextlib.nullcontext())
        with offload, torch.autocast(device.type, dtype=self.autocast_dtype,
                                     enabled=self.autocast_dtype != torch.float32):
            return self.arch.velocity(self.transformer, latents.to(self.dtype), sigma.to(device),
                                      text.to(device, self.dtype), text_mask.to(device))

    def lora(self, alphas: dict, info: dict):
        if Path(self.name).is_file():
            info = {**info, "base_hash": file_digest(self.name)}
        return lora_from_model(self.transformer, self.arch, alphas, ROLES, info)

    def preview(self, prompts, path_of, frames, height, width, steps, cfg, seed,
                lora_sigma_min=None) -> list[Path]:
        """Sample `prompts` with the inference set (relation + ffn), on the steps with σ ≥ `lora_sigma_min` only if
        given; `path_of(k)` names the k-th video."""
        from .sampling import generate, to_uint8_frames
        from .videoio import write_video

        activate(self.transformer, INFERENCE_ROLES)
        return [write_video(path_of(k), to_uint8_frames(generate(self.base, prompt, frames, height, width, steps, cfg,
                                                                 seed, progress=False, lora_sigma_min=lora_sigma_min)),
                            self.arch.fps)
                for k, prompt in enumerate(prompts)]


class RelationTrainer:
    """Trains a relation LoRA triplet from exemplars with hybrid mask training and RCL.

    It trains through a `backend` on encoded `items`; `from_config` builds both for the diffusers backend (the
    ComfyUI Train node builds its own).
    """

    def __init__(self, config: RunConfig, backend: TrainerBackend, items: list[TrainingItem], output_dir=None,
                 progress: bool = True, overwrite: bool = False):
        self.config, self.progress = config, progress
        self.out = Path(output_dir or config.output_dir)
        self.backend, self.items = backend, items
        if not self.items:
            raise ValueError("no training exemplars")
        unmasked = [item.name for item in items if item.masks is None]
        if unmasked and config.train.hybrid_masks:
            raise ValueError(f"exemplars without subject masks: {unmasked}; hybrid mask training "
                             "(train.hybrid_masks) needs them: mask them, or train without hybrid masks")
        self.arch, self.device = backend.arch, backend.device
        self.params = backend.parameters()

        t = config.train
        self.optimizer = torch.optim.AdamW(self.params.values(), lr=t.learning_rate, weight_decay=t.weight_decay)
        horizon = t.schedule_steps or t.steps
        warmup = min(200, horizon // 5) if t.warmup_steps is None else t.warmup_steps     # the one warm-up rule
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(warmup, horizon))
        self.rng = random.Random(t.seed)
        self.generator = torch.Generator().manual_seed(t.seed)
        r = config.rcl
        self.bank = RelationalContrastiveBank(r.n_pos, r.n_neg, r.positive_bank, r.negative_bank, r.temperature,
                                              seed=t.seed + 1)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=getattr(backend, "autocast_dtype", None)
                                           == torch.float16)   # fp16 autocast: gradients scaled (and unscaled)
        self.settings = run_settings(config, items_digest(self.items))
        self.overwrite = overwrite
        self.step, self._saved_step, self._updating, self._stop_signal = 0, None, False, None
        self.pending_features = []
        self.rank, self.world = distributed.rank(), distributed.world_size()
        own = getattr(backend, "sigma_range", None) or (0.0, 1.0)        # a Wan 2.2 expert's, else all of [0, 1]
        self.sigma_range = (own[0] if t.sigma_min is None else t.sigma_min, own[1] if t.sigma_max is None else t.sigma_max)
        check_sigma_range(*self.sigma_range)
        limit = getattr(backend, "max_batch", None)
        if limit is not None and t.batch_size > limit:
            raise ValueError(f"train.batch_size {t.batch_size}: this backend trains {limit} exemplar(s) per forward "
                             "pass; use train.gradient_accumulation for more exemplars a step")

    @classmethod
    def from_config(cls, config: RunConfig, output_dir=None, base=None, items=None, progress: bool = True,
                    overwrite: bool = False) -> "RelationTrainer":
        """The diffusers backend: load `config.base` (unless `base` is given), encode the exemplars of
        `config.data` (cached; unless `items` are given) and inject the triplet with peft."""
        from .bases import load_base

        out = Path(output_dir or config.output_dir)
        device = resolve_device(config.device)
        base = base or load_base(config.base, config.components, dtype=resolve_dtype(config.train.base_dtype, device),
                                 expert=config.expert)
        base.to(device)
        cache = Path(config.data.cache_dir) if config.data.cache_dir else out / "cache"
        if items is None:             # rank 0 encodes the exemplars into the cache; the other ranks then read it
            if distributed.rank() == 0:
                items = prepare_training_set(base, config.data, cache, progress, config.train.hybrid_masks)
            distributed.barrier()
            if items is None:
                items = prepare_training_set(base, config.data, cache, False, config.train.hybrid_masks)
        return cls(config, PeftBackend(base, config, device), items, out, progress, overwrite)

    # ---- one step -------------------------------------------------------------------------------------------
    def draw(self, group=...) -> StepInputs:
        """The random inputs of one exemplar; the group is drawn too unless given (the step's later exemplars)."""
        t = self.config.train
        item = self.items[self.rng.randrange(len(self.items))]
        if group is ...:
            group = draw_group(self.rng, t.group_weights) if t.hybrid_masks else None
        drop = self.rng.random() < t.caption_dropout
        sigma = train_sigmas(1, self.generator, t.sigma_shift, *self.sigma_range)
        shape = (1, *item.latent_mean.shape)
        noise = torch.randn(shape, generator=self.generator)
        posterior_noise = torch.randn(shape, generator=self.generator)
        return StepInputs(item, group, drop, sigma, noise, posterior_noise)

    def draw_step(self) -> list[list[StepInputs]]:
        """The inputs of one optimiser step: `gradient_accumulation` passes of `batch_size` exemplars per rank
        (all ranks' together), all of the step's group (hybrid mask training gates adapters per forward pass).
        Drawn exemplar by exemplar, so that a batch of k, k accumulated passes of one and k ranks of one draw the
        same."""
        t = self.config.train
        per_pass = t.batch_size * self.world
        first = self.draw()
        flat = [first] + [self.draw(first.group) for _ in range(per_pass * t.gradient_accumulation - 1)]
        return [flat[k:k + per_pass] for k in range(0, len(flat), per_pass)]

    def loss(self, inputs, push: bool = True, skip: tuple = (0, 0)) -> tuple[torch.Tensor, dict]:
        """Forward with the drawn group's adapters on one batch (`inputs`: StepInputs, or a list sharing a group);
        returns (total loss, parts). Pushes RCL features to the banks unless `push` is False (then they wait in
        `pending_features` for the end of the step). `skip`: the pass's samples before and after these that other
        ranks compute (RelationalContrastiveBank.loss)."""
        batch = [inputs] if isinstance(inputs, StepInputs) else list(inputs)
        device, group = self.device, batch[0].group
        shapes = {tuple(s.item.latent_mean.shape) for s in batch}
        if len(shapes) > 1:
            raise ValueError(f"train.batch_size {len(batch)}: exemplars {[s.item.name for s in batch]} have latents "
                             f"of different shapes {sorted(shapes)}; give them one size and frame count, or use "
                             "train.batch_size 1 with train.gradient_accumulation")
        roles = GROUP_ROLES[group] if group else ROLES
        if not self.config.train.subject_loras:         # "w/o Subject LoRAs": only the roles kept at inference run
            roles = tuple(r for r in roles if r in INFERENCE_ROLES)
        self.backend.activate(roles)
        z0 = torch.stack([s.item.latent_mean for s in batch]).to(device)
        if self.config.train.posterior == "sample":
            z0 = z0 + torch.stack([s.item.latent_std * s.posterior_noise[0] for s in batch]).to(device)
        noise = torch.cat([s.noise for s in batch]).to(device)
        sigma = torch.cat([s.sigma for s in batch]).to(device)
        pred = self.backend.velocity(noisy_latents(z0, noise, sigma), sigma,
                                     [None if s.drop_caption else s.item for s in batch])
        target = velocity_target(z0, noise)
        if group:
            mask = torch.stack([group_mask(s.item.masks.to(device), group) for s in batch])
            rec = hybrid_mask_loss(pred, target, mask, self.config.train.mask_weight)
        else:
            rec = hybrid_mask_loss(pred, target, torch.zeros_like(target[:, 0]), 0.0)
        rcl = self.bank.loss(pred, push=push, skip=skip) if self.config.rcl.enabled else rec.new_zeros(())
        if self.config.rcl.enabled and not push:
            self.pending_features.append(frame_features(pred).detach())
        total = rec + self.config.rcl.weight * rcl
        return total, {"rec": rec.item(), "rcl": rcl.item()}

    def train_step(self) -> dict:
        """One optimiser step. An exception before the update (an error, a non-finite loss, a second Ctrl-C)
        leaves the run as it was before the step: its random draws and RCL banks are put back."""
        before = self._random_state()
        self.pending_features = []
        try:
            batches = self.draw_step()
            inputs = batches[0][0]
            if self.world > 1 and len({tuple(s.item.latent_mean.shape) for b in batches for s in b}) > 1:
                raise ValueError("data parallel training needs exemplars of one size and frame count (the ranks "
                                 "exchange their contrastive features)")
            total, parts = 0.0, {}
            size = self.config.train.batch_size
            for batch in batches:         # each pass's mean loss / passes: the mean over the step's exemplars
                loss, batch_parts = self.loss(batch[self.rank * size:(self.rank + 1) * size], push=False,
                                              skip=(self.rank * size, (self.world - self.rank - 1) * size))
                if not distributed.all_true(bool(torch.isfinite(loss)), self.device):
                    raise NonFiniteLoss(f"the loss is {loss.item()} at step {self.step + 1} (group {inputs.group}, "
                                        f"σ {', '.join(f'{float(s.sigma):.3f}' for s in batch)})")
                self.scaler.scale(loss / len(batches)).backward()
                total += loss.item() / len(batches)
                parts = {k: parts.get(k, 0.0) + v / len(batches) for k, v in batch_parts.items()}
            for feats in self.pending_features:
                self.bank.push_features(distributed.gather(feats))
            # The reference multiplies inactive LoRAs by zero, so AdamW still sees a zero gradient for them
            # (momentum and weight decay move them). We skip their compute but keep that optimiser behaviour.
            for p in self.params.values():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            distributed.average_gradients(list(self.params.values()))
            total, *values = distributed.mean([total, *parts.values()], self.device)
            parts = dict(zip(parts, values))
            self.scaler.unscale_(self.optimizer)
            max_norm = self.config.train.max_grad_norm
            grad_norm = float(torch.nn.utils.clip_grad_norm_(list(self.params.values()), max_norm or math.inf))
            if not math.isfinite(grad_norm) and not self.scaler.is_enabled():   # fp16: the scaler skips the step
                raise NonFiniteLoss(f"the gradient norm is {grad_norm} at step {self.step + 1} "
                                    f"(group {inputs.group}, σ {float(inputs.sigma):.3f})")
        except BaseException:
            self.optimizer.zero_grad(set_to_none=True)
            self._set_random_state(before)
            raise
        lr = self.scheduler.get_last_lr()[0]
        self._updating = True          # a second Ctrl-C waits for the update to finish
        try:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
        finally:
            self._updating = False
        drawn = [s for batch in batches for s in batch]
        record = {"step": self.step, "group": inputs.group,
                  "item": inputs.item.name if len(drawn) == 1 else [s.item.name for s in drawn],
                  "sigma": float(inputs.sigma) if len(drawn) == 1 else [float(s.sigma) for s in drawn],
                  "loss": total, **parts, "grad_norm": grad_norm, "lr": lr}
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        return record

    def _random_state(self):
        return self.rng.getstate(), self.generator.get_state(), self.bank.state_dict()

    def _set_random_state(self, state) -> None:
        rng, generator, bank = state
        self.rng.setstate(rng)
        self.generator.set_state(generator)
        self.bank.load_state_dict(bank)

    # ---- loop ------------------------------------------------------------------------------------------------
    def train(self, max_steps: int | None = None, callback=None) -> Path:
        """Train up to `config.train.steps` (or `max_steps` total, if smaller); save checkpoints and the LoRA.

        `callback(record)` runs after every step. Ctrl-C or SIGTERM (in the main thread) finish the step under way,
        save a checkpoint and raise `TrainingInterrupted`; an exception from the callback (ComfyUI's Cancel) or
        from a step saves a checkpoint of the last finished step and propagates. `resume` continues exactly.
        A fresh run refuses a folder that holds another run's checkpoints unless the trainer was made with
        `overwrite=True`. Returns the path of the relation LoRA file.
        """
        t = self.config.train
        end = min(t.steps, max_steps) if max_steps is not None else t.steps
        if self.rank == 0:
            if self.step == 0:
                self._claim_output_folder()
            self._truncate_log()
        distributed.barrier()
        bar = tqdm(total=end, initial=self.step, desc="training", disable=not self.progress or self.rank != 0,
                   dynamic_ncols=True)
        try:
            with self._deferred_signals():
                while self.step < end:
                    record = self.train_step()
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", group=record["group"])
                    if t.checkpoint_every and self.step % t.checkpoint_every == 0:
                        self.save_checkpoint()
                    if self.config.sample.every and self.step % self.config.sample.every == 0:
                        self.preview(f"step_{self.step:06d}")
                    if callback is not None:
                        callback(record)
                    if self._stop_signal is not None:
                        raise TrainingInterrupted(self._stop_signal, self.step, self.save_checkpoint())
        except TrainingInterrupted:
            raise
        except BaseException as error:
            saved = self.save_checkpoint() if self.step > 0 else None
            if isinstance(error, KeyboardInterrupt) and saved is not None:     # a second Ctrl-C, mid-step
                raise TrainingInterrupted(signal.SIGINT, self.step, saved) from None
            if isinstance(error, NonFiniteLoss):
                saved = f"; the last good state (step {self.step}) is saved in {self.out / 'checkpoints'}" \
                    if self.step > 0 else ""
                raise NonFiniteLoss(f"{error}{saved}. Lower train.learning_rate, set train.max_grad_norm (e.g. 1.0) "
                                    "or train in bf16/fp32") from None
            raise
        finally:
            bar.close()
        self.save_checkpoint()
        return self.save_lora()

    def _claim_output_folder(self) -> None:
        """A fresh run: refuse (or, with overwrite, clear) checkpoints already in the output folder, which belong to
        an earlier run that pruning and resume would otherwise mix with this one."""
        found = checkpoints(self.out)
        if not found:
            return
        if not self.overwrite:
            ckpt = found[-1]
            settings = _checkpoint_settings(ckpt)
            differ = differing_settings(settings, self.settings) if settings is not None else []
            which = ("another run (" + ", ".join(differ) + ")") if differ else "a run with these settings"
            raise ValueError(f"output folder {self.out} already holds checkpoints of {which}, up to step "
                             f"{checkpoint_step(ckpt)}; continue it with --resume {self.out}, train into another "
                             "folder, or delete its checkpoints folder")
        shutil.rmtree(self.out / "checkpoints")

    @contextlib.contextmanager
    def _deferred_signals(self):
        """Within: the first SIGINT/SIGTERM only asks the loop to stop after the step under way; a second SIGINT
        aborts that step (the run then checkpoints the step before). Only in the main thread (where Python runs
        signal handlers); elsewhere (ComfyUI's worker) interruption comes through the callback."""
        def handle(signum, frame):
            if self._stop_signal is not None and signum == signal.SIGINT and not self._updating:
                raise KeyboardInterrupt
            self._stop_signal = signum

        self._stop_signal, saved = None, {}
        if threading.current_thread() is threading.main_thread():
            saved = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)

    # ---- outputs ---------------------------------------------------------------------------------------------
    def save_lora(self, path=None) -> Path:
        """Write the inference set (relation + ffn) in ComfyUI-native keys to `<output_dir>/<name>.safetensors`
        and the subject LoRAs beside it (`<name>.subjects.safetensors`, for experiments)."""
        path = Path(path or self.out / f"{self.config.name}.safetensors")
        if self.rank != 0:            # rank 0 writes; the weights are the same on every rank
            distributed.barrier()
            return path
        captions = sorted({item.caption for item in self.items})
        info = {"caption": captions[0] if len(captions) == 1 else captions, "steps": self.step,
                "base": self.backend.name, "expert": self.config.expert, "name": self.config.name}
        lora = self.backend.lora({role: self.config.lora.alpha_of(role) for role in ROLES}, info)
        path = save_lora_pair(path, lora)
        distributed.barrier()
        return path

    def preview(self, tag: str) -> list[Path]:
        """Sample the configured prompts with the inference set into `<output_dir>/samples` (if the backend can)."""
        s, d = self.config.sample, self.config.data
        if not s.prompts or not hasattr(self.backend, "preview") or self.rank != 0:
            return []
        return self.backend.preview(s.prompts, lambda k: self.out / "samples" / f"{tag}_{k}.mp4",
                                    s.frames or d.frames, s.height or d.height, s.width or d.width, s.steps, s.cfg,
                                    s.seed, s.lora_sigma_min)

    # ---- checkpoints -----------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """`<output_dir>/checkpoints/step_NNNNNN/` = lora.safetensors (all roles) + state.pt (with the run's
        fingerprint); written to a temp folder, then renamed. The step's checkpoint if one is already saved."""
        root = self.out / "checkpoints"
        final = root / f"step_{self.step:06d}"
        if self.rank != 0:            # rank 0 writes: every rank holds the same state
            distributed.barrier()
            self._saved_step = self.step
            return final
        if self._saved_step == self.step and (final / "state.pt").is_file():
            distributed.barrier()
            return final
        tmp = root / f".step_{self.step:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        state = io.BytesIO()       # serialised here, written by atomic_write_many: a full disk is an OSError
        torch.save({"step": self.step, "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                    "rng": self.rng.getstate(), "generator": self.generator.get_state(),
                    "bank": self.bank.state_dict(), "config": json.dumps(config_to_dict(self.config)),
                    "settings": json.dumps(self.settings)}, state)
        weights = save({n: p.detach().float().cpu().contiguous() for n, p in self.params.items()})
        try:
            atomic_write_many([(tmp / "lora.safetensors", weights), (tmp / "state.pt", state.getvalue())])
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        self._saved_step = self.step
        for old in stale_checkpoints(self.out, self.step, self.config.train.keep_checkpoints):
            shutil.rmtree(old, ignore_errors=True)
        distributed.barrier()
        return final

    def resume(self, path) -> int:
        """Continue from a checkpoint folder, or the latest checkpoint of a run folder. Returns the step. Refuses a
        checkpoint trained with other settings or exemplars (checkpoints.RESUMABLE says which may change)."""
        ckpt = latest_checkpoint(path)
        settings = _checkpoint_settings(ckpt)
        differ = differing_settings(settings, self.settings) if settings is not None else []
        if differ:
            raise ValueError(f"checkpoint {ckpt} was trained with other settings: {', '.join(differ)}; resume it "
                             "with its own settings, or train anew into another folder")
        weights = load_file(str(ckpt / "lora.safetensors"))
        missing = sorted(set(self.params) - set(weights))
        if missing:
            raise ValueError(f"checkpoint {ckpt} does not match this triplet: {len(missing)} LoRA tensors missing, "
                             f"e.g. {missing[0]}")
        for name, param in self.params.items():
            if weights[name].shape != param.shape:
                raise ValueError(f"checkpoint {ckpt} does not match this triplet: {name} is "
                                 f"{tuple(weights[name].shape)} there, {tuple(param.shape)} here (another lora.rank?)")
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(weights[name])
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.rng.setstate(as_random_state(state["rng"]))
        self.generator.set_state(state["generator"])
        self.bank.load_state_dict(state["bank"])
        self.step = self._saved_step = int(state["step"])
        return self.step

    def _truncate_log(self) -> None:
        """Drop log lines past the current step (all of them for a fresh run, those after the checkpoint for a
        resumed one) so log.jsonl always holds one trajectory."""
        log = self.out / "log.jsonl"
        if log.exists():
            lines = [l for l in log.read_text().splitlines() if l and json.loads(l)["step"] <= self.step]
            atomic_write_text(log, "".join(l + "\n" for l in lines))


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training after a finished step, whose checkpoint is saved."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint {checkpoint}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


class NonFiniteLoss(ValueError):
    """The loss or the gradients became NaN or infinite."""


def _checkpoint_settings(ckpt: Path) -> dict | None:
    """The fingerprint saved with a checkpoint (None for checkpoints from before it was saved)."""
    state = torch.load(Path(ckpt) / "state.pt", map_location="cpu", weights_only=True)
    return json.loads(state["settings"]) if "settings" in state else None
