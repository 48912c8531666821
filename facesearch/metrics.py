"""Verification and identification metrics on distances.

Every function here works on distances from :mod:`facesearch.distance`: lower is more
similar, and a pair is a *match* when ``distance <= threshold`` (:func:`facesearch.distance.is_match`).
Inputs are numpy arrays: ``dist`` (float, one per pair) and ``same`` (bool, True for a genuine
pair, i.e. both images show the same person).

Vocabulary:

* FAR (false accept rate): share of impostor pairs that match, ``P(dist <= t | different)``.
* TAR (true accept rate): share of genuine pairs that match, ``P(dist <= t | same)``; FRR = 1 - TAR.
* EER: the error rate where FAR = FRR.
* FPIR / DIR (open-set identification): share of unknown probes whose best gallery distance is
  a match, and share of known probes whose best gallery identity is right *and* a match.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facesearch.distance import is_match


def _check(dist, same) -> tuple[np.ndarray, np.ndarray]:
    dist, same = np.asarray(dist, np.float64).ravel(), np.asarray(same, bool).ravel()
    if dist.shape != same.shape:
        raise ValueError(f"dist and same differ in length ({dist.size} vs {same.size})")
    if dist.size and not np.all(np.isfinite(dist)):
        raise ValueError("distances must be finite")
    return dist, same


def _need_both(same: np.ndarray) -> None:
    if not same.any() or same.all():
        raise ValueError("need at least one genuine and one impostor pair")


def accuracy(dist: np.ndarray, same: np.ndarray, threshold: float) -> float:
    """Share of pairs the rule ``distance <= threshold`` gets right."""
    dist, same = np.asarray(dist, np.float64), np.asarray(same, bool)
    return float(np.mean(is_match(dist, threshold) == same))


def best_threshold(dist: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """The threshold that maximises accuracy on these pairs, and that accuracy.

    Candidates are every observed distance (ties kept together) plus one below the
    smallest; the chosen value is the midpoint to the next distinct distance, so it
    generalises to unseen pairs rather than sitting on a training point.
    """
    dist, same = np.asarray(dist, np.float64), np.asarray(same, bool)
    if dist.size == 0:
        raise ValueError("no pairs")
    order = np.argsort(dist, kind="stable")
    d, s = dist[order], same[order]
    uniq_last = np.r_[np.nonzero(np.diff(d))[0], d.size - 1]  # last index of each distinct value
    tp = np.cumsum(s)[uniq_last]  # genuine pairs with distance <= value
    fp = np.cumsum(~s)[uniq_last]
    n_neg = int((~s).sum())
    correct = np.r_[n_neg, tp + (n_neg - fp)]  # first entry: threshold below every distance
    values = d[uniq_last]
    best = int(np.argmax(correct))
    if best == 0:
        thr = values[0] - 1e-6
    elif best == len(values):
        thr = values[-1] + 1e-6
    else:
        thr = (values[best - 1] + values[best]) / 2.0
    return float(thr), float(correct[best] / d.size)


# --------------------------------------------------------------------------- ROC family


def roc_curve(dist: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC of the rule ``distance <= t`` as ``t`` sweeps over every distinct distance.

    Returns ``(thresholds, far, tar)``, each of length (number of distinct distances + 1), in order
    of increasing threshold. The first point is ``t = -inf`` (nothing matches: FAR = TAR = 0); the
    point for threshold ``t`` counts every pair with ``distance <= t``, so tied distances enter
    together and ``is_match(dist, thresholds[i])`` reproduces ``far[i]`` and ``tar[i]`` exactly.
    """
    dist, same = _check(dist, same)
    _need_both(same)
    order = np.argsort(dist, kind="stable")
    d, s = dist[order], same[order]
    uniq_last = np.r_[np.nonzero(np.diff(d))[0], d.size - 1]
    tp = np.r_[0, np.cumsum(s)[uniq_last]]
    fp = np.r_[0, np.cumsum(~s)[uniq_last]]
    thresholds = np.r_[-np.inf, d[uniq_last]]
    return thresholds, fp / float((~s).sum()), tp / float(s.sum())


def auc(dist: np.ndarray, same: np.ndarray) -> float:
    """Area under the ROC curve = P(a genuine distance < an impostor distance), ties counting 1/2.

    This is the Mann-Whitney U statistic over (genuine, impostor) pairs, computed from average
    ranks: 1.0 when every genuine pair is closer than every impostor pair, 0.0 when reversed,
    0.5 when all distances are equal. It equals the trapezoidal area under :func:`roc_curve`.
    """
    dist, same = _check(dist, same)
    _need_both(same)
    order = np.argsort(dist, kind="stable")
    d = dist[order]
    ranks = np.empty(d.size, np.float64)
    # average rank (1-based) within each run of equal distances
    starts = np.r_[0, np.nonzero(np.diff(d))[0] + 1]
    ends = np.r_[starts[1:], d.size]
    avg = (starts + 1 + ends) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    n_pos, n_neg = int(same.sum()), int((~same).sum())
    # U counts (impostor, genuine) pairs where the impostor is *larger*: rank-sum of the impostors
    u = ranks[~same].sum() - n_neg * (n_neg + 1) / 2.0
    return float(u / (n_pos * n_neg))


