"""Run folders and their checkpoints: which settings a checkpoint may be resumed under (the run's fingerprint),
finding the newest checkpoint, pruning old ones, and refusing to mix two runs in one folder (docs/reliability.md).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from .config import RunConfig

# Settings a run may change when it is resumed: its length and checkpoint cadence, where it writes, how it
# previews, and how the numbers are computed (precision, gradient checkpointing: another GPU may need them).
# The warm-up goes with the length (the ComfyUI node derives it from the steps). Everything else decides the
# trajectory, so a checkpoint refuses a config that differs in it.
RESUMABLE = {"name", "output_dir", "device", "components", "data.videos", "data.masks", "data.cache_dir",
             "train.steps", "train.schedule_steps", "train.warmup_steps", "train.checkpoint_every",
             "train.keep_checkpoints", "train.mixed_precision", "train.base_dtype", "train.gradient_checkpointing"}


def flatten(settings: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def run_settings(config, exemplars: str) -> dict:
    """The fingerprint a checkpoint carries: every setting not in RESUMABLE (flattened, JSON values), the base by
    its file name (the file may move), and `exemplars`, a digest of what the run trains on."""
    flat = flatten(json.loads(json.dumps(dataclasses.asdict(config))))
    settings = {k: v for k, v in flat.items() if k not in RESUMABLE and not k.startswith("sample.")}
    settings["base"] = Path(str(config.base)).name
    settings["exemplars"] = exemplars
    return settings


def items_digest(items) -> str:
    """Digest of encoded exemplars by name, caption and latent shape: stable across machines (a VAE on another GPU
    encodes a few ulps differently) and across moving the data folder."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{item.name}\0{item.caption}\0{tuple(item.latent_mean.shape)}\0".encode())
    return digest.hexdigest()


def differing_settings(before: dict, now: dict) -> list[str]:
    """'key (old → new)' for each setting that differs ('the exemplars' for the digest). A setting added since the
    checkpoint was written differs only when it is not at its default, which is how that run trained."""
    defaults = flatten(json.loads(json.dumps(dataclasses.asdict(RunConfig()))))
    keys = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k)
                  and not (k not in before and k in defaults and now.get(k) == defaults[k]))
    return [f"{k} ({before.get(k)!r} → {now.get(k)!r})" if k != "exemplars" else "the exemplars" for k in keys]


def checkpoint_step(path: Path) -> int:
    return int(path.name.split("_")[1])


def checkpoints(run: Path) -> list[Path]:
    """The complete checkpoints (`checkpoints/step_NNNNNN/state.pt`) of a run folder, oldest first by step."""
    found = [p for p in (Path(run) / "checkpoints").glob("step_*") if (p / "state.pt").is_file()]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(path) -> Path:
    """A checkpoint folder (has state.pt) as is; a run folder -> its newest `checkpoints/step_*`."""
    path = Path(path)
    if (path / "state.pt").is_file():
        return path
    found = checkpoints(path)
    if not found:
        raise FileNotFoundError(f"no checkpoint in {path} (expected state.pt or checkpoints/step_*/state.pt)")
    return found[-1]


def stale_checkpoints(run: Path, step: int, keep: int) -> list[Path]:
    """What to delete after saving the checkpoint of `step`: checkpoints past it (a run resumed from an earlier
    one has left them behind; they are rewritten as it gets there) and all but the newest `keep` up to it."""
    found = checkpoints(run)
    later = [p for p in found if checkpoint_step(p) > step]
    upto = [p for p in found if checkpoint_step(p) <= step]
    return later + upto[:-max(1, keep)]
