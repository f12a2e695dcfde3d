"""Hybrid-mask reconstruction loss and space-time relational contrastive loss (docs/method.md, "Hybrid mask
training" and "Space-time relational contrastive loss")."""
from __future__ import annotations

import random
from collections import deque

import torch
import torch.nn.functional as F


def hybrid_mask_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, mask_weight: float = 50.0):
    """mean((pred − target)²) + mask_weight · mean((mask·(pred − target))²), computed in fp32.

    `pred`, `target` [B, C, f, h, w]; `mask` [B, f, h, w], broadcast over C. Both means run over all elements
    (the reference's `combine_mask`), so fractional time-averaged masks enter squared.
    """
    diff = pred.float() - target.float()
    masked = mask.float().unsqueeze(1) * diff
    return diff.pow(2).mean() + mask_weight * masked.pow(2).mean()


def relational_contrastive_loss(anchors, positives, negatives, temperature: float = 0.07):
    """Multi-instance InfoNCE on cosine similarities (paper Eq. 3, averaged over anchors as the reference).

    `anchors` [N, C], `positives` [N, P, C], `negatives` [N, K, C]. Per anchor:
    logsumexp(all logits) − logsumexp(positive logits), logits = cos / τ. Returns the mean over anchors.
    """
    a = F.normalize(anchors.float(), dim=-1).unsqueeze(1)
    pos = (a * F.normalize(positives.float(), dim=-1)).sum(-1) / temperature
    neg = (a * F.normalize(negatives.float(), dim=-1)).sum(-1) / temperature
    return (torch.logsumexp(torch.cat([pos, neg], dim=1), dim=1) - torch.logsumexp(pos, dim=1)).mean()


def frame_features(output: torch.Tensor) -> torch.Tensor:
    """Model output [B, C, f, h, w] -> per-frame spatial means [B, f, C] (fp32): the single-frame features."""
    return output.float().mean(dim=(-2, -1)).transpose(1, 2)


class RelationalContrastiveBank:
    """Memory banks and sampling of the space-time relational contrastive loss, as the reference code (§6.2).

    Anchors are the frame differences of the current prediction's spatial means. Each anchor's positives are the
    same frame-difference index drawn from `n_pos` earlier steps (a FIFO of `positive_size` entries, detached);
    negatives are the current prediction's single-frame features (with gradient), topped up to `n_neg` from a FIFO of
    earlier single-frame features when f < n_neg. Zero while the positive bank is empty.
    """

    def __init__(self, n_pos=4, n_neg=10, positive_size=10, negative_size=64, temperature=0.07, seed=0):
        self.n_pos, self.n_neg, self.temperature = n_pos, n_neg, temperature
        self.positives = deque(maxlen=positive_size)   # entries [f−1, C]
        self.negatives = deque(maxlen=negative_size)   # entries [C]
        self.rng = random.Random(seed)

    def loss(self, output: torch.Tensor, push: bool = True, skip: tuple = (0, 0)) -> torch.Tensor:
        """RCL of a model output [B, C, f, h, w] (mean over samples), then (`push`) its features into the banks.
        A step of several forward passes pushes them all after the last (`push_features`), so that every pass of
        the step sees the same banks, as one batch does. `skip` (before, after): samples of the same pass that other
        ranks compute, whose random draws are made here too so that every rank's sampling stays in step."""
        feats = frame_features(output)
        for _ in range(skip[0]):
            self._draw(feats.shape[1])
        losses = [self._sample_loss(s) for s in feats]
        for _ in range(skip[1]):
            self._draw(feats.shape[1])
        if push:
            self.push_features(feats)
        losses = [l for l in losses if l is not None]
        return torch.stack(losses).mean() if losses else output.new_zeros((), dtype=torch.float32)

    def push_features(self, feats: torch.Tensor) -> None:
        """Add per-frame features [B, f, C] (`frame_features`) to the banks."""
        for s in feats:
            self.positives.append((s[1:] - s[:-1]).detach().cpu())
            self.negatives.extend(s.detach().cpu())

    def _draw(self, frames: int) -> list:
        """Per anchor of a sample with `frames` frames: (indices of its positives, indices of its bank negatives),
        as the reference draws them (random.sample picks the same indices from a list as from its range)."""
        if not self.positives:
            return []
        n_pos = min(self.n_pos, len(self.positives))
        n_bank = min(max(self.n_neg - frames, 0), len(self.negatives))
        return [(self.rng.sample(range(len(self.positives)), n_pos), self.rng.sample(range(len(self.negatives)), n_bank))
                for _ in range(frames - 1)]

    def _sample_loss(self, spatial: torch.Tensor):
        if not self.positives:
            return None
        anchors = spatial[1:] - spatial[:-1]
        pos, neg = [], []
        for i, (positives, extra) in enumerate(self._draw(spatial.shape[0])):
            pos.append(torch.stack([self.positives[k][i] for k in positives]))
            neg.append(torch.cat([spatial, torch.stack([self.negatives[k] for k in extra]).to(spatial)])
                       if extra else spatial)
        return relational_contrastive_loss(anchors, torch.stack(pos).to(spatial), torch.stack(neg), self.temperature)

    def state_dict(self) -> dict:
        return {"positives": list(self.positives), "negatives": list(self.negatives), "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.positives.clear()
        self.positives.extend(state["positives"])
        self.negatives.clear()
        self.negatives.extend(state["negatives"])
        self.rng.setstate(as_random_state(state["rng"]))


def as_random_state(state):
    """random.getstate() round-trips through torch.save as lists; setstate wants tuples."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
