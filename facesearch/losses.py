"""The contrastive loss that trains facesearch's one distance.

Distances come from :func:`facesearch.distance.pairwise` (cosine distance
``d = 1 - <a, b>`` on unit vectors, in [0, 2], lower is more similar); the loss
never computes a distance of its own, so what it trains is exactly what
verification thresholds and the index ranks by.

For a batch of ``N`` embeddings with identity labels (a P x K batch: P
identities, K images each), every unordered pair ``i < j`` is either

* **positive** (same label): loss ``relu(d - pos_margin) ** 2`` pulls the pair
  together until it is within ``pos_margin``;
* **negative** (different labels): loss ``relu(neg_margin - d) ** 2`` pushes the
  pair apart until it is at least ``neg_margin`` away.

Mining (which negative pairs take part); every positive pair always does:

* ``"all"``: every negative pair; each term is the mean over *all* pairs of
  its kind, so pairs already beyond the margin count as zeros and dilute it.
* ``"hard"`` (default): negatives inside the margin (``d < neg_margin``), that
  is the pairs with a non-zero loss; each term is the mean over its *active*
  pairs (those with a non-zero loss), so easy pairs do not dilute the gradient
  as training progresses (pytorch-metric-learning's ``AvgNonZeroReducer``).
* ``"semihard"``: like ``"hard"``, but a negative ``(a, n)`` also needs
  ``d(a, n) >= `` the distance from ``a`` to its *closest* positive. The very
  hardest negatives (closer than every positive of the anchor, often label noise
  or look-alikes early in training) are left out.

The returned loss is ``mean_pos + mean_neg``: the two kinds are averaged
separately, so the ``P*K*(P-1)*K/2`` negatives of a batch do not drown its
``P*K*(K-1)/2`` positives. A term with no active pair contributes 0 (with a
gradient of 0, still connected to the graph).

There is no classifier and no sigmoid head: the embedding and its distance are
the whole model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from facesearch import distance

MINING = ("all", "hard", "semihard")


@dataclass
class PairStats:
    """Counts from the last call, for logging (plain Python numbers)."""

    positive_pairs: int = 0
    negative_pairs: int = 0
    active_positive: int = 0
    active_negative: int = 0
    pos_loss: float = 0.0
    neg_loss: float = 0.0


class ContrastiveLoss(nn.Module):
    """Contrastive loss on cosine distance (see the module docstring).

    ``pos_margin`` and ``neg_margin`` are distances in [0, 2] with
    ``0 <= pos_margin < neg_margin <= 2``. ``forward(embeddings, labels)`` takes
    N x D unit-norm embeddings and N integer labels; it returns a scalar.
    """

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 0.6, mining: str = "hard"):
        super().__init__()
        if not (distance.MIN <= pos_margin < neg_margin <= distance.MAX):
            raise ValueError(
                f"need {distance.MIN} <= pos_margin < neg_margin <= {distance.MAX}, "
                f"got pos_margin={pos_margin}, neg_margin={neg_margin}"
            )
        if mining not in MINING:
            raise ValueError(f"mining must be one of {MINING}, got {mining!r}")
        self.pos_margin = float(pos_margin)
        self.neg_margin = float(neg_margin)
        self.mining = mining
        self._last = None

    @property
    def last(self) -> PairStats:
        """Pair counts and the two terms of the last call (reading it syncs the device)."""
        if self._last is None:
            return PairStats()
        pos, neg, pos_l, neg_l, pt, nt = self._last
        return PairStats(int(pos.sum()), int(neg.sum()), int((pos_l > 0).sum()), int((neg_l > 0).sum()),
                         float(pt), float(nt))

    def pair_masks(self, dist: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean N x N masks of the positive and the negative pairs that take part (upper triangle only)."""
        n = labels.shape[0]
        same = labels[:, None] == labels[None, :]
        upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=labels.device), diagonal=1)
        pos = same & upper
        neg = ~same & upper
        if self.mining == "semihard":
            # closest positive of each anchor (inf when the anchor has none)
            inf = torch.full_like(dist, float("inf"))
            eye = torch.eye(n, dtype=torch.bool, device=labels.device)
            closest_pos = torch.where(same & ~eye, dist, inf).min(dim=1).values
            # a pair (i, j) is symmetric: keep it if it is semi-hard for either end as anchor
            semi = (dist >= closest_pos[:, None]) | (dist >= closest_pos[None, :])
            neg = neg & semi
        return pos, neg

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if embeddings.ndim != 2 or labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
            raise ValueError("expected embeddings N x D and labels N")
        emb = embeddings.float()
        dist = distance.pairwise(emb, emb)
        pos, neg = self.pair_masks(dist.detach(), labels)
        # masked rather than indexed, so no step waits on the device
        pos_l = torch.where(pos, torch.relu(dist - self.pos_margin).pow(2), 0.0)
        neg_l = torch.where(neg, torch.relu(self.neg_margin - dist).pow(2), 0.0)
        if self.mining == "all":
            pos_den, neg_den = pos.sum().clamp(min=1), neg.sum().clamp(min=1)
        else:  # mean over the active pairs (an empty sum is 0, divided by 1)
            pos_den, neg_den = (pos_l > 0).sum().clamp(min=1), (neg_l > 0).sum().clamp(min=1)
        pos_term = pos_l.sum() / pos_den
        neg_term = neg_l.sum() / neg_den
        self._last = (pos, neg, pos_l.detach(), neg_l.detach(), pos_term.detach(), neg_term.detach())
        return pos_term + neg_term


