"""The index policy and the backend registry on their own: pure rules, no gallery, no GPU."""

import numpy as np
import pytest

from facesearch import index as vindex
from facesearch.index import policy
from facesearch.index.backends import REGISTRY


def test_exact_stays_exact_until_the_gallery_passes_exact_max():
    assert not policy.needs_rebuild("Flat", 0)
    assert not policy.needs_rebuild("Flat", policy.EXACT_MAX)
    assert policy.needs_rebuild("Flat", policy.EXACT_MAX + 1)


def test_approximate_indexes_go_back_to_exact_when_the_gallery_shrinks():
    for f in ("HNSW32,Flat", "IVF1024,Flat"):
        assert policy.needs_rebuild(f, policy.EXACT_MAX)
        assert policy.needs_rebuild(f, 10)


def test_above_exact_max_auto_is_hnsw_which_grows_without_rebuilds():
    assert policy.auto_factory(policy.EXACT_MAX + 1) == policy.APPROX_FACTORY == "HNSW32,Flat"
    for n in (policy.EXACT_MAX + 1, 1_000_000, 50_000_000):
        assert not policy.needs_rebuild("HNSW32,Flat", n)
        assert not policy.needs_rebuild("HNSW64,Flat", n)  # another graph of the same kind: kept


def test_an_ivf_index_auto_built_before_hnsw_is_rebuilt_as_hnsw_once():
    n = 1_000_000
    assert policy.ivf_auto_factory(n) == "IVF2048,Flat"  # what auto built at 1M until HNSW
    assert policy.needs_rebuild("IVF2048,Flat", n)
    assert not policy.needs_rebuild(policy.auto_factory(n), n)


def test_other_types_under_auto_are_rebuilt_as_auto_would_and_torch_never():
    assert policy.needs_rebuild("SQfp16", 10_000_000)
    assert policy.needs_rebuild("Flat", 10_000_000)
    for f in vindex.TORCH_FACTORIES:
        assert not policy.needs_rebuild(f, 10_000_000)


def test_the_rule_follows_exact_max_where_it_is_set(monkeypatch):
    monkeypatch.setattr(policy, "EXACT_MAX", 100)
    assert policy.needs_rebuild("Flat", 101)
    assert vindex.auto_factory(101) == "HNSW32,Flat"


def test_ivf_lists_reads_the_factory_string():
    assert policy.ivf_lists("IVF2048,Flat") == 2048
    assert policy.ivf_lists("IVF256_HNSW32,Flat") == 256
    assert policy.ivf_lists("Flat") is None and policy.ivf_lists("OPQ16,IVF256,PQ16") is None


def test_registry_names_the_three_backends_in_auto_order():
    assert list(REGISTRY) == ["faiss-gpu", "torch-cuda", "faiss-cpu"]
    assert vindex.resolve_backend("faiss-cpu") == "faiss-cpu"
    with pytest.raises(ValueError, match="unknown index backend"):
        vindex.resolve_backend("milvus")


def test_torch_builds_exact_indexes_only_and_faiss_takes_the_rest():
    assert REGISTRY["torch-cuda"].new(8, "IVF64,Flat") is None  # create() then falls back to faiss-cpu
    idx = REGISTRY["faiss-cpu"].new(8, "TorchFlat-float16")  # a torch factory on FAISS: exact search
    assert idx.factory == "Flat" and idx.backend == "faiss-cpu"
    idx.add(np.arange(3), np.eye(3, 8, dtype=np.float32))
    assert idx.search(np.eye(1, 8, dtype=np.float32), 1)[1][0, 0] == 0


def test_a_file_of_the_torch_backend_loads_on_torch_only():
    assert REGISTRY["torch-cuda"].loads_on("torch-cuda") and not REGISTRY["torch-cuda"].loads_on("faiss-cpu")
    assert REGISTRY["faiss-cpu"].loads_on("torch-cuda") and REGISTRY["faiss-gpu"].loads_on("faiss-cpu")
