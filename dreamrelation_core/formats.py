"""Relation LoRA files: ComfyUI-native export, diffusers export, official DreamRelation import, inspection.

In memory a `RelationLora` holds, per role, `{diffusers module name: (A [r, in], B [out, r])}` plus alpha per role.
On disk (safetensors, JSON metadata under the key "dreamrelation"):
- layout "comfyui" (default, `<name>.safetensors`): the inference set (relation + ffn) in ComfyUI-native keys,
  `diffusion_model.blocks.N.<native module>.lora_A.weight` / `.lora_B.weight` (+ `.alpha` where alpha ≠ rank), so a
  stock `LoraLoaderModelOnly` applies exactly what DreamRelation applies at inference. Mochi's q/k LoRAs become one
  exact fused LoRA on `qkv_x` / `qkv_y`: A = [A_q; A_k], B = [[B_q, 0], [0, B_k], [0, 0]], alpha scaled by the
  rank growth so that the delta is unchanged.
- layout "diffusers": `transformer.<module>.lora_A.weight` with diffusers' `lora_adapter_metadata` (rank and
  alpha patterns), for diffusers pipelines.
- layout "subjects" (`<name>.subjects.safetensors`): the subject LoRAs, `transformer.<module>.lora_A.<role>.weight`;
  training state for experiments, never read by a stock loader.
Official DreamRelation checkpoints (`model_N.lora.pt`, keys `blocks.N.attn.<to_q_x…proj_y>.lora_<A|B>[.<role>]`)
are read with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from .archs import INFERENCE_ROLES, ROLES, get_architecture
from .files import atomic_write_many

FORMAT = "dreamrelation.lora"
FORMAT_VERSION = 2
METADATA_KEY = "dreamrelation"
NATIVE_PREFIX = "diffusion_model."
DIFFUSERS_PREFIX = "transformer."
SUBJECT_ROLES = ("subject1", "subject2")


@dataclass
class RelationLora:
    """A relation LoRA triplet (or a subset of its roles) in diffusers module names."""

    arch: str
    weights: dict                      # role -> {module: (A [r, in], B [out, r])}
    alphas: dict                       # role -> alpha (scale = alpha / rank)
    info: dict = field(default_factory=dict)

    def rank(self, role: str) -> int:
        return int(next(iter(self.weights[role].values()))[0].shape[0])

    def subset(self, roles) -> "RelationLora":
        roles = [r for r in roles if r in self.weights]
        return RelationLora(self.arch, {r: self.weights[r] for r in roles}, {r: self.alphas[r] for r in roles},
                            dict(self.info))

    def delta(self, role: str, module: str) -> torch.Tensor:
        """ΔW = (alpha / r)·B·A of one module, [out, in]."""
        a, b = self.weights[role][module]
        return (self.alphas[role] / a.shape[0]) * (b.float() @ a.float())


# ---- ComfyUI-native layout ----------------------------------------------------------------------------------------

_DIFFUSERS_BLOCK = re.compile(r"^(?P<blocks>[a-z_]+)\.(?P<index>\d+)\.(?P<rel>.+)$")
_NATIVE_BLOCK = re.compile(r"^diffusion_model\.blocks\.(?P<index>\d+)\.(?P<rel>.+)$")


def native_module(arch, module: str) -> tuple[str, object]:
    """diffusers module name -> (ComfyUI key stem `diffusion_model.blocks.N.<native>`, layout)."""
    match = _DIFFUSERS_BLOCK.match(module)
    if not match or match["blocks"] != arch.diffusers_blocks or match["rel"] not in arch.native_modules:
        raise ValueError(f"{arch.name}: no ComfyUI-native name for module {module!r}")
    native, layout = arch.native_modules[match["rel"]]
    return f"{NATIVE_PREFIX}blocks.{match['index']}.{native}", layout


def _swap_halves(b: torch.Tensor) -> torch.Tensor:
    first, second = b.chunk(2, dim=0)
    return torch.cat([second, first])


def to_native(lora: RelationLora, roles=INFERENCE_ROLES) -> tuple[dict, dict, dict]:
    """-> (tensors in ComfyUI keys, role -> key stems, fused layout {stem: [[slice, module, role, rank], ...]})."""
    arch = get_architecture(lora.arch)
    groups = {}
    for role in roles:
        for module, (a, b) in lora.weights[role].items():
            stem, layout = native_module(arch, module)
            groups.setdefault(stem, []).append((layout, module, role, a, b))
    tensors, role_keys, fused = {}, {r: [] for r in roles}, {}
    for stem, entries in sorted(groups.items()):
        owners = sorted({e[2] for e in entries})
        if len(owners) > 1:
            raise ValueError(f"roles {owners} both target {stem}; one stock-loadable file cannot hold both")
        role = owners[0]
        rank, alpha = lora.rank(role), lora.alphas[role]
        if isinstance(entries[0][0], int):          # fused q/k/v: block-diagonal, exact
            entries.sort(key=lambda e: e[0])
            out = entries[0][4].shape[0]
            a = torch.cat([e[3] for e in entries])
            b = torch.zeros(3 * out, a.shape[0], dtype=entries[0][4].dtype)
            col = 0
            for slot, _, _, ea, eb in entries:
                b[slot * out:(slot + 1) * out, col:col + ea.shape[0]] = eb
                col += ea.shape[0]
            fused[stem] = [[e[0], e[1], role, int(e[3].shape[0])] for e in entries]
            file_alpha = alpha * a.shape[0] / rank   # ComfyUI scales by alpha / (fused rank)
        else:
            (layout, _, _, a, b), = entries
            b = _swap_halves(b) if layout == "swap_halves" else b
            file_alpha = alpha
        tensors[f"{stem}.lora_A.weight"] = a.contiguous()
        tensors[f"{stem}.lora_B.weight"] = b.contiguous()
        if file_alpha != a.shape[0]:
            tensors[f"{stem}.alpha"] = torch.tensor(float(file_alpha))
        role_keys[role].append(stem)
    return tensors, role_keys, fused


def from_native(tensors: dict, meta: dict) -> RelationLora:
    """Inverse of `to_native` for our own files (the metadata says how fused LoRAs split)."""
    arch = get_architecture(meta["arch"])
    inverse = {native: (rel, layout) for rel, (native, layout) in arch.native_modules.items()}
    weights = {role: {} for role in meta["roles"]}
    for role, info in meta["roles"].items():
        for stem in info["keys"]:
            a, b = tensors[f"{stem}.lora_A.weight"], tensors[f"{stem}.lora_B.weight"]
            if stem in meta.get("fused", {}):
                row = 0
                for slot, module, _, rank in meta["fused"][stem]:
                    out = b.shape[0] // 3
                    weights[role][module] = (a[row:row + rank], b[slot * out:(slot + 1) * out, row:row + rank])
                    row += rank
                continue
            match = _NATIVE_BLOCK.match(stem)
            rel, layout = inverse[match["rel"]]
            module = f"{arch.diffusers_blocks}.{match['index']}.{rel}"
            weights[role][module] = (a, _swap_halves(b) if layout == "swap_halves" else b)
    weights = {r: dict(sorted(m.items())) for r, m in weights.items()}
    return RelationLora(arch.name, weights, {r: float(i["alpha"]) for r, i in meta["roles"].items()},
                        {k: v for k, v in meta.items() if k not in _STRUCTURE_KEYS})


def comfyui_unmapped_keys(keys, arch) -> list[str]:
    """Keys a stock ComfyUI LoRA loader would not map onto `arch`'s native model (by the native name table,
    which the ComfyUI integration tests check against ComfyUI's own key map)."""
    natives = {native for native, _ in arch.native_modules.values()}
    bad = []
    for key in keys:
        suffix = next((s for s in (".lora_A.weight", ".lora_B.weight", ".alpha") if key.endswith(s)), None)
        match = _NATIVE_BLOCK.match(key[: -len(suffix)]) if suffix else None
        if match is None or match["rel"] not in natives:
            bad.append(key)
    return bad


