import numpy as np
import pytest
import torch

from facesearch import distance
from facesearch import index as vindex


def unit(rng, n, d=32):
    return distance.normalize(rng.standard_normal((n, d)).astype(np.float32))


def test_distance_range_and_direction():
    a = np.array([[1.0, 0.0]], np.float32)
    assert distance.paired(a, a)[0] == pytest.approx(0.0)
    assert distance.paired(a, -a)[0] == pytest.approx(2.0)
    assert distance.paired(a, np.array([[0.0, 1.0]], np.float32))[0] == pytest.approx(1.0)


def test_numpy_and_torch_agree():
    rng = np.random.default_rng(0)
    a, b = unit(rng, 5), unit(rng, 7)
    np.testing.assert_allclose(distance.pairwise(a, b), distance.pairwise(torch.from_numpy(a), torch.from_numpy(b)).numpy(),
                               atol=1e-6)
    np.testing.assert_allclose(distance.paired(a, a[::-1]), np.diag(distance.pairwise(a, a[::-1])), atol=1e-6)


def test_euclidean_is_monotone_in_distance():
    rng = np.random.default_rng(1)
    a, b = unit(rng, 50), unit(rng, 50)
    d = distance.paired(a, b)
    np.testing.assert_allclose(distance.to_euclidean(d), np.linalg.norm(a - b, axis=1), atol=1e-5)


def test_match_rule_is_inclusive():
    assert distance.is_match(0.3, 0.3)
    assert not distance.is_match(0.30001, 0.3)


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])  # IVF probing all 16 lists is exact
def test_faiss_search_equals_brute_force(factory):
    rng = np.random.default_rng(2)
    gallery, queries = unit(rng, 500), unit(rng, 20)
    ids = rng.choice(10_000, 500, replace=False).astype(np.int64)
    idx = vindex.create(32, 500, factory, "faiss-cpu")
    if factory.startswith("IVF"):
        idx.train(gallery)
        idx.nprobe = 16
        idx._apply_params()
    idx.add(ids, gallery)
    dist, got = idx.search(queries, 5)
    brute = distance.pairwise(queries, gallery)
    order = np.argsort(brute, axis=1, kind="stable")[:, :5]
    np.testing.assert_allclose(dist, np.take_along_axis(brute, order, 1), atol=1e-5)
    # same ids unless two gallery vectors tie at the cut
    assert (got == ids[order]).mean() > 0.99
