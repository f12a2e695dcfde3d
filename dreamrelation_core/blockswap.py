"""Block swap: the frozen weights of some transformer blocks stay in CPU memory and are copied to the GPU only while
the block runs (`train.block_swap`: how many blocks, counted from the last).

Each swapped block runs with device copies of its frozen weights (`torch.func.functional_call`); its own
parameters are left empty, so nothing else holds GPU memory for them, and the LoRA parameters stay where they are.
On CUDA the next block's copy starts on a side stream while the current block computes (pinned memory,
non-blocking), so that the copy overlaps compute. With gradient checkpointing the backward pass recomputes each
block and fetches its weights again; without it the copies are kept for the backward pass, which saves nothing.
Training only: a merge (`triplet.merge_inference_set`) needs the weights in place.
"""
from __future__ import annotations

import torch


def _in_backward() -> bool:
    task = getattr(torch._C, "_current_graph_task_id", None)      # -1 outside a backward pass
    return task is not None and task() != -1


class BlockSwap:
    def __init__(self, blocks, count: int, device):
        blocks = list(blocks)
        if not 0 <= count <= len(blocks):
            raise ValueError(f"train.block_swap {count}: the transformer has {len(blocks)} blocks; expected 0 to "
                             f"{len(blocks)}")
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.blocks = blocks[len(blocks) - count:]
        self.host, self.pending, self._inside = [], {}, set()
        for k, block in enumerate(self.blocks):
            host = {}
            for name, tensor in [*block.named_parameters(), *block.named_buffers()]:
                if "lora_" in name:
                    continue
                cpu = tensor.detach().to("cpu", copy=True)
                host[name] = cpu.pin_memory() if self.cuda else cpu
                tensor.data = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
            self.host.append(host)
            block.forward = self._swapped(k, block, block.forward)

    def _copies(self, k: int) -> dict:
        return {n: t.to(self.device, non_blocking=True) for n, t in self.host[k].items()}

    def _prefetch(self, k: int) -> None:
        if not self.cuda or k >= len(self.blocks) or k in self.pending:
            return
        with torch.cuda.stream(self.stream):
            copies = self._copies(k)
            event = torch.cuda.Event()
            event.record(self.stream)
        self.pending[k] = (copies, event)

    def _fetch(self, k: int) -> dict:
        if k not in self.pending:
            return self._copies(k)
        copies, event = self.pending.pop(k)
        current = torch.cuda.current_stream(self.device)
        current.wait_event(event)
        for t in copies.values():          # made on the side stream, used on this one
            t.record_stream(current)
        return copies

    def _swapped(self, k: int, block, forward):
        def run(*args, **kwargs):
            if k in self._inside:          # functional_call calls the block again: the original forward
                return forward(*args, **kwargs)
            weights = self._fetch(k)
            if not _in_backward():         # recomputation runs backwards: nothing useful to fetch ahead
                self._prefetch(k + 1)
            self._inside.add(k)
            try:
                return torch.func.functional_call(block, weights, args, kwargs, strict=False)
            finally:
                self._inside.discard(k)
        return run
