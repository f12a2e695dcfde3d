"""Loading bases (components.py: what a base is): a video-DiT transformer, its text encoder and its latent codec.

A base is named by a spec string: `tiny-wan` / `tiny-mochi` (tiny random instances of the real diffusers classes, for
tests and CPU smoke runs), a diffusers pipeline folder, a diffusers transformer folder, or a single-file `.safetensors`
transformer in the original key layout (as ComfyUI users keep them). Everything is loaded offline from local files,
only through safetensors or `from_pretrained` (never unpickled), frozen (`requires_grad_(False)`) and in eval mode.
What differs between the families lives in their `Loading` entries (archs.py), not in branches.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import tempfile
from pathlib import Path

import torch

from . import conversion
from .archs import MODEL_FAMILIES, Architecture, family_of, get_architecture
from .components import TINY_TEXT_LENGTH, Base, HashTextEncoder, LatentCodec, T5TextEncoder, TextEncoder

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
TINY_SPECS = {f"tiny-{name}": name for name in MODEL_FAMILIES}
_VAE_CLASSES = ("AutoencoderKLWan", "AutoencoderKLMochi")
_TEXT_MODEL_CLASSES = {"t5": "T5EncoderModel", "umt5": "UMT5EncoderModel"}   # by text_encoder/config.json model_type




# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------

def _diffusers_class(name: str):
    import diffusers
    return getattr(diffusers, name)


def _freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Floating weights to `dtype`, except those in the class's `_keep_in_fp32_modules`, which stay float32 as
    diffusers' `from_pretrained` leaves them (Wan: rope, time_embedder, scale_shift_table, norms), so a base behaves
    the same whichever way it was loaded. Casts tensor data directly: `ModelMixin.to(dtype)` would cast everything
    (and log a warning saying so)."""
    keep = list(getattr(module, "_keep_in_fp32_modules", None) or [])
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_floating_point():
            target = torch.float32 if any(m in name.split(".") for m in keep) else dtype
            if tensor.dtype != target:
                tensor.data = tensor.data.to(target)
    return module


@contextlib.contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _resolve_arch(class_name: str | None, arch: str | None, where: str, in_channels: int | None = None) -> Architecture:
    """The Architecture named by `arch`, checked against the transformer class `class_name` (and its latent
    channels) when both are known."""
    detected = family_of(class_name, in_channels) if class_name else None
    if arch is not None:
        chosen = get_architecture(arch)
        if detected is not None and detected is not chosen:
            raise ValueError(f"{where}: arch={arch!r} was requested but the transformer is a {class_name} "
                             f"(architecture {detected.name!r})")
        return chosen
    if detected is None:
        raise ValueError(f"{where}: cannot tell the architecture from transformer class {class_name!r}; expected one "
                         f"of {sorted({a.transformer_class for a in MODEL_FAMILIES.values()})} or pass arch= (one of "
                         f"{sorted(MODEL_FAMILIES)})")
    return detected


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _transformers_dtype_kwarg() -> str:
    import transformers
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"   # `torch_dtype` is deprecated from 4.56 on


def _check_components(arch: Architecture, transformer: torch.nn.Module, codec: LatentCodec,
                      text_encoder: TextEncoder, where: str) -> None:
    """Refuse pairings that would train silently on garbage (e.g. a Wan 2.2 5B VAE, 48 channels at 16x, with a
    Wan 2.1 transformer)."""
    expected = dict(latent_channels=arch.latent_channels, temporal_ratio=arch.temporal_ratio,
                    spatial_ratio=arch.spatial_ratio)
    got = {k: getattr(codec, k) for k in expected}
    if got != expected:
        raise ValueError(f"{where}: the VAE gives {got} but architecture {arch.name!r} needs {expected}")
    in_channels = transformer.config.get("in_channels")
    if in_channels != codec.latent_channels:
        raise ValueError(f"{where}: transformer in_channels={in_channels} does not match the VAE's "
                         f"{codec.latent_channels} latent channels")
    text_dim = transformer.config.get(arch.loading.text_dim_key)
    if text_dim != text_encoder.dim:
        raise ValueError(f"{where}: text encoder width {text_encoder.dim} does not match the transformer's "
                         f"{arch.loading.text_dim_key}={text_dim}")


