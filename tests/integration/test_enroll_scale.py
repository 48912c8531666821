"""Enrolling at scale: ``enroll --workers N`` (worker processes read, decode, embed and store), and two
enrolling processes at once into one PostgreSQL + pgvector gallery (a real server from tests/pg.py, real
``facesearch enroll`` processes): every face is there exactly once, in the store and in the vectors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import PEOPLE

pytest.importorskip("pgvector", reason="pgvector (facesearch[pgvector]) is needed for these tests")
pytest.importorskip("psycopg", reason="psycopg (3) is needed for the PostgreSQL tests")


def test_two_processes_enroll_one_postgres_gallery_at_once(tmp_path, pg_server, model_dir, gallery_src):
    """The same 24 files enrolled by two processes started together (one of them with two workers): 24
    faces, each once, each with its vector; what one process stored the other reports as skipped."""
    from facesearch.gallery.facade import FaceSearch

    url = pg_server.url(pg_server.create_database())
    FaceSearch.open(home=tmp_path / "h0", db_url=url, model=model_dir, device="cpu", vectors="pgvector").close()
    env = dict(os.environ, FACESEARCH_DB=url, FACESEARCH_VECTORS="pgvector", FACESEARCH_MODEL=str(model_dir),
               OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "facesearch", "--home", str(tmp_path / f"h{i}"), "--device", "cpu",
                               "enroll", *extra, str(gallery_src), "--json"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for i, extra in ((1, ["--workers", "2"]), (2, []))]
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=150)
        assert p.returncode == 0, err[-3000:]
        reports.append(json.loads(out))
    n = 4 * len(PEOPLE)
    assert sum(r["added"] for r in reports) == n and sum(r["skipped"] for r in reports) == n
    assert all(r["failed"] == 0 for r in reports)
    ids = sorted(reports[0]["face_ids"] + reports[1]["face_ids"])
    assert len(set(ids)) == n
    with FaceSearch.open(home=tmp_path / "h0", db_url=url, model=model_dir, device="cpu", vectors="pgvector") as fs:
        assert fs.store.count_faces() == n and fs.store.face_ids().tolist() == ids
        assert fs.index().ids().tolist() == ids  # every face's vector once (face_id is the table's key)
        check = fs.check_index()
        assert check["in_sync"] and check["stale_in_sample"] == 0
        assert [(i.name, i.faces) for i in fs.identities()] == [(p, 4) for p in sorted(PEOPLE)]
    pg_server.drop_database(url.rsplit("/", 1)[1])


def test_workers_enroll_into_the_default_gallery(tmp_path, model_dir, gallery_src):
    """--workers on the SQLite + FAISS file gallery: the workers store, the parent builds the index once; the
    same faces and embeddings as one process gives."""
    from facesearch.gallery.facade import FaceSearch

    with FaceSearch.open(home=tmp_path / "one", model=model_dir, device="cpu") as one:
        r1 = one.enroll_folder(gallery_src)
        e1 = {f.source: one.store.embeddings([f.face_id])[0] for f in one.faces()}
    with FaceSearch.open(home=tmp_path / "two", model=model_dir, device="cpu") as two:
        r2 = two.enroll_folder(gallery_src, workers=2)
        assert (r2.added, len(r2.failed), r2.identities) == (r1.added, 0, r1.identities)
        assert two.index().ntotal == r2.added == 4 * len(PEOPLE)
        e2 = {f.source: two.store.embeddings([f.face_id])[0] for f in two.faces()}
        assert e1.keys() == e2.keys()
        assert max(float(np.abs(e1[k] - e2[k]).max()) for k in e1) < 1e-4  # the same model, other threads
        assert two.check_index()["in_sync"]
