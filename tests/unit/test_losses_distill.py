"""The distillation terms and the loss that adds one to the contrastive loss: hand-built unit vectors."""

import math

import pytest
import torch

from facesearch import distance
from facesearch.losses import (
    ContrastiveLoss,
    DistillationLoss,
    DistilledContrastiveLoss,
)


def unit(t):
    return distance.normalize(torch.as_tensor(t, dtype=torch.float32))


def rand_unit(n, d, seed):
    return unit(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)))


def test_embedding_term_is_the_mean_cosine_distance_between_student_and_teacher():
    s = unit([[1, 0], [0, 1]])
    t = unit([[1, 0], [1, 1]])  # distances 0 and 1 - cos 45 deg
    assert DistillationLoss("embedding")(s, t).item() == pytest.approx((0 + 1 - math.cos(math.pi / 4)) / 2)
    assert DistillationLoss("embedding")(t, t).item() == pytest.approx(0.0, abs=1e-7)


def test_relation_term_ignores_a_rotation_of_the_teacher_and_any_size():
    s = rand_unit(6, 8, 0)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(1)))
    rel = DistillationLoss("relation")
    assert rel(s, s @ q).item() == pytest.approx(0.0, abs=1e-6)  # same distances, other vectors
    wider = torch.cat([s, torch.zeros(6, 4)], 1)  # a 12-d teacher with the same geometry
    assert rel(s, wider).item() == pytest.approx(0.0, abs=1e-6)
    other = rand_unit(6, 12, 2)
    d_s, d_t = distance.pairwise(s, s), distance.pairwise(other, other)
    iu = torch.triu_indices(6, 6, 1)
    assert rel(s, other).item() == pytest.approx(((d_s - d_t)[iu[0], iu[1]] ** 2).mean().item(), rel=1e-5)


def test_embedding_term_refuses_two_sizes():
    with pytest.raises(ValueError, match="one size: student 8, teacher 12"):
        DistillationLoss("embedding")(rand_unit(4, 8, 0), rand_unit(4, 12, 1))


@pytest.mark.parametrize("kind", ["embedding", "relation"])
def test_following_the_term_s_gradient_brings_the_student_to_the_teacher(kind):
    teacher = rand_unit(10, 8, 3)
    raw = torch.randn(10, 8, generator=torch.Generator().manual_seed(4)).requires_grad_()
    term = DistillationLoss(kind)
    opt = torch.optim.SGD([raw], lr=5.0)
    first = None
    for _ in range(100):
        opt.zero_grad()
        loss = term(distance.normalize(raw), teacher)
        first = loss.item() if first is None else first
        loss.backward()
        assert teacher.grad is None  # the teacher is a target, not trained
        opt.step()
    assert loss.item() < 0.1 * first
    if kind == "embedding":  # the vectors themselves
        assert distance.paired(distance.normalize(raw), teacher).max().item() < 0.05


def test_the_distilled_loss_adds_the_weighted_term_and_labels_only_the_first_rows():
    emb = rand_unit(6, 8, 5).requires_grad_()
    teacher = rand_unit(6, 8, 6)
    labels = torch.tensor([0, 0, 1, 1])  # rows 4 and 5: unlabelled
    con = ContrastiveLoss(0.0, 0.6, "all")
    both = DistilledContrastiveLoss(con, DistillationLoss("embedding"), weight=0.5)
    total = both(emb, labels, teacher)
    expected = con(emb[:4], labels) + 0.5 * distance.paired(emb, teacher).mean()
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert both.last_distill.item() == pytest.approx(distance.paired(emb, teacher).mean().item(), rel=1e-6)
    total.backward()
    # the unlabelled rows get a gradient from the distillation term only
    alone = torch.autograd.grad(0.5 * distance.paired(emb, teacher).mean(), emb)[0]
    torch.testing.assert_close(emb.grad[4:], alone[4:])
    assert not torch.allclose(emb.grad[:4], alone[:4])