# ---------------------------------------------------------------------------------------------------------------------
# Tiny bases
# ---------------------------------------------------------------------------------------------------------------------

def build_tiny(arch_name: str, seed: int = 0) -> Base:
    """A tiny random base of the real diffusers classes for `arch_name` ("wan", "mochi", or "tiny-wan"/"tiny-mochi").

    Deterministic: weights are drawn under a forked RNG seeded with `seed`, so two processes build bit-identical
    models. Transformer config = `arch.tiny_transformer`; the codec is a tiny random real VAE (Wan: latents
    [B, 16, (F−1)/4+1, H/8, W/8]; Mochi: [B, 12, (F−1)/6+1, H/8, W/8]); the text encoder is a `HashTextEncoder`
    with dim = the transformer's text width (32) and max_length 16 (use `base.text_encoder.max_length`).
    """
    arch = get_architecture(TINY_SPECS.get(arch_name, arch_name))
    family = arch.loading
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = _diffusers_class(arch.transformer_class)(**arch.tiny_transformer)
        vae = _diffusers_class(family.tiny_vae_class)(**family.tiny_vae)
    cfg = transformer.config
    text = HashTextEncoder(dim=cfg[family.text_dim_key], max_length=cfg.get("max_sequence_length", TINY_TEXT_LENGTH))
    codec = LatentCodec(_freeze(vae))
    _check_components(arch, transformer, codec, text, f"tiny-{arch.name}")
    return Base(arch=arch, transformer=_freeze(transformer), text_encoder=text, codec=codec, name=f"tiny-{arch.name}")


# ---------------------------------------------------------------------------------------------------------------------
# Diffusers folders
# ---------------------------------------------------------------------------------------------------------------------

def _load_components(folder: Path, arch: Architecture, transformer: torch.nn.Module,
                     dtype: torch.dtype) -> tuple[TextEncoder, LatentCodec]:
    """Text encoder + codec from a diffusers pipeline folder's `tokenizer/`, `text_encoder/` and `vae/`."""
    missing = [sub for sub in ("vae", "text_encoder", "tokenizer") if not (folder / sub).is_dir()]
    if not folder.is_dir() or missing:
        raise ValueError(f"components folder {str(folder)!r} must be a diffusers pipeline folder with vae/, "
                         f"text_encoder/ and tokenizer/ (missing: {missing or 'the folder itself'})")
    family = arch.loading

    vae_class = _read_json(folder / "vae" / "config.json").get("_class_name")
    if vae_class not in _VAE_CLASSES:
        raise ValueError(f"{folder / 'vae'}: unsupported VAE class {vae_class!r}; expected one of {_VAE_CLASSES}")
    vae = _diffusers_class(vae_class).from_pretrained(folder / "vae", torch_dtype=dtype, local_files_only=True)
    codec = LatentCodec(_freeze(_cast(vae, dtype)))

    import transformers
    model_type = _read_json(folder / "text_encoder" / "config.json").get("model_type")
    text_class = getattr(transformers, _TEXT_MODEL_CLASSES.get(model_type, family.text_model_class))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    text_model = text_class.from_pretrained(folder / "text_encoder", local_files_only=True,
                                            **{_transformers_dtype_kwarg(): dtype})
    # Mochi's transformer records the text length it was trained with; Wan's does not (512, arch.text_max_length).
    max_length = transformer.config.get("max_sequence_length") or arch.text_max_length
    text = T5TextEncoder(tokenizer, _freeze(text_model), max_length, family.zero_padding,
                         zero_empty_prompts=family.zero_empty_prompts, clean=family.clean)
    return text, codec


EXPERTS = {"high_noise": "transformer", "low_noise": "transformer_2"}   # Wan 2.2 A14B pipeline folders


