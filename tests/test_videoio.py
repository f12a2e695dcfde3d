"""Tests for dreamrelation_core.videoio: natural order, frame folders, mp4/avi/gif round trips."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dreamrelation_core.videoio import natural_sort_key, read_video, write_video


def _index_frames(n: int, h: int = 32, w: int = 48) -> np.ndarray:
    """Frames whose flat grey level encodes the frame index (robust to lossy codecs)."""
    levels = np.linspace(10, 245, n).round().astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (n, h, w, 3)).copy()


def test_natural_sort_key_orders_digit_runs_numerically():
    names = ["frame10.png", "frame2.png", "Frame1.png", "frame0.png", "frame11.png"]
    assert sorted(names, key=natural_sort_key) == [
        "frame0.png",
        "Frame1.png",
        "frame2.png",
        "frame10.png",
        "frame11.png",
    ]
    assert natural_sort_key("frame2.png") < natural_sort_key("frame10.png")
    # Mixed digit/text positions must not raise (int vs str comparison).
    sorted(["10a", "a10", "a", "1"], key=natural_sort_key)


def test_frame_folder_is_read_in_temporal_order(tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(np.full((6, 8, 3), i * 10, np.uint8)).save(folder / f"frame{i}.png")
    (folder / ".hidden.png").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored")
    frames, fps = read_video(folder)
    assert frames.shape == (12, 6, 8, 3) and frames.dtype == np.uint8
    assert fps == 0.0
    assert [int(f[0, 0, 0]) for f in frames] == [i * 10 for i in range(12)]
    limited, _ = read_video(folder, max_frames=3)
    assert [int(f[0, 0, 0]) for f in limited] == [0, 10, 20]


def test_frame_folder_palette_png_is_rgb(tmp_path):
    folder = tmp_path / "pal"
    folder.mkdir()
    im = Image.fromarray(np.array([[[255, 0, 0], [0, 0, 255]]], np.uint8)).convert("P")
    im.save(folder / "frame0.png")
    frames, _ = read_video(folder)
    assert frames.shape == (1, 1, 2, 3)
    assert frames[0, 0].tolist() == [[255, 0, 0], [0, 0, 255]]


def test_frame_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        read_video(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image frames"):
        read_video(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(mixed / "frame0.png")
    Image.fromarray(np.zeros((5, 4, 3), np.uint8)).save(mixed / "frame1.png")
    with pytest.raises(ValueError, match="differ in size"):
        read_video(mixed)


def test_unreadable_video_file(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"garbage" * 50)
    with pytest.raises(ValueError, match="bad.mp4"):
        read_video(bad)


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_cv2_round_trip(tmp_path, suffix):
    frames = _index_frames(9)
    out = write_video(tmp_path / "sub" / f"clip{suffix}", frames, fps=12)
    assert out.exists() and out.parent.name == "sub"
    back, fps = read_video(out)
    assert back.shape == frames.shape
    assert fps == pytest.approx(12, abs=0.01)
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 6
    # Temporal order survives: the grey levels are increasing.
    assert np.all(np.diff(back.reshape(9, -1).mean(axis=1)) > 0)
    assert sorted(p.name for p in out.parent.iterdir()) == [f"clip{suffix}"]  # no temp file left
    first, _ = read_video(out, max_frames=4)
    assert len(first) == 4


def test_gif_round_trip_is_exact_for_flat_colours_and_keeps_static_frames(tmp_path):
    frames = np.zeros((6, 20, 30, 3), np.uint8)
    frames[:, 2:8, 3:10] = (255, 0, 0)
    frames[2:, 10:18, 15:25] = (0, 0, 255)  # frames 2..5 identical: must not be merged
    out = write_video(tmp_path / "m.gif", frames, fps=10)
    back, fps = read_video(out)
    assert back.shape == frames.shape
    assert np.array_equal(back, frames)
    assert fps == pytest.approx(10)
    with Image.open(out) as im:
        assert im.info.get("loop") == 0
    assert [p.name for p in tmp_path.iterdir()] == ["m.gif"]


def test_gif_round_trip_photo_like_and_large(tmp_path):
    rng = np.random.default_rng(0)
    frames = _index_frames(5, 40, 40)
    frames[:, :20] = rng.integers(0, 256, (5, 20, 40, 3), dtype=np.uint8)
    back, _ = read_video(write_video(tmp_path / "p.gif", frames, fps=8))
    assert back.shape == frames.shape
    assert np.array_equal(back[:, 20:], frames[:, 20:])


def test_write_accepts_float_and_validates(tmp_path):
    frames = np.full((3, 16, 16, 3), 0.5, np.float32)
    back, _ = read_video(write_video(tmp_path / "f.gif", frames, fps=5))
    assert np.all(back == 128)
    with pytest.raises(ValueError, match="shape"):
        write_video(tmp_path / "x.mp4", np.zeros((3, 16, 16), np.uint8), fps=5)
    with pytest.raises(ValueError, match="dtype"):
        write_video(tmp_path / "x.mp4", np.zeros((3, 16, 16, 3), np.int64), fps=5)
    with pytest.raises(ValueError, match="suffix"):
        write_video(tmp_path / "x.png", np.zeros((3, 16, 16, 3), np.uint8), fps=5)
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "x.mp4", np.zeros((3, 16, 16, 3), np.uint8), fps=0)
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "x.mp4", np.zeros((3, 15, 16, 3), np.uint8), fps=5)
    assert list(tmp_path.iterdir()) == [tmp_path / "f.gif"]


def test_atomic_write_replaces_existing_file(tmp_path):
    target = tmp_path / "clip.mp4"
    write_video(target, _index_frames(3), fps=8)
    write_video(target, _index_frames(5), fps=8)
    back, _ = read_video(target)
    assert len(back) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_failed_write_leaves_no_temp_file_and_keeps_old_file(tmp_path, monkeypatch):
    import dreamrelation_core.videoio as videoio

    target = tmp_path / "a.gif"
    write_video(target, _index_frames(2), fps=4)
    before = target.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("encoder failed")

    monkeypatch.setattr(videoio, "_encode_gif", boom)
    with pytest.raises(RuntimeError, match="encoder failed"):
        write_video(target, _index_frames(3), fps=4)
    assert [p.name for p in tmp_path.iterdir()] == ["a.gif"]
    assert target.read_bytes() == before
