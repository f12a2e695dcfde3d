"""Relation LoRA files: the inference set (relation + ffn) with its metadata, and applying it to a model.

On disk (safetensors): `transformer.<module>.lora_A.weight` [r, in] / `.lora_B.weight` [out, r] in diffusers/peft
naming, plus JSON metadata under the key "dreamrelation" describing roles, ranks, alphas and target modules.
Relation (Q/K) and ffn (output projections) never share a module, so one flat key space holds both.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from safetensors import safe_open
from safetensors.torch import save_file

from .archs import INFERENCE_ROLES, ROLES
from .triplet import activate, role_parameters

FORMAT = "dreamrelation.lora"
FORMAT_VERSION = 1
METADATA_KEY = "dreamrelation"
PREFIX = "transformer."


def role_weights(model: torch.nn.Module, roles=ROLES) -> dict:
    """role -> module -> (A [r, in], B [out, r]) from a peft-injected model (detached fp32 CPU copies)."""
    out = {}
    for role in roles:
        weights = {}
        for name, param in role_parameters(model, role).items():
            module, kind = name.rsplit(f".lora_", 1)[0], name.rsplit(".lora_", 1)[1][0]
            weights.setdefault(module, [None, None])["AB".index(kind)] = param.detach().float().cpu().clone()
        out[role] = {m: tuple(ab) for m, ab in sorted(weights.items())}
    return out


def atomic_save_safetensors(tensors: dict, path, metadata: dict | None = None) -> Path:
    """save_file to a temp file in the target directory, then rename: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_relation_lora(path, weights: dict, arch, alphas: dict, info: dict | None = None,
                       roles=INFERENCE_ROLES) -> Path:
    """Write `roles` of `weights` (role -> module -> (A, B)) with metadata; `alphas` role -> alpha."""
    tensors, meta_roles = {}, {}
    for role in roles:
        modules = weights[role]
        for module, (a, b) in modules.items():
            tensors[f"{PREFIX}{module}.lora_A.weight"] = a
            tensors[f"{PREFIX}{module}.lora_B.weight"] = b
        rank = next(iter(modules.values()))[0].shape[0]
        meta_roles[role] = {"rank": int(rank), "alpha": float(alphas[role]), "modules": sorted(modules)}
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "arch": arch.name, "roles": meta_roles, **(info or {})}
    return atomic_save_safetensors(tensors, path, {METADATA_KEY: json.dumps(meta)})


def read_relation_lora(path) -> tuple[dict, dict]:
    """-> (weights role -> module -> (A, B), metadata). ValueError if `path` is not one of our LoRA files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(METADATA_KEY)
        if raw is None:
            raise ValueError(f"{path} has no '{METADATA_KEY}' metadata: not a DreamRelation LoRA file")
        meta = json.loads(raw)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown format {meta.get('format')!r}, expected {FORMAT!r}")
        weights = {role: {m: (f.get_tensor(f"{PREFIX}{m}.lora_A.weight"), f.get_tensor(f"{PREFIX}{m}.lora_B.weight"))
                          for m in info["modules"]}
                   for role, info in meta["roles"].items()}
    return weights, meta


def apply_role_weights(model: torch.nn.Module, weights: dict, alphas: dict) -> None:
    """Inject one peft adapter per role on exactly the modules in `weights` and load A/B; all become active."""
    for role, modules in weights.items():
        rank = next(iter(modules.values()))[0].shape[0]
        config = LoraConfig(r=rank, lora_alpha=float(alphas[role]), target_modules=sorted(modules))
        with warnings.catch_warnings():  # several named adapters on one model is the design
            warnings.simplefilter("ignore", UserWarning)
            inject_adapter_in_model(config, model, adapter_name=role)
        params = role_parameters(model, role)
        for module, (a, b) in modules.items():
            params[f"{module}.lora_A.{role}.weight"].data = a.float().to(params[f"{module}.lora_A.{role}.weight"].device)
            params[f"{module}.lora_B.{role}.weight"].data = b.float().to(params[f"{module}.lora_B.{role}.weight"].device)
    activate(model, weights.keys())


def load_relation_lora(model: torch.nn.Module, path) -> dict:
    """Read a relation LoRA file and apply its roles to `model` (unmerged, active). Returns the metadata."""
    weights, meta = read_relation_lora(path)
    apply_role_weights(model, weights, {r: info["alpha"] for r, info in meta["roles"].items()})
    return meta
