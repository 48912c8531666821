"""The 1:N ranking rule as a pure function: hand-built arrays, no store, no index."""

from collections import namedtuple

import numpy as np
import pytest

from facesearch.gallery.search import rank

F = namedtuple("F", "identity source")
FACES = {1: F("ann", "a1"), 2: F("ann", "a2"), 3: F("bob", "b1"), 4: F("cy", "c1"), 5: F("bob", "b2")}


def test_best_face_per_identity_closest_first():
    dist = np.array([[0.10, 0.20, 0.30, 0.40, 0.50]])
    ids = np.array([[2, 1, 5, 4, 3]])
    (ranked,) = rank(dist, ids, FACES, top_k=5, threshold=0.35)
    assert [(m.identity, m.face_id, m.source) for m in ranked] == [("ann", 2, "a2"), ("bob", 5, "b2"),
                                                                   ("cy", 4, "c1")]
    assert [m.distance for m in ranked] == pytest.approx([0.10, 0.30, 0.40])
    assert [m.match for m in ranked] == [True, False, False]  # bob is within it too, but only one is accepted


def test_unsorted_rows_padding_and_removed_faces():
    # not sorted by distance, a -1 padding slot and a face id the store no longer has (99)
    dist = np.array([[0.5, 0.05, 0.3, 0.0, 0.2]])
    ids = np.array([[3, 99, 1, -1, 5]])
    (ranked,) = rank(dist, ids, FACES, top_k=3, threshold=0.25)
    assert [(m.identity, m.face_id) for m in ranked] == [("bob", 5), ("ann", 1)]  # bob's best is face 5
    assert [m.match for m in ranked] == [True, False]


def test_top_k_cuts_and_ties_break_on_face_id():
    dist = np.array([[0.2, 0.2, 0.2]])
    ids = np.array([[4, 3, 1]])
    (ranked,) = rank(dist, ids, FACES, top_k=2, threshold=0.2)
    assert [(m.identity, m.face_id) for m in ranked] == [("ann", 1), ("bob", 3)]
    assert [m.match for m in ranked] == [True, False]  # == threshold is accepted: distance <= threshold


def test_several_queries_and_bad_top_k():
    dist = np.array([[0.1, 0.9], [0.9, 0.1]])
    ids = np.array([[1, 3], [1, 3]])
    first, second = rank(dist, ids, FACES, top_k=1, threshold=0.5)
    assert [m.identity for m in first] == ["ann"] and [m.identity for m in second] == ["bob"]
    assert rank(np.zeros((1, 0)), np.zeros((1, 0), np.int64), FACES, 3, 0.5) == [[]]
    with pytest.raises(ValueError):
        rank(dist, ids, FACES, top_k=0, threshold=0.5)
