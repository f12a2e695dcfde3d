"""Reading and writing short videos as uint8 RGB arrays (OpenCV, Pillow for GIF)."""

from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageSequence

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
WRITE_SUFFIXES = (".mp4", ".avi", ".gif")

_DIGITS = re.compile(r"(\d+)")


def natural_sort_key(name: str) -> tuple:
    """Sort key that orders digit runs numerically and text case-insensitively.

    ``sorted(names, key=natural_sort_key)`` puts ``frame2.png`` before ``frame10.png``.
    Each part is tagged so ints and strings never get compared with each other.
    """
    parts = _DIGITS.split(str(name))
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p.casefold()) for p in parts)


def list_image_frames(folder: str | os.PathLike) -> list[Path]:
    """The image files (IMAGE_SUFFIXES, not hidden) directly in ``folder``, naturally sorted."""
    folder = Path(folder)
    files = [
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    return sorted(files, key=lambda p: natural_sort_key(p.name))


def read_video(path: str | os.PathLike, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Read a video file or a folder of image frames as uint8 RGB ``[F, H, W, 3]``.

    ``path`` is a video file (VIDEO_SUFFIXES; GIFs go through Pillow) or a folder whose
    image files (IMAGE_SUFFIXES) are the frames in natural order (frame2 before frame10).
    Returns ``(frames, fps)``; fps is 0.0 when unknown (frame folders, GIFs without delays).
    At most ``max_frames`` frames are read when it is given.
    """
    path = Path(path)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    if not path.exists():
        raise FileNotFoundError(f"video not found: {path} (expected a video file or a folder of image frames)")
    if path.is_dir():
        frames, fps = _read_frame_folder(path, max_frames), 0.0
    elif path.suffix.lower() == ".gif":
        frames, fps = _read_gif(path, max_frames)
    else:
        frames, fps = _read_cv2(path, max_frames)
    return frames, fps


def _read_frame_folder(folder: Path, max_frames: int | None) -> np.ndarray:
    files = list_image_frames(folder)
    if not files:
        raise ValueError(f"no image frames ({', '.join(IMAGE_SUFFIXES)}) in folder {folder}")
    if max_frames is not None:
        files = files[:max_frames]
    frames = []
    for f in files:
        try:
            with Image.open(f) as im:
                # Pillow rather than cv2.imread: colour-coded masks are often palette PNGs.
                arr = np.asarray(im.convert("RGB"))
        except OSError as e:
            raise ValueError(f"cannot read image frame {f}: {e}") from e
        if frames and arr.shape != frames[0].shape:
            raise ValueError(
                f"frames in {folder} differ in size: {files[0].name} is "
                f"{frames[0].shape[1]}x{frames[0].shape[0]} but {f.name} is {arr.shape[1]}x{arr.shape[0]}"
            )
        frames.append(arr)
    return np.stack(frames)


def _read_gif(path: Path, max_frames: int | None) -> tuple[np.ndarray, float]:
    try:
        im = Image.open(path)
    except OSError as e:
        raise ValueError(f"cannot read GIF {path}: {e}") from e
    with im:
        duration_ms = im.info.get("duration") or 0
        frames = []
        for frame in ImageSequence.Iterator(im):
            frames.append(np.asarray(frame.convert("RGB")))
            if max_frames is not None and len(frames) >= max_frames:
                break
    if not frames:
        raise ValueError(f"GIF {path} has no frames")
    fps = 1000.0 / duration_ms if duration_ms > 0 else 0.0
    return np.stack(frames), fps


def _read_cv2(path: Path, max_frames: int | None) -> tuple[np.ndarray, float]:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise ValueError(f"cannot open video {path} (expected a video file readable by OpenCV: {', '.join(VIDEO_SUFFIXES)})")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        frames = []
        while max_frames is None or len(frames) < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    if not frames:
        raise ValueError(f"video {path} has no readable frames")
    return np.stack(frames), (fps if np.isfinite(fps) and fps > 0 else 0.0)


def _as_uint8_frames(frames) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] < 1:
        raise ValueError(f"frames must have shape [F, H, W, 3] with F >= 1, got {tuple(arr.shape)}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError("float frames contain NaN or inf")
        return np.ascontiguousarray((np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8))
    raise ValueError(f"frames must be uint8 in [0, 255] or float in [0, 1], got dtype {arr.dtype}")


def write_video(path: str | os.PathLike, frames, fps: float) -> Path:
    """Write uint8 RGB ``[F, H, W, 3]`` frames (or float in [0, 1]) to ``path`` atomically.

    Supported suffixes: ``.mp4`` (H.264, yuv420p, through PyAV: what browsers and ComfyUI's preview play; OpenCV's
    mp4v plays in neither), ``.avi`` (OpenCV, MJPG) and ``.gif``
    (Pillow, loops forever, one GIF frame per input frame). mp4/avi need even width and
    height (the encoders silently drop an odd row/column otherwise). The file is written to
    a temporary name in the same directory and moved into place, so readers never see a
    half-written file. Parent directories are created. Returns the final path.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise ValueError(f"cannot write {path}: suffix must be one of {', '.join(WRITE_SUFFIXES)}")
    arr = _as_uint8_frames(frames)
    fps = float(fps)
    if not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps}")
    _, h, w, _ = arr.shape
    if suffix != ".gif" and (h % 2 or w % 2):
        raise ValueError(f"cannot write {path}: {suffix} needs even width and height, got {w}x{h}")

    path.parent.mkdir(parents=True, exist_ok=True)
    # The real suffix stays last so the encoder picks the right container.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.tmp", suffix=path.suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if suffix == ".gif":
            tmp.write_bytes(_encode_gif(arr, fps))
        else:
            _write_h264(tmp, arr, fps) if suffix == ".mp4" else _write_cv2(tmp, arr, fps, "MJPG")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _write_h264(path: Path, arr: np.ndarray, fps: float) -> None:
    import av
    from fractions import Fraction

    _, h, w, _ = arr.shape
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "17"}          # visually lossless: exemplar masks and colours survive
        for frame in arr:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _write_cv2(path: Path, arr: np.ndarray, fps: float, fourcc: str) -> None:
    _, h, w, _ = arr.shape
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    if not writer.isOpened():
        raise ValueError(f"OpenCV cannot open a {fourcc} writer for {path}")
    try:
        for frame in arr:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    if path.stat().st_size == 0:
        raise ValueError(f"OpenCV wrote nothing to {path} ({fourcc})")