def eer(dist: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Equal error rate and the distance where it occurs: ``(eer, threshold)``.

    FAR rises and FRR = 1 - TAR falls as the threshold grows. Between the two neighbouring ROC points
    where FRR - FAR changes sign, both rates are interpolated linearly (as is the threshold), and the
    EER is read where the two lines cross.
    """
    thr, far, tar = roc_curve(dist, same)
    frr = 1.0 - tar
    diff = frr - far  # decreasing from 1 to -1 along the curve
    i = int(np.argmax(diff <= 0))  # first point with FRR <= FAR (exists: the last point has diff = -1)
    if diff[i] == 0 or i == 0:
        t = thr[i] if np.isfinite(thr[i]) else float(np.min(np.asarray(dist, np.float64))) - 1e-6
        return float(far[i]), float(t)
    # cross between i-1 (diff > 0) and i (diff <= 0)
    a = diff[i - 1] / (diff[i - 1] - diff[i])
    rate = far[i - 1] + a * (far[i] - far[i - 1])
    lo = thr[i - 1] if np.isfinite(thr[i - 1]) else thr[i]
    return float(rate), float(lo + a * (thr[i] - lo))


def tar_at_far(dist: np.ndarray, same: np.ndarray, far: float) -> tuple[float, float]:
    """The TAR at the largest threshold whose FAR is at most ``far``: ``(tar, threshold)``.

    Conservative (no interpolation): ``is_match(dist, threshold)`` reproduces both numbers on
    these pairs. When even the smallest distance is an impostor's, the threshold lies just below
    every distance and TAR is 0. Note that with ``n`` impostor pairs a FAR below ``1/n`` cannot be
    told apart from 0.
    """
    if not 0.0 <= far <= 1.0:
        raise ValueError("far must be in [0, 1]")
    thr, far_c, tar_c = roc_curve(dist, same)
    i = int(np.nonzero(far_c <= far + 1e-12)[0][-1])  # the curve is monotone; index 0 has FAR 0
    t = thr[i]
    if not np.isfinite(t):
        t = float(np.min(np.asarray(dist, np.float64))) - 1e-6
    return float(tar_c[i]), float(t)


# --------------------------------------------------------------------------- k-fold protocol


@dataclass
class KFoldResult:
    """Per-fold thresholds (each chosen without its own fold) and held-out accuracies."""

    folds: list[int]
    thresholds: list[float]
    accuracies: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        """Population standard deviation over folds (``ddof=0``, as the usual LFW tables report)."""
        return float(np.std(self.accuracies))


def kfold_accuracy(dist: np.ndarray, same: np.ndarray, fold_ids: np.ndarray) -> KFoldResult:
    """The LFW protocol: for each fold ``k``, choose the threshold on the pairs of every *other*
    fold (:func:`best_threshold`), then measure accuracy on fold ``k`` alone.

    Fold ``k``'s threshold is a function of the pairs outside fold ``k`` only; no pair is ever scored
    by a threshold it helped choose.
    """
    dist, same = _check(dist, same)
    fold_ids = np.asarray(fold_ids).ravel()
    if fold_ids.shape != dist.shape:
        raise ValueError("fold_ids must have one entry per pair")
    folds = sorted(np.unique(fold_ids).tolist())
    if len(folds) < 2:
        raise ValueError("k-fold evaluation needs at least two folds")
    thresholds, accs = [], []
    for k in folds:
        test = fold_ids == k
        train = ~test
        thr, _ = best_threshold(dist[train], same[train])
        thresholds.append(thr)
        accs.append(accuracy(dist[test], same[test], thr))
    return KFoldResult(folds=folds, thresholds=thresholds, accuracies=accs)


# --------------------------------------------------------------------------- identification


def rank_k_rate(ranked_identities: list[list[str]], truth: list[str], k: int) -> float:
    """Closed-set identification rate: share of probes whose true identity is among the first ``k``
    identities returned (each list ranked best first, one entry per identity)."""
    if len(ranked_identities) != len(truth):
        raise ValueError("one ranked list per probe")
    if not truth:
        raise ValueError("no probes")
    return float(np.mean([t in r[:k] for r, t in zip(ranked_identities, truth)]))


def dir_at_fpir(
    known_top1_dist: np.ndarray,
    known_top1_correct: np.ndarray,
    unknown_top1_dist: np.ndarray,
    fpir: float,
) -> tuple[float, float]:
    """Open-set identification: the detection-and-identification rate at a false-positive
    identification rate: ``(dir, threshold)``.

    A probe is accepted when its best gallery distance is a match (``<= threshold``). FPIR is the
    share of probes of never-enrolled people that are accepted; DIR is the share of enrolled
    people's probes that are accepted with the right identity at rank 1. The threshold is the
    largest distance whose FPIR is at most ``fpir`` (conservative, no interpolation).
    """
    kd = np.asarray(known_top1_dist, np.float64).ravel()
    kc = np.asarray(known_top1_correct, bool).ravel()
    ud = np.asarray(unknown_top1_dist, np.float64).ravel()
    if kd.size == 0 or ud.size == 0 or kd.shape != kc.shape:
        raise ValueError("need known probes (distance and correctness) and unknown probes")
    if not 0.0 <= fpir <= 1.0:
        raise ValueError("fpir must be in [0, 1]")
    cand = np.unique(np.r_[kd, ud])
    fp = np.searchsorted(np.sort(ud), cand, side="right") / ud.size  # FPIR at each candidate
    ok = np.nonzero(fp <= fpir + 1e-12)[0]
    thr = float(cand[ok[-1]]) if ok.size else float(cand[0]) - 1e-6
    return float(np.mean(kc & is_match(kd, thr))), thr