# ---- files --------------------------------------------------------------------------------------------------------

_STRUCTURE_KEYS = ("format", "version", "layout", "arch", "roles", "fused")


def atomic_save_safetensors(tensors: dict, path, metadata: dict | None = None) -> Path:
    """Write a safetensors file atomically (`atomic_save_many`)."""
    return atomic_save_many([(tensors, path, metadata)])[0]


def atomic_save_many(files) -> list[Path]:
    """Write several safetensors files, (tensors, path, metadata) each, as one (`atomic_write_many`)."""
    return atomic_write_many([(path, save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))
                              for tensors, path, metadata in files])


def _metadata(lora: RelationLora, layout: str, roles, role_keys: dict, fused: dict | None = None) -> dict:
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "layout": layout, "arch": lora.arch,
            "roles": {r: {"rank": lora.rank(r), "alpha": lora.alphas[r], "modules": sorted(lora.weights[r]),
                          "keys": role_keys[r]} for r in roles}}
    if fused:
        meta["fused"] = fused
    return {**meta, **{k: v for k, v in lora.info.items() if k not in _STRUCTURE_KEYS}}


def save_lora(path, lora: RelationLora, layout: str = "comfyui", roles=None) -> Path:
    """Write `roles` (default: the inference set, or the subjects for layout "subjects") of `lora` to `path`."""
    return atomic_save_safetensors(*serialise_lora(lora, layout, roles, path))


