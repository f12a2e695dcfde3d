"""The SynthRel base: a tiny Wan transformer that renders SynthRel clips from captions, pretrained here on every
relation except the held-out ones (`HELD_OUT`), so that learning those is DreamRelation's job.

No VAE: `PixelCodec` is a fixed invertible map (2×2 space-to-depth of pixels in [-1, 1]); no T5: a hashed-word
`HashTextEncoder`. `python -m dreamrelation_core pretrain-synthrel` reproduces the shipped weights.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch
from einops import rearrange
from tqdm.auto import tqdm

from ..archs import SYNTHREL
from .protocol import DEFAULT, Protocol, get_protocol
from .render import ATTRIBUTES, RELATIONS, random_pair, render_clip

HELD_OUT = ("pushes", "orbits")
KNOWN = tuple(r for r in RELATIONS if r not in HELD_OUT)
# Strong word order and neighbour context: without them the base cannot tell which colour is which subject.
TEXT_ENCODING = dict(position_scale=1.0, context=0.5)
# v2 captions: both subjects named whole in half the clips, "a shape" in 0.15, any other subset of attributes else.
FULL_NAMING, GENERIC_NAMING = 0.5, 0.15


class PixelCodec:
    """Invertible pixel <-> latent map with the LatentCodec interface: [B, 3, F, H, W] in [-1, 1] <->
    [B, 3·p², F, H/p, W/p]. The posterior has zero spread."""

    def __init__(self, patch: int = SYNTHREL.spatial_ratio):
        self.patch, self.latent_channels = patch, 3 * patch * patch
        self.temporal_ratio, self.spatial_ratio = 1, patch
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def to(self, *args, **kwargs) -> "PixelCodec":
        return self

    def latent_shape(self, frames: int, height: int, width: int):
        return self.latent_channels, frames, height // self.patch, width // self.patch

    def encode(self, video: torch.Tensor):
        latent = rearrange(video.float(), "b c f (h p) (w q) -> b (c p q) f h w", p=self.patch, q=self.patch)
        return latent, torch.zeros_like(latent)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        video = rearrange(latents.float(), "b (c p q) f h w -> b c f (h p) (w q)", p=self.patch, q=self.patch)
        return video.clamp(-1, 1)


def build_synthrel_base(weights: Path | None = DEFAULT.weights, seed: int = 0):
    """The SynthRel `Base`: shipped weights (default: the default protocol's) when present, else a random init (for
    pretraining)."""
    import diffusers
    from safetensors.torch import load_file

    from ..components import Base, HashTextEncoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = diffusers.WanTransformer3DModel(**SYNTHREL.tiny_transformer)
    if weights is not None and Path(weights).is_file():
        transformer.load_state_dict(load_file(str(weights)))
    transformer.eval().requires_grad_(False)
    text = HashTextEncoder(dim=SYNTHREL.tiny_transformer["text_dim"], max_length=SYNTHREL.text_max_length,
                           **TEXT_ENCODING)
    return Base(arch=SYNTHREL, transformer=transformer, text_encoder=text, codec=PixelCodec(), name="synthrel")


def held_out_only(relations, what: str) -> tuple:
    """`relations` as a tuple; refused, naming the input `what`, unless every one is a held-out relation."""
    unknown = [r for r in relations if r not in HELD_OUT]
    if unknown:
        raise ValueError(f"{what}: {unknown} are not held-out relations; expected some of {list(HELD_OUT)}")
    return tuple(relations)


def random_naming(rng: random.Random) -> tuple:
    """Which attributes a v2 caption names of one subject (FULL_NAMING, GENERIC_NAMING, else a uniform other
    subset): a generic "a shape" or "a circle" then stands for any look, as "a person" does for a video model."""
    draw = rng.random()
    if draw < FULL_NAMING:
        return ATTRIBUTES
    if draw < FULL_NAMING + GENERIC_NAMING:
        return ()
    partial = [tuple(a for k, a in enumerate(ATTRIBUTES) if mask >> k & 1) for mask in range(1, 7)]
    return rng.choice(partial)


def random_clip(rng: random.Random, relations=KNOWN, protocol: Protocol = DEFAULT):
    """(video [3, F, H, W] in [-1, 1], caption) of a random relation with two random distinct-colour subjects on
    `protocol`'s clip; textured protocols (v2): random textures too, and captions naming a random subset of
    attributes (`random_naming`)."""
    relation = rng.choice(relations)
    s1, s2 = random_pair(rng, protocol.textured)
    named = (random_naming(rng), random_naming(rng)) if protocol.textured else (None, None)
    video, _, caption = render_clip(relation, s1, s2, protocol.frames, protocol.size, rng.randrange(1 << 30),
                                    protocol.look, *named)
    return torch.from_numpy(video).permute(3, 0, 1, 2).float() / 127.5 - 1, caption


def pretrain(out: Path, steps: int = 8000, batch: int = 8, lr: float = 1e-3, seed: int = 0,
             caption_dropout: float = 0.1, sigma_shift: float = 2.0, ema_decay: float = 0.999,
             checkpoint_every: int = 500, progress: bool = True, max_steps: int | None = None,
             protocol: str = "v1", init: Path | None = None, prior: tuple = ()) -> Path:
    """Flow-matching pretraining of the SynthRel base on the KNOWN relations of `protocol`'s clips; resumes from
    `out` if it holds a checkpoint, stops after `max_steps` in total (the schedule still spans `steps`). Writes
    `out/synthrel_base.safetensors` (at the end; a run stopped by `max_steps` writes the EMA it has reached as
    `out/synthrel_base_step<N>.safetensors` and returns that), `out/log.jsonl` and `out/pretrain.json`.
    `prior`: held-out relations shown as well, each as often as a known one, for a base that renders them weakly,
    as the paper's base renders its relations before training (docs/benchmarks.md, "A base that renders the
    held-out relation weakly"); stopping early keeps that prior weak. `init`: start from
    these weights (a base of another protocol: same transformer, and RoPE takes the other clip size) instead of a
    random init; the v2 base starts from the shipped v1 base, which already knows the relations, colours and shapes.

    σ is drawn as shift·u / (1 + (shift − 1)·u), u ~ U(0, 1): with shift 2 more of the training goes to σ ≥ 0.5,
    where the layout and the subjects' coherence are decided (a base trained with uniform σ denoised σ ≤ 0.3
    cleanly but fell apart into fragments from σ ≈ 0.5 up). The loss is on the velocity implied by the model's
    clean-latent prediction (SYNTHREL.prediction); the shipped weights are an exponential moving average
    (`ema_decay`, warmed up as min(decay, (1 + step) / (10 + step))), gradients clipped at norm 1."""
    from safetensors.torch import save

    from ..files import atomic_write_json, atomic_write_many
    from ..flow import noisy_latents, velocity_target
    from ..losses import as_random_state

    clip = get_protocol(protocol)
    relations = KNOWN + held_out_only(prior, "prior")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if init is not None and not Path(init).is_file():
        raise FileNotFoundError(f"init: no weights file at {init}")
    base = build_synthrel_base(weights=init, seed=seed)
    model = base.transformer.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 200) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rng, generator, step = random.Random(seed), torch.Generator().manual_seed(seed), 0
    state_path = out / "pretrain_state.pt"
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        ema = state["ema"]
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        rng.setstate(as_random_state(state["rng"]))
        generator.set_state(state["generator"])
        step = state["step"]
        _trim_log(out / "log.jsonl", step)
    null_text, null_mask = base.text_encoder.encode([""])
    end = min(steps, max_steps) if max_steps is not None else steps
    bar = tqdm(total=end, initial=step, desc="pretraining SynthRel base", disable=not progress)
    log = open(out / "log.jsonl", "a")
    while step < end:
        clips = [random_clip(rng, relations, clip) for _ in range(batch)]
        z0, _ = base.codec.encode(torch.stack([c[0] for c in clips]))
        text, mask = base.text_encoder.encode([c[1] for c in clips])
        drop = torch.rand(batch, generator=generator) < caption_dropout
        text[drop], mask[drop] = null_text, null_mask
        noise = torch.randn(z0.shape, generator=generator)
        u = torch.rand(batch, generator=generator)
        sigma = sigma_shift * u / (1 + (sigma_shift - 1) * u)
        pred = SYNTHREL.velocity(model, noisy_latents(z0, noise, sigma), sigma, text, mask)
        loss = (pred - velocity_target(z0, noise)).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for name, value in model.state_dict().items():
                ema[name].lerp_(value, 1.0 - decay)
        log.write(json.dumps({"step": step, "loss": loss.item()}) + "\n")
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % checkpoint_every == 0 or step == end:
            log.flush()
            tmp = state_path.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "ema": ema, "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "rng": rng.getstate(),
                        "generator": generator.get_state(), "step": step}, tmp)
            tmp.replace(state_path)
    bar.close()
    log.close()
    weights = out / ("synthrel_base.safetensors" if step >= steps else f"synthrel_base_step{step}.safetensors")
    atomic_write_many([(weights, save({k: v.contiguous() for k, v in ema.items()}))])
    if step < steps:
        return weights
    atomic_write_json(out / "pretrain.json", {"steps": steps, "batch": batch, "lr": lr, "seed": seed,
                                             "caption_dropout": caption_dropout,
                                             "sigma_shift": sigma_shift, "ema_decay": ema_decay,
                                             "prediction": SYNTHREL.prediction, "known": KNOWN,
                                             "held_out": HELD_OUT, "prior": list(prior), "protocol": protocol,
                                             "init": None if init is None else Path(init).name,
                                             "transformer": SYNTHREL.tiny_transformer})
    return weights


def _trim_log(log: Path, step: int) -> None:
    """Drop log lines past the checkpoint a run resumes from: an interrupted run may have written some, and the
    resumed run writes those steps again."""
    if log.is_file():
        lines = [line for line in log.read_text().splitlines() if json.loads(line)["step"] <= step]
        tmp = log.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in lines))
        tmp.replace(log)


def model_card(run_dir: Path, report: dict) -> str:
    """MODEL_CARD.md for the shipped weights: data, training settings, loss curve, per-relation accuracy."""
    run_dir = Path(run_dir)
    settings = json.loads((run_dir / "pretrain.json").read_text())
    losses = [json.loads(line)["loss"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    window = max(1, len(losses) // 16)
    curve = [(min(k + window, len(losses)), sum(losses[k:k + window]) / len(losses[k:k + window]))
             for k in range(0, len(losses), window)]
    target = ("the model predicts the clean latent z0, loss on the velocity ε − z0 it implies"
              if settings.get("prediction") == "x0" else "target ε − z0")
    t = settings.get("transformer", SYNTHREL.tiny_transformer)   # runs written before it was recorded
    clip = get_protocol(settings.get("protocol", "v1"))
    lines = ["# SynthRel base (tiny Wan transformer)", "",
             f"A `WanTransformer3DModel` ({t['num_layers']} layers, width "
             f"{t['num_attention_heads'] * t['attention_head_dim']}, {t['num_attention_heads']} heads, patch "
             f"{'×'.join(map(str, t['patch_size']))}; text: hashed words with their position and neighbours, "
             f"{t['text_dim']}-d) that renders {clip.frames}-frame {clip.size[0]}×{clip.size[1]} SynthRel clips "
             f"(protocol {clip.name}) through a fixed 2×2 space-to-depth "
             "pixel map (no VAE).", "",
             "## Data and training", "",
             f"- Relations: {', '.join(settings['known'])}. Held out (never seen): "
             f"{', '.join(r for r in settings['held_out'] if r not in settings.get('prior', ()))}."
             + (f" Seen as often as a known relation, for a weak prior: {', '.join(settings['prior'])}."
                if settings.get("prior") else ""),
             "- Clips rendered on the fly: random relation, two random distinct-colour subjects "
             + ("(6 colours × 7 textures × 4 shapes; captions name all of a subject's attributes in half the clips, "
                "none ('a shape') in 0.15, another subset otherwise)" if clip.textured else
                "(6 colours × 4 shapes)")
             + (f", half-size {clip.look.min_radius} px" if clip.look.radius[0] == clip.look.radius[1] else
                ", random sizes") + ", random placements, mirroring and backgrounds.",
             f"- Flow matching (σ = s·u / (1 + (s − 1)·u), u ~ U(0, 1), shift s = {settings.get('sigma_shift', 1.0)}; "
             f"{target}), AdamW lr {settings['lr']} "
             f"({settings.get('schedule', '200 warm-up, cosine')}), weight decay 0.01, batch {settings['batch']}, "
             f"{settings['steps']} steps, caption dropout {settings['caption_dropout']}, seed {settings['seed']}, "
             "gradients clipped at norm 1, fp32 on CPU"
             + (f"; the weights are an EMA (decay {settings['ema_decay']})." if "ema_decay" in settings else "."),
             *([f"- Initialised from `{settings['init']}` (shipped beside these weights), not from random weights: "
                "the same transformer, already trained on the known relations of another protocol."]
               if settings.get("init") else []),
             "- Reproduce: " + settings.get("reproduce", "`python -m dreamrelation_core pretrain-synthrel --out "
                                             f"runs/synthrel_base --steps {settings['steps']} --batch "
                                             f"{settings['batch']} --lr {settings['lr']} --seed {settings['seed']}"
                                             + (f" --protocol {clip.name}" if clip.name != "v1" else "")
                                             + "".join(f" --prior-relation '{r}'" for r in settings.get("prior", ()))
                                             + (f" --ema-decay {settings['ema_decay']}"
                                                if settings.get("ema_decay", 0.999) != 0.999 else "")
                                             + (f" --sigma-shift {settings['sigma_shift']}"
                                                if settings.get("sigma_shift", 2.0) != 2.0 else "")
                                             + (f" --init dreamrelation_core/synthrel/weights/{settings['init']}"
                                                if settings.get("init") else "") + "`")
             + ".",
             "", "## Loss curve", "", "| step | mean loss |", "|---|---|"]
    lines += [f"| {step} | {loss:.4f} |" for step, loss in curve]
    lines += ["", "## What it renders (evaluator, before any relation LoRA)", "",
              "| relation | held out | relation accuracy | subjects present | named attributes rendered |",
              "|---|---|---|---|---|"]
    lines += [f"| {name} | {'yes' if v['held_out'] else ''} | {v['relation_accuracy']:.3f} | "
              f"{v['subjects_present']:.3f} | "
              + (f"{v['attributes_match']:.3f}" if "attributes_match" in v else "") + " |"
              for name, v in report.items()]
    return "\n".join(lines) + "\n"