def _load_folder(folder: Path, components: str | None, dtype: torch.dtype, arch: str | None,
                 expert: str | None = None, companion: bool = False) -> Base:
    if expert is not None:
        if expert not in EXPERTS:
            raise ValueError(f"unknown expert {expert!r}; expected one of {sorted(EXPERTS)}")
        if not (folder / EXPERTS[expert] / "config.json").is_file():
            raise ValueError(f"{str(folder)!r} has no {EXPERTS[expert]}/ (expert {expert!r} needs a Wan 2.2 "
                             "two-expert pipeline folder)")
    subfolder = EXPERTS[expert or "high_noise"]
    if (folder / subfolder / "config.json").is_file():
        transformer_dir, default_components = folder / subfolder, folder
    elif (folder / "config.json").is_file():          # a bare diffusers transformer folder
        transformer_dir, default_components = folder, None
    else:
        raise ValueError(f"{str(folder)!r} is neither a diffusers pipeline folder (transformer/config.json) nor a "
                         "diffusers transformer folder (config.json)")
    class_name = _read_json(transformer_dir / "config.json").get("_class_name")
    architecture = _resolve_arch(class_name, arch, str(transformer_dir),
                                 _read_json(transformer_dir / "config.json").get("in_channels"))
    comp = Path(components).expanduser() if components is not None else default_components
    if comp is None:
        raise ValueError(f"{str(folder)!r} holds only a transformer; pass components= a diffusers pipeline folder "
                         "with vae/, text_encoder/ and tokenizer/")
    transformer = _diffusers_class(architecture.transformer_class).from_pretrained(
        transformer_dir, torch_dtype=dtype, local_files_only=True)
    _freeze(_cast(transformer, dtype))
    text, codec = _load_components(comp, architecture, transformer, dtype)
    _check_components(architecture, transformer, codec, text, str(folder))
    sigma_range = _expert_sigma_range(folder, expert or "high_noise")
    other = None
    if companion and sigma_range is not None:       # both experts, as Wan 2.2 samples
        other_dir = folder / EXPERTS["low_noise" if (expert or "high_noise") == "high_noise" else "high_noise"]
        other = _freeze(_cast(_diffusers_class(architecture.transformer_class).from_pretrained(
            other_dir, torch_dtype=dtype, local_files_only=True), dtype))
    return Base(arch=architecture, transformer=transformer, text_encoder=text, codec=codec, name=str(folder),
                sigma_range=sigma_range, companion=other)


def is_expert_pair(folder) -> bool:
    """A Wan 2.2 A14B pipeline folder, holding both experts (transformer/ and transformer_2/)."""
    return (Path(folder) / EXPERTS["low_noise"] / "config.json").is_file()


def _expert_sigma_range(folder: Path, expert: str) -> tuple | None:
    """A Wan 2.2 two-expert folder: the σ range of `expert`, split at the pipeline's `boundary_ratio` (its
    high-noise expert denoises σ ≥ boundary, where motion is decided; the low-noise one the rest). None for
    single-transformer folders."""
    index = folder / "model_index.json"
    if not is_expert_pair(folder) or not index.is_file():
        return None
    boundary = _read_json(index).get("boundary_ratio")
    if boundary is None:
        return None
    return (float(boundary), 1.0) if expert == "high_noise" else (0.0, float(boundary))


# ---------------------------------------------------------------------------------------------------------------------
# Single-file transformers
# ---------------------------------------------------------------------------------------------------------------------

