"""Metric functions against hand-computed cases (distances: lower = more similar, match when <= threshold)."""

import itertools

import numpy as np
import pytest

from facesearch import metrics
from facesearch.distance import is_match

T, F = True, False


def brute_auc(dist, same):
    """P(genuine distance < impostor distance) + 1/2 P(equal), over every (genuine, impostor) pair."""
    g, i = dist[same], dist[~same]
    return np.mean([1.0 if a < b else 0.5 if a == b else 0.0 for a, b in itertools.product(g, i)])


# --------------------------------------------------------------------------- accuracy / best threshold


def test_accuracy_uses_the_inclusive_match_rule():
    dist = np.array([0.2, 0.5, 0.5, 0.9])
    same = np.array([T, T, F, F])
    assert metrics.accuracy(dist, same, 0.5) == 0.75  # 0.5 <= 0.5 is a match
    assert metrics.accuracy(dist, same, 0.49) == 0.75
    assert metrics.accuracy(dist, same, 0.1) == 0.5


def test_best_threshold_separable_sits_between_the_classes():
    dist = np.array([0.1, 0.2, 0.6, 0.7])
    same = np.array([T, T, F, F])
    thr, acc = metrics.best_threshold(dist, same)
    assert acc == 1.0 and thr == pytest.approx(0.4)


# --------------------------------------------------------------------------- ROC, AUC, EER, TAR@FAR


def test_roc_curve_hand_case_and_reproducible_thresholds():
    dist = np.array([0.1, 0.2, 0.3, 0.4])
    same = np.array([T, F, T, F])
    thr, far, tar = metrics.roc_curve(dist, same)
    assert thr[0] == -np.inf
    np.testing.assert_allclose(thr[1:], [0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(far, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tar, [0, 0.5, 0.5, 1, 1])
    for t, fa, ta in zip(thr[1:], far[1:], tar[1:]):
        m = is_match(dist, t)
        assert m[~same].mean() == fa and m[same].mean() == ta


def test_roc_curve_ties_enter_together():
    dist = np.array([0.3, 0.3, 0.3, 0.5])
    same = np.array([T, F, T, F])
    thr, far, tar = metrics.roc_curve(dist, same)
    np.testing.assert_allclose(far, [0, 0.5, 1])
    np.testing.assert_allclose(tar, [0, 1, 1])


def test_auc_perfectly_separable_is_one_and_reversed_is_zero():
    dist = np.array([0.1, 0.2, 0.3, 0.7, 0.8])
    same = np.array([T, T, T, F, F])
    assert metrics.auc(dist, same) == 1.0
    assert metrics.auc(dist, ~same) == 0.0
    assert metrics.best_threshold(dist, same)[1] == 1.0


def test_auc_hand_cases_with_ties():
    # genuine {0.1, 0.3} vs impostor {0.2, 0.4}: 3 of 4 orderings right
    assert metrics.auc(np.array([0.1, 0.2, 0.3, 0.4]), np.array([T, F, T, F])) == 0.75
    # genuine {0.2, 0.1} vs impostor {0.2, 0.3}: (0.2, 0.2) is a tie worth 1/2 -> 3.5 / 4
    assert metrics.auc(np.array([0.2, 0.1, 0.2, 0.3]), np.array([T, T, F, F])) == 0.875
    # all equal: chance
    assert metrics.auc(np.full(6, 0.4), np.array([T, F, T, F, T, T])) == 0.5


def test_auc_matches_brute_force_and_roc_area():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(4, 60))
        dist = np.round(rng.random(n), 1)  # many ties
        same = rng.random(n) < 0.5
        same[0], same[1] = True, False
        a = metrics.auc(dist, same)
        assert a == pytest.approx(brute_auc(dist, same))
        _, far, tar = metrics.roc_curve(dist, same)
        assert a == pytest.approx(float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2)))


def test_eer_hand_cases():
    # separable: no error at the last genuine distance
    rate, thr = metrics.eer(np.array([0.1, 0.2, 0.3, 0.4]), np.array([T, T, F, F]))
    assert rate == 0.0 and thr == pytest.approx(0.2)
    # reversed: every threshold errs completely at the crossing
    rate, _ = metrics.eer(np.array([0.1, 0.2, 0.3, 0.4]), np.array([F, F, T, T]))
    assert rate == 1.0 or rate == pytest.approx(1.0)
    # exact crossing: at 0.2 FAR = FRR = 1/2
    rate, thr = metrics.eer(np.array([0.1, 0.2, 0.3, 0.4]), np.array([T, F, T, F]))
    assert rate == pytest.approx(0.5) and thr == pytest.approx(0.2)
    # interpolated: genuine {0.1, 0.2, 0.5}, impostor {0.3, 0.4}. At 0.2: FAR 0, FRR 1/3; at 0.3: FAR 1/2,
    # FRR 1/3. FRR - FAR goes 1/3 -> -1/6, crossing 2/3 of the way: FAR = FRR = 1/3 at distance 0.2667.
    rate, thr = metrics.eer(np.array([0.1, 0.2, 0.5, 0.3, 0.4]), np.array([T, T, T, F, F]))
    assert rate == pytest.approx(1 / 3) and thr == pytest.approx(0.2 + 0.1 * 2 / 3)


