"""The relation LoRA triplet (docs/method.md, "Relation LoRA triplet"): roles -> target modules, peft injection, group gating, inference merge.

Roles: `relation` (Q/K), `subject1` and `subject2` (two independent LoRAs on V) and `ffn` (the paper's "FFN LoRAs",
placed on the attention output projections as in the reference, always on). Each role is one named peft adapter.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field

import torch

from .archs import INFERENCE_ROLES, ROLES, Architecture

# Hybrid mask training: the drawn group -> the adapters that run (and learn) in that step (docs/method.md).
GROUP_ROLES = {
    "relation": ("relation", "subject1", "subject2", "ffn"),
    "subject1": ("subject1", "ffn"),
    "subject2": ("subject2", "ffn"),
}


@dataclass
class TripletConfig:
    """LoRA hyper-parameters; `placement` names where the roles go (Architecture.placements; None: the
    architecture's default), `ranks`/`alphas` override rank/alpha per role, `extra_targets` adds block-relative
    module names per role (e.g. {"ffn": ["ffn.net.0.proj"]})."""

    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    ranks: dict = field(default_factory=dict)
    alphas: dict = field(default_factory=dict)
    extra_targets: dict = field(default_factory=dict)
    placement: str | None = None

    def role_modules(self, arch: Architecture) -> dict:
        """role -> set of block-relative module names: the placement's plus `extra_targets`."""
        unknown = set(self.extra_targets) - set(ROLES)
        if unknown:
            raise ValueError(f"extra_targets has unknown roles {sorted(unknown)}; expected some of {ROLES}")
        placement = arch.role_modules(self.placement)
        return {role: set(placement[role]) | set(self.extra_targets.get(role, ())) for role in ROLES}

    def rank_of(self, role: str) -> int:
        return int(self.ranks.get(role, self.rank))

    def alpha_of(self, role: str) -> float:
        return float(self.alphas.get(role, self.alpha))


_BLOCK = re.compile(r"^(?P<block>.+?\.\d+)\.(?P<rel>.+)$")


def resolve_targets(model: torch.nn.Module, arch: Architecture, config: TripletConfig | None = None) -> dict:
    """role -> sorted full names of the nn.Linear modules it adapts, found by block-relative name in every block.

    Works on any diffusers model whose blocks live in a ModuleList (`blocks.N`, `transformer_blocks.N`). Modules
    absent in some blocks (Mochi's last block has no `to_add_out`) are simply not targeted there.
    """
    wanted = (config or TripletConfig()).role_modules(arch)
    targets = {role: [] for role in ROLES}
    for name, module in model.named_modules():
        match = _BLOCK.match(name)
        if match is None or not isinstance(module, torch.nn.Linear):
            continue
        for role, rels in wanted.items():
            if match["rel"] in rels:
                targets[role].append(name)
    for role, names in targets.items():
        if not names:
            raise ValueError(f"no modules found for role {role!r} ({sorted(wanted[role])}) in {type(model).__name__}")
    return targets


def inject_triplet(model: torch.nn.Module, arch: Architecture, config: TripletConfig | None = None) -> dict:
    """Add the four role adapters to `model` in place (peft, one named adapter per role); returns the targets.

    A is Kaiming-uniform, B zero (the reference's initialisation), so the model is unchanged until trained.
    LoRA parameters are kept in fp32 whatever the base dtype. All roles start active.
    """
    from peft import LoraConfig, inject_adapter_in_model   # lazy: the ComfyUI backend never needs peft

    config = config or TripletConfig()
    targets = resolve_targets(model, arch, config)
    for role in ROLES:
        lora = LoraConfig(r=config.rank_of(role), lora_alpha=config.alpha_of(role), lora_dropout=config.dropout,
                          target_modules=targets[role], init_lora_weights=True)
        with warnings.catch_warnings():  # peft warns about several adapters on one model: that is the design
            warnings.simplefilter("ignore", UserWarning)
            inject_adapter_in_model(lora, model, adapter_name=role)
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()
    activate(model, ROLES)
    return targets


def lora_layers(model: torch.nn.Module):
    """(module name, peft LoraLayer) pairs of `model`."""
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def activate(model: torch.nn.Module, roles) -> None:
    """Run exactly `roles`: other adapters are skipped in forward (no compute, no gradient, requires_grad False)."""
    roles = tuple(roles)
    for _, layer in lora_layers(model):
        layer.set_adapter([r for r in roles if r in layer.lora_A])


def role_parameters(model: torch.nn.Module, role: str) -> dict:
    """name -> LoRA parameter of one role (peft names: `<module>.lora_A.<role>.weight`)."""
    suffixes = (f".lora_A.{role}.weight", f".lora_B.{role}.weight")
    return {n: p for n, p in model.named_parameters() if n.endswith(suffixes)}


def lora_parameters(model: torch.nn.Module) -> dict:
    """name -> every LoRA parameter of the triplet (all roles)."""
    return {n: p for role in ROLES for n, p in role_parameters(model, role).items()}


def set_strengths(model: torch.nn.Module, strengths: dict) -> None:
    """Scale each role's delta: scaling = strength · alpha / rank (peft `set_scale`)."""
    for _, layer in lora_layers(model):
        for role, strength in strengths.items():
            if role in layer.lora_A:
                layer.set_scale(role, float(strength))


def merge_inference_set(model: torch.nn.Module, strengths: dict | None = None) -> None:
    """Merge relation + ffn into the base weights (subjects dropped), as DreamRelation infers (paper §3.4).

    `strengths` (role -> float, default 1.0) scale each merged role; a subject role given a nonzero strength is
    merged too (an experiment: the subject LoRAs carry the exemplars' looks). Afterwards the model runs no LoRA
    branch. Merging again (other strengths, another LoRA) first takes the earlier merge out.
    """
    strengths = {role: 1.0 for role in INFERENCE_ROLES} | dict(strengths or {})
    unmerge_lora(model)                 # merging again replaces the earlier merge; it never stacks on it
    set_strengths(model, strengths)
    merged_roles = [r for r in ROLES if strengths.get(r, 0.0) != 0.0]
    for _, layer in lora_layers(model):
        roles = [r for r in merged_roles if r in layer.lora_A]
        if roles:
            layer.merge(adapter_names=roles)
    activate(model, ())


def unmerge_lora(model: torch.nn.Module) -> None:
    """Take every merged LoRA delta out of the base weights again (with the scale it was merged at); the adapters
    stay, inactive."""
    for _, layer in lora_layers(model):
        if layer.merged:
            layer.unmerge()
    activate(model, ())
