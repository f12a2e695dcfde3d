"""Train Relation Triplet: DreamRelation training on ComfyUI's native MODEL, CLIP and VAE."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path

import torch

import comfy.model_management
import comfy.sd
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..dreamrelation_core.archs import MODEL_FAMILIES
from ..dreamrelation_core.checkpoints import differing_settings, flatten
from ..dreamrelation_core.config import DataConfig, RCLConfig, RunConfig, SampleConfig, TrainConfig
from ..dreamrelation_core.data import TrainingItem, prepare_clip
from ..dreamrelation_core.flow import check_sigma_range
from ..dreamrelation_core.files import atomic_write_json
from ..dreamrelation_core.formats import subjects_path
from ..dreamrelation_core.masks import latent_masks
from ..dreamrelation_core.trainer import RelationTrainer, latest_checkpoint
from ..dreamrelation_core.triplet import TripletConfig
from .comfy_backend import SIGMA_FLOOR, ComfyBackend
from .common import CATEGORY, MAX_RESOLUTION, Exemplars, image_to_uint8, prompt_server

# Role placements any family offers; one a model's family lacks is refused before its exemplars are encoded.
PLACEMENTS = ["default", *sorted({name for arch in MODEL_FAMILIES.values() for name in arch.placements})]


def _clone_conditioning(cond):
    """Conditioning from other nodes holds inference-mode tensors; training needs ordinary ones. Hook groups (a CLIP
    with Set CLIP Hooks) are left out: current ComfyUI's guider would sample a non-dynamic copy of the MODEL for them,
    one without the triplet being trained (docs/comfyui.md)."""
    return [[c[0].clone(), {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in c[1].items()
                            if k != "hooks"}] for c in cond]


def _unconditional(arch, clip, cond):
    """Caption-dropout conditioning as the reference trains it: Mochi all-zero text and mask, Wan the empty prompt."""
    if arch.uncond_text == "zeros":
        return [[torch.zeros_like(c[0]), {k: (torch.zeros_like(v) if isinstance(v, torch.Tensor) else v)
                                          for k, v in c[1].items()}] for c in cond[:1]]
    return _clone_conditioning(clip.encode_from_tokens_scheduled(clip.tokenize("")))


def run_directory(name: str) -> Path:
    return Path(folder_paths.get_output_directory()) / "dreamrelation" / name


class TrainRelationTriplet(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamRelationTrain",
            display_name="Train Relation Triplet",
            category=CATEGORY,
            description="Trains a DreamRelation relation LoRA triplet (hybrid mask training + relational contrastive "
                        "loss) on the native model and saves the relation LoRA (relation + FFN roles) to models/loras.",
            not_idempotent=True,
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="Native Wan 2.1/2.2 text-to-video or Mochi model to train on."),
                io.Clip.Input("clip", tooltip="The model's text encoder; encodes each exemplar's caption."),
                io.Vae.Input("vae", tooltip="The model's VAE; encodes the exemplar videos."),
                Exemplars.Input("exemplars", tooltip="Exemplar videos of one relation, with subject masks for "
                                                     "hybrid mask training."),
                io.String.Input("lora_name", default="my_relation",
                                tooltip="File name (without extension) of the relation LoRA in models/loras."),
                io.Int.Input("steps", default=2400, min=1, max=100000, tooltip="Training steps (paper: 2400)."),
                # Explicit `round` on every float: the frontend snaps a typed value to it (by default to the step, so
                # a typed 0.01 with step 0.1 became 0 and RCL silently went off), and to the decimals of the step
                # (so learning_rate steps by 1e-7: with 1e-5 a typed 1e-6 became the minimum).
                io.Float.Input("learning_rate", default=2e-4, min=1e-7, max=1.0, step=1e-7, round=1e-8,
                               tooltip="AdamW learning rate (warm-up over 200 steps or a fifth of the run, "
                                       "then cosine decay)."),
                io.Int.Input("rank", default=16, min=1, max=256, tooltip="LoRA rank of every role."),
                io.Float.Input("alpha", default=16.0, min=0.01, max=1024.0, step=0.5, round=0.01,
                               tooltip="LoRA alpha (scale = alpha/rank)."),
                io.Int.Input("width", default=832, min=16, max=MAX_RESOLUTION, step=16,
                             tooltip="Training width; exemplars are centre-cropped and resized."),
                io.Int.Input("height", default=480, min=16, max=MAX_RESOLUTION, step=16, tooltip="Training height."),
                io.Int.Input("length", default=49, min=1, max=MAX_RESOLUTION, step=1,
                             tooltip="Frames per clip: 4k+1 for Wan, 6k+1 for Mochi (the first frames are used)."),
                io.Float.Input("mask_weight", default=50.0, min=0.0, max=1000.0, step=0.5, round=0.001,
                               tooltip="Hybrid mask training weight λm (paper: 50)."),
                io.Float.Input("rcl_weight", default=0.01, min=0.0, max=10.0, step=0.001, round=0.0001,
                               tooltip="Relational contrastive loss weight λ1 (paper: 0.01); 0 turns RCL off."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seed of the whole run."),
                io.Int.Input("checkpoint_every", default=200, min=0, max=100000,
                             tooltip="Save a resumable checkpoint every N steps (and on Cancel)."),
                io.Boolean.Input("resume", default=True,
                                 tooltip="Continue from the newest checkpoint of this lora_name, if there is one."),
                io.Boolean.Input("gradient_checkpointing", default=True, optional=True,
                                 tooltip="Recompute block activations in the backward pass to save memory."),
                io.Int.Input("preview_every", default=0, min=0, max=100000, optional=True,
                             tooltip="Render the preview prompt with the relation LoRA every N steps (0: never); "
                                     "videos go to output/dreamrelation/<lora_name>/samples."),
                io.String.Input("preview_prompt", default="", multiline=True, optional=True,
                                tooltip="Prompt with new subjects for the previews, e.g. 'A bear is high-fiving "
                                        "with a raccoon.'"),
                io.Int.Input("preview_steps", default=30, min=1, max=1000, optional=True,
                             tooltip="Sampling steps of each preview."),
                io.Float.Input("sigma_min", default=0.0, min=0.0, max=1.0, step=0.005, round=0.0001, optional=True,
                               tooltip="Train on noise levels σ from sigma_min to sigma_max only (the reference: 0 "
                                       "to 1). E.g. 0.875 to 1 for Wan 2.2's high-noise expert; the SynthRel demo "
                                       "trains from 0.4, where its relation is decided."),
                io.Float.Input("sigma_max", default=1.0, min=0.0, max=1.0, step=0.005, round=0.0001, optional=True,
                               tooltip="Upper end of the trained noise levels (e.g. 0.875 for Wan 2.2's low-noise "
                                       "expert)."),
                io.Combo.Input("placement", options=PLACEMENTS, default="default", optional=True,
                               tooltip="Which modules each role adapts. default: the architecture's (reference: "
                                       "relation on Q/K, subjects on V, FFN on the attention outputs). Wan also "
                                       "has reference_mlp, relation_mlp and motion_vo (docs/method.md)."),
                io.Boolean.Input("hybrid_masks", default=True, optional=True,
                                 tooltip="Hybrid mask training, the paper's: each step trains the relation or one "
                                         "subject's LoRAs, its loss weighted by that mask. Off: every role every "
                                         "step, no mask weighting; on Wan-shaped models it carried the relation "
                                         "over without the exemplars' looks more often (docs/method.md), and "
                                         "the exemplars need no masks."),
                # Last, so that workflows saved before it keep their widget values (read by position).
                io.Float.Input("preview_switch_sigma", default=0.0, min=0.0, max=1.0, step=0.01, round=0.001,
                               optional=True,
                               tooltip="Previews with the LoRA on the steps at σ ≥ this only and the model alone "
                                       "below, as Relation Sample with low_noise_model samples (0: every step)."),
            ],
            hidden=[io.Hidden.unique_id],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The input model with the trained relation LoRA."),
                io.String.Output(display_name="lora_path", tooltip="Where the relation LoRA was written."),
                io.LossMap.Output(display_name="loss",
                                  tooltip="The loss of every step of the run (resumed steps included), for "
                                          "ComfyUI's loss graph node."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, vae, exemplars, lora_name, steps, learning_rate, rank, alpha, width, height,
                length, mask_weight, rcl_weight, seed, checkpoint_every, resume, gradient_checkpointing=True,
                preview_every=0, preview_prompt="", preview_steps=30, sigma_min=0.0, sigma_max=1.0,
                placement="default", hybrid_masks=True, preview_switch_sigma=0.0):
        if not exemplars:
            raise ValueError("exemplars: the exemplar set is empty")
        names = [ex["name"] for ex in exemplars]
        if len(set(names)) != len(names):
            raise ValueError(f"exemplars: names must be unique, got {sorted({n for n in names if names.count(n) > 1})} "
                             "more than once")
        unmasked = [ex["name"] for ex in exemplars if ex["masks"] is None]
        if unmasked and hybrid_masks:
            raise ValueError(f"exemplars {unmasked} have no subject masks, which hybrid mask training needs: connect "
                             "their masks, or turn hybrid_masks off")
        check_sigma_range(sigma_min, sigma_max)                 # now, not after the exemplars are encoded
        if not lora_name.strip() or Path(lora_name).name != lora_name:
            raise ValueError(f"lora_name must be a plain file name, got {lora_name!r}")
        lora = TripletConfig(rank=rank, alpha=alpha, placement=None if placement == "default" else placement)
        config = RunConfig(name=lora_name, lora=lora,
                           train=TrainConfig(steps=steps, learning_rate=learning_rate, mask_weight=mask_weight,
                                             hybrid_masks=hybrid_masks, seed=seed, checkpoint_every=checkpoint_every,
                                             sigma_min=max(SIGMA_FLOOR, sigma_min), sigma_max=sigma_max,
                                             gradient_checkpointing=gradient_checkpointing),
                           rcl=RCLConfig(enabled=rcl_weight > 0, weight=rcl_weight),
                           data=DataConfig(frames=length, height=height, width=width),
                           sample=SampleConfig(every=preview_every if preview_prompt.strip() else 0,
                                               prompts=[preview_prompt.strip()] if preview_prompt.strip() else [],
                                               steps=preview_steps, seed=seed,
                                               lora_sigma_min=preview_switch_sigma or None))
        out = run_directory(lora_name)
        settings = _run_settings(config, exemplars)
        resuming = resume and (out / "checkpoints").is_dir()
        if resuming:
            _check_same_run(out, settings, lora_name)
        elif (out / "checkpoints").is_dir():
            shutil.rmtree(out / "checkpoints")        # resume off: train anew, never mix with the old run's files
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / RUN_FILE, settings)
        with torch.inference_mode(False), torch.enable_grad():
            backend = ComfyBackend(model, config.lora, seed)
            arch = backend.arch
            arch.latent_frames(length)
            clips, positive = _encode_exemplars(exemplars, clip, vae, length, height, width)
            latents = torch.cat([c[2] for c in clips]).float()
            negative = _unconditional(arch, clip, positive)
            for prompt in config.sample.prompts:
                backend.preview_conds[prompt] = len(positive)
                positive += _clone_conditioning(clip.encode_from_tokens_scheduled(clip.tokenize(prompt)))

            def decode(latents):
                frames = vae.decode(backend.patcher.model.process_latent_out(latents))   # [..., F, H, W, 3] in [0, 1]
                return frames.reshape(-1, *frames.shape[-3:]).permute(3, 0, 1, 2) * 2 - 1

            backend.decode = decode
            node_id = getattr(getattr(cls, "hidden", None), "unique_id", None)
            result = {}

            def train(processed):
                items = [TrainingItem(ex["name"], ex["caption"], processed[i].float().cpu(),
                                      torch.zeros_like(processed[i].float().cpu()), None, None,
                                      None if masks is None
                                      else latent_masks(masks, tuple(processed.shape[-3:]), arch.temporal_ratio))
                         for i, (ex, masks, _) in enumerate(clips)]
                backend.conditioning_of = {ex["name"]: i for i, (ex, _, _) in enumerate(clips)}
                trainer = RelationTrainer(config, output_dir=out, items=items, backend=backend, progress=False)
                if resuming:
                    trainer.resume(latest_checkpoint(out))
                    if trainer.step >= steps:
                        message = (f"{lora_name}: reused the finished run ({trainer.step} steps, same settings and "
                                   "exemplars); turn resume off to train it again")
                        logging.info(message)
                        _progress_text(message, node_id)
                bar = comfy.utils.ProgressBar(steps)
                bar.update_absolute(trainer.step)
                _send_loss(node_id, _logged_losses(out, trainer.step), steps, reset=True)   # the chart's history

                def on_step(record):
                    previewed = config.sample.every and record["step"] % config.sample.every == 0
                    image = _preview_image(backend.last_preview) if previewed else None
                    # also where ComfyUI's Cancel is raised (the server's progress hook)
                    bar.update_absolute(record["step"], preview=image)
                    _progress_text(f"step {record['step']}/{steps}  loss {record['loss']:.4f}  "
                                   f"({record['group'] or 'all'})", node_id)
                    _send_loss(node_id, [(record["step"], record["loss"])], steps)
                    comfy.model_management.throw_exception_if_processing_interrupted()

                # Dynamic VRAM reuses the buffers its weights were streamed into: recompute each block in the
                # backward pass, which streams them again, instead of saving views of them (docs/comfyui.md).
                with _checkpointed_blocks(backend.patcher.model.diffusion_model,
                                          gradient_checkpointing or backend.dynamic):
                    result["lora"] = trainer.train(callback=on_step)

            backend.run(train, latents, positive, negative, seed)
        lora_path = _publish(result["lora"], lora_name)
        lora_sd = comfy.utils.load_torch_file(str(lora_path), safe_load=True)
        trained, _ = comfy.sd.load_lora_for_models(model, None, lora_sd, 1.0, 0)
        losses = _logged_losses(out)
        return io.NodeOutput(trained, str(lora_path), {"loss": [loss for _, loss in losses]})


def _encode_exemplars(exemplars, clip, vae, length: int, height: int, width: int):
    """Per exemplar: (exemplar, pixel masks [F, 2, H, W] or None, native VAE latent), and its caption's
    conditioning."""
    clips, positive = [], []
    for ex in exemplars:
        pixel_masks = None if ex["masks"] is None else ex["masks"].numpy()
        video, masks = prepare_clip(image_to_uint8(ex["frames"]), pixel_masks, length, height, width)
        clips.append((ex, masks, vae.encode(((video.permute(1, 2, 3, 0) + 1) / 2).contiguous())))
        positive += _clone_conditioning(clip.encode_from_tokens_scheduled(clip.tokenize(ex["caption"])))
    return clips, positive


def _preview_image(frames):
    """The middle frame of a preview, as ComfyUI's progress bar takes it."""
    from PIL import Image

    return None if frames is None else ("JPEG", Image.fromarray(frames[len(frames) // 2]), 512)


def _progress_text(text: str, node_id) -> None:
    """Loss under the node in the UI (only when a server is running)."""
    server = prompt_server()
    if server is not None and node_id is not None:
        server.send_progress_text(text, node_id)


RUN_FILE = "run.json"      # in the run folder: the settings and exemplars its checkpoints were trained with


def _run_settings(config: RunConfig, exemplars) -> dict:
    """What a checkpoint may be resumed under: every training setting and a digest of the exemplars (frames, masks,
    captions). Not the checkpoint cadence, and not the length: a run may be continued to more (or fewer) steps, its
    schedule then spanning the new total (the warm-up follows the length in this node)."""
    digest = hashlib.sha256()
    for ex in exemplars:
        digest.update(f"{ex['name']}\0{ex['caption']}\0".encode())
        for tensor in (ex["frames"], ex["masks"]):
            if tensor is None:                  # an exemplar without masks (trained without hybrid masks)
                digest.update(b"no masks")
                continue
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    train = dataclasses.asdict(config.train)
    for key in ("checkpoint_every", "steps", "warmup_steps"):
        train.pop(key)
    return {"lora": dataclasses.asdict(config.lora), "train": train, "rcl": dataclasses.asdict(config.rcl),
            "data": {"frames": config.data.frames, "height": config.data.height, "width": config.data.width},
            "exemplars": digest.hexdigest()}


def _check_same_run(out: Path, settings: dict, lora_name: str) -> None:
    """Refuse to resume a run trained with other settings or exemplars, naming what differs."""
    path = out / RUN_FILE
    if not path.is_file():
        return           # checkpoints from before run.json existed: nothing to compare
    differ = differing_settings(flatten(json.loads(path.read_text())), flatten(json.loads(json.dumps(settings))))
    if differ:
        names = ", ".join(differ)
        raise ValueError(f"lora_name '{lora_name}': its checkpoints in {out} were trained with other settings: "
                         f"{names}. Choose another lora_name, or turn resume off to train anew.")


def _logged_losses(run: Path, upto: int | None = None) -> list[tuple[int, float]]:
    """(step, loss) of every step in the run's log.jsonl (a resumed run's log holds its earlier steps too)."""
    log = run / "log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    losses = {r["step"]: r["loss"] for r in records if upto is None or r["step"] <= upto}
    return sorted(losses.items())


def _send_loss(node_id, points, steps: int, reset: bool = False) -> None:
    """Feed the node's live loss chart (js/dreamrelation.js): `points` (step, loss), after clearing it if `reset`."""
    server = prompt_server()
    if server is not None and node_id is not None:
        server.send_sync("dreamrelation.loss", {"node": str(node_id), "steps": steps, "reset": reset,
                                                "points": [[s, float(l)] for s, l in points]})


def _publish(lora: Path, name: str) -> Path:
    """Copy the relation LoRA (and its subjects file) into the first models/loras folder (atomically)."""
    target_dir = Path(folder_paths.get_folder_paths("loras")[0])
    target_dir.mkdir(parents=True, exist_ok=True)
    pairs = [(lora, target_dir / f"{name}.safetensors"),
             (subjects_path(lora), target_dir / f"{name}.subjects.safetensors")]
    for src, dst in pairs:                      # both copied before either replaces the old pair
        shutil.copyfile(src, dst.with_name(f".{dst.name}.tmp"))
    for _, dst in pairs:
        dst.with_name(f".{dst.name}.tmp").replace(dst)
    return target_dir / f"{name}.safetensors"


class _checkpointed_blocks:
    """Gradient checkpointing on the native model's transformer blocks (restored afterwards)."""

    def __init__(self, diffusion_model, enabled: bool):
        self.blocks = list(getattr(diffusion_model, "blocks", [])) if enabled else []

    def __enter__(self):
        for block in self.blocks:
            forward = block.forward
            block.forward = (lambda *a, _f=forward, **k:
                             torch.utils.checkpoint.checkpoint(_f, *a, use_reentrant=False, **k))
        return self

    def __exit__(self, *exc):
        for block in self.blocks:
            del block.forward
        return False
