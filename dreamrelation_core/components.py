"""A base's components: text encoders (`TextEncoder`, the hashed-word `HashTextEncoder` of tiny bases, the
T5/UMT5 `T5TextEncoder`), the `LatentCodec` (a video VAE seen through normalised latents) and `Base`, the bundle
of transformer, text encoder, codec and `Architecture` that the trainer and sampler use. Loading them is bases.py's.
"""
from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import torch

from .archs import Architecture

TINY_TEXT_LENGTH = 16          # equals the tiny Mochi transformer's max_sequence_length


# ---------------------------------------------------------------------------------------------------------------------
# Text encoders
# ---------------------------------------------------------------------------------------------------------------------

@runtime_checkable
class TextEncoder(Protocol):
    """Prompts -> (embeddings float32 [B, L, D], attention mask bool [B, L]); `max_length` = L, `dim` = D."""

    max_length: int
    dim: int

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]: ...


class HashTextEncoder:
    """Deterministic toy text encoder for tiny bases: no weights, no vocabulary, identical in every process.

    `encode(prompts)` lower-cases each prompt, splits it into words, and gives word i the vector
    h(w_i) + position_scale·pos_i + context·(h("<" + w_{i−1}) + h(">" + w_{i+1})), where h(word) is randn(dim)
    drawn from a generator seeded by crc32(word) and pos_i a sinusoidal position code. It returns embeddings
    float32 [B, max_length, dim] (zero past the last word, words past `max_length` dropped) and a bool mask
    [B, max_length] that is True on words. An empty prompt gives all zeros and an all-False mask.

    `context` > 0 lets each word carry its neighbours ("red" knows it precedes "triangle"), so a tiny model can bind
    attributes to subjects with one cross-attention lookup; a pure bag of hashed words cannot tell
    "a red circle approaches a blue square" from "a blue circle approaches a red square".
    """

    def __init__(self, dim: int = 32, max_length: int = TINY_TEXT_LENGTH, position_scale: float = 0.1,
                 context: float = 0.0):
        self.dim, self.max_length, self.position_scale = int(dim), int(max_length), float(position_scale)
        self.context = float(context)
        self._cache: dict[str, torch.Tensor] = {}
        pos = torch.arange(self.max_length, dtype=torch.float64)[:, None]
        freq = torch.exp(-math.log(1e4) * torch.arange(0, self.dim, 2, dtype=torch.float64) / self.dim)
        table = torch.zeros(self.max_length, self.dim, dtype=torch.float64)
        table[:, 0::2] = torch.sin(pos * freq)
        table[:, 1::2] = torch.cos(pos * freq)[:, : self.dim // 2]
        # Order matters in relations ("a dog chases a cat" vs "a cat chases a dog"), hence a position term.
        self._position = (self.position_scale * table).float()

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @staticmethod
    def words(prompt: str) -> list[str]:
        return re.findall(r"[\w']+", prompt.lower())

    def _word_vector(self, word: str) -> torch.Tensor:
        vec = self._cache.get(word)
        if vec is None:
            gen = torch.Generator().manual_seed(zlib.crc32(word.encode("utf-8")))
            vec = self._cache[word] = torch.randn(self.dim, generator=gen)
        return vec

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts (B strings) -> (embeddings float32 [B, max_length, dim], mask bool [B, max_length])."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        emb = torch.zeros(len(prompts), self.max_length, self.dim)
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.bool)
        for b, prompt in enumerate(prompts):
            words = self.words(prompt)[: self.max_length]
            for i, word in enumerate(words):
                emb[b, i] = self._word_vector(word) + self._position[i]
                if self.context:
                    before = self._word_vector("<" + words[i - 1]) if i > 0 else 0
                    after = self._word_vector(">" + words[i + 1]) if i + 1 < len(words) else 0
                    emb[b, i] += self.context * (before + after)
                mask[b, i] = True
        return emb, mask


