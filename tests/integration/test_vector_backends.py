"""The vector backends behind ``--vectors``: FAISS (the index file), milvus-lite (an embedded Milvus, in
process) and pgvector (a real PostgreSQL with the extension, from tests/pg.py, on 127.0.0.1).

The same faces enrolled into each give the same results (identities, face ids, distances within float
tolerance); removal and rename work on each; drift between the store and a backend (a crash between the
two writes, or the reverse) is found by ``check_index`` / ``reindex --check`` and removed by ``--repair``.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.conftest import PEOPLE

pytest.importorskip("pymilvus", reason="pymilvus (facesearch[milvus]) is needed for these tests")
pytest.importorskip("milvus_lite", reason="milvus-lite is needed for the embedded Milvus")
pytest.importorskip("pgvector", reason="pgvector (facesearch[pgvector]) is needed for these tests")
pytest.importorskip("psycopg", reason="psycopg (3) is needed for the PostgreSQL tests")

#: distances agree to this (float32 inner products summed in different orders by three engines)
ATOL = 1e-5
SHARED = ("milvus-lite", "pgvector")


def where(kind, tmp_path, pg_url):
    """``(db_url, vectors)`` for a backend kind."""
    if kind == "faiss":
        return None, None
    if kind == "milvus-lite":
        return None, f"milvus-lite://{tmp_path / 'vectors.db'}?collection=gallery"
    return pg_url, "pgvector"


def unit(rng, n, d=128):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---- the indexes themselves ---------------------------------------------------------------------
def test_each_backend_ranks_like_exact_search(tmp_path, pg_url):
    """Hand-made unit vectors, the store's kind of ids (sparse), in FAISS Flat, milvus-lite and pgvector:
    the same neighbours in the same order, the same distances (the one distance, 1 - <a, b>), checked
    against numpy; and after removing some, the same again."""
    from sqlalchemy import create_engine

    from facesearch.index import create
    from facesearch.index.vectors import open_shared, parse
    from facesearch.store import Store

    rng = np.random.default_rng(0)
    x, ids = unit(rng, 400), np.arange(1, 401, dtype=np.int64) * 7
    q = unit(rng, 12)
    Store.open(pg_url).close()  # the migrations make the table and its HNSW index
    engine = create_engine(pg_url)
    indexes = {"faiss": create(128, 0, "Flat", "faiss-cpu"),
               "milvus-lite": open_shared(parse(f"milvus-lite://{tmp_path / 'v.db'}"), 128),
               "pgvector": open_shared(parse("pgvector"), 128, engine)}
    try:
        for idx in indexes.values():
            idx.add(ids, x)
        sims = q @ x.T
        order = np.argsort(-sims, axis=1)[:, :10]
        for name, idx in indexes.items():
            assert idx.ntotal == 400, name
            d, i = idx.search(q, 10)
            assert d.shape == i.shape == (12, 10), name
            assert (i == ids[order]).all(), name
            np.testing.assert_allclose(d, 1 - np.take_along_axis(sims, order, 1), atol=ATOL, err_msg=name)
        gone = ids[order[:, 0]]  # every query's nearest
        for name, idx in indexes.items():
            assert idx.remove(np.concatenate([gone, [99999]])) == len(set(gone.tolist())), name
        keep = ~np.isin(ids, gone)
        order = np.argsort(-(q @ x[keep].T), axis=1)[:, :5]
        for name, idx in indexes.items():
            d, i = idx.search(q, 5)
            assert (i == ids[keep][order]).all(), name
        for name in SHARED:
            assert (indexes[name].ids() == np.sort(ids[keep])).all()
    finally:
        for name in SHARED:
            indexes[name].close()
        engine.dispose()


def test_vectors_urls():
    from facesearch.errors import FaceSearchError
    from facesearch.index.vectors import parse

    assert parse(None).kind == parse("faiss").kind == "faiss"
    m = parse("milvus://milvus.internal:19531/faces_eu")
    assert (m.kind, m.uri, m.collection) == ("milvus", "http://milvus.internal:19531", "faces_eu")
    assert parse("milvus+https://h/c?token=u:p").uri == "https://h:19530" and parse("milvus+https://h/c?token=u:p").token
    assert "u:p" not in parse("milvus+https://h/c?token=u:p").show()
    assert parse("milvus-lite:v.db").uri.endswith("/v.db")
    for bad in ("milvus://h/9bad", "milvus-lite:///tmp/x.sqlite", "redis://h", "milvus:///c"):
        with pytest.raises(FaceSearchError):
            parse(bad)


# ---- galleries ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory, gallery_src):
    g = tmp_path_factory.mktemp("enroll")
    for p in PEOPLE:  # 3 images each enrolled, the 4th a probe
        (g / p).mkdir()
        for f in sorted((gallery_src / p).iterdir())[:3]:
            shutil.copy(f, g / p / f.name)
    return g


def test_the_same_faces_give_the_same_results_on_every_backend(tmp_path, pg_url, model_dir, folder, gallery_src):
    from facesearch.gallery.facade import FaceSearch

    probes = [sorted((gallery_src / p).iterdir())[3] for p in PEOPLE]
    results = {}
    for kind in ("faiss", *SHARED):
        db, vectors = where(kind, tmp_path, pg_url)
        with FaceSearch.open(home=tmp_path / kind, db_url=db, model=model_dir, device="cpu", vectors=vectors) as fs:
            assert fs.index_backend == ("faiss-cpu" if kind == "faiss" else kind)
            rep = fs.enroll_folder(folder)
            assert rep.added == 18 and not rep.failed
            assert fs.index().ntotal == 18
            res = fs.query_many(probes, top_k=4)
            results[kind] = [[(m.identity, m.source.rsplit("/", 1)[-1], m.distance, m.match) for m in r.matches]
                             for r in res]
            if kind != "faiss":
                assert not (tmp_path / kind / "index.fsx").exists()  # nothing written beside the database
                assert fs.check_index()["in_sync"]
    base = results["faiss"]
    assert all(len(r) == 4 for r in base)
    for kind in SHARED:
        got = results[kind]
        assert [[m[:2] for m in r] for r in got] == [[m[:2] for m in r] for r in base], kind
        assert [[m[3] for m in r] for r in got] == [[m[3] for m in r] for r in base], kind
        np.testing.assert_allclose([[m[2] for m in r] for r in got], [[m[2] for m in r] for r in base], atol=ATOL)


@pytest.mark.parametrize("kind", SHARED)
def test_remove_rename_and_drift_on_a_vector_database(kind, tmp_path, pg_url, model_dir, folder, gallery_src):
    from facesearch.gallery.facade import FaceSearch

    db, vectors = where(kind, tmp_path, pg_url)
    probe = sorted((gallery_src / "Tony_Blair").iterdir())[3]
    with FaceSearch.open(home=tmp_path / "h", db_url=db, model=model_dir, device="cpu", vectors=vectors) as fs:
        fs.enroll_folder(folder)
        idx = fs.index()
        # removal: from the store, then from the vectors
        gone = {f.face_id for f in fs.identity_faces("Hugo_Chavez")}
        assert fs.remove_identity("Hugo_Chavez") == 3
        assert idx.ntotal == 15 and not gone & set(idx.ids().tolist())
        assert "Hugo_Chavez" not in {m.identity for m in fs.query(probe, top_k=6).matches}
        one = fs.identity_faces("Bill_Gates")[0].face_id
        assert fs.remove_faces([one, 10**9]) == 1 and one not in set(idx.ids().tolist())
        # rename: ids and vectors stay, the name follows from the store
        before = fs.query(probe, top_k=6)
        fs.rename_identity("Tony_Blair", "Anthony_Blair")
        after = fs.query(probe, top_k=6)
        assert [m.face_id for m in after.matches] == [m.face_id for m in before.matches]
        assert "Anthony_Blair" in {m.identity for m in after.matches} and "Tony_Blair" not in {m.identity for m in after.matches}
        assert fs.check_index()["in_sync"]

        # a crash between the two writes: a face in the store only (store written, backend never)
        some = fs.store.embeddings([int(fs.store.face_ids()[0])])[0]
        ids, _ = fs.store.add_faces(fs.model_id, [("Ghost", "ghost.png", "f" * 64, some, None)])
        # and the reverse: a vector whose face the store does not have (a removal that stopped halfway)
        rng = np.random.default_rng(1)
        idx.add(np.array([10**8], np.int64), unit(rng, 1))
        drift = fs.check_index()
        assert (drift["missing"], drift["extra"], drift["in_sync"]) == (1, 1, False)
        assert drift["examples"] == {"missing": ids, "extra": [10**8], "stale": []}
        assert fs.info()["index"]["drift"] == {"missing": 1, "extra": 1, "stale_in_sample": 0, "in_sync": False}
        fixed = fs.repair_index()
        assert (fixed["added"], fixed["removed"], fixed["rebuilt"]) == (1, 1, False) and fixed["after"]["in_sync"]
        assert set(idx.ids().tolist()) == set(fs.store.face_ids().tolist())
        assert "Ghost" in {m.identity for m in fs.query(probe, top_k=20).matches}  # found once repaired

        # vectors of another model under the right ids (a model switch interrupted before the backend): stale
        victim = int(fs.store.face_ids()[0])
        idx.add(np.array([victim], np.int64), unit(rng, 1))
        drift = fs.check_index()
        assert drift["stale_in_sample"] == 1 and drift["examples"]["stale"] == [victim] and not drift["in_sync"]
        fixed = fs.repair_index()
        assert fixed["rebuilt"] and fixed["after"]["in_sync"]
        np.testing.assert_allclose(idx.vectors([victim])[victim], fs.store.embeddings([victim])[0], atol=1e-6)
        tuned = idx.ef_search  # the rebuild chose it by measured recall (policy.tune_search)
        assert idx.tuning["queries"] == 15 and idx.tuning["efSearch"] == tuned

    # the gallery opened again (another process would be the same): the vectors are there, nothing rebuilt
    with FaceSearch.open(home=tmp_path / "h", db_url=db, model=model_dir, device="cpu", vectors=vectors) as fs2:
        assert fs2.index().ntotal == fs2.store.count_faces() == 15
        assert fs2.index().ef_search == tuned  # kept in the database for every process
        assert fs2.query(probe, top_k=1).matches[0].identity == "Anthony_Blair"


def test_reindex_check_and_repair_on_the_command_line(tmp_path, pg_url, model_dir, folder, monkeypatch):
    from click.testing import CliRunner

    from facesearch.cli import cli
    from facesearch.gallery.facade import FaceSearch

    monkeypatch.setenv("FACESEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FACESEARCH_DB", pg_url)
    monkeypatch.setenv("FACESEARCH_VECTORS", "pgvector")
    monkeypatch.setenv("FACESEARCH_MODEL", str(model_dir))

    def run(*argv):
        return CliRunner().invoke(cli, ["--device", "cpu", *argv], catch_exceptions=False)

    assert run("enroll", str(folder)).exit_code == 0
    r = run("reindex", "--check", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["in_sync"] and json.loads(r.stdout)["backend"] == "pgvector"
    with FaceSearch.open(home=tmp_path / "home", db_url=pg_url, model=model_dir, device="cpu", vectors="pgvector") as fs:
        fs.index().remove(fs.store.face_ids()[:2])  # the backend lost two faces
    r = run("reindex", "--check")
    assert r.exit_code == 1 and "2 missing, 0 extra" in r.output and "DRIFT" in r.output
    r = run("info", "--json")
    assert "note: the vectors in pgvector do not match the store (16 vectors, 18 faces)" in r.stderr
    info = json.loads(r.stdout)["index"]
    assert info["vectors"] == "pgvector" and info["drift"]["missing"] == 2 and info["size"] == 16
    assert "drift:       2 faces not in the vectors" in run("info").output
    r = run("reindex", "--repair")
    assert r.exit_code == 0 and "repaired (added 2, removed 0)" in r.output and "in sync" in r.output
    assert run("reindex", "--check").exit_code == 0
    r = run("reindex", "--json")  # a full rebuild from the store, its ef_search chosen by measured recall
    assert r.exit_code == 0 and json.loads(r.stdout)["faces"] == 18
    with FaceSearch.open(home=tmp_path / "home", db_url=pg_url, model=model_dir, device="cpu", vectors="pgvector") as fs:
        idx = fs.index()
        from facesearch.index.pgvector import EF_NOTE, index_name
        from sqlalchemy import text

        with fs.store.engine.connect() as conn:  # kept where every process finds it
            note = conn.execute(text("SELECT obj_description(to_regclass(:n), 'pg_class')"),
                                {"n": index_name(idx.dim)}).scalar()
        assert note == f"{EF_NOTE}{idx.ef_search}" and idx.ef_search >= 16
    assert run("reindex", "--check", "--repair").exit_code == 2


def test_the_default_needs_neither_pymilvus_nor_pgvector(tmp_path):
    """The FAISS path imports neither (a subprocess, so this session's imports do not count)."""
    import subprocess
    import sys

    code = ("import sys; from facesearch.gallery.facade import FaceSearch; from facesearch import index; "
            "import facesearch.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pymilvus', 'pgvector', 'milvus_lite')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
