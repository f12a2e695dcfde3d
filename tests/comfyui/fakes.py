"""Test-only stand-ins for a CLIP and a VAE object (ComfyUI's real ones need full-size weights).

They expose exactly the methods our nodes call: `tokenize` / `encode_from_tokens_scheduled` and `encode` /
`decode`, with ComfyUI's shapes (CONDITIONING list; IMAGE [F, H, W, 3] in [0, 1] <-> LATENT [1, C, f, h, w]).
"""
import torch

from dreamrelation_core.bases import HashTextEncoder, build_tiny


class FakeClip:
    def __init__(self, dim=32, length=16):
        self.encoder = HashTextEncoder(dim=dim, max_length=length)

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, tokens):
        emb, _ = self.encoder.encode([tokens])
        return [[emb, {}]]


class FakeVae:
    """Our tiny diffusers Wan VAE behind ComfyUI's VAE interface (latents un-normalised, as ComfyUI's are)."""

    def __init__(self):
        self.codec = build_tiny("wan").codec

    def encode(self, pixels):
        video = pixels[..., :3].permute(3, 0, 1, 2)[None] * 2 - 1
        with torch.no_grad():
            return self.codec.vae.encode(video).latent_dist.mode()

    def decode(self, latents):
        with torch.no_grad():
            video = self.codec.vae.decode(latents).sample
        return ((video[0].permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)