class T5TextEncoder:
    """A transformers T5/UMT5 encoder with its tokenizer, encoding exactly as the diffusers pipelines do.

    `encode(prompts)` tokenizes with padding to `max_length` (truncating), runs the encoder with the attention mask
    and returns embeddings float32 [B, max_length, d_model] on the encoder's device plus the bool mask [B, max_length].
    `zero_padding` (Wan, `WanPipeline._get_t5_prompt_embeds`): embeddings past each prompt's token count are set to 0.
    `zero_empty_prompts` (Mochi, as the original genmo code does): an empty prompt gets all-zero token ids and an
    all-False mask (diffusers' MochiPipeline applies this to the whole batch when the *last* prompt is empty; we apply
    it per prompt, which is what the original intends). `clean` is applied to each prompt first (Wan: `prompt_clean`).
    """

    def __init__(self, tokenizer, model: torch.nn.Module, max_length: int, zero_padding: bool, *,
                 zero_empty_prompts: bool = False, clean: Callable[[str], str] | None = None):
        self.tokenizer, self.model, self.max_length = tokenizer, model, int(max_length)
        self.zero_padding, self.zero_empty_prompts, self.clean = bool(zero_padding), bool(zero_empty_prompts), clean
        self.dim = int(model.config.d_model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts (B strings) -> (embeddings float32 [B, max_length, d_model], mask bool [B, max_length])."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if self.clean is not None:
            prompts = [self.clean(p) for p in prompts]
        tokens = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                                add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        ids, mask = tokens.input_ids, tokens.attention_mask.bool()
        if self.zero_empty_prompts:
            empty = torch.tensor([p == "" for p in prompts], dtype=torch.bool)
            ids[empty] = 0
            mask[empty] = False
        device = self.device
        with torch.no_grad():
            emb = self.model(ids.to(device), attention_mask=mask.to(device)).last_hidden_state.float()
        mask = mask.to(device)
        if self.zero_padding:
            # Wan keeps the first seq_len = mask.sum() vectors of each prompt and pads with zeros.
            seq_len = mask.sum(dim=1, keepdim=True)
            keep = torch.arange(self.max_length, device=device)[None, :] < seq_len
            emb = emb * keep[..., None]
        return emb, mask


# ---------------------------------------------------------------------------------------------------------------------
# Latent codec
# ---------------------------------------------------------------------------------------------------------------------

def _config_value(cfg, *names, default=None):
    for name in names:
        value = cfg.get(name) if isinstance(cfg, dict) else getattr(cfg, name, None)
        if value is not None:
            return value
    return default


class LatentCodec:
    """A diffusers video VAE (AutoencoderKLWan / AutoencoderKLMochi) seen through the model's normalised latents.

    normalised = (z − latents_mean) · scaling_factor / latents_std, per channel (scaling_factor = 1.0 when the VAE
    config has none, as for Wan). Attributes: `latent_channels`, `temporal_ratio` (pixel frames = 1 + r·(f − 1)),
    `spatial_ratio`, and `vae` (the wrapped module, e.g. for `codec.vae.enable_tiling()`). The Mochi encoder computes
    its Fourier features itself, so both families take plain RGB in [-1, 1].
    """

    def __init__(self, vae: torch.nn.Module):
        self.vae = vae
        cfg = vae.config
        self.latent_channels = int(_config_value(cfg, "z_dim", "latent_channels"))
        self.temporal_ratio = int(_config_value(vae, "temporal_compression_ratio", default=0)
                                  or _config_value(cfg, "scale_factor_temporal", default=0)
                                  or 2 ** sum(bool(x) for x in _config_value(cfg, "temperal_downsample", default=())))
        self.spatial_ratio = int(_config_value(vae, "spatial_compression_ratio", default=0)
                                 or _config_value(cfg, "scale_factor_spatial", default=0)
                                 or 2 ** (len(_config_value(cfg, "dim_mult", default=(1,))) - 1))
        c = self.latent_channels
        mean = _config_value(cfg, "latents_mean", default=[0.0] * c)
        std = _config_value(cfg, "latents_std", default=[1.0] * c)
        self.latents_mean = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1, 1)
        self.latents_std = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1, 1)
        self.scaling_factor = float(_config_value(cfg, "scaling_factor", default=1.0))

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def to(self, *args, **kwargs) -> "LatentCodec":
        self.vae.to(*args, **kwargs)
        return self

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, f, h, w) of the latents of a [*, 3, frames, height, width] video; ValueError if the size does not fit."""
        r, s = self.temporal_ratio, self.spatial_ratio
        if frames < 1 or (frames - 1) % r:
            raise ValueError(f"frame count must be {r}k+1 for this VAE (got {frames})")
        if height % s or width % s:
            raise ValueError(f"height and width must be multiples of {s} for this VAE (got {height}x{width})")
        return self.latent_channels, (frames - 1) // r + 1, height // s, width // s

    def encode(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Video [B, 3, F, H, W] in [-1, 1], F = 1 + r·k -> posterior (mean, std), each float32 [B, C, f, h, w]
        in the normalised latent space, on the VAE's device. No gradient flows (the VAE is frozen)."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"expected video [B, 3, F, H, W], got {tuple(video.shape)}")
        self.latent_shape(*video.shape[2:])
        with torch.no_grad():
            posterior = self.vae.encode(video.to(self.device, self.dtype)).latent_dist
            mean, std = posterior.mean.float(), posterior.std.float()
        m, sd = self.latents_mean.to(mean.device), self.latents_std.to(mean.device)
        scale = self.scaling_factor / sd
        return (mean - m) * scale, std * scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, C, f, h, w] -> video float32 [B, 3, 1 + r·(f − 1), h·s, w·s] clamped to [-1, 1]."""
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"expected latents [B, {self.latent_channels}, f, h, w], got {tuple(latents.shape)}")
        z = latents.float().to(self.device)
        z = z * self.latents_std.to(z.device) / self.scaling_factor + self.latents_mean.to(z.device)
        with torch.no_grad():
            video = self.vae.decode(z.to(self.dtype)).sample
        return video.float().clamp(-1.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------------
# Base
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class Base:
    """A loaded base: `arch`, frozen `transformer`, `text_encoder`, `codec` and the `name` it was loaded from."""

    arch: Architecture
    transformer: torch.nn.Module
    text_encoder: TextEncoder
    codec: LatentCodec
    name: str
    sigma_range: tuple | None = None     # the σ range this transformer denoises (a Wan 2.2 expert's); None: all
    companion: torch.nn.Module | None = None   # the other Wan 2.2 A14B expert, for sampling outside sigma_range

    def to(self, device) -> "Base":
        """Move transformer, VAE and text encoder (when it has weights) to `device`."""
        self.transformer.to(device)
        self.codec.to(device)
        model = getattr(self.text_encoder, "model", None)
        if model is not None:
            model.to(device)
        return self

    def null_text(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Unconditional text for CFG / caption dropout: (embeddings [batch, L, D], mask bool [batch, L]), the same
        shapes as `text_encoder.encode`. arch.uncond_text "zeros" (Mochi): all-zero embeddings and an all-False mask;
        "empty" (Wan): the encoding of the empty prompt."""
        if self.arch.uncond_text == "empty":
            return self.text_encoder.encode([""] * batch)
        if self.arch.uncond_text != "zeros":
            raise ValueError(f"unknown uncond_text {self.arch.uncond_text!r}")
        enc = self.text_encoder
        if hasattr(enc, "max_length") and hasattr(enc, "dim"):
            device = getattr(enc, "device", torch.device("cpu"))
            return (torch.zeros(batch, enc.max_length, enc.dim, device=device),
                    torch.zeros(batch, enc.max_length, dtype=torch.bool, device=device))
        emb, mask = enc.encode([""] * batch)   # an encoder without size attributes: take shapes from a real call
        return torch.zeros_like(emb), torch.zeros_like(mask)
