"""Exemplar discovery, colour-coded subject masks and clip preparation for relation training."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from .videoio import VIDEO_SUFFIXES, list_image_frames, natural_sort_key, read_video


@dataclass
class Exemplar:
    name: str
    video: Path
    masks: Path | None
    caption: str


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".")


def _has_image_frames(folder: Path) -> bool:
    return folder.is_dir() and bool(list_image_frames(folder))


def discover_exemplars(
    videos_dir: str | os.PathLike,
    masks_dir: str | os.PathLike | None = None,
    caption: str | None = None,
) -> list[Exemplar]:
    """Find the exemplar videos of one relation, their captions and their mask sources.

    Exemplars are the video files (VIDEO_SUFFIXES) directly in ``videos_dir`` and its
    sub-folders holding image frames (hidden entries and the masks folder are skipped),
    in natural order of name (the file stem or folder name). The caption is
    ``<name>.txt`` beside the video if present, else ``caption``. ``masks_dir`` defaults
    to ``videos_dir/masks`` when that exists; each exemplar's masks are then the folder
    ``masks_dir/<name>`` of colour-coded frames or a colour-coded mask video
    ``masks_dir/<name><video suffix>``. With no masks folder, ``masks`` is None; with one,
    every exemplar must have masks (ValueError listing those without).
    """
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        raise FileNotFoundError(f"videos folder not found: {videos_dir}")
    if masks_dir is None:
        default = videos_dir / "masks"
        masks_dir = default if default.is_dir() else None
    else:
        masks_dir = Path(masks_dir)
        if not masks_dir.is_dir():
            raise FileNotFoundError(f"masks folder not found: {masks_dir}")
    masks_resolved = masks_dir.resolve() if masks_dir is not None else None

    found: dict[str, Path] = {}
    for entry in videos_dir.iterdir():
        if _is_hidden(entry):
            continue
        if entry.is_file() and entry.suffix.lower() in VIDEO_SUFFIXES:
            name = entry.stem
        elif entry.is_dir() and entry.resolve() != masks_resolved and _has_image_frames(entry):
            name = entry.name
        else:
            continue
        if name in found:
            # Two sources with one name would silently share captions and masks.
            raise ValueError(f"two exemplars named {name!r} in {videos_dir}: {found[name].name} and {entry.name}")
        found[name] = entry
    if not found:
        raise ValueError(
            f"no exemplar videos in {videos_dir} (expected video files {', '.join(VIDEO_SUFFIXES)} "
            "or sub-folders of image frames)"
        )

    exemplars = []
    missing_masks = []
    for name in sorted(found, key=natural_sort_key):
        video = found[name]
        exemplars.append(Exemplar(name, video, None, _caption_for(videos_dir, name, video, caption)))
        if masks_dir is not None:
            mask = _mask_source(masks_dir, name)
            if mask is None:
                missing_masks.append(video.name)
            exemplars[-1].masks = mask
    if missing_masks:
        raise ValueError(
            f"no masks in {masks_dir} for: {', '.join(missing_masks)} (expected a folder "
            f"'{masks_dir}/<name>' of colour-coded frames or a mask video '<name>.mp4' etc.)"
        )
    return exemplars


def _caption_for(videos_dir: Path, name: str, video: Path, default: str | None) -> str:
    txt = videos_dir / f"{name}.txt"
    if txt.is_file():
        text = txt.read_text(encoding="utf-8").strip()
        if text:
            return text
    if default is not None and default.strip():
        return default.strip()
    raise ValueError(
        f"no caption for {video}: write one into {txt} or pass a default caption"
    )


def _mask_source(masks_dir: Path, name: str) -> Path | None:
    folder = masks_dir / name
    if folder.is_dir():
        return folder
    for suffix in VIDEO_SUFFIXES:
        for candidate in (masks_dir / f"{name}{suffix}", masks_dir / f"{name}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def subject_colours(
    first_frame: np.ndarray,
    min_fraction: float = 0.01,
    black_threshold: int = 16,
    merge_tolerance: int = 0,
) -> list[tuple[int, int, int]]:
    """The subject colours of a colour-coded mask frame, in subject order.

    ``first_frame`` is uint8 ``[H, W, 3]`` RGB. Pixels with all channels <= ``black_threshold`` are
    background. Colours covering less than ``min_fraction`` of the non-black pixels are ignored, and so is,
    however frequent, a blend of black and a more frequent colour or of two of them (anti-aliased edges, chroma
    subsampling in H.264 mask videos). Returns the remaining colours
    sorted as RGB tuples ascending (the reference's rule: the smaller tuple is subject 1);
    empty when there are none, ValueError when more than two remain. ``merge_tolerance``
    > 0 first groups colours within that max-abs RGB distance of a more frequent colour
    (compression noise in mask videos); each group is represented by its most frequent colour.
    """
    frame = np.asarray(first_frame)
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"mask frame must be uint8 [H, W, 3], got {frame.dtype} {tuple(frame.shape)}")
    pixels = frame.reshape(-1, 3)
    pixels = pixels[(pixels > black_threshold).any(axis=1)]
    if len(pixels) == 0:
        return []
    keys = (pixels[:, 0].astype(np.int32) << 16) | (pixels[:, 1].astype(np.int32) << 8) | pixels[:, 2]
    uniq, counts = np.unique(keys, return_counts=True)
    colours = np.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], axis=1)

    if merge_tolerance > 0:
        # Greedy: the most frequent unassigned colour absorbs everything within tolerance.
        unassigned = np.ones(len(colours), dtype=bool)
        centres, totals = [], []
        while unassigned.any() and counts[unassigned].sum() >= min_fraction * len(pixels):
            idx = np.flatnonzero(unassigned)
            centre = colours[idx[np.argmax(counts[idx])]]
            near = idx[np.abs(colours[idx] - centre).max(axis=1) <= merge_tolerance]
            centres.append(centre)
            totals.append(int(counts[near].sum()))
            unassigned[near] = False
        colours, counts = np.array(centres).reshape(-1, 3), np.array(totals, dtype=np.int64)

    keep = counts >= min_fraction * len(pixels)
    chosen = []
    # Most frequent first; a colour that is a blend of black and a chosen colour, or of two chosen colours, is an
    # edge (anti-aliasing, or chroma subsampling in an H.264 mask video), not a subject of its own.
    for colour in colours[keep][np.argsort(-counts[keep], kind="stable")]:
        if not _is_blend(colour, chosen, max(merge_tolerance, 8)):
            chosen.append(colour)
    result = sorted(tuple(int(v) for v in c) for c in chosen)
    if len(result) > 2:
        raise ValueError(
            f"the masks have {len(result)} subject colours {result[:6]}; expected at most 2: one flat colour per "
            "subject on black (save mask frames as PNG, not JPEG, or a mask video at high quality)"
        )
    return result


def _is_blend(colour: np.ndarray, chosen: list, tolerance: int) -> bool:
    """Whether `colour` lies within `tolerance` (max-abs RGB) of a segment between two of black and `chosen`."""
    ends = [np.zeros(3)] + [np.asarray(c, np.float64) for c in chosen]
    colour = np.asarray(colour, np.float64)
    for i, a in enumerate(ends):
        for b in ends[i + 1:]:
            d = b - a
            t = np.clip(np.dot(colour - a, d) / max(np.dot(d, d), 1e-9), 0.0, 1.0)
            if np.abs(a + t * d - colour).max() <= tolerance:
                return True
    return False


def read_colour_masks(
    path: str | os.PathLike,
    num_subjects: int = 2,
    colours: list[tuple[int, int, int]] | None = None,
    tolerance: int = 24,
    max_frames: int | None = None,
) -> np.ndarray:
    """Read colour-coded subject masks as float32 ``[F, S, H, W]`` of 0/1.

    ``path`` is a folder of colour-coded frames or a mask video (see ``read_video``).
    Subject ``s`` has colour ``colours[s]``; by default the colours come from
    ``subject_colours`` over all frames (compression-noise variants within ``tolerance``
    merged). A pixel belongs to subject ``s`` when its max-abs RGB distance to that colour
    is <= ``tolerance``; a pixel close to two colours goes to the nearer one. Subjects
    without a colour (fewer colours than ``num_subjects``) are all zero, as in the reference.
    """
    frames, _ = read_video(path, max_frames=max_frames)
    if colours is None:   # over all frames: a subject may enter after the first
        colours = subject_colours(frames.reshape(-1, *frames.shape[2:]), merge_tolerance=tolerance)
    colours = [tuple(int(v) for v in c) for c in colours]
    if len(colours) > num_subjects:
        raise ValueError(f"{len(colours)} mask colours {colours} for {num_subjects} subjects in {path}")
    f, h, w, _ = frames.shape
    masks = np.zeros((f, num_subjects, h, w), dtype=np.float32)
    if not colours:
        return masks
    palette = np.array(colours, dtype=np.int16)
    for t, frame in enumerate(frames):  # per frame: whole-clip int16 distances would be large
        # [H, W, K]: max-abs distance of every pixel to every subject colour.
        dist = np.abs(frame.astype(np.int16)[:, :, None, :] - palette).max(axis=-1)
        nearest = dist.argmin(axis=-1)
        close = dist.min(axis=-1) <= tolerance
        for s in range(len(colours)):
            masks[t, s] = close & (nearest == s)
    return masks


def read_resampled(path, frames: int, fps: float) -> tuple[np.ndarray, list[int]]:
    """Up to `frames` frames of a video at `fps` (nearest source frame; fewer when the video is shorter), and their
    indices in the source: a 30 fps clip trained as is on Wan (16 fps) would teach a relation 1.9× too slow.
    Videos whose rate is unknown (frame folders) or within 1% of `fps`, and `fps` 0, keep every frame."""
    video, source_fps = read_video(path, max_frames=frames)
    if not fps or not source_fps or abs(source_fps - fps) <= 0.01 * fps:
        return video, list(range(len(video)))
    ratio = source_fps / fps
    picked = [round(k * ratio) for k in range(frames)]
    video, _ = read_video(path, max_frames=picked[-1] + 1)
    picked = [p for p in picked if p < len(video)]
    return video[picked], picked


def read_masks_at(path, picked: list[int]) -> np.ndarray:
    """The colour-coded masks of the source frames `picked` (`read_resampled`'s indices) as [F, S, H, W]."""
    masks = read_colour_masks(path, max_frames=picked[-1] + 1)
    if len(masks) <= picked[-1]:
        raise ValueError(f"{path}: {len(masks)} mask frames, but the video's clip uses {picked[-1] + 1}")
    return masks[picked]


def check_subject_masks(masks: np.ndarray, name: str) -> None:
    """Refuse masks with no subject at all (hybrid mask training would weight nothing); warn when one subject
    never appears (its group's steps then train on the unmasked loss only)."""
    present = [bool(masks[:, s].any()) for s in range(masks.shape[1])]
    if not any(present):
        raise ValueError(f"exemplar {name}: its masks are all black; paint each subject in its own colour")
    for s, here in enumerate(present):
        if not here:
            warnings.warn(f"exemplar {name}: subject {s + 1} has no mask in any frame", stacklevel=2)


def exemplar_masks(exemplar: Exemplar, picked: list[int]) -> np.ndarray | None:
    """`exemplar`'s checked masks at the source frames `picked` (`read_masks_at`, `check_subject_masks`); None for
    an exemplar without masks (trained without hybrid masks)."""
    if exemplar.masks is None:
        return None
    masks = read_masks_at(exemplar.masks, picked)
    check_subject_masks(masks, exemplar.name)
    return masks


def _centre_crop_box(h: int, w: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(y0, x0, crop_h, crop_w) of the largest centred box with aspect width:height."""
    if w * height > h * width:  # source is wider than the target
        crop_h, crop_w = h, max(1, min(w, round(h * width / height)))
    else:
        crop_h, crop_w = max(1, min(h, round(w * height / width))), w
    return (h - crop_h) // 2, (w - crop_w) // 2, crop_h, crop_w


def prepare_clip(
    frames: np.ndarray,
    masks: np.ndarray | None,
    num_frames: int,
    height: int,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cut, centre-crop and resize one exemplar to the training size.

    ``frames`` is uint8 ``[F0, H0, W0, 3]``; ``masks`` is float ``[F1, S, H1, W1]`` or None.
    The first ``num_frames`` of each are used. Masks of another spatial size are first
    resized to the frame size (nearest). Video and masks then get the same centre crop to
    the aspect ratio ``height:width`` (the reference crops only the video, so its masks
    drift off the subjects for non-matching aspect ratios; fixed here) and are resized to
    ``height x width`` (video INTER_AREA, masks INTER_NEAREST). Returns video float32
    ``[3, num_frames, height, width]`` in [-1, 1] and masks float32
    ``[num_frames, S, height, width]`` of 0/1 (or None).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    if num_frames < 1 or height < 1 or width < 1:
        raise ValueError(f"num_frames, height and width must be >= 1, got {num_frames}, {height}, {width}")
    if len(frames) < num_frames:
        raise ValueError(f"clip needs {num_frames} frames but the video has {len(frames)}")
    frames = frames[:num_frames]
    _, h0, w0, _ = frames.shape
    y0, x0, ch, cw = _centre_crop_box(h0, w0, height, width)

    video = np.stack(
        [cv2.resize(f[y0 : y0 + ch, x0 : x0 + cw], (width, height), interpolation=cv2.INTER_AREA) for f in frames]
    )
    video_t = torch.from_numpy(video).permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)

    if masks is None:
        return video_t, None
    masks = np.asarray(masks, dtype=np.float32)
    if masks.ndim != 4:
        raise ValueError(f"masks must be [F, S, H, W], got {tuple(masks.shape)}")
    if len(masks) < num_frames:
        raise ValueError(f"clip needs {num_frames} mask frames but the masks have {len(masks)}")
    masks = masks[:num_frames]
    s = masks.shape[1]
    if s == 0:
        raise ValueError("masks have no subjects (S == 0)")
    h1, w1 = masks.shape[2:]
    if abs(h1 * w0 - h0 * w1) > 0.01 * h0 * w1:
        raise ValueError(f"the masks are {w1}x{h1} but the video is {w0}x{h0}: another aspect ratio would stretch "
                         "them off the subjects; make the masks from the video's own frames")
    out = np.zeros((num_frames, s, height, width), dtype=np.float32)
    for t in range(num_frames):
        m = masks[t].transpose(1, 2, 0)  # cv2 wants [H, W, C]
        if m.shape[:2] != (h0, w0):
            m = cv2.resize(m, (w0, h0), interpolation=cv2.INTER_NEAREST).reshape(h0, w0, s)
        m = m[y0 : y0 + ch, x0 : x0 + cw]
        m = cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST).reshape(height, width, s)
        out[t] = m.transpose(2, 0, 1)
    out = (out >= 0.5).astype(np.float32)
    return video_t, torch.from_numpy(out)


# ---- encoded training set (VAE posterior, text embedding, latent masks), cached on disk -------------------------

@dataclass
class TrainingItem:
    """One exemplar ready for training: posterior of the normalised latent, caption embedding, latent masks."""

    name: str
    caption: str
    latent_mean: torch.Tensor   # [C, f, h, w]
    latent_std: torch.Tensor    # [C, f, h, w]
    text: torch.Tensor | None       # [L, D]; None where the backend encodes captions itself (ComfyUI)
    text_mask: torch.Tensor | None  # [L] bool
    masks: torch.Tensor | None      # [f, 2, h, w] latent subject masks; None: trained without hybrid masks


def _fingerprint(path) -> list:
    """What invalidates a cache entry: a file's size and mtime, or those of every file in a frame folder."""
    if path is None:
        return []
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _cache_key(*parts) -> str:
    import hashlib
    import json

    return hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()[:20]


def _cached(path: Path, compute):
    """Load tensors from `path` (safetensors) or compute, save atomically and return them."""
    from safetensors.torch import load_file

    from .formats import atomic_save_safetensors

    if path.is_file():
        return load_file(str(path))
    tensors = {k: v.detach().cpu().contiguous() for k, v in compute().items()}
    atomic_save_safetensors(tensors, path)
    return tensors


def prepare_training_set(base, data_config, cache_dir, progress: bool = True,
                         hybrid_masks: bool = True) -> list[TrainingItem]:
    """Discover, prepare, VAE- and text-encode every exemplar (cached under `cache_dir`), with latent masks.

    Clips are the first `frames` frames at the model's frame rate (`read_resampled`), centre-cropped and resized to
    `height` × `width` (architecture defaults when unset). With `hybrid_masks` (train.hybrid_masks) every exemplar
    must have subject masks; without, none needs them, and exemplars without masks get `masks` None.
    """
    from tqdm.auto import tqdm

    from .masks import latent_masks

    arch = base.arch
    frames = data_config.frames or arch.default_frames
    height = data_config.height or arch.default_size[0]
    width = data_config.width or arch.default_size[1]
    fps = arch.fps if data_config.fps is None else data_config.fps
    arch.latent_frames(frames)
    exemplars = discover_exemplars(data_config.videos, data_config.masks, data_config.caption)
    missing = [e.name for e in exemplars if e.masks is None]
    if missing and hybrid_masks:
        raise ValueError(f"exemplars without subject masks: {missing}; hybrid mask training (train.hybrid_masks: "
                         "true) needs them: give data.masks (a folder with one colour-coded mask folder or video per "
                         "exemplar), or train without hybrid masks (train.hybrid_masks: false)")
    cache_dir = Path(cache_dir)
    base_id = [base.name, _fingerprint(base.name) if Path(base.name).is_file() else []]
    device = next(base.transformer.parameters()).device
    items = []
    for ex in tqdm(exemplars, desc="encoding exemplars", disable=not progress, leave=False):
        key = _cache_key("latent", base_id, str(ex.video.resolve()), _fingerprint(ex.video),
                         "" if ex.masks is None else str(ex.masks.resolve()), _fingerprint(ex.masks),
                         frames, height, width,
                         *([fps] if fps != arch.fps else []))   # keys of runs before resampling stay valid

        def encode_clip(ex=ex):
            video_frames, picked = read_resampled(ex.video, frames, fps)
            if len(picked) < frames:
                raise ValueError(f"{ex.video}: {len(picked)} frames at {fps:g} fps, but the clip needs {frames}; use "
                                 "shorter clips (data.frames) or data.fps: 0 (every frame as it is)")
            video, masks = prepare_clip(video_frames, exemplar_masks(ex, picked), frames, height, width)
            with torch.no_grad():
                mean, std = base.codec.encode(video[None].to(device))
            latent = {"mean": mean[0], "std": std[0]}
            if masks is not None:
                latent["masks"] = latent_masks(masks, tuple(mean.shape[-3:]), arch.temporal_ratio)
            return latent

        latent = _cached(cache_dir / f"{key}.safetensors", encode_clip)
        text_key = _cache_key("text", base_id, ex.caption)

        def encode_text(caption=ex.caption):
            with torch.no_grad():
                emb, mask = base.text_encoder.encode([caption])
            return {"text": emb[0].float(), "mask": mask[0].to(torch.uint8)}

        text = _cached(cache_dir / f"text-{text_key}.safetensors", encode_text)
        items.append(TrainingItem(ex.name, ex.caption, latent["mean"].float(), latent["std"].float(),
                                  text["text"], text["mask"].bool(), latent.get("masks")))
    return items
