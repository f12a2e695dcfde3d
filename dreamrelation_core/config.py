"""Run configuration: a YAML file mapped onto dataclasses; unknown keys are errors naming the key."""
from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .triplet import TripletConfig


@dataclass
class DataConfig:
    videos: str = ""                 # folder of exemplar videos (files or frame folders)
    masks: str | None = None         # folder of per-video colour-coded mask folders (default <videos>/masks)
    caption: str | None = None       # caption for videos without a <stem>.txt (one relation, one caption)
    frames: int | None = None        # pixel frames per clip (default: the architecture's, 61 Mochi / 81 Wan)
    height: int | None = None
    width: int | None = None
    cache_dir: str | None = None     # default <output_dir>/cache
    fps: float | None = None         # resample exemplar videos to this rate (default: the model's, Wan 16, Mochi
                                     # 30; 0 keeps every frame); frame folders count as already at it


@dataclass
class TrainConfig:
    steps: int = 2400
    learning_rate: float = 2e-4
    weight_decay: float = 0.01
    warmup_steps: int | None = None    # default min(200, horizon // 5): the reference's 200 at its 1800-2400 steps
    schedule_steps: int | None = None  # cosine horizon; default = steps (the reference used 3000 for 1800-2400 steps)
    caption_dropout: float = 0.1
    mask_weight: float = 50.0
    hybrid_masks: bool = True          # False: all adapters every step, no mask weighting (ablation)
    # Relative odds of drawing relation, subject1, subject2 in hybrid mask training; the paper's 1/3 each by default
    group_weights: list = field(default_factory=lambda: [1.0, 1.0, 1.0])
    subject_loras: bool = True         # False: the subject LoRAs never run (the paper's "w/o Subject LoRAs" ablation)
    sigma_shift: float = 1.0           # 1 = σ ~ U(0, 1) as the reference
    sigma_min: float | None = None     # train on σ ∈ [sigma_min, sigma_max] only; None: the base's range (a Wan 2.2
    sigma_max: float | None = None     # expert's, split at its boundary_ratio), else 0 and 1
    seed: int = 0
    mixed_precision: str = "auto"      # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | no
    base_dtype: str = "auto"           # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    gradient_checkpointing: bool = True
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    posterior: str = "sample"          # sample: z0 = mean + std·ε each step (the reference) | mean (what ComfyUI's
                                       # VAEs give, so its Train node always trains on the mean; docs/method.md)
    max_grad_norm: float | None = None  # clip the LoRA gradients' norm (the reference never clips; off by default)
    batch_size: int = 1                # exemplars per forward pass (the reference: 1); they share the step's group
    fp8_storage: bool = False          # frozen base weights stored in float8 (e4m3), each layer computed in base_dtype
    offload_activations: bool = False  # keep the activations saved for the backward pass on the CPU
    compile: bool = False              # torch.compile each transformer block (compiled once per adapter group)
    block_swap: int = 0                # the last N blocks keep their frozen weights in CPU memory, copied in per use
    gradient_accumulation: int = 1     # forward passes per optimiser step: batch_size · this exemplars a step


@dataclass
class RCLConfig:
    enabled: bool = True
    weight: float = 0.01
    temperature: float = 0.07
    n_pos: int = 4
    n_neg: int = 10
    positive_bank: int = 10
    negative_bank: int = 64


@dataclass
class SampleConfig:
    every: int = 0                     # preview samples every N steps (0 = only at the end if prompts are given)
    prompts: list = field(default_factory=list)
    steps: int | None = None
    cfg: float | None = None
    seed: int = 12345
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    lora_sigma_min: float | None = None     # the LoRA on σ ≥ this only, the base below (docs/method.md)