def save_lora_pair(path, lora: RelationLora) -> Path:
    """The inference set to `path` (ComfyUI keys) and the subject LoRAs to `<name>.subjects.safetensors`, written
    as a pair: both or neither."""
    files = [serialise_lora(lora, "comfyui", None, path)]
    if set(SUBJECT_ROLES) & set(lora.weights):
        files.append(serialise_lora(lora, "subjects", None, subjects_path(path)))
    return atomic_save_many(files)[0]


def serialise_lora(lora: RelationLora, layout: str, roles, path) -> tuple[dict, Path, dict]:
    """(tensors, path, metadata) of `roles` of `lora` in `layout`; ValueError when none of them is in it."""
    if layout not in ("comfyui", "diffusers", "subjects"):
        raise ValueError(f"unknown layout {layout!r}; expected comfyui, diffusers or subjects")
    wanted = roles or (SUBJECT_ROLES if layout == "subjects" else INFERENCE_ROLES)
    roles = [r for r in wanted if r in lora.weights]
    if not roles:
        raise ValueError(f"nothing to write to {path}: the LoRA holds {sorted(lora.weights) or 'no roles'}, none of "
                         f"{list(wanted)}" + (" (a .subjects file holds only the subject LoRAs; convert the relation "
                                              "file beside it)" if layout != "subjects" else ""))
    if layout == "comfyui":
        tensors, role_keys, fused = to_native(lora, roles)
        meta = _metadata(lora, layout, roles, role_keys, fused)
        return tensors, path, {METADATA_KEY: json.dumps(meta)}
    if layout == "diffusers":
        tensors, role_keys, ranks, alphas = {}, {r: [] for r in roles}, {}, {}
        for role in roles:
            for module, (a, b) in lora.weights[role].items():
                if f"{DIFFUSERS_PREFIX}{module}.lora_A.weight" in tensors:
                    raise ValueError(f"roles overlap on {module}; a diffusers file holds one LoRA per module")
                tensors[f"{DIFFUSERS_PREFIX}{module}.lora_A.weight"] = a
                tensors[f"{DIFFUSERS_PREFIX}{module}.lora_B.weight"] = b
                role_keys[role].append(f"{DIFFUSERS_PREFIX}{module}")
                ranks[module], alphas[module] = lora.rank(role), lora.alphas[role]
        # diffusers reads the peft LoraConfig of each pipeline component from this entry (`transformer.` keys).
        first = roles[0]
        adapter = {"transformer.r": lora.rank(first), "transformer.lora_alpha": lora.alphas[first],
                   "transformer.target_modules": sorted(ranks), "transformer.rank_pattern": ranks,
                   "transformer.alpha_pattern": alphas}
        meta = _metadata(lora, layout, roles, role_keys)
        return tensors, path, {METADATA_KEY: json.dumps(meta), "lora_adapter_metadata": json.dumps(adapter),
                               "format": "pt"}
    tensors, role_keys = {}, {r: [] for r in roles}
    for role in roles:
        for module, (a, b) in lora.weights[role].items():
            tensors[f"{DIFFUSERS_PREFIX}{module}.lora_A.{role}.weight"] = a
            tensors[f"{DIFFUSERS_PREFIX}{module}.lora_B.{role}.weight"] = b
            role_keys[role].append(f"{DIFFUSERS_PREFIX}{module}")
    return tensors, path, {METADATA_KEY: json.dumps(_metadata(lora, layout, roles, role_keys))}


