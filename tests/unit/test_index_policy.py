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


def test_ivf_goes_back_to_exact_when_the_gallery_shrinks():
    assert policy.needs_rebuild("IVF1024,Flat", policy.EXACT_MAX)
    assert policy.needs_rebuild("IVF1024,Flat", 10)


def test_ivf_is_retrained_only_when_auto_wants_more_than_four_times_its_lists():
    n = 4_000_000  # auto: about sqrt(n) = 2048 lists, re-ranked
    want = policy.ivf_lists(policy.auto_factory(n))
    assert want == 2048 and policy.is_reranked(policy.auto_factory(n))
    kind = policy.auto_factory(n).partition(",")[2]
    assert not policy.needs_rebuild(f"IVF{want},{kind}", n)
    assert not policy.needs_rebuild(f"IVF{want // 4},{kind}", n)  # 4x: close enough
    assert policy.needs_rebuild(f"IVF{want // 8},{kind}", n)
    assert not policy.needs_rebuild(f"IVF{want * 8},{kind}", n)  # more lists than wanted: kept


def test_auto_scans_codes_and_reranks_above_exact_max_and_old_ivf_flat_galleries_move_to_it():
    assert policy.auto_factory(policy.EXACT_MAX) == "Flat"
    for n in (policy.EXACT_MAX + 1, 200_000, 1_000_000):
        f = policy.auto_factory(n, 128)
        assert policy.is_reranked(f) and ",PQ64x4fs," in f, f
        assert n / policy.ivf_lists(f) >= 128  # lists of at least 128 faces
        assert not policy.needs_rebuild(f, n)
        assert policy.needs_rebuild("IVF2048,Flat", n)  # a gallery built by the older policy: rebuilt as auto
    assert policy.ivf_lists(policy.auto_factory(1_000_000)) == 1024
    assert ",PQ256x4fs," in policy.auto_factory(1_000_000, 512)
    assert policy.auto_factory(1_000_000, 127) == "IVF2048,Flat"  # odd dimensions: no 2-d sub-quantizers


def test_a_reranked_index_is_kept_when_the_gallery_shrinks_until_exact_search_takes_over():
    f = policy.auto_factory(1_000_000)
    assert not policy.needs_rebuild(f, policy.EXACT_MAX + 1)
    assert policy.needs_rebuild(f, policy.EXACT_MAX)


def test_other_types_under_auto_are_rebuilt_as_auto_would_and_torch_never():
    assert policy.needs_rebuild("HNSW32,Flat", 100)
    assert policy.needs_rebuild("SQfp16", 10_000_000)
    for f in vindex.TORCH_FACTORIES:
        assert not policy.needs_rebuild(f, 10_000_000)


def test_the_rule_follows_exact_max_where_it_is_set(monkeypatch):
    monkeypatch.setattr(policy, "EXACT_MAX", 100)
    assert policy.needs_rebuild("Flat", 101)
    assert vindex.auto_factory(101).startswith("IVF")


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
