"""The relation LoRA triplet (docs/method.md, "Relation LoRA triplet"): roles -> target modules, adapter injection
into diffusers models, group gating, inference merge.

Roles: `relation` (Q/K), `subject1` and `subject2` (two independent LoRAs on V) and `ffn` (the paper's "FFN LoRAs",
placed on the attention output projections as in the reference, always on). Each role is one named peft adapter,
handled through peft's and diffusers' public adapter API (`peft.functional`, `add_adapter`, `set_adapters`,
`fuse_lora`, `unload_lora`), never tuner-layer internals.
"""
from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass, field

import torch

from .archs import INFERENCE_ROLES, ROLES, Architecture
from .formats import RelationLora, load_lora

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


def _require_adapter_api(model: torch.nn.Module) -> None:
    if not all(hasattr(model, m) for m in ("add_adapter", "set_adapters", "fuse_lora", "unload_lora")):
        raise TypeError(f"{type(model).__name__} has no diffusers adapter methods (PeftAdapterMixin); the triplet "
                        "is injected into diffusers transformers")


def _add_adapters(model: torch.nn.Module, configs: dict) -> None:
    """role -> peft LoraConfig: add each as a named adapter (diffusers `add_adapter`), its weights kept in fp32
    whatever the base dtype."""
    _require_adapter_api(model)
    for role, config in configs.items():
        with warnings.catch_warnings():  # peft warns about several adapters on one model: that is the design
            warnings.simplefilter("ignore", UserWarning)
            model.add_adapter(config, adapter_name=role)
        for param in role_parameters(model, role).values():
            param.data = param.data.float()


def inject_triplet(model: torch.nn.Module, arch: Architecture, config: TripletConfig | None = None) -> dict:
    """Add the four role adapters to `model` in place (one named peft adapter per role); returns the targets.

    A is Kaiming-uniform, B zero (the reference's initialisation), so the model is unchanged until trained.
    LoRA parameters are kept in fp32 whatever the base dtype. All roles start active.
    """
    from peft import LoraConfig   # lazy: the ComfyUI backend never needs peft

    config = config or TripletConfig()
    targets = resolve_targets(model, arch, config)
    _add_adapters(model, {role: LoraConfig(r=config.rank_of(role), lora_alpha=config.alpha_of(role),
                                           lora_dropout=config.dropout, target_modules=targets[role],
                                           init_lora_weights=True) for role in ROLES})
    activate(model, ROLES)
    return targets


def apply_lora(model: torch.nn.Module, lora: RelationLora, roles=None) -> None:
    """Add one adapter per role of `lora` (default: all it holds) on exactly the modules it holds, load its A/B,
    and make them active. A merge is undone first and adapters of the same roles are replaced."""
    from peft import LoraConfig   # lazy: the ComfyUI backend never needs peft

    roles = [r for r in (roles or lora.weights) if r in lora.weights]
    unmerge_lora(model)
    named = dict(model.named_modules())
    for role in roles:
        missing = sorted(set(lora.weights[role]) - set(named))
        if missing:
            raise ValueError(f"LoRA role {role!r} targets modules this {type(model).__name__} does not have, "
                             f"e.g. {missing[0]} (was it trained on another architecture or size?)")
    present = [r for r in roles if r in getattr(model, "peft_config", {})]
    if present:
        model.delete_adapters(present)
    _add_adapters(model, {role: LoraConfig(r=lora.rank(role), lora_alpha=lora.alphas[role],
                                           target_modules=sorted(lora.weights[role])) for role in roles})
    for role in roles:
        params = role_parameters(model, role)
        for module, (a, b) in lora.weights[role].items():
            for kind, value in (("A", a), ("B", b)):
                param = params[f"{module}.lora_{kind}.{role}.weight"]
                if param.shape != value.shape:
                    raise ValueError(f"LoRA {role} {module}.lora_{kind}: shape {tuple(value.shape)} does not fit "
                                     f"the model's {tuple(param.shape)}")
                param.data = value.float().to(param.device)
    activate(model, roles)


def lora_from_model(model: torch.nn.Module, arch, alphas: dict, roles=ROLES, info: dict | None = None) -> RelationLora:
    """Copy `roles` out of a model holding the triplet's adapters (fp32, CPU)."""
    weights = {}
    for role in roles:
        modules = {}
        for name, param in role_parameters(model, role).items():
            module, rest = name.split(".lora_", 1)
            modules.setdefault(module, [None, None])["AB".index(rest[0])] = param.detach().float().cpu().clone()
        weights[role] = {m: tuple(ab) for m, ab in sorted(modules.items())}
    return RelationLora(arch.name, weights, {r: float(alphas[r]) for r in roles}, dict(info or {}))