def subjects_path(path) -> Path:
    """`x/name.safetensors` -> `x/name.subjects.safetensors`."""
    path = Path(path)
    return path.with_name(path.name[: -len(path.suffix)] + ".subjects" + path.suffix)


def read_safetensors(path) -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file, with a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise ValueError(f"{path} is not a readable safetensors file ({exc})") from None


def _from_ours(tensors: dict, meta: dict, path) -> RelationLora:
    layout = meta.get("layout")
    if layout == "comfyui":
        return from_native(tensors, meta)
    if layout in ("diffusers", "subjects"):
        weights = {}
        for role, info in meta["roles"].items():
            tail = f".{role}.weight" if layout == "subjects" else ".weight"
            weights[role] = {k[len(DIFFUSERS_PREFIX):]: (tensors[f"{k}.lora_A{tail}"], tensors[f"{k}.lora_B{tail}"])
                             for k in info["keys"]}
        return RelationLora(meta["arch"], weights, {r: float(i["alpha"]) for r, i in meta["roles"].items()},
                            {k: v for k, v in meta.items() if k not in _STRUCTURE_KEYS})
    raise ValueError(f"{path}: unknown DreamRelation layout {layout!r}")


def load_lora(path) -> RelationLora:
    """Read any relation LoRA we know: our comfyui / diffusers / subjects layouts, or an official DreamRelation
    checkpoint (`.pt` or `.safetensors`). Raises ValueError naming the file otherwise, and for NaN or infinite
    weights (a diverged run), which would sample blank videos."""
    lora = _read_lora(Path(path))
    for role, modules in lora.weights.items():
        for module, pair in modules.items():
            if not all(torch.isfinite(t).all() for t in pair):
                raise ValueError(f"{path}: the {role} LoRA of {module} holds NaN or infinite weights (a diverged "
                                 "training run); use an earlier checkpoint")
    return lora


def _read_lora(path: Path) -> RelationLora:
    if path.suffix in (".pt", ".pth", ".ckpt", ".bin"):
        return read_official(path)
    tensors, meta = read_safetensors(path)
    if METADATA_KEY in meta:
        try:
            parsed = json.loads(meta[METADATA_KEY])
            if not isinstance(parsed, dict) or parsed.get("format") != FORMAT:
                raise ValueError(f"{path}: unknown format {parsed.get('format') if isinstance(parsed, dict) else parsed!r}, "
                                 f"expected {FORMAT!r}")
            return _from_ours(tensors, parsed, path)
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            what = f"{exc.args[0]!r} is missing" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(f"{path} is a damaged DreamRelation LoRA: {what} (in its metadata or tensors); "
                             "re-save it from its training run's checkpoint") from None
    if any(".to_q_x." in k or ".proj_x." in k for k in tensors):
        return official_to_lora(tensors, json.loads(meta.get("kwargs", "{}")), path)
    raise ValueError(f"{path} is neither a DreamRelation LoRA (no '{METADATA_KEY}' metadata) nor an official "
                     f"DreamRelation checkpoint; a plain ComfyUI LoRA loads with ComfyUI's own LoRA loader")


