import copy
import math

import pytest
import torch

from dreamrelation_core.losses import RelationalContrastiveBank, hybrid_mask_loss, relational_contrastive_loss


def test_hybrid_mask_loss_hand_computed():
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 2, 2)
    target = torch.zeros(1, 1, 1, 2, 2)
    mask = torch.tensor([[1.0, 0.0], [0.5, 0.0]]).view(1, 1, 2, 2)
    # mean(d^2) = (1+4+9+16)/4 = 7.5 ; masked: (1*1)^2 + (0.5*3)^2 = 1 + 2.25 -> mean 0.8125 ; 7.5 + 50*0.8125
    assert hybrid_mask_loss(pred, target, mask).item() == pytest.approx(7.5 + 50 * 0.8125)
    assert hybrid_mask_loss(pred, target, mask, mask_weight=0.0).item() == pytest.approx(7.5)


def test_hybrid_mask_loss_broadcasts_channels_and_equals_eq2_for_binary_masks():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 3, 4, 5, 6, generator=g), torch.randn(2, 3, 4, 5, 6, generator=g)
    mask = (torch.rand(2, 4, 5, 6, generator=g) > 0.5).float()
    eq2 = ((1 + 50 * mask[:, None]) * (pred - target) ** 2).mean()
    assert torch.allclose(hybrid_mask_loss(pred, target, mask), eq2, rtol=1e-6)


def direct_rcl(anchors, positives, negatives, tau):
    total = 0.0
    for i in range(anchors.shape[0]):
        a = anchors[i] / anchors[i].norm()
        sp = sum(math.exp(float(a @ (p / p.norm())) / tau) for p in positives[i])
        sn = sum(math.exp(float(a @ (n / n.norm())) / tau) for n in negatives[i])
        total += -math.log(sp / (sp + sn))
    return total / anchors.shape[0]


def test_rcl_equals_direct_formula():
    g = torch.Generator().manual_seed(1)
    a, p, n = torch.randn(10, 12, generator=g), torch.randn(10, 4, 12, generator=g), torch.randn(10, 11, 12, generator=g)
    assert relational_contrastive_loss(a, p, n, 0.07).item() == pytest.approx(direct_rcl(a, p, n, 0.07), rel=1e-5)
    assert relational_contrastive_loss(a, p, n, 0.5).item() == pytest.approx(direct_rcl(a, p, n, 0.5), rel=1e-5)


def test_rcl_low_when_anchor_matches_positives():
    a = torch.randn(3, 8)
    good = relational_contrastive_loss(a, a[:, None].repeat(1, 2, 1), -a[:, None].repeat(1, 5, 1))
    bad = relational_contrastive_loss(a, -a[:, None].repeat(1, 2, 1), a[:, None].repeat(1, 5, 1))
    assert good.item() < 1e-6 < bad.item()


def test_bank_is_zero_when_empty_then_follows_the_reference_sampling():
    g = torch.Generator().manual_seed(2)
    bank = RelationalContrastiveBank(n_pos=2, n_neg=5, positive_size=3, negative_size=4, temperature=0.07, seed=7)
    first = torch.randn(1, 6, 3, 2, 2, generator=g)                 # C=6, f=3
    assert bank.loss(first).item() == 0.0                          # empty positive bank: RCL is 0 at step 0
    assert len(bank.positives) == 1 and len(bank.negatives) == 3   # one temporal entry, f frame features
    bank.loss(torch.randn(1, 6, 3, 2, 2, generator=g))
    out = torch.randn(1, 6, 3, 2, 2, generator=g, requires_grad=True)

    rng = copy.deepcopy(bank.rng)
    positives, negatives = list(bank.positives), list(bank.negatives)
    loss = bank.loss(out)

    s = out.detach().mean(dim=(-2, -1))[0].T                      # [f, C]
    anchors = s[1:] - s[:-1]
    pos, neg = [], []
    for i in range(2):                                             # same draws as the bank: per anchor, pos then neg
        pos.append(torch.stack([e[i] for e in rng.sample(positives, 2)]))
        neg.append(torch.cat([s, torch.stack(rng.sample(negatives, 2))]))   # f=3 current + 2 from the bank
    assert loss.item() == pytest.approx(direct_rcl(anchors, pos, neg, 0.07), rel=1e-5)

    loss.backward()                                                # current frames (negatives, anchors) carry grad
    assert out.grad.abs().sum() > 0
    assert len(bank.positives) == 3 and len(bank.negatives) == 4   # FIFO bounds


def test_bank_state_round_trip():
    bank = RelationalContrastiveBank(seed=3)
    for _ in range(3):
        bank.loss(torch.randn(1, 4, 5, 2, 2))
    clone = RelationalContrastiveBank(seed=99)
    clone.load_state_dict(copy.deepcopy(bank.state_dict()))
    x = torch.randn(1, 4, 5, 2, 2)
    assert torch.equal(bank.loss(x), clone.loss(x))
