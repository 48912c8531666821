"""The spilled re-ranked IVF index ``auto`` builds above exact search (``IVF<lists>,PQ<m>x4fs,RFlat,spill2``: each
face's codes in its 2 nearest lists, its exact vector once): what spilling buys, each face answered once,
removal, the file, faces added later, the policy's switch. Real FAISS, small synthetic galleries (seconds)."""

import numpy as np
import pytest

from facesearch import index as vindex
from facesearch.errors import FaceSearchError
from facesearch.index import faiss_index, policy
from facesearch.index.faiss_index import FaissIndex, first_copies, split_spill

faiss = pytest.importorskip("faiss")

D = 32
ONE = "IVF64,PQ16x4fs,RFlat"
TWO = ONE + ",spill2"


def gallery(n=6000, seed=0):
    """Isotropic unit vectors in pairs (a face and a near copy): hard for IVF, as the honest galleries are."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((n // 2, D)).astype(np.float32)
    x = c[np.repeat(np.arange(n // 2), 2)] + 0.6 * rng.standard_normal((n, D)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.arange(n, dtype=np.int64) * 5 + 3, x


def make(factory, ids, x):
    idx = FaissIndex(D, factory)
    idx.train(x)
    idx.add(ids, x)
    return idx


def ivf_entries(idx):
    return int(faiss.extract_index_ivf(idx._refine.base_index).ntotal)


def other_recall(idx, ids, x, rows):
    s = x[rows] @ x.T
    s[np.arange(len(rows)), rows] = -np.inf
    want = ids[s.argmax(1)]
    _, got = idx.search(x[rows], 2)
    found = np.where(got[:, 0] == ids[rows], got[:, 1], got[:, 0])
    return float(np.mean(found == want))


def test_the_suffix_is_read_and_only_a_reranked_ivf_takes_it():
    assert split_spill(TWO) == (ONE, 2) and split_spill(ONE) == (ONE, 1) and split_spill("Flat") == ("Flat", 1)
    with pytest.raises(ValueError, match="re-ranked IVF"):
        FaissIndex(D, "IVF64,Flat,spill2")
    with pytest.raises(FaceSearchError, match="re-ranked IVF"):
        policy.check_factory("HNSW32,Flat,spill2", D)
    policy.check_factory(TWO, D)  # accepted


def test_each_face_is_in_two_lists_and_the_same_lists_find_more():
    ids, x = gallery()
    one, two = make(ONE, ids, x), make(TWO, ids, x)
    assert ivf_entries(one) == len(ids) and ivf_entries(two) == 2 * len(ids)
    assert one.ntotal == two.ntotal == len(ids)
    rows = np.random.default_rng(5).choice(len(ids), 600, replace=False)
    for idx in (one, two):
        idx.set_nprobe(2)
        idx.set_refine_candidates(64)
    r1, r2 = other_recall(one, ids, x, rows), other_recall(two, ids, x, rows)
    assert r2 > r1 + 0.05, (r1, r2)  # what spilling is for; equal recall would fail


def test_a_face_is_answered_once_with_exact_distances():
    ids, x = gallery(seed=1)
    idx = make(TWO, ids, x)
    idx.set_nprobe(16)
    dist, got = idx.search(x[:50], 10)
    assert all(len(set(r)) == 10 for r in got.tolist())  # no face twice, though each is in two lists
    want = 1.0 - np.einsum("qd,qkd->qk", x[:50], x[(got - 3) // 5])
    assert np.allclose(dist, np.clip(want, 0, 2), atol=1e-5)
    assert (np.diff(dist, axis=1) >= -1e-6).all()


def test_first_copies_keeps_the_best_copy_in_rank_order():
    sims = np.array([[0.9, 0.9, 0.8, 0.7, 0.7, 0.1]], np.float32)
    ids = np.array([[4, 4, 2, 9, 2, 9]])
    s, i = first_copies(sims, ids, 3)
    assert i.tolist() == [[4, 2, 9]] and s[0].tolist() == pytest.approx([0.9, 0.8, 0.7])
    s, i = first_copies(sims, ids, 4)  # only 3 distinct faces: the row ends in -1
    assert i.tolist() == [[4, 2, 9, -1]] and s[0, 3] == -np.inf


def test_removed_faces_stay_out_through_both_lists_and_the_file():
    ids, x = gallery(3000, seed=2)
    idx = vindex.build(D, [(ids, x)], len(ids), TWO, "faiss-cpu")
    gone = ids[:30]
    assert idx.remove(gone) == len(gone) and idx.ntotal == len(ids) - len(gone)
    _, got = idx.search(x[:30], 10)
    assert not np.isin(got, gone).any() and (got >= 0).all()
    loaded = FaissIndex.from_bytes(idx.to_bytes(), vindex.Stamp("m", 1, idx.ntotal, D, TWO, "faiss-cpu"))
    assert loaded.spill == 2 and loaded.removed == len(gone)
    assert (loaded.nprobe, loaded.refine_candidates) == (idx.nprobe, idx.refine_candidates)
    d0, g0 = idx.search(x[30:60], 10)
    d1, g1 = loaded.search(x[30:60], 10)
    assert (g0 == g1).all() and np.allclose(d0, d1)
    # a face added after loading goes into two lists too, and is found
    before = ivf_entries(loaded)
    loaded.add(np.array([10**9]), x[:1])
    assert ivf_entries(loaded) == before + 2 and loaded.ntotal == idx.ntotal + 1
    _, got = loaded.search(x[:1], 3)
    assert got[0, 0] == 10**9 and not np.isin(got, gone).any()


def test_tuning_at_build_meets_the_target_on_other_faces():
    ids, x = gallery(8000, seed=3)
    idx = vindex.build(D, [(ids[:4000], x[:4000]), (ids[4000:], x[4000:])], len(ids), TWO, "faiss-cpu")
    t = idx.tuning
    assert t["lower_bound_by_nprobe"][t["nprobe"]] >= policy.TARGET_RECALL and idx.nprobe == t["nprobe"]
    assert t["queries"] == len(ids)  # fewer faces than RERANK_TUNE_QUERIES: every one asked
    rows = np.random.default_rng(77).choice(len(ids), 800, replace=False)
    assert other_recall(idx, ids, x, rows) >= policy.TARGET_RECALL - 0.01
    idx.set_nprobe(1)
    assert other_recall(idx, ids, x, rows) < policy.TARGET_RECALL - 0.05  # the test can tell a narrower search


def test_auto_spills_above_exact_search_and_older_reranked_galleries_are_rebuilt_as_it():
    for n in (policy.EXACT_MAX + 1, 1_000_000):
        f = policy.auto_factory(n, 128)
        assert split_spill(f)[1] == policy.AUTO_SPILL == 2 and policy.is_reranked(f), f
        assert not policy.needs_rebuild(f, n)
        assert policy.needs_rebuild(split_spill(f)[0], n)  # each face in one list: the previous auto's index
    assert policy.auto_factory(1_000_000) == "IVF1024,PQ64x4fs,RFlat,spill2"
    assert policy.needs_rebuild(policy.auto_factory(1_000_000), policy.EXACT_MAX)  # exact search again
    assert policy.auto_factory(1_000_000, 127) == "IVF2048,Flat"


def test_the_exact_answers_of_tuning_skip_each_query_by_position(monkeypatch):
    """The tuning's ground truth drops a query's own face by position; ids are not positions here."""
    ids, x = gallery(3000, seed=4)
    x[11] = x[10]  # a duplicate face: its nearest other face is at similarity 1, found despite the self-skip
    idx = vindex.build(D, [(ids[:1000], x[:1000]), (ids[1000:], x[1000:])], len(ids), "Flat", "faiss-cpu")
    monkeypatch.setattr(policy, "faiss_nlist", lambda index: 1)
    t = policy.tune_search(idx, [(ids[:1000], x[:1000]), (ids[1000:], x[1000:])], queries=3000)
    assert t["recall_at_1_by_nprobe"][1] == 1.0  # exact search agrees with the exact answers, every one