def load_lora_with_subjects(path, subjects: bool = False) -> RelationLora:
    """`load_lora`, plus the subject LoRAs from the sibling `<name>.subjects.safetensors` when `subjects` is asked
    for and the file itself has none (ValueError if the sibling is missing)."""
    lora = load_lora(path)
    if subjects and not set(SUBJECT_ROLES) & set(lora.weights):
        sibling = subjects_path(path)
        if not sibling.is_file():
            raise ValueError(f"the subject LoRAs were asked for but {sibling} does not exist")
        extra = load_lora(sibling)
        lora.weights.update(extra.weights)
        lora.alphas.update(extra.alphas)
    return lora


# ---- official DreamRelation checkpoints ---------------------------------------------------------------------------

# AsymmDiT (genmo, split q/k/v) module -> diffusers MochiTransformer3DModel module inside a block.
OFFICIAL_MODULES = {"to_q_x": "attn1.to_q", "to_k_x": "attn1.to_k", "to_v_x": "attn1.to_v",
                    "to_q_y": "attn1.add_q_proj", "to_k_y": "attn1.add_k_proj", "to_v_y": "attn1.add_v_proj",
                    "proj_x": "attn1.to_out.0", "proj_y": "attn1.to_add_out"}
_OFFICIAL_KEY = re.compile(r"^blocks\.(?P<index>\d+)\.attn\.(?P<module>\w+)\.lora_(?P<kind>[AB])(?:\.(?P<name>\w+))?$")


def read_official(path) -> RelationLora:
    """An official `model_N.lora.pt` = {"state_dict": ..., "kwargs": ...}, loaded with weights_only=True: a file
    that needs arbitrary unpickling is refused (never executed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"refusing {path}: it is not a plain tensor checkpoint and would need arbitrary "
                         f"unpickling ({str(exc).splitlines()[0]})") from None
    except Exception as exc:
        raise ValueError(f"{path} is not a readable torch checkpoint ({exc})") from None
    if not isinstance(data, dict) or "state_dict" not in data:
        raise ValueError(f"{path}: expected a dict with 'state_dict' and 'kwargs' (official DreamRelation format)")
    return official_to_lora(data["state_dict"], data.get("kwargs") or {}, path)


def official_to_lora(state_dict: dict, kwargs: dict, path="checkpoint") -> RelationLora:
    """Official keys (`blocks.N.attn.to_q_x.lora_A.relation`, `...proj_x.lora_A`) -> diffusers Mochi modules."""
    weights, unknown = {}, []
    for raw_key, value in state_dict.items():
        key = raw_key.replace("_orig_mod.", "").removeprefix("module.")
        match = _OFFICIAL_KEY.match(key)
        if match is None or match["module"] not in OFFICIAL_MODULES:
            unknown.append(raw_key)
            continue
        role = match["name"] or "ffn"                   # the out-projection LoRA is the unnamed "FFN" LoRA
        if role not in ROLES:
            unknown.append(raw_key)
            continue
        module = f"transformer_blocks.{match['index']}.{OFFICIAL_MODULES[match['module']]}"
        pair = weights.setdefault(role, {}).setdefault(module, [None, None])
        pair["AB".index(match["kind"])] = value.float()
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} keys are not DreamRelation LoRA keys, e.g. {unknown[:3]}")
    if not weights:
        raise ValueError(f"{path}: no LoRA tensors found")
    for role, modules in weights.items():
        for module, (a, b) in modules.items():
            if a is None or b is None:
                raise ValueError(f"{path}: {module} role {role} lacks lora_{'A' if a is None else 'B'}")
    qkv_alpha = float(kwargs.get("qkv_proj_lora_alpha", kwargs.get("qkv_proj_lora_rank", 16)))
    out_alpha = float(kwargs.get("out_proj_lora_alpha", kwargs.get("out_proj_lora_rank", 16)))
    alphas = {role: out_alpha if role == "ffn" else qkv_alpha for role in weights}
    info = {"source": "official DreamRelation checkpoint", "source_file": Path(path).name}
    return RelationLora("mochi", {r: {m: tuple(ab) for m, ab in sorted(ms.items())} for r, ms in weights.items()},
                        alphas, info)


def file_digest(path) -> str:
    """A cheap identity for a (possibly huge) safetensors file: sha256 of its header (names, shapes, offsets)."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        return hashlib.sha256(f.read(min(size, 100_000_000))).hexdigest()[:16]
