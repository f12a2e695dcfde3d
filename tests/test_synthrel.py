"""SynthRel: the generator (masks match pixels, captions match programs) and the evaluator on ground truth."""
import collections
import random

import cv2
import numpy as np
import pytest

from dreamrelation_core.synthrel import COLORS, RELATIONS, SHAPES, render_clip, write_exemplars
from dreamrelation_core.bench import degrade
from dreamrelation_core.synthrel.evaluate import classify, evaluate_video, find, shape_of
from dreamrelation_core.synthrel.render import (DARK_TONE, LOOKS, TEXTURES, Subject, caption, draw_shape,
                                                exemplar_clips, parse_caption, texture_tone, trajectories)

V2 = dict(frames=9, size=(40, 40), look=LOOKS["v2"])


def test_domain_size():
    assert len(RELATIONS) >= 8 and len(SHAPES) >= 4 and len(COLORS) >= 6 and len(TEXTURES) >= 7


@pytest.mark.parametrize("texture", TEXTURES)
def test_textures_lie_inside_the_masks_in_two_tones_of_the_subjects_colour(texture):
    s1, s2 = Subject("yellow", texture, "circle"), Subject("purple", TEXTURES[-1 - TEXTURES.index(texture)], "square")
    video, masks, text = render_clip("approaches", s1, s2, seed=2, **V2)
    assert text == f"a yellow {texture} circle approaches a purple {s2.texture} square"
    background = video[0, 0, 0]
    assert np.array_equal(np.any(video != background, axis=-1), (masks[:, 0] + masks[:, 1]) > 0)
    for subject, mask in ((s1, masks[:, 0] > 0), (s2, masks[:, 1] > 0)):
        colour = np.array(COLORS[subject.colour], np.float64)
        pixels = video[mask].astype(np.float64)
        tone = pixels.max(axis=1) / colour.max()
        assert np.allclose(pixels, np.rint(tone[:, None] * colour), atol=1.0)      # hue kept: a scaled colour
        assert tone.min() >= DARK_TONE - 0.01 and tone.max() <= 1.0
        assert (tone.max() - tone.min() < 0.01) == (subject.texture == "plain")


def test_textures_move_with_their_subject():
    """The pattern is anchored at the subject's centre: the tones at given offsets from it never change."""
    ys, xs = np.mgrid[-5:6, -5:6]
    for texture in TEXTURES:
        tone = texture_tone(texture, xs, ys, 5)
        assert np.array_equal(tone, texture_tone(texture, xs.copy(), ys.copy(), 5))
        assert set(np.unique(tone)) <= {1.0, DARK_TONE} or texture == "shaded"
    video, masks, _ = render_clip("follows", Subject("red", "striped", "square"), Subject("blue", "plain", "square"),
                                  seed=1, **V2)
    crops = []
    for frame, mask in zip(video, masks[:, 0] > 0):
        y, x = np.nonzero(mask)
        crops.append(frame[y.min():y.max() + 1, x.min():x.max() + 1])
    assert all(np.array_equal(c, crops[0]) for c in crops)            # square on top: never occluded


def test_textures_are_drawn_at_the_subjects_scale():
    """At most two tone changes along the rows and columns of a v2 subject (docs/benchmarks.md: the base's tokens
    are 8×8 pixels, and finer patterns came out of sampling as speckle), and every pattern differs from every other
    on every shape."""
    radius = LOOKS["v2"].min_radius
    ys, xs = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    inside = {}
    for shape in SHAPES:
        mask = np.zeros(xs.shape, np.uint8)
        draw_shape(mask, shape, (radius, radius), radius, 1)
        inside[shape] = mask.astype(bool)
    for texture in TEXTURES:
        tone = texture_tone(texture, xs, ys, radius) < 1.0 - 1e-9 if texture != "shaded" else None
        if tone is not None:
            for line in (*tone, *tone.T):
                assert np.count_nonzero(np.diff(line.astype(int))) <= 2, texture
    for shape, mask in inside.items():
        tones = {t: texture_tone(t, xs[mask], ys[mask], radius) for t in TEXTURES}
        for a in TEXTURES:
            for b in TEXTURES[TEXTURES.index(a) + 1:]:
                assert np.abs(tones[a] - tones[b]).mean() > 0.05, (shape, a, b)


