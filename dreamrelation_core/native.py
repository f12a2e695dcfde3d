"""The relation LoRA triplet on a model with ComfyUI-native weight names, applied as weight deltas.

ComfyUI's native Wan/Mochi models name modules differently from diffusers and keep Mochi's q/k/v fused, and
ComfyUI applies adapters by wrapping weights (`ModelPatcher.add_weight_wrapper`): a function weight -> weight'
called in every forward. peft cannot be used there (its renaming breaks the patcher's keys), so this module holds
the triplet as plain parameters per (role, module) and hands out one `WeightDelta` per native weight, or, in
"bypass" mode, one `OutputDelta` per native linear: its output plus the LoRA path computed from its input, never
touching the weight (for weights ComfyUI streams or keeps quantized). Parameter
names are peft's (`<diffusers module>.lora_A.<role>.weight`), so checkpoints and exports are shared with the
diffusers backend. Pure torch: nothing here imports comfy.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from .archs import ROLES, Architecture
from .formats import RelationLora
from .triplet import TripletConfig

_NATIVE_WEIGHT = re.compile(r"^diffusion_model\.blocks\.(?P<index>\d+)\.(?P<rel>.+)\.weight$")


@dataclass(frozen=True)
class NativeTarget:
    """One LoRA of the triplet: `role` on diffusers `module`, living in native `weight` (rows of slot `layout`)."""

    role: str
    module: str
    weight: str
    layout: object            # None, fused slot index (0 q, 1 k, 2 v) or "swap_halves"
    out_features: int
    in_features: int


def native_targets(arch: Architecture, weight_shapes: dict, config: TripletConfig | None = None) -> list[NativeTarget]:
    """The triplet's targets on a native model, from its weight names -> shapes (`diffusion_model.blocks.N...`)."""
    wanted = (config or TripletConfig()).role_modules(arch)
    by_native = {native: [] for native, _ in arch.native_modules.values()}
    for rel, (native, layout) in arch.native_modules.items():
        by_native[native].append((rel, layout))
    targets = []
    for name, shape in sorted(weight_shapes.items()):
        match = _NATIVE_WEIGHT.match(name)
        if match is None or match["rel"] not in by_native or len(shape) != 2:
            continue
        for rel, layout in by_native[match["rel"]]:
            out = shape[0] // 3 if isinstance(layout, int) else shape[0]
            for role in ROLES:
                if rel in wanted[role]:
                    module = f"{arch.diffusers_blocks}.{match['index']}.{rel}"
                    targets.append(NativeTarget(role, module, name, layout, out, shape[1]))
    for role in ROLES:
        if not any(t.role == role for t in targets):
            raise ValueError(f"no native weights found for role {role!r}: is this a {arch.name} model?")
    return targets


class NativeTriplet(torch.nn.Module):
    """A, B per target (A Kaiming-uniform, B zero, fp32), gated per role like the peft triplet."""

    def __init__(self, arch: Architecture, targets: list[NativeTarget], config: TripletConfig | None = None):
        super().__init__()
        self.arch, self.config = arch, config or TripletConfig()
        self.targets = list(targets)
        self._params = torch.nn.ParameterDict()
        for t in self.targets:
            rank = self.config.rank_of(t.role)
            a = torch.empty(rank, t.in_features)
            torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self._params[self._slot(t, "A")] = torch.nn.Parameter(a)
            self._params[self._slot(t, "B")] = torch.nn.Parameter(torch.zeros(t.out_features, rank))
        self.strengths = {role: 1.0 for role in ROLES}
        self.active = set(ROLES)

    @staticmethod
    def _slot(t: NativeTarget, kind: str) -> str:
        return f"{t.module}.lora_{kind}.{t.role}".replace(".", "__")

    def ab(self, t: NativeTarget) -> tuple[torch.Tensor, torch.Tensor]:
        return self._params[self._slot(t, "A")], self._params[self._slot(t, "B")]

    def lora_parameters(self) -> dict:
        """name -> parameter, with peft's names (`<module>.lora_A.<role>.weight`)."""
        return {f"{t.module}.lora_{k}.{t.role}.weight": self._params[self._slot(t, k)]
                for t in self.targets for k in "AB"}

    def activate(self, roles) -> None:
        """Run exactly `roles` (others cost nothing and get no gradient)."""
        self.active = set(roles)

    def active_targets(self, targets: list[NativeTarget]) -> list[NativeTarget]:
        """Those of `targets` whose role runs now (active, at a non-zero strength)."""
        return [t for t in targets if t.role in self.active and self.strengths[t.role]]

    def scale(self, role: str) -> float:
        return self.strengths[role] * self.config.alpha_of(role) / self.config.rank_of(role)

    def weight_keys(self) -> list[str]:
        return sorted({t.weight for t in self.targets})

    def weight_delta(self, weight: str) -> "WeightDelta":
        return WeightDelta(self, [t for t in self.targets if t.weight == weight])

    def output_delta(self, weight: str) -> "OutputDelta":
        return OutputDelta(self, [t for t in self.targets if t.weight == weight])

    def to_relation_lora(self, info: dict | None = None, roles=ROLES) -> RelationLora:
        weights = {role: {} for role in roles}
        for t in self.targets:
            if t.role in weights:
                a, b = self.ab(t)
                weights[t.role][t.module] = (a.detach().float().cpu().clone(), b.detach().float().cpu().clone())
        return RelationLora(self.arch.name, {r: dict(sorted(m.items())) for r, m in weights.items()},
                            {r: self.config.alpha_of(r) for r in roles}, dict(info or {}))

    def load_relation_lora(self, lora: RelationLora) -> None:
        """Copy the roles `lora` holds (same modules and ranks) into this triplet."""
        with torch.no_grad():
            for t in self.targets:
                if t.role in lora.weights:
                    if t.module not in lora.weights[t.role]:
                        raise ValueError(f"LoRA role {t.role!r} lacks module {t.module}")
                    a, b = self.ab(t)
                    new_a, new_b = lora.weights[t.role][t.module]
                    if new_a.shape != a.shape or new_b.shape != b.shape:
                        raise ValueError(f"{t.module} {t.role}: LoRA shapes {tuple(new_a.shape)}/{tuple(new_b.shape)}"
                                         f" do not match {tuple(a.shape)}/{tuple(b.shape)}")
                    a.copy_(new_a)
                    b.copy_(new_b)