def load_relation_lora(model: torch.nn.Module, path, roles=None) -> RelationLora:
    """Read a relation LoRA file and apply `roles` of it (default: all it holds) to `model`, unmerged and active."""
    lora = load_lora(path)
    apply_lora(model, lora, roles)
    return lora


def activate(model: torch.nn.Module, roles) -> None:
    """Run exactly `roles`: other adapters are skipped in forward (no compute, no gradient, requires_grad False)
    (peft `set_adapter`)."""
    from peft.functional import set_adapter

    set_adapter(model, list(roles))


def role_parameters(model: torch.nn.Module, role: str) -> dict:
    """name -> LoRA parameter of one role (peft names: `<module>.lora_A.<role>.weight`)."""
    suffixes = (f".lora_A.{role}.weight", f".lora_B.{role}.weight")
    return {n: p for n, p in model.named_parameters() if n.endswith(suffixes)}


def lora_parameters(model: torch.nn.Module) -> dict:
    """name -> every LoRA parameter of the triplet (all roles)."""
    return {n: p for role in ROLES for n, p in role_parameters(model, role).items()}


@dataclass
class _Merge:
    """What `merge_inference_set` changed, to undo it exactly: the merged modules' original weights (CPU copies),
    the adapters' configs and parameters."""

    weights: dict              # module name -> original weight
    configs: dict              # role -> LoraConfig
    parameters: dict           # LoRA parameter name -> value


_MERGE_ATTR = "_dreamrelation_merge"


def run_inference_set(model: torch.nn.Module, strengths: dict | None = None) -> list:
    """What `merge_inference_set` merges, left as unmerged adapters each scaled by its strength (diffusers'
    `set_adapters`), so that sampling can switch them off at low noise (`sampling.lora_switch`): relation and ffn
    at 1.0 unless given, any other role only if given a nonzero strength. Returns the roles that run."""
    strengths = {role: 1.0 for role in INFERENCE_ROLES} | dict(strengths or {})
    unmerge_lora(model)
    roles = [r for r in getattr(model, "peft_config", {}) if strengths.get(r, 0.0) != 0.0]
    if roles:
        model.set_adapters(roles, [float(strengths[r]) for r in roles])
    elif getattr(model, "peft_config", None):
        activate(model, ())
    return roles


def merge_inference_set(model: torch.nn.Module, strengths: dict | None = None, undoable: bool = True) -> None:
    """Merge relation + ffn into the base weights (subjects dropped), as DreamRelation infers (paper §3.4).

    `strengths` (role -> float, default 1.0) scale each merged role; a subject role given a nonzero strength is
    merged too (an experiment: the subject LoRAs carry the exemplars' looks). Uses diffusers' `set_adapters`,
    `fuse_lora` and `unload_lora`: afterwards every adapter and peft wrapper is gone and the model is a plain
    transformer again. With `undoable` the original weights and the adapters are kept (on the CPU) so that
    `unmerge_lora` restores the model exactly; merging again first does that, so merges never stack.
    """
    merged = run_inference_set(model, strengths)      # the roles to merge, scaled by their strengths
    if not getattr(model, "peft_config", None):
        return
    record = None
    if undoable:
        touched = {name.split(".lora_")[0] for role in merged for name in role_parameters(model, role)}
        modules = dict(model.named_modules())
        record = _Merge(weights={m: modules[m].get_base_layer().weight.detach().to("cpu", copy=True)
                                 for m in sorted(touched)},
                        configs={r: copy.deepcopy(c) for r, c in model.peft_config.items()},
                        parameters={n: p.detach().to("cpu", copy=True) for n, p in lora_parameters(model).items()})
    if merged:
        model.fuse_lora(adapter_names=merged)
    model.unload_lora()
    if record is not None:
        setattr(model, _MERGE_ATTR, record)


def unmerge_lora(model: torch.nn.Module) -> None:
    """Undo `merge_inference_set` exactly: the original base weights back, the adapters back with their
    parameters, none active. No-op on a model that is not merged."""
    record = getattr(model, _MERGE_ATTR, None)
    if record is None:
        return
    delattr(model, _MERGE_ATTR)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, weight in record.weights.items():
            modules[name].weight.copy_(weight)
    _add_adapters(model, record.configs)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in record.parameters.items():
            params[name].copy_(value)
    activate(model, ())