DISTILL = ("embedding", "relation")


class DistillationLoss(nn.Module):
    """How far the student's embeddings are from a frozen teacher's, in facesearch's one distance.

    * ``"embedding"``: the mean over the batch of ``distance.paired(student, teacher)``, that is
      ``1 - <s, t>`` between each image's two unit vectors: the student is pulled onto the teacher's
      embedding itself (both must have the same size). It constrains every image on its own, so an
      image without a label (a P x K batch needs identities; this does not) teaches as much as one with.
    * ``"relation"``: the mean over the batch's pairs ``i < j`` of ``(d_s(i, j) - d_t(i, j)) ** 2``, with
      ``d = distance.pairwise``: the student learns the teacher's distances, what verification thresholds
      and search ranks, and nothing else (any rotation of the teacher's space is as good); the sizes may
      differ.

    ``forward(student, teacher)`` takes N x D_s and N x D_t unit vectors; the teacher gets no gradient.
    """

    def __init__(self, kind: str = "embedding"):
        super().__init__()
        if kind not in DISTILL:
            raise ValueError(f"kind must be one of {DISTILL}, got {kind!r}")
        self.kind = kind

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.ndim != 2 or teacher.ndim != 2 or student.shape[0] != teacher.shape[0]:
            raise ValueError("expected student N x D and teacher N x D' embeddings")
        s, t = student.float(), teacher.detach().float()
        if self.kind == "embedding":
            if s.shape[1] != t.shape[1]:
                raise ValueError(f"embedding distillation needs one size: student {s.shape[1]}, teacher {t.shape[1]}")
            return distance.paired(s, t).mean()
        n = s.shape[0]
        upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=s.device), diagonal=1)
        diff = distance.pairwise(s, s) - distance.pairwise(t, t)
        return torch.where(upper, diff.pow(2), 0.0).sum() / upper.sum().clamp(min=1)


class DistilledContrastiveLoss(nn.Module):
    """The contrastive loss on the labelled rows plus ``weight`` x the distillation term on every row.

    ``forward(embeddings, labels, teacher)``: the first ``len(labels)`` rows of ``embeddings`` are the
    labelled P x K batch; rows after them (unlabelled images) get the distillation term only.
    ``last_distill`` holds the last distillation term (a detached tensor)."""

    def __init__(self, contrastive: ContrastiveLoss, distill: DistillationLoss, weight: float = 1.0):
        super().__init__()
        self.contrastive, self.distill, self.weight = contrastive, distill, float(weight)
        self.last_distill: torch.Tensor | None = None

    @property
    def last(self) -> PairStats:
        return self.contrastive.last

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        n = labels.shape[0]
        term = self.distill(embeddings, teacher)
        self.last_distill = term.detach()
        return self.contrastive(embeddings[:n], labels) + self.weight * term