def add_on_rows(base: torch.Tensor, targets: list[NativeTarget], delta_of, dim: int) -> torch.Tensor:
    """`base` plus each target's `delta_of(target)` on that target's rows of the native weight, along `dim` (0 for
    a weight, -1 for a linear's output): a third of them per fused q/k/v slot, or its halves swapped for
    "swap_halves". The one layout rule of WeightDelta and OutputDelta."""
    if isinstance(targets[0].layout, int):          # Mochi's fused q/k/v: each slot is a third of the rows
        chunks = list(base.split(base.shape[dim] // 3, dim=dim))
        for t in targets:
            chunks[t.layout] = chunks[t.layout] + delta_of(t)
        return torch.cat(chunks, dim=dim)
    for t in targets:
        delta = delta_of(t)
        if t.layout == "swap_halves":
            first, second = delta.chunk(2, dim=dim)
            delta = torch.cat([second, first], dim=dim)
        base = base + delta
    return base


class WeightDelta:
    """weight -> weight + Σ_active scale·B·A on this weight's rows (ComfyUI weight-wrapper protocol)."""

    def __init__(self, triplet: NativeTriplet, targets: list[NativeTarget]):
        self.triplet, self.targets = triplet, targets

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        active = self.triplet.active_targets(self.targets)
        return add_on_rows(weight, active, lambda t: self._delta(t, weight), dim=0) if active else weight

    def _delta(self, t: NativeTarget, weight: torch.Tensor) -> torch.Tensor:
        a, b = self.triplet.ab(t)
        return (self.triplet.scale(t.role) * (b.to(weight.device) @ a.to(weight.device))).to(weight.dtype)

    def move_to(self, device) -> int:
        """Called by ComfyUI when it moves the model; returns the bytes the parameters occupy."""
        size = 0
        for t in self.targets:
            for p in self.triplet.ab(t):
                p.data = p.data.to(device)
                size += p.numel() * p.element_size()
        return size


class OutputDelta:
    """Bypass mode: a linear's output y -> y + Σ_active scale·(x·Aᵀ)·Bᵀ on this weight's output slots, a forward
    hook (module, args, output). For y = x·Wᵀ + b it is the output of WeightDelta's W + Σ scale·B·A, computed from
    the input alone, in fp32 as peft computes its LoRA path, then cast to the output's dtype."""

    def __init__(self, triplet: NativeTriplet, targets: list[NativeTarget]):
        self.triplet, self.targets = triplet, targets

    def __call__(self, module, args, output: torch.Tensor) -> torch.Tensor:
        active = self.triplet.active_targets(self.targets)
        if not active:
            return output
        return add_on_rows(output, active, lambda t: self._delta(t, args[0], output.dtype), dim=-1)

    def _delta(self, t: NativeTarget, x: torch.Tensor, dtype) -> torch.Tensor:
        a, b = self.triplet.ab(t)
        a, b = a.to(x.device), b.to(x.device)
        return (self.triplet.scale(t.role) * torch.nn.functional.linear(torch.nn.functional.linear(x.float(), a), b)
                ).to(dtype)