def _single_file_header(path: Path) -> dict:
    """Key -> shape of a .safetensors file, without reading the tensors."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:   # safetensors raises its own error types for truncated / non-safetensors files
        raise ValueError(f"{path}: not a readable .safetensors file ({e})") from e


def _detect_layout(path: Path, shapes: dict) -> tuple[str, str]:
    """(architecture name, key prefix) of an original-layout transformer checkpoint, or a ValueError naming the file."""
    for candidate in MODEL_FAMILIES.values():
        family = candidate.loading
        for key in shapes:
            if key.endswith(family.marker) and (key == family.marker or key[-len(family.marker) - 1] == "."):
                prefix = key[: -len(family.marker)]
                for fragment, why in family.unsupported.items():
                    if any(k.startswith(prefix + fragment) for k in shapes):
                        raise ValueError(f"{path}: {why}")
                in_channels = shapes.get(prefix + family.dim_key, [None, None])[1]      # [dim, in_channels, ...]
                return family_of(candidate.transformer_class, in_channels).name, prefix
    sample = sorted(shapes)[:5]
    diffusers_like = any(".attn1.to_q." in k for k in shapes)
    hint = (" These look like diffusers-format keys: load the diffusers folder (with its config.json) instead."
            if diffusers_like else "")
    expected = "; ".join(f"{n}: '{a.loading.marker}'" for n, a in MODEL_FAMILIES.items())
    raise ValueError(f"{path}: unrecognised checkpoint keys (e.g. {sample}); expected an original-layout transformer "
                     f"with keys like {expected}, optionally prefixed 'model.diffusion_model.'.{hint}")


def _single_file_config(path: Path, arch: Architecture, shapes: dict, overrides: dict | None) -> dict:
    """Diffusers config for a single file: template < sidecar `<file>.json` < shapes < `overrides`."""
    family = arch.loading
    dim = shapes[family.dim_key][0]
    template = family.templates.get(dim, family.templates[None])
    config = _read_json(CONFIG_DIR / template / "config.json")
    sidecar = {}
    for candidate in (path.with_suffix(".json"), path.with_name(path.name + ".json")):
        if candidate.is_file():
            sidecar = {k: v for k, v in _read_json(candidate).items() if not k.startswith("_")}
            break
    config.update(sidecar)
    overrides = dict(overrides or {})
    # Wan's per-head size cannot be read off the tensors: take it from the caller, else derive it from a given head
    # count, else the template's 128.
    given = {**sidecar, **overrides}
    head_dim = given.get("attention_head_dim") or (
        dim // given["num_attention_heads"] if given.get("num_attention_heads") else config["attention_head_dim"])
    config.update(family.infer_config(shapes, int(head_dim)))
    config.update(overrides)
    config["_class_name"] = arch.transformer_class
    return config


def _load_single_file(path: Path, components: str | None, dtype: torch.dtype, arch: str | None,
                      config_overrides: dict | None) -> Base:
    """diffusers' `from_single_file(config=…)` does the loading. What stays here is what it cannot do offline:
    without `config` it fetches the released models' configs from the Hub, so ours is read off the tensor shapes
    (any size loads, tiny test files too); Mochi's converter is ours because diffusers' hard-codes 48 blocks; and
    the key check names the file and what is missing instead of leaving weights on the meta device."""
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"{path}: only .safetensors single files are supported (pickled .ckpt/.pt/.pth files are "
                         "never loaded)")
    if components is None:
        raise ValueError(f"{path}: a single-file transformer needs components= a diffusers pipeline folder with "
                         "vae/, text_encoder/ and tokenizer/ (its transformer/ is not used)")
    shapes = {k: v for k, v in _single_file_header(path).items() if not conversion.is_scale_key(k)}
    name, prefix = _detect_layout(path, shapes)
    architecture = _resolve_arch(get_architecture(name).transformer_class, arch, str(path),
                                 get_architecture(name).latent_channels)
    shapes = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
    try:
        config = _single_file_config(path, architecture, shapes, config_overrides)
    except KeyError as e:
        raise ValueError(f"{path}: looks like a {architecture.name} checkpoint but lacks {e}, needed to read its "
                         "size; is the file complete?") from None
    cls = _diffusers_class(architecture.transformer_class)

    from accelerate import init_empty_weights
    with init_empty_weights():
        expected = set(cls.from_config(config).state_dict())

    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        checkpoint = {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    checkpoint = conversion.dequantize_scaled_fp8(checkpoint)      # fp8 files as ComfyUI users keep them
    try:
        converted = architecture.loading.convert(checkpoint, config)
    except KeyError as e:
        raise ValueError(f"{path}: checkpoint lacks {e} needed by the {architecture.name} layout "
                         f"(config {json.dumps({k: config[k] for k in ('num_layers',)})})") from None
    missing, unexpected = sorted(expected - set(converted)), sorted(set(converted) - expected)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match a {cls.__name__} with the inferred config "
                         f"{ {k: v for k, v in config.items() if not k.startswith('_')} }: missing {missing[:8]}"
                         f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                         f"{'...' if len(unexpected) > 8 else ''}")
    with tempfile.TemporaryDirectory(prefix="dreamrelation-config-") as tmp:
        with open(Path(tmp) / "config.json", "w", encoding="utf-8") as fh:
            json.dump(config, fh)
        # Keys already match the model exactly, so from_single_file loads them without converting again.
        try:
            # from_single_file ends with a plain `.to(dtype)` (and a warning about it); `_cast` below restores the
            # float32 modules, as from_pretrained would have kept them.
            with _quiet("diffusers.models.modeling_utils"):
                transformer = cls.from_single_file(converted, config=tmp, local_files_only=True, torch_dtype=dtype)
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"{path}: loading into {cls.__name__} failed: {e}") from e
    still_empty = [n for n, p in transformer.named_parameters() if p.is_meta]
    if still_empty:
        raise ValueError(f"{path}: weights left unloaded: {still_empty[:8]}")
    _freeze(_cast(transformer, dtype))
    text, codec = _load_components(Path(components).expanduser(), architecture, transformer, dtype)
    _check_components(architecture, transformer, codec, text, str(path))
    return Base(arch=architecture, transformer=transformer, text_encoder=text, codec=codec, name=str(path))


# ---------------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------------

# Bases built by a function of their own, by name -> "module:function" (imported when asked for, so that this module
# imports none of them). `register_base` adds one.
NAMED_BASES = {"synthrel": "dreamrelation_core.synthrel.base:build_synthrel_base"}


def register_base(name: str, factory: str) -> None:
    """Make `load_base(name)` call `factory` ("package.module:function", no arguments, returns a `Base`)."""
    if name in TINY_SPECS or ":" not in factory:
        raise ValueError(f"register_base: {name!r} -> {factory!r}; expected a new name and 'module:function'")
    NAMED_BASES[name] = factory


def load_base(spec: str, components: str | None = None, dtype: torch.dtype = torch.float32, arch: str | None = None,
              *, config_overrides: dict | None = None, expert: str | None = None, companion: bool = False) -> Base:
    """Load a base from `spec`, offline, frozen and in eval mode, with weights in `dtype` (tiny text encoders excepted).

    `spec`: "tiny-wan" / "tiny-mochi" (see `build_tiny`); a name in `NAMED_BASES` ("synthrel"); a diffusers
    pipeline folder (model_index.json, transformer/, vae/, text_encoder/, tokenizer/; `components` may point
    elsewhere for the last three); a bare
    diffusers transformer folder (needs `components`); or a single-file original-layout transformer `.safetensors`
    (Wan keys `blocks.0.self_attn.q.weight`, Mochi genmo keys `blocks.0.attn.qkv_x.weight`, optionally prefixed
    `model.diffusion_model.`), which needs `components` = a diffusers pipeline folder for vae/text_encoder/tokenizer.
    `expert` picks a Wan 2.2 A14B expert of a pipeline folder: "high_noise" (transformer/, the default) or
    "low_noise" (transformer_2/); `companion` loads the other one too (`Base.companion`), for sampling.
    A single file's config = the shipped template (configs/) overridden by a sidecar `<file>.json`, then by sizes read
    off the tensors, then by `config_overrides`. `arch` forces / checks the architecture name ("wan", "mochi").
    Text from the returned encoder is [B, L, D] with L = `base.text_encoder.max_length`.
    """
    if spec in NAMED_BASES:
        module, _, function = NAMED_BASES[spec].partition(":")
        return getattr(importlib.import_module(module), function)()
    if spec in TINY_SPECS:
        if expert is not None:
            raise ValueError(f"{spec} has no experts (expert={expert!r} applies to Wan 2.2 pipeline folders)")
        if arch is not None and get_architecture(arch).name != TINY_SPECS[spec]:
            raise ValueError(f"{spec}: arch={arch!r} does not match")
        base = build_tiny(spec)
        _cast(base.transformer, dtype)
        _cast(base.codec.vae, dtype)
        return base
    path = Path(spec).expanduser()
    if not path.exists():
        if str(spec).startswith("tiny-"):
            raise ValueError(f"unknown tiny base {spec!r}; expected one of {sorted(TINY_SPECS)}")
        raise FileNotFoundError(f"base {spec!r}: no such file or folder (expected one of {sorted(TINY_SPECS)}, a "
                                "diffusers pipeline folder, or a single-file .safetensors transformer)")
    if path.is_dir():
        return _load_folder(path, components, dtype, arch, expert, companion)
    if expert is not None:
        raise ValueError(f"expert={expert!r} applies to diffusers pipeline folders; {path} is a single file "
                         "(it is one expert already)")
    return _load_single_file(path, components, dtype, arch, config_overrides)
