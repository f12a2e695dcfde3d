"""Subject masks in latent space (docs/method.md, "Hybrid mask training") and the per-group loss masks of hybrid mask training."""
from __future__ import annotations

import torch

GROUPS = ("relation", "subject1", "subject2")


def draw_group(rng, weights=(1.0, 1.0, 1.0)) -> str:
    """A step's group: with equal weights the paper's uniform draw (the same random call as ever, so that runs
    stay reproducible across versions), else with the given relative odds."""
    if len(set(weights)) == 1:
        return rng.choice(GROUPS)
    return rng.choices(GROUPS, weights=weights)[0]


def _spatial_any(pixel_masks: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[F, S, H, W] -> [F, S, h, w]: cell (i, j) is 1 iff a foreground pixel has ⌊y·h/H⌋ = i and ⌊x·w/W⌋ = j."""
    frames, subjects, height, width = pixel_masks.shape
    rows = torch.arange(height, device=pixel_masks.device) * h // height
    cols = torch.arange(width, device=pixel_masks.device) * w // width
    cell = (rows[:, None] * w + cols[None, :]).reshape(-1).expand(frames, subjects, -1)
    fg = (pixel_masks > 0.5).reshape(frames, subjects, -1).float()
    out = torch.zeros(frames, subjects, h * w, device=pixel_masks.device)
    return out.scatter_reduce_(2, cell, fg, reduce="amax").reshape(frames, subjects, h, w)


def latent_masks(pixel_masks: torch.Tensor, latent_size: tuple[int, int, int], temporal_ratio: int) -> torch.Tensor:
    """Per-subject pixel masks -> masks on the latent grid of a causal video VAE.

    `pixel_masks` [F, S, H, W] (values 0/1), `latent_size` = (f, h, w) -> float [f, S, h, w]. A latent cell is 1 when
    any foreground pixel falls in it (the reference's resize-with-mask-preservation). Latent frame 0 is pixel frame 0;
    latent frame k ≥ 1 is the mean over pixel frames 1 + r(k−1) … rk, r = `temporal_ratio` (6 Mochi, 4 Wan).
    Raises ValueError when F ≠ 1 + r(f − 1) — the reference silently returns zeros there.
    """
    if pixel_masks.dim() != 4:
        raise ValueError(f"pixel_masks must be [F, S, H, W], got shape {tuple(pixel_masks.shape)}")
    f, h, w = latent_size
    frames = pixel_masks.shape[0]
    if frames != 1 + temporal_ratio * (f - 1):
        raise ValueError(f"pixel_masks has {frames} frames; {f} latent frames at temporal ratio {temporal_ratio} "
                         f"need {1 + temporal_ratio * (f - 1)}")
    spatial = _spatial_any(pixel_masks, h, w)
    rest = spatial[1:].reshape(f - 1, temporal_ratio, *spatial.shape[1:]).mean(dim=1)
    return torch.cat([spatial[:1], rest], dim=0)


def group_mask(masks: torch.Tensor, group: str) -> torch.Tensor:
    """Loss mask of a hybrid-mask-training group from latent subject masks [..., f, 2, h, w] -> [..., f, h, w].

    relation = subject1 + subject2 (a sum, 2 where subjects overlap, as the reference), subjectN = its own mask.
    """
    if group == "relation":
        return masks.sum(dim=-3)
    if group in ("subject1", "subject2"):
        return masks.select(-3, int(group[-1]) - 1)
    raise ValueError(f"unknown group {group!r}; expected one of {GROUPS}")
