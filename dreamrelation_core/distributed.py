"""Data parallel over exemplars (`torchrun --nproc_per_node N -m dreamrelation_core train …`).

Every rank draws the whole step (the same seeds, so the same exemplars, σ and noise on all ranks) and trains its
slice of each forward pass; gradients are averaged over ranks, and the contrastive banks take every rank's features
in rank order. N ranks of batch B therefore train as one process of batch N·B (test: tests/test_distributed.py).
Rank 0 alone writes logs, checkpoints and LoRA files. torch.distributed does the communication (gloo on CPU,
nccl on CUDA); a single process never touches it.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); True when this run is distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def barrier() -> None:
    if active():
        dist.barrier()


def average_gradients(params: list) -> None:
    """Replace each parameter's gradient by its mean over ranks (one flat all-reduce)."""
    if not active() or not params:
        return
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def mean(values: list[float], device) -> list[float]:
    """The mean of each value over ranks."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / world_size()).tolist()


def all_true(flag: bool, device) -> bool:
    """True when `flag` holds on every rank (so that all ranks raise together, none left waiting)."""
    if not active():
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` (the same shape on all), concatenated along dim 0 in rank order."""
    if not active():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)
