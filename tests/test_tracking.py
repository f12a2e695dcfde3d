import numpy as np
import pytest

from dreamrelation_core.synthrel import render_clip
from dreamrelation_core.tracking import box_masks, grabcut_masks, overlay, parse_box, track_box


def truth_boxes(mask):
    out = []
    for m in mask:
        ys, xs = np.nonzero(m)
        out.append((xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1))
    return np.array(out)


def test_tracked_box_follows_a_moving_subject():
    video, masks, _ = render_clip("swaps places with", ("red", "square"), ("blue", "circle"), frames=17,
                                  size=(96, 128), seed=2)
    truth = truth_boxes(masks[:, 0])
    boxes = track_box(video, tuple(truth[0]))
    centres = boxes[:, :2] + boxes[:, 2:] / 2
    true_centres = truth[:, :2] + truth[:, 2:] / 2
    assert np.abs(centres - true_centres).max() <= 3


def test_grabcut_refines_a_box_to_the_silhouette_and_masks_are_clipped():
    video, masks, _ = render_clip("approaches", ("yellow", "triangle"), ("blue", "circle"), frames=3,
                                  size=(96, 96), seed=1)
    truth = truth_boxes(masks[:, 0])
    loose = truth + np.array([-3, -3, 6, 6])
    refined = grabcut_masks(video, loose)
    box = box_masks(loose, 96, 96)
    inter = (refined * masks[:, 0]).sum() / masks[:, 0].sum()
    assert inter > 0.9 and refined.sum() < box.sum()               # tighter than the box, still the subject
    assert box_masks(np.array([[90, 90, 20, 20]]), 96, 96).sum() == 36
    assert overlay(video, masks).shape == video.shape


def test_parse_box_errors():
    assert parse_box("1, 2, 3, 4", 10, 10) == (1, 2, 3, 4)
    with pytest.raises(ValueError, match="x,y,width,height"):
        parse_box("1,2,3", 10, 10, "subject1_box")
    with pytest.raises(ValueError, match="inside"):
        parse_box("8,8,5,5", 10, 10)