def _encode_gif(arr: np.ndarray, fps: float) -> bytes:
    """Assemble an animated GIF from Pillow's single-frame encodings.

    Pillow's animated writer merges identical consecutive frames into one longer frame,
    which would change the frame count of static clips, and GIFs are read back as exemplar
    videos (`read_video`); building the file frame by frame keeps exactly one GIF frame per
    video frame. Each frame keeps its own palette as a
    local colour table.
    """
    _, h, w, _ = arr.shape
    centis = max(1, round(100.0 / fps))  # GIF delays are in 1/100 s
    out = bytearray(b"GIF89a")
    out += w.to_bytes(2, "little") + h.to_bytes(2, "little") + bytes([0x70, 0, 0])  # no global table
    out += b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"  # loop forever
    for frame in arr:
        buf = io.BytesIO()
        Image.fromarray(frame, "RGB").quantize(256, dither=Image.Dither.NONE).save(buf, format="GIF")
        table, image_flags, data = _split_single_gif(buf.getvalue())
        # Graphic control extension: disposal 1 (keep), delay, no transparency.
        out += b"\x21\xf9\x04\x04" + centis.to_bytes(2, "little") + b"\x00\x00"
        out += b"\x2c" + bytes(4) + w.to_bytes(2, "little") + h.to_bytes(2, "little")
        out += bytes([image_flags]) + table + data
    out += b"\x3b"
    return bytes(out)


def _split_single_gif(gif: bytes) -> tuple[bytes, int, bytes]:
    """(colour table, image-descriptor flags making it local, LZW data) of a one-frame GIF."""
    flags = gif[10]
    pos = 13
    table = b""
    size_bits = 0
    if flags & 0x80:
        size_bits = flags & 0x07
        n = 3 * (2 ** (size_bits + 1))
        table = gif[pos : pos + n]
        pos += n
    while gif[pos] == 0x21:  # skip extensions
        pos += 2
        while gif[pos]:
            pos += gif[pos] + 1
        pos += 1
    if gif[pos] != 0x2C:
        raise ValueError("unexpected GIF layout from Pillow")
    local_flags = gif[pos + 9]
    pos += 10
    if local_flags & 0x80:  # Pillow already wrote a local table
        size_bits = local_flags & 0x07
        n = 3 * (2 ** (size_bits + 1))
        table = gif[pos : pos + n]
        pos += n
    if gif[-1] != 0x3B:
        raise ValueError("unexpected GIF layout from Pillow")
    # Keep the interlace bit: Pillow interlaces frames that are at least 16 px in both sizes.
    image_flags = (local_flags & 0x40) | ((0x80 | size_bits) if table else 0)
    return table, image_flags, gif[pos:-1]
