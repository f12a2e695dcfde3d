"""SynthRel: the generator (masks match pixels, captions match programs) and the evaluator on ground truth."""
import collections
import random

import cv2
import numpy as np
import pytest

from dreamrelation_core.synthrel import COLORS, RELATIONS, SHAPES, render_clip
from dreamrelation_core.synthrel.evaluate import classify, evaluate_video, find, shape_of
from dreamrelation_core.synthrel.render import caption, draw_shape, exemplar_clips, parse_caption, trajectories


def test_domain_size():
    assert len(RELATIONS) >= 8 and len(SHAPES) >= 4 and len(COLORS) >= 6


@pytest.mark.parametrize("relation", sorted(RELATIONS))
def test_masks_are_exactly_the_subjects_pixels_and_captions_name_the_program(relation):
    s1, s2 = ("red", "triangle"), ("blue", "diamond")
    video, masks, caption = render_clip(relation, s1, s2, frames=17, size=(64, 64), seed=3)
    assert caption == f"a red triangle {relation} a blue diamond"
    assert video.shape == (17, 64, 64, 3) and masks.shape == (17, 2, 64, 64)
    for colour, mask in ((COLORS["red"], masks[:, 0]), (COLORS["blue"], masks[:, 1])):
        painted = np.all(video == np.array(colour, np.uint8), axis=-1)
        assert np.array_equal(painted, mask > 0)
    assert not np.any((masks[:, 0] > 0) & (masks[:, 1] > 0))
    assert masks[:, 0].sum(axis=(1, 2)).min() > 0 and masks[:, 1].sum(axis=(1, 2)).min() > 0


def test_clips_are_deterministic_and_vary_with_the_seed():
    a = render_clip("pushes", ("green", "square"), ("cyan", "circle"), seed=1)[0]
    assert np.array_equal(a, render_clip("pushes", ("green", "square"), ("cyan", "circle"), seed=1)[0])
    assert not np.array_equal(a, render_clip("pushes", ("green", "square"), ("cyan", "circle"), seed=2)[0])


def test_captions_parse_back_and_bad_prompts_are_named():
    for relation in RELATIONS:
        s1, s2 = ("purple", "diamond"), ("cyan", "triangle")
        assert parse_caption(caption(relation, s1, s2)) == (relation, s1, s2)
    assert parse_caption("A Red circle orbits an blue square.") == ("orbits", ("red", "circle"), ("blue", "square"))
    with pytest.raises(ValueError, match="'a bear orbits a raccoon' is not a SynthRel caption"):
        parse_caption("a bear orbits a raccoon")


def test_exemplar_clips_cycle_pairs_and_seeds():
    pairs = [(("red", "circle"), ("blue", "square")), (("green", "triangle"), ("yellow", "diamond"))]
    clips = list(exemplar_clips("pushes", 3, pairs, frames=9, size=(32, 32), seed=7))
    assert [c[0] for c in clips] == ["clip_00", "clip_01", "clip_02"]
    for n, (_, video, masks, text) in enumerate(clips):
        ref_video, ref_masks, ref_text = render_clip("pushes", *pairs[n % 2], 9, (32, 32), seed=7 + n)
        assert np.array_equal(video, ref_video) and np.array_equal(masks, ref_masks) and text == ref_text


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="unknown relation"):
        render_clip("hugs", ("red", "circle"), ("blue", "square"))
    with pytest.raises(ValueError, match="unknown subject"):
        render_clip("orbits", ("pink", "circle"), ("blue", "square"))


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_reading_on_crisp_shapes(shape):
    for radius in range(3, 8):
        mask = np.zeros((64, 64), np.uint8)
        draw_shape(mask, shape, (31, 30), radius, 1)
        assert shape_of(mask.astype(bool)) == shape, radius


def test_evaluator_on_ground_truth_renders():
    """The acceptance bar: ≥ 95% relation accuracy on ground truth (measured: 100%, docs/benchmarks.md)."""
    rng = random.Random(0)
    confusion = collections.Counter()
    for relation in RELATIONS:
        for seed in range(12):
            c1, c2 = rng.sample(sorted(COLORS), 2)
            s1, s2 = (c1, rng.choice(SHAPES)), (c2, rng.choice(SHAPES))
            video, _, _ = render_clip(relation, s1, s2, frames=17, size=(64, 64), seed=100 + seed)
            result = evaluate_video(video, s1, s2)
            confusion[(relation, result["relation"])] += 1
            assert result["subjects_present"] and result["shapes_match"] and result["leaked"] == []
    accuracy = sum(n for (a, b), n in confusion.items() if a == b) / sum(confusion.values())
    assert accuracy >= 0.95, confusion


def test_evaluator_relations_survive_blur_and_noise():
    rng, noise = random.Random(1), np.random.default_rng(1)
    correct = total = 0
    for relation in RELATIONS:
        for seed in range(5):
            c1, c2 = rng.sample(sorted(COLORS), 2)
            video, _, _ = render_clip(relation, (c1, "circle"), (c2, "square"), seed=200 + seed)
            blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 0.8) for f in video]).astype(np.float32)
            degraded = np.clip(blurred + noise.normal(0, 10, blurred.shape), 0, 255).astype(np.uint8)
            correct += evaluate_video(degraded, (c1, "circle"), (c2, "square"))["relation"] == relation
            total += 1
    assert correct / total >= 0.9


def test_leakage_and_absence_are_reported():
    video, _, _ = render_clip("orbits", ("red", "circle"), ("blue", "square"), seed=4)
    result = evaluate_video(video, ("yellow", "circle"), ("green", "square"),
                            exemplar_subjects=[("red", "circle"), ("blue", "square")])
    assert result["leaked"] == ["blue", "red"] and not result["subjects_present"] and result["relation"] is None
    static = np.repeat(video[:1], 17, axis=0)                      # subjects present but nothing happens
    assert evaluate_video(static, ("red", "circle"), ("blue", "square"))["relation"] is None


def test_ground_truth_trajectories_feed_the_classifier():
    for relation in RELATIONS:
        centres, _, _ = trajectories(relation, 17, seed=5)
        assert classify(centres[:, 0], centres[:, 1]) == relation
    blob = find(render_clip("follows", ("cyan", "circle"), ("purple", "triangle"), seed=0)[0][0], "purple")
    assert blob is not None and blob.shape == "triangle"