def test_captions_name_any_subset_of_attributes():
    s1, s2 = Subject("red", "checked", "circle"), Subject("cyan", "ringed", "diamond")
    assert caption("pushes", s1, s2, (), ()) == "a shape pushes a shape"
    assert caption("pushes", s1, s2, ("shape",), ("colour", "texture")) == "a circle pushes a cyan ringed shape"
    assert parse_caption("a shape pushes a shape") == ("pushes", (None, None, None), (None, None, None))
    assert parse_caption("a circle orbits a cyan ringed shape") == ("orbits", (None, None, "circle"),
                                                                    ("cyan", "ringed", None))
    assert parse_caption(caption("swaps places with", s1, s2)) == ("swaps places with", s1, s2)
    names = [t for _, _, _, t in exemplar_clips("pushes", 2, [(s1, s2)], seed=0, named=(), **V2)]
    assert names == ["a shape pushes a shape"] * 2


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
        assert parse_caption(caption(relation, s1, s2)) == (relation, ("purple", None, "diamond"),
                                                            ("cyan", None, "triangle"))
    assert parse_caption("A Red circle orbits an blue square.") == ("orbits", ("red", None, "circle"),
                                                                   ("blue", None, "square"))
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


def v2_ground_truth(count: int, seed: int):
    rng = random.Random(seed)
    for k in range(count):
        relation = sorted(RELATIONS)[k % len(RELATIONS)]
        s1, s2 = (Subject(c, rng.choice(TEXTURES), rng.choice(SHAPES)) for c in rng.sample(sorted(COLORS), 2))
        yield relation, s1, s2, render_clip(relation, s1, s2, seed=rng.randrange(1 << 30), **V2)[0], rng


def test_evaluator_on_v2_ground_truth_reads_relations_and_every_attribute():
    """Protocol v2's bar: ≥ 95% on ground truth for relations and for named colours, textures and shapes
    (measured on 800 clips: 100%, docs/benchmarks.md)."""
    results = [(relation, evaluate_video(video, s1, s2)) for relation, s1, s2, video, _ in v2_ground_truth(48, 0)]
    assert sum(r["relation"] == relation for relation, r in results) / len(results) >= 0.95
    assert sum(r["attributes_match"] for _, r in results) / len(results) >= 0.95
    assert all(r["subjects_present"] and r["leaked"] == [] for _, r in results)


def test_evaluator_reads_textures_of_blurred_noisy_v2_clips():
    results = [evaluate_video(degrade(video, rng), s1, s2) for _, s1, s2, video, rng in v2_ground_truth(32, 1)]
    assert sum(r["textures_match"] for r in results) / len(results) >= 0.9


def test_evaluator_reports_an_exemplar_texture_on_a_test_subject():
    video, _, _ = render_clip("follows", Subject("cyan", "striped", "circle"), Subject("purple", "plain", "square"),
                              seed=3, **V2)
    exemplars = [Subject("red", "striped", "circle"), Subject("blue", "dotted", "square")]
    leaked = evaluate_video(video, ("cyan", "shaded", "circle"), ("purple", "plain", "square"), exemplars)
    assert leaked["leaked"] == ["striped"] and not leaked["textures_match"] and leaked["shapes_match"]
    assert leaked["relation"] == "follows" and not leaked["attributes_match"]
    clean = evaluate_video(video, ("cyan", "striped", "circle"), ("purple", None, "square"), exemplars[1:])
    assert clean["leaked"] == [] and clean["attributes_match"]
    with pytest.raises(ValueError, match="needs its colour named"):
        evaluate_video(video, (None, "striped", "circle"), ("purple", None, "square"))


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


def test_lossless_exemplars_keep_every_texture_pixel(tmp_path):
    from dreamrelation_core.data import discover_exemplars, read_colour_masks
    from dreamrelation_core.videoio import read_video

    pairs = [(Subject("red", "checked", "circle"), Subject("blue", "dotted", "square"))]
    write_exemplars(tmp_path, "pushes", 2, pairs, seed=4, named=(), lossless=True, **V2)
    found = discover_exemplars(tmp_path)
    assert [e.name for e in found] == ["clip_00", "clip_01"] and found[0].caption == "a shape pushes a shape"
    video, masks, _ = render_clip("pushes", *pairs[0], seed=5, **V2)
    assert np.array_equal(read_video(found[1].video)[0], video)
    assert np.array_equal(read_colour_masks(found[1].masks, 2), masks)
