"""Tests for dreamrelation_core.data: exemplar discovery, colour-coded masks, clip preparation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dreamrelation_core.data import (
    Exemplar,
    discover_exemplars,
    prepare_clip,
    read_colour_masks,
    subject_colours,
)
from dreamrelation_core.videoio import write_video

RED = (255, 0, 0)
BLUE = (0, 0, 255)
GREEN = (0, 200, 0)


def _mask_frame(h=24, w=32, shapes=()):
    """Black frame with flat-colour rectangles: shapes = [(colour, y0, y1, x0, x1), ...]."""
    f = np.zeros((h, w, 3), np.uint8)
    for colour, y0, y1, x0, x1 in shapes:
        f[y0:y1, x0:x1] = colour
    return f


def _write_mask_folder(folder, frames):
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"frame{i}.png")


def _write_video_file(path, n=4):
    write_video(path, np.zeros((n, 16, 16, 3), np.uint8), fps=8)


# ---- subject colours / colour-coded masks -------------------------------------------------


def test_subject_colours_lexicographic_order_not_spatial():
    # RED (255,0,0) is drawn first (top-left) but BLUE (0,0,255) is the smaller tuple.
    f = _mask_frame(shapes=[(RED, 0, 8, 0, 8), (BLUE, 12, 20, 20, 30)])
    assert subject_colours(f) == [BLUE, RED]


def test_subject_colours_edge_cases():
    assert subject_colours(np.zeros((8, 8, 3), np.uint8)) == []
    near_black = np.full((8, 8, 3), 10, np.uint8)
    assert subject_colours(near_black) == []
    three = _mask_frame(shapes=[(RED, 0, 8, 0, 8), (BLUE, 10, 18, 0, 8), (GREEN, 0, 8, 20, 28)])
    with pytest.raises(ValueError, match="3 subject colours"):
        subject_colours(three)
    with pytest.raises(ValueError, match="uint8"):
        subject_colours(np.zeros((8, 8), np.uint8))


def test_subject_colours_ignores_antialiasing_fringe():
    f = _mask_frame(h=40, w=40, shapes=[(RED, 0, 20, 0, 20), (BLUE, 20, 40, 20, 40)])
    f[20, 0:3] = (128, 0, 128)  # 3 fringe pixels out of 803 non-black
    assert subject_colours(f) == [BLUE, RED]
    # A fringe is a blend of the subjects (or of one and the black background), however frequent: an edge.
    f[0:20, 0:5] = (128, 0, 128)
    f[20:40, 20:25] = (0, 0, 120)
    assert subject_colours(f, min_fraction=0.0) == [BLUE, RED]
    f[0:10, 0:10] = GREEN                      # a third colour that is no blend is refused
    with pytest.raises(ValueError, match="3 subject colours .*one flat colour per subject on black"):
        subject_colours(f)


def test_subject_colours_merges_compression_noise():
    f = _mask_frame(h=40, w=40, shapes=[(RED, 0, 20, 0, 20), (BLUE, 20, 40, 20, 40)])
    f[0:10, 0:20] = (250, 3, 2)  # half of the red square slightly off
    f[0:5, 0:20] = (252, 0, 6)
    assert subject_colours(f) == subject_colours(f, merge_tolerance=24) == [BLUE, RED]
    f[0:5, 0:20] = (200, 60, 0)                # too far off red to be the same subject
    with pytest.raises(ValueError, match="3 subject colours"):
        subject_colours(f)


def test_read_colour_masks_two_subjects_exact(tmp_path):
    frames = []
    for t in range(3):
        frames.append(_mask_frame(shapes=[(RED, 1, 9, 2 + t, 10 + t), (BLUE, 12, 22, 15, 30 - t)]))
    _write_mask_folder(tmp_path / "m", frames)
    masks = read_colour_masks(tmp_path / "m")
    assert masks.shape == (3, 2, 24, 32) and masks.dtype == np.float32
    for t in range(3):
        expect_blue = np.zeros((24, 32), np.float32)
        expect_blue[12:22, 15 : 30 - t] = 1
        expect_red = np.zeros((24, 32), np.float32)
        expect_red[1:9, 2 + t : 10 + t] = 1
        assert np.array_equal(masks[t, 0], expect_blue)  # subject 1 = smaller tuple
        assert np.array_equal(masks[t, 1], expect_red)
    assert set(np.unique(masks)) <= {0.0, 1.0}


def test_read_colour_masks_single_colour_gives_zero_subject2(tmp_path):
    _write_mask_folder(tmp_path / "m", [_mask_frame(shapes=[(GREEN, 3, 9, 3, 9)])] * 2)
    masks = read_colour_masks(tmp_path / "m")
    assert masks.shape == (2, 2, 24, 32)
    assert masks[:, 0].sum() == 2 * 36
    assert masks[:, 1].sum() == 0


def test_read_colour_masks_three_colours_error(tmp_path):
    f = _mask_frame(shapes=[(RED, 0, 8, 0, 8), (BLUE, 10, 18, 0, 8), (GREEN, 0, 8, 20, 28)])
    _write_mask_folder(tmp_path / "m", [f])
    with pytest.raises(ValueError, match="3 subject colours"):
        read_colour_masks(tmp_path / "m")


def test_read_colour_masks_explicit_colours_and_lossy_video(tmp_path):
    frames = np.stack([_mask_frame(h=48, w=64, shapes=[(RED, 4, 20, 4, 28), (BLUE, 24, 44, 32, 60)])] * 4)
    path = write_video(tmp_path / "m.mp4", frames, fps=8)
    import av
    with av.open(str(path)) as container:        # H.264 in yuv420p: plays in browsers and ComfyUI's preview
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt, stream.frames) == ("h264", "yuv420p", 4)
        assert float(stream.average_rate) == 8
    masks = read_colour_masks(path)
    assert masks.shape == (4, 2, 48, 64)
    # Lossy codec: allow a thin boundary disagreement, but interiors must be right.
    assert masks[:, 0, 28:40, 36:56].min() == 1 and masks[:, 1, 8:16, 8:24].min() == 1
    assert masks[:, 0, :20].max() == 0 and masks[:, 1, 30:].max() == 0
    swapped = read_colour_masks(path, colours=[RED, BLUE], max_frames=2)
    assert swapped.shape == (2, 2, 48, 64)
    assert swapped[:, 0, 8:16, 8:24].min() == 1


# ---- prepare_clip ---------------------------------------------------------------------------


def test_prepare_clip_centre_crop_is_shared_by_video_and_masks():
    # 40x80 source, 1:1 target -> centre crop columns 20..60, then resize to 20x20.
    f0, h0, w0 = 5, 40, 80
    frames = np.zeros((f0, h0, w0, 3), np.uint8)
    masks = np.zeros((f0, 2, h0, w0), np.float32)
    frames[:, 10:20, 40:50] = 255  # marker inside the crop, right of centre
    masks[:, 1, 10:20, 40:50] = 1
    frames[:, :, :20] = 200  # left band outside the crop
    masks[:, 0, :, :20] = 1
    video, m = prepare_clip(frames, masks, num_frames=3, height=20, width=20)
    assert video.shape == (3, 3, 20, 20) and video.dtype == torch.float32
    assert m.shape == (3, 2, 20, 20) and m.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1
    assert video.min() == -1 and video.max() == 1
    bright = video[0, 0] > 0.9
    assert torch.equal(bright, m[0, 1].bool())
    ys, xs = torch.nonzero(bright, as_tuple=True)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (5, 9, 10, 14)
    assert m[:, 0].sum() == 0  # band cropped away from masks too
    assert set(m.unique().tolist()) <= {0.0, 1.0}


def test_prepare_clip_resizes_masks_of_other_size_first():
    frames = np.zeros((2, 40, 80, 3), np.uint8)
    frames[:, 20:40, 40:80] = 255  # bottom-right quadrant
    masks = np.zeros((2, 1, 20, 40), np.float32)  # half resolution
    masks[:, 0, 10:20, 20:40] = 1
    video, m = prepare_clip(frames, masks, num_frames=2, height=16, width=32)
    assert m.shape == (2, 1, 16, 32)
    assert torch.equal(video[0, 0] > 0, m[0, 0].bool())
    assert m[0, 0, 8:, 16:].min() == 1 and m[0, 0, :8].max() == 0


def test_prepare_clip_tall_source_crops_rows_and_takes_first_frames():
    frames = np.stack([np.full((60, 20, 3), t * 20, np.uint8) for t in range(6)])
    frames[:, :20] = 0
    frames[:, 40:] = 0
    video, m = prepare_clip(frames, None, num_frames=4, height=8, width=8)
    assert m is None and video.shape == (3, 4, 8, 8)
    expected = torch.tensor([t * 20 / 127.5 - 1 for t in range(4)])
    assert torch.allclose(video[0, :, 4, 4], expected)


def test_prepare_clip_too_few_frames():
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="needs 4 frames .* has 3"):
        prepare_clip(frames, None, num_frames=4, height=8, width=8)
    frames = np.zeros((5, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="needs 4 mask frames .* have 2"):
        prepare_clip(frames, np.zeros((2, 2, 16, 16), np.float32), num_frames=4, height=8, width=8)


# ---- discover_exemplars ---------------------------------------------------------------------


def test_discover_captions_default_and_natural_order(tmp_path):
    for name in ["clip10", "clip2", "clip1"]:
        _write_video_file(tmp_path / f"{name}.mp4")
    (tmp_path / "clip2.txt").write_text("  a dog shakes hands with a cat \n")
    (tmp_path / ".hidden.mp4").write_bytes(b"x")
    (tmp_path / "readme.md").write_text("ignored")
    ex = discover_exemplars(tmp_path, caption="default caption")
    assert [e.name for e in ex] == ["clip1", "clip2", "clip10"]
    assert [e.caption for e in ex] == ["default caption", "a dog shakes hands with a cat", "default caption"]
    assert all(isinstance(e, Exemplar) and e.masks is None for e in ex)
    assert ex[2].video == tmp_path / "clip10.mp4"


def test_discover_missing_caption_names_the_video(tmp_path):
    _write_video_file(tmp_path / "a.mp4")
    _write_video_file(tmp_path / "b.mp4")
    (tmp_path / "a.txt").write_text("caption a")
    with pytest.raises(ValueError, match=r"b\.mp4.*caption"):
        discover_exemplars(tmp_path)


def test_discover_frame_folders_and_masks(tmp_path):
    _write_video_file(tmp_path / "vid3.mp4")
    _write_mask_folder(tmp_path / "vid20", [np.zeros((8, 8, 3), np.uint8)] * 3)  # frame-folder exemplar
    (tmp_path / "not_a_clip").mkdir()  # empty folder: not an exemplar
    masks = tmp_path / "masks"
    _write_mask_folder(masks / "vid3", [_mask_frame(shapes=[(RED, 0, 4, 0, 4)])])
    write_video(masks / "vid20.gif", np.zeros((3, 8, 8, 3), np.uint8), fps=8)
    ex = discover_exemplars(tmp_path, caption="c")
    assert [e.name for e in ex] == ["vid3", "vid20"]  # the masks folder itself is not an exemplar
    assert ex[0].video == tmp_path / "vid3.mp4" and ex[0].masks == masks / "vid3"
    assert ex[1].video == tmp_path / "vid20" and ex[1].masks == masks / "vid20.gif"


def test_discover_missing_masks_error(tmp_path):
    videos = tmp_path / "videos"
    _write_video_file(videos / "a.mp4")
    _write_video_file(videos / "b.mp4")
    _write_mask_folder(videos / "masks" / "a", [_mask_frame()])
    with pytest.raises(ValueError, match=r"no masks .*b\.mp4"):
        discover_exemplars(videos, caption="c")
    # An explicit masks_dir elsewhere behaves the same.
    other = tmp_path / "other_masks"
    _write_mask_folder(other / "b", [_mask_frame()])
    with pytest.raises(ValueError, match=r"no masks .*a\.mp4"):
        discover_exemplars(videos, masks_dir=other, caption="c")
    with pytest.raises(FileNotFoundError):
        discover_exemplars(videos, masks_dir=tmp_path / "nope", caption="c")


def test_discover_duplicate_names_error(tmp_path):
    _write_video_file(tmp_path / "a.mp4")
    _write_video_file(tmp_path / "a.avi")
    with pytest.raises(ValueError, match="two exemplars named 'a'"):
        discover_exemplars(tmp_path, caption="c")


def test_discover_empty_and_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="no exemplar videos"):
        discover_exemplars(tmp_path, caption="c")
    with pytest.raises(FileNotFoundError):
        discover_exemplars(tmp_path / "missing", caption="c")
