"""Grouping embeddings by the one distance, and the pairwise scores that measure it."""

import numpy as np
import pytest

from facesearch.gallery.cluster import group, pairwise_scores


def _people(n_people=4, per=5, spread=0.15, seed=0, dim=32):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_people, dim))
    x = np.repeat(centres, per, axis=0) + spread * rng.normal(size=(n_people * per, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), [f"p{i // per}" for i in range(n_people * per)]


def test_separated_people_are_grouped_exactly():
    x, truth = _people()
    groups = group(x, 0.5)
    assert sorted(sorted(truth[i] for i in g) for g in groups) == sorted([[f"p{k}"] * 5 for k in range(4)])
    s = pairwise_scores(groups, truth)
    assert s["pairwise_precision"] == s["pairwise_recall"] == 1.0 and s["clusters"] == 4 and s["singletons"] == 0


def test_the_threshold_is_a_cosine_distance_cut():
    a = np.array([[1.0, 0.0], [np.cos(0.5), np.sin(0.5)]], np.float32)  # distance 1 - cos(0.5) = 0.1224
    assert group(a, 0.13) == [[0, 1]]
    assert group(a, 0.12) == [[0], [1]]


def test_edge_sizes_and_scores_of_bad_groupings():
    assert group(np.zeros((0, 4), np.float32), 0.5) == [] and group(np.ones((1, 4), np.float32) / 2, 0.5) == [[0]]
    truth = ["a", "a", "b", "b"]
    alone = pairwise_scores([[0], [1], [2], [3]], truth)
    assert alone["pairwise_recall"] == 0.0 and alone["singletons"] == 4
    one = pairwise_scores([[0, 1, 2, 3]], truth)
    assert one["pairwise_recall"] == 1.0 and one["pairwise_precision"] == pytest.approx(2 / 6)
