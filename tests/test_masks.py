import pytest
import torch

from dreamrelation_core.masks import group_mask, latent_masks


def direct_latent_masks(pixel, f, h, w, r):
    """The spec written as loops: cell (i, j) = any fg pixel with floor(y*h/H) = i, floor(x*w/W) = j; then means."""
    F, S, H, W = pixel.shape
    spatial = torch.zeros(F, S, h, w)
    for t in range(F):
        for s in range(S):
            for y in range(H):
                for x in range(W):
                    if pixel[t, s, y, x] > 0.5:
                        spatial[t, s, y * h // H, x * w // W] = 1.0
    out = [spatial[0]]
    for k in range(1, f):
        out.append(spatial[1 + r * (k - 1): r * k + 1].mean(0))
    return torch.stack(out)


def test_hand_computed_example():
    m = torch.zeros(9, 2, 16, 16)
    m[0, 0, 0, 0] = 1            # one pixel -> latent frame 0, cell (0, 0)
    m[1:5, 1, 15, 15] = 1        # frames 1..4 -> latent frame 1 (mean of 4 ones), last cell
    m[5, 0, 4:8, 4:8] = 1        # frame 5 only of 5..8 -> 0.25 in cell (1, 1)
    out = latent_masks(m, (3, 4, 4), temporal_ratio=4)
    expected = torch.zeros(3, 2, 4, 4)
    expected[0, 0, 0, 0] = 1
    expected[1, 1, 3, 3] = 1
    expected[2, 0, 1, 1] = 0.25
    assert out.shape == (3, 2, 4, 4)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("ratio,f,H,W,h,w", [(4, 3, 10, 14, 4, 3), (6, 2, 9, 7, 5, 5), (4, 1, 8, 8, 2, 2)])
def test_matches_direct_definition_with_uneven_sizes(ratio, f, H, W, h, w):
    g = torch.Generator().manual_seed(ratio + f)
    pixel = (torch.rand(1 + ratio * (f - 1), 2, H, W, generator=g) > 0.93).float()
    assert torch.equal(latent_masks(pixel, (f, h, w), ratio), direct_latent_masks(pixel, f, h, w, ratio))


def test_mochi_reference_shape():
    pixel = torch.zeros(61, 2, 48, 85)
    pixel[:, 0, 10:20, 10:30] = 1
    out = latent_masks(pixel, (11, 6, 10), temporal_ratio=6)
    assert out.shape == (11, 2, 6, 10) and out[:, 0].amax() == 1 and out[:, 1].amax() == 0


def test_wrong_frame_count_raises_instead_of_zeros():
    with pytest.raises(ValueError, match="frames"):
        latent_masks(torch.ones(60, 2, 8, 8), (11, 1, 1), temporal_ratio=6)
    with pytest.raises(ValueError, match=r"\[F, S, H, W\]"):
        latent_masks(torch.ones(9, 8, 8), (3, 1, 1), temporal_ratio=4)


def test_group_masks():
    m = torch.zeros(2, 2, 3, 3)
    m[:, 0, 0, :2] = 1
    m[:, 1, 0, 1:] = 1
    rel = group_mask(m, "relation")
    assert torch.equal(rel[0, 0], torch.tensor([1.0, 2.0, 1.0]))   # sum: 2 where the subjects overlap
    assert torch.equal(group_mask(m, "subject1"), m[:, 0])
    assert torch.equal(group_mask(m[None], "subject2"), m[None, :, 1])
    with pytest.raises(ValueError, match="unknown group"):
        group_mask(m, "ffn")


def test_group_weights_set_the_draw_and_equal_weights_keep_the_papers_draw():
    import random

    from dreamrelation_core.masks import GROUPS, draw_group

    a, b = random.Random(5), random.Random(5)
    assert [draw_group(a, [2.0, 2.0, 2.0]) for _ in range(50)] == [b.choice(GROUPS) for _ in range(50)]
    rng = random.Random(0)
    assert {draw_group(rng, [1.0, 0.0, 0.0]) for _ in range(50)} == {"relation"}
    draws = [draw_group(rng, [2.0, 1.0, 1.0]) for _ in range(4000)]
    assert abs(draws.count("relation") / 4000 - 0.5) < 0.03


def test_group_weights_are_checked():
    import pytest

    from dreamrelation_core.config import config_from_dict

    for bad in ([1, 1], [1, -1, 1], [0, 0, 0], "1,1,1"):
        with pytest.raises(ValueError, match="train.group_weights"):
            config_from_dict({"train": {"group_weights": bad}})
