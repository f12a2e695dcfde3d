"""Test-only stand-ins for a CLIP and a VAE object (ComfyUI's real ones need full-size weights).

They expose exactly the methods our nodes call: `tokenize` / `encode_from_tokens_scheduled` and `encode` /
`decode`, with ComfyUI's shapes (CONDITIONING list; IMAGE [F, H, W, 3] in [0, 1] <-> LATENT [1, C, f, h, w]).
"""
import torch

from dreamrelation_core.bases import build_tiny
from dreamrelation_core.components import HashTextEncoder


class FakeClip:
    """`with_mask`: also return the token mask as ComfyUI's Mochi (T5) text encoder does."""

    def __init__(self, dim=32, length=16, with_mask=False):
        self.encoder, self.with_mask = HashTextEncoder(dim=dim, max_length=length), with_mask

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, tokens):
        emb, mask = self.encoder.encode([tokens])
        return [[emb, {"attention_mask": mask.long()} if self.with_mask else {}]]


class FakeVae:
    """Our tiny diffusers VAE (Wan or Mochi) behind ComfyUI's VAE interface (latents un-normalised, as ComfyUI's)."""

    def __init__(self, arch="wan"):
        self.codec = build_tiny(arch).codec

    def encode(self, pixels):
        video = pixels[..., :3].permute(3, 0, 1, 2)[None] * 2 - 1
        with torch.no_grad():
            return self.codec.vae.encode(video).latent_dist.mode()

    def decode(self, latents):
        with torch.no_grad():
            video = self.codec.vae.decode(latents).sample
        return ((video[0].permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)