def test_tar_at_far_hand_case():
    dist = np.array([0.1, 0.2, 0.3, 0.5, 0.25, 0.4, 0.6, 0.7])
    same = np.array([T, T, T, T, F, F, F, F])
    assert metrics.tar_at_far(dist, same, 0.25) == (0.75, pytest.approx(0.3))
    assert metrics.tar_at_far(dist, same, 0.0) == (0.5, pytest.approx(0.2))
    assert metrics.tar_at_far(dist, same, 1.0) == (1.0, pytest.approx(0.7))
    # the returned threshold reproduces the numbers with the one match rule
    tar, thr = metrics.tar_at_far(dist, same, 0.25)
    assert is_match(dist[same], thr).mean() == tar and is_match(dist[~same], thr).mean() <= 0.25


def test_tar_at_far_when_the_closest_pair_is_an_impostor():
    dist = np.array([0.05, 0.2, 0.3])
    same = np.array([F, T, T])
    tar, thr = metrics.tar_at_far(dist, same, 0.0)
    assert tar == 0.0 and thr < 0.05


def test_metrics_reject_one_class_inputs():
    with pytest.raises(ValueError):
        metrics.auc(np.array([0.1, 0.2]), np.array([T, T]))
    with pytest.raises(ValueError):
        metrics.roc_curve(np.array([0.1, 0.2]), np.array([T]))


# --------------------------------------------------------------------------- k-fold protocol


def _own_fold_trap():
    """Fold 0: 5 genuine at 0.5 and 5 impostors at 0.6 (perfect on its own at 0.55). Folds 1 and 2:
    genuine at 0.1/0.2, impostors at 0.3/0.4 (perfect at 0.25). Chosen on folds 1-2 only, fold 0's
    threshold is 0.25 (50% on fold 0); with fold 0 included the best threshold moves to 0.55
    (14 of 20 right, against 13 at 0.25) and fold 0 would score 100%."""
    dist = [0.5] * 5 + [0.6] * 5 + [0.1, 0.2, 0.3, 0.4] * 2
    same = [T] * 5 + [F] * 5 + [T, T, F, F] * 2
    fold = [0] * 10 + [1] * 4 + [2] * 4
    return np.array(dist), np.array(same), np.array(fold)


def test_kfold_never_lets_a_fold_choose_its_own_threshold():
    dist, same, fold = _own_fold_trap()
    # the trap works: a leaky protocol (threshold chosen with fold 0 in) scores fold 0 perfectly
    leaky_thr, _ = metrics.best_threshold(dist, same)
    assert leaky_thr == pytest.approx(0.55)
    assert metrics.accuracy(dist[fold == 0], same[fold == 0], leaky_thr) == 1.0
    r = metrics.kfold_accuracy(dist, same, fold)
    assert r.folds == [0, 1, 2]
    assert r.thresholds[0] == pytest.approx(0.25)
    assert r.accuracies[0] == 0.5


def test_kfold_threshold_of_a_fold_ignores_that_folds_data():
    rng = np.random.default_rng(1)
    n = 400
    same = rng.random(n) < 0.5
    dist = np.where(same, rng.normal(0.3, 0.1, n), rng.normal(0.6, 0.1, n))
    fold = np.repeat(np.arange(10), n // 10)
    base = metrics.kfold_accuracy(dist, same, fold)
    for k in (0, 7):
        d2, s2 = dist.copy(), same.copy()
        sel = fold == k
        d2[sel] = rng.random(sel.sum()) * 2  # scramble fold k completely
        s2[sel] = ~s2[sel]
        r = metrics.kfold_accuracy(d2, s2, fold)
        assert r.thresholds[k] == base.thresholds[k]  # fold k's own data never enters its threshold
        assert any(r.thresholds[j] != base.thresholds[j] for j in range(10) if j != k)


def test_kfold_mean_std_and_each_fold_scored_on_itself():
    dist, same, fold = _own_fold_trap()
    r = metrics.kfold_accuracy(dist, same, fold)
    for k, t, a in zip(r.folds, r.thresholds, r.accuracies):
        assert a == metrics.accuracy(dist[fold == k], same[fold == k], t)
        assert t == metrics.best_threshold(dist[fold != k], same[fold != k])[0]
    assert r.mean == pytest.approx(np.mean(r.accuracies))
    assert r.std == pytest.approx(np.std(r.accuracies))
    with pytest.raises(ValueError):
        metrics.kfold_accuracy(dist, same, np.zeros_like(fold))


# --------------------------------------------------------------------------- identification


def test_rank_k_rate():
    ranked = [["a", "b", "c"], ["b", "a"], ["c", "d", "e", "f", "g", "a"]]
    truth = ["a", "a", "a"]
    assert metrics.rank_k_rate(ranked, truth, 1) == pytest.approx(1 / 3)
    assert metrics.rank_k_rate(ranked, truth, 2) == pytest.approx(2 / 3)
    assert metrics.rank_k_rate(ranked, truth, 5) == pytest.approx(2 / 3)


def test_dir_at_fpir_hand_case():
    known_d = np.array([0.1, 0.2, 0.35, 0.5])
    known_ok = np.array([T, F, T, T])  # the 0.2 probe's best identity is wrong
    unknown_d = np.array([0.3, 0.4, 0.6, 0.7])
    # FPIR 0: largest threshold accepting no unknown probe is 0.2 -> only the 0.1 probe is a correct detection
    assert metrics.dir_at_fpir(known_d, known_ok, unknown_d, 0.0) == (0.25, pytest.approx(0.2))
    # FPIR 1/4: threshold 0.35 (0.3 accepted) -> probes 0.1 and 0.35 correct
    assert metrics.dir_at_fpir(known_d, known_ok, unknown_d, 0.25) == (0.5, pytest.approx(0.35))
    # FPIR 1: everything accepted; DIR is capped by rank-1 correctness
    assert metrics.dir_at_fpir(known_d, known_ok, unknown_d, 1.0)[0] == 0.75