@dataclass
class RunConfig:
    base: str = "tiny-wan"
    components: str | None = None      # diffusers folder with vae/text_encoder/tokenizer for single-file bases
    expert: str | None = None          # Wan 2.2 A14B: high_noise (transformer/) or low_noise (transformer_2/)
    name: str = "relation"
    output_dir: str = "runs/relation"
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    lora: TripletConfig = field(default_factory=TripletConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rcl: RCLConfig = field(default_factory=RCLConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self):      # validated where it is built: the CLI, the nodes and the benchmarks alike
        _check_ranges(self)


def _build(cls, values, where: str):
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise ValueError(f"config section '{where}' must be a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        def named(key):
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            return f"{where}.{key}".lstrip(".") + (f" (did you mean {f'{where}.{close[0]}'.lstrip('.')}?)"
                                                    if close else "")
        raise ValueError(f"unknown config key(s) {', '.join(named(k) for k in unknown)}; "
                         f"expected some of {sorted(fields)}")
    kwargs = {}
    for name, value in values.items():
        default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING else None
        key = f"{where}.{name}".lstrip(".")
        kwargs[name] = _build(type(default), value, key) if dataclasses.is_dataclass(default) \
            else _typed(value, str(fields[name].type), key)
    return cls(**kwargs)


def _typed(value, annotation: str, key: str):
    """`value` as the field's type, or a ValueError naming the key and what it expects. A float written as 2e-4
    (which YAML 1.1 reads as a string) is taken as the number it is."""
    kinds = [k.strip() for k in annotation.split("|")]
    if value is None:
        if "None" in kinds:
            return None
    elif "bool" in kinds and isinstance(value, bool):
        return value
    elif "int" in kinds and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif "float" in kinds and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif "str" in kinds and isinstance(value, str):
        return value
    elif any(k.startswith(("list", "dict")) for k in kinds) and isinstance(value, (list, dict)):
        return value
    elif kinds == ["Any"] or annotation in ("", "object"):
        return value
    raise ValueError(f"config key {key}: expected {annotation.replace(' | None', ' or null')}, got {value!r}")


# Values that must be positive (or at least zero) wherever they are set.
_POSITIVE = {"train.max_grad_norm", "train.steps", "train.learning_rate", "train.keep_checkpoints", "lora.rank",
             "lora.alpha", "train.batch_size", "train.gradient_accumulation"}
_NON_NEGATIVE = {"data.fps", "train.warmup_steps", "train.checkpoint_every", "train.mask_weight", "sample.every", "rcl.weight",
                 "train.block_swap"}


_CHOICES = {"train.mixed_precision": ("auto", "bf16", "fp16", "fp32", "no"),
            "train.base_dtype": ("auto", "bf16", "fp16", "fp32"), "train.posterior": ("sample", "mean")}
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?|xpu(:\d+)?")


def _check_ranges(config: "RunConfig") -> None:
    flat = {f"{section}.{k}": v for section in ("train", "lora", "sample", "rcl")
            for k, v in dataclasses.asdict(getattr(config, section)).items()}
    for key in sorted(_POSITIVE):
        if key in flat and isinstance(flat[key], (int, float)) and not flat[key] > 0:
            raise ValueError(f"config key {key}: must be greater than 0, got {flat[key]!r}")
    for key in sorted(_NON_NEGATIVE):
        if key in flat and isinstance(flat[key], (int, float)) and flat[key] < 0:
            raise ValueError(f"config key {key}: must be 0 or more, got {flat[key]!r}")
    for key, choices in _CHOICES.items():
        if flat[key] not in choices:
            raise ValueError(f"config key {key}: expected one of {', '.join(choices)}, got {flat[key]!r}")
    if not _DEVICE.fullmatch(str(config.device)):
        raise ValueError(f"config key device: expected auto, cpu, cuda, cuda:N or mps, got {config.device!r}")
    t = config.train
    low, high = 0.0 if t.sigma_min is None else t.sigma_min, 1.0 if t.sigma_max is None else t.sigma_max
    if not 0 <= low < high <= 1:
        raise ValueError(f"config keys train.sigma_min/sigma_max: expected 0 ≤ sigma_min < sigma_max ≤ 1, got "
                         f"{t.sigma_min} and {t.sigma_max}")
    if t.block_swap and t.compile:
        raise ValueError("config keys train.block_swap and train.compile: choose one (compiled blocks would trace "
                         "the weight copies)")
    weights = t.group_weights
    if (not isinstance(weights, list) or len(weights) != 3 or not all(isinstance(w, (int, float)) and w >= 0
                                                                       for w in weights) or not sum(weights) > 0):
        raise ValueError("config key train.group_weights: expected 3 weights ≥ 0 (relation, subject1, subject2) "
                         f"with a positive sum, got {weights!r}")
    if config.sample.lora_sigma_min is not None and not 0 <= config.sample.lora_sigma_min <= 1:
        raise ValueError(f"config key sample.lora_sigma_min: expected a σ in [0, 1] or null, got "
                         f"{config.sample.lora_sigma_min}")
    if not 0 <= t.caption_dropout <= 1:
        raise ValueError(f"config key train.caption_dropout: expected a probability in [0, 1], got {t.caption_dropout}")


def config_from_dict(values: dict) -> RunConfig:
    return _build(RunConfig, values, "")


def load_config(path) -> RunConfig:
    """Read a YAML run config. Relative data paths are resolved against the YAML file's folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a run config is a mapping of keys (base, data, lora, train, ...), got "
                         f"{type(values).__name__}")
    config = config_from_dict(values)
    if not config.data.videos:
        raise ValueError(f"{path}: data.videos is not set; give the folder of exemplar videos")
    for owner, key in ((config.data, "videos"), (config.data, "masks"), (config.data, "cache_dir"),
                       (config, "base"), (config, "components")):
        value = getattr(owner, key)
        if value and not Path(value).is_absolute() and not str(value).startswith("tiny-"):
            setattr(owner, key, str((path.parent / value).resolve()))
    return config


def config_to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)
