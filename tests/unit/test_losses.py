"""ContrastiveLoss on facesearch's cosine distance: hand-built embeddings with known answers."""

import math

import pytest
import torch

from facesearch import distance
from facesearch.losses import ContrastiveLoss

MINING = ["all", "hard", "semihard"]


def unit(*rows):
    return distance.normalize(torch.tensor(rows, dtype=torch.float32))


def at_angle(deg):
    r = math.radians(deg)
    return [math.cos(r), math.sin(r), 0.0]


@pytest.mark.parametrize("mining", MINING)
def test_zero_when_positives_coincide_and_negatives_beyond_margin(mining):
    # two identities, two identical images each; the identities are orthogonal: distance 1 > margin 0.6
    emb = unit([1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0]).requires_grad_()
    labels = torch.tensor([0, 0, 1, 1])
    loss = ContrastiveLoss(pos_margin=0.0, neg_margin=0.6, mining=mining)(emb, labels)
    assert loss.item() == pytest.approx(0.0, abs=1e-10)
    loss.backward()
    assert torch.count_nonzero(emb.grad) == 0


@pytest.mark.parametrize("mining", MINING)
def test_positive_pairs_within_pos_margin_cost_nothing(mining):
    emb = unit(at_angle(0), at_angle(10), [0, 0, 1], at_angle(-90))  # d(0, 10 deg) = 1 - cos 10 = 0.0152
    loss = ContrastiveLoss(pos_margin=0.05, neg_margin=0.6, mining=mining)(emb, torch.tensor([0, 0, 1, 2]))
    assert loss.item() == pytest.approx(0.0, abs=1e-10)


def test_value_matches_hand_computation():
    # identity 0: images at 0 and 60 degrees (d = 0.5); identity 1: at 90 degrees; identity 2: at 200 degrees
    emb = unit(at_angle(0), at_angle(60), at_angle(90), at_angle(200))
    labels = torch.tensor([0, 0, 1, 2])
    pm, nm = 0.1, 0.8
    d = lambda a, b: 1 - math.cos(math.radians(a - b))  # noqa: E731
    pos = [(d(0, 60) - pm) ** 2]
    neg_pairs = [d(0, 90), d(0, 200), d(60, 90), d(60, 200), d(90, 200)]
    neg = [(nm - x) ** 2 if x < nm else 0.0 for x in neg_pairs]
    active = [x for x in neg if x > 0]
    assert len(active) == 1  # only (60, 90): d = 0.134
    hard = ContrastiveLoss(pm, nm, "hard")(emb, labels).item()
    assert hard == pytest.approx(pos[0] + sum(active) / len(active), rel=1e-5)
    every = ContrastiveLoss(pm, nm, "all")(emb, labels).item()
    assert every == pytest.approx(pos[0] + sum(neg) / len(neg), rel=1e-5)
    assert hard > every  # averaging over active pairs only: easy negatives do not dilute


def test_positive_otherwise_and_gradient_pulls_positives_together_and_pushes_negatives_apart():
    torch.manual_seed(0)
    raw = torch.randn(8, 16, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss_fn = ContrastiveLoss(pos_margin=0.0, neg_margin=1.2, mining="hard")  # every random pair is "too close"

    def pair_means(x):
        dist = distance.pairwise(distance.normalize(x), distance.normalize(x))
        same = labels[:, None] == labels[None, :]
        off = ~torch.eye(8, dtype=torch.bool)
        return dist[same & off].mean().item(), dist[~same].mean().item()

    pos0, neg0 = pair_means(raw.detach())
    loss = loss_fn(distance.normalize(raw), labels)
    assert loss.item() > 0
    loss.backward()
    with torch.no_grad():
        stepped = raw - 0.5 * raw.grad
    pos1, neg1 = pair_means(stepped)
    assert pos1 < pos0
    assert neg1 > neg0
    assert loss_fn(distance.normalize(stepped), labels).item() < loss.item()


def test_semihard_leaves_out_negatives_closer_than_every_positive():
    # anchor 0 at 0 deg, its positive at 50 deg; a negative at 5 deg (closer than the positive: hardest)
    # and one at 70 deg (farther than the positive, inside the margin: semi-hard)
    emb = unit(at_angle(0), at_angle(50), at_angle(5), at_angle(-70))
    labels = torch.tensor([0, 0, 1, 2])
    loss = ContrastiveLoss(0.0, 0.9, "semihard")
    hard = ContrastiveLoss(0.0, 0.9, "hard")
    loss(emb, labels)
    hard(emb, labels)
    pos, neg = loss.pair_masks(distance.pairwise(emb, emb), labels)
    assert not neg[0, 2]  # 5 deg from the anchor, closer than its positive: left out for anchor 0 ...
    assert neg[0, 3]
    assert loss.last.negative_pairs < hard.last.negative_pairs


def test_uses_the_project_distance(monkeypatch):
    calls = []
    real = distance.pairwise

    def spy(a, b):
        calls.append(a.shape)
        return real(a, b)

    monkeypatch.setattr(distance, "pairwise", spy)
    ContrastiveLoss()(unit([1, 0], [0, 1], [1, 1]), torch.tensor([0, 0, 1]))
    assert calls


@pytest.mark.parametrize("pm, nm", [(0.5, 0.5), (0.7, 0.2), (-0.1, 0.5), (0.0, 2.5)])
def test_bad_margins_are_rejected(pm, nm):
    with pytest.raises(ValueError):
        ContrastiveLoss(pm, nm)


def test_bad_mining_is_rejected():
    with pytest.raises(ValueError):
        ContrastiveLoss(mining="hardest")
