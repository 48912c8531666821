"""The store and the service on a real PostgreSQL server (started by the tests on 127.0.0.1; see tests/pg.py).

Each test gets a fresh, empty database on the one server of the session.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from alembic import command
from sqlalchemy import inspect, text

from facesearch.errors import FaceSearchError, InvalidIdentityError, UnknownIdentityError
from facesearch.store import Base, Store, alembic_config
from tests.conftest import PEOPLE
from tests.unit.test_store import (  # the same tiny model and vectors as the SQLite tests
    add_model,
    check_face_crops_migration,
    check_switch_model,
    emb,
)

psycopg = pytest.importorskip("psycopg", reason="psycopg (3) is needed for the PostgreSQL tests")


@pytest.fixture
def store(pg_url):
    s = Store.open(pg_url)
    yield s
    s.close()


# ---- schema ------------------------------------------------------------------------------------
def test_migrations_build_the_schema_on_postgres(pg_url):
    s = Store.open(pg_url)
    try:
        assert s.engine.dialect.name == "postgresql"
        assert s.current_revision() == s.head_revision()
        with s.engine.begin() as conn:
            command.check(alembic_config(conn))  # raises if models and migrations disagree on PostgreSQL
        assert set(Base.metadata.tables) <= set(inspect(s.engine).get_table_names())
        assert s.revision() == 0

        s.downgrade("base")
        assert s.current_revision() is None
        assert not set(Base.metadata.tables) & set(inspect(s.engine).get_table_names())
        s.upgrade()
        assert s.current_revision() == s.head_revision()
        assert s.revision() == 0
        with s.engine.begin() as conn:
            command.check(alembic_config(conn))
    finally:
        s.close()
    # opening an up-to-date database again changes nothing
    s = Store.open(pg_url)
    try:
        assert s.current_revision() == s.head_revision() and s.revision() == 0
    finally:
        s.close()


# ---- store -------------------------------------------------------------------------------------
def test_models_json_and_active_flag_round_trip(store):
    mid = add_model(store)
    rec = store.active_model()
    assert rec.id == mid and rec.active is True
    assert rec.preprocessing == {"input_size": 112, "crop_fraction": 1.0, "mean": [0, 0, 0], "std": [1, 1, 1]}
    assert rec.config["name"] == "m" and rec.threshold == pytest.approx(0.4)
    other = store.register_model("m@2", dict(rec.config, name="m2"), "1" * 64, "/elsewhere")
    assert other.active is False  # the Boolean default
    assert store.register_model("m@1", rec.config, "0" * 64, "/nowhere").id == mid  # idempotent
    store.set_active_model(other.id)
    assert store.active_model().id == other.id


def test_faces_round_trip_and_revision_bumps(store):
    mid = add_model(store)
    r0 = store.revision()
    crop = bytes(range(256)) * 4  # arbitrary binary, NULs included
    e1, e2 = emb(1, 2, 3, 4), emb(-1, 0.5, 0, 1e-7)
    ids, r1 = store.add_faces(mid, [("a", "1.png", "1" * 64, e1, None), ("b", "2.png", "2" * 64, e2, crop)])
    assert r1 == r0 + 1 == store.revision()
    chunks = list(store.iter_embeddings())
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), ids)
    got = np.concatenate([c[1] for c in chunks])
    assert got.dtype == np.float32 and got.tobytes() == np.stack([e1, e2]).astype("<f4").tobytes()  # bit-exact
    np.testing.assert_array_equal(store.embeddings([ids[1], ids[0]]), np.stack([e2, e1]))
    assert [(i, s, c) for batch in store.iter_crops() for i, s, c, *_ in batch] == [(ids[0], "1.png", None),
                                                                                (ids[1], "2.png", crop)]
    assert store.known_hashes(["1" * 64, "9" * 64]) == {"1" * 64: "a"}
    assert {i.name: i.faces for i in store.identities()} == {"a": 1, "b": 1}
    assert store.count_faces() == store.count_faces(mid) == 2 and store.model_ids_in_use() == {mid}

    more, r2 = store.add_faces(mid, [("a", "3.png", "3" * 64, e2, None)])  # existing identity reused
    assert r2 == r1 + 1 and store.count_identities() == 2
    assert [f.face_id for f in store.identity_faces("a")] == [ids[0], more[0]]

    r3 = store.replace_embeddings(mid, [(ids[0], e2)])
    assert r3 == r2 + 1
    np.testing.assert_array_equal(store.embeddings([ids[0]]), [e2])

    removed, r4 = store.remove_identity("a")  # ON DELETE CASCADE removes a's faces
    assert sorted(removed) == sorted([ids[0], more[0]]) and r4 == r3 + 1
    assert store.count_faces() == 1 and [i.name for i in store.identities()] == ["b"]
    with pytest.raises(UnknownIdentityError):
        store.remove_identity("a")
    found, r5 = store.remove_faces([ids[1], 999999])
    assert found == [ids[1]] and r5 == r4 + 1 and store.count_faces() == 0


def test_a_failed_batch_writes_nothing(store):
    mid = add_model(store)
    store.add_faces(mid, [("a", "1.png", "1" * 64, emb(1, 0, 0, 0), None)])
    rev = store.revision()
    with pytest.raises(Exception):  # the second row repeats a content hash: the whole batch rolls back
        store.add_faces(mid, [("new", "2.png", "2" * 64, emb(0, 1, 0, 0), None),
                              ("new", "3.png", "1" * 64, emb(0, 0, 1, 0), None)])
    assert store.count_faces() == 1 and store.revision() == rev
    assert [i.name for i in store.identities()] == ["a"]
    # the store is still usable after the failed transaction
    _, r = store.add_faces(mid, [("new", "2.png", "2" * 64, emb(0, 1, 0, 0), None)])
    assert r == rev + 1


def test_backup_points_to_pg_dump(store, tmp_path):
    with pytest.raises(FaceSearchError, match="pg_dump"):
        store.backup(tmp_path / "b.db")
    assert not list(tmp_path.iterdir())


NASTY_NAMES = [
    "O'Brien",
    "Robert'); DROP TABLE faces;--",
    "x' OR '1'='1",
    'say "hi"; DELETE FROM identities WHERE 1=1 --',
    "$$; DROP TABLE identities; $$",
    "%s %(name)s ? :name $1 -- psycopg and SQLAlchemy placeholders",
    "E'x41'::bytea; SELECT pg_sleep(10)",
    "José Ramos-Horta",
    "李小龙",
    "x" * 200,
]


def test_identity_names_are_stored_verbatim(store, pg_url):
    mid = add_model(store)
    faces = [(n, f"{i}.png", f"{i:064x}", emb(1, i, 0, 0), None) for i, n in enumerate(NASTY_NAMES)]
    ids, _ = store.add_faces(mid, faces)
    assert sorted(i.name for i in store.identities()) == sorted(NASTY_NAMES)
    info = store.face_info(ids)
    assert [info[i].identity for i in ids] == NASTY_NAMES
    for n in NASTY_NAMES:
        assert [f.identity for f in store.identity_faces(n)] == [n]
    assert set(Base.metadata.tables) <= set(inspect(store.engine).get_table_names())  # nothing was dropped
    # straight from the database, not through the ORM: the text is there exactly as given
    with store.engine.connect() as conn:
        stored = set(conn.scalars(text("SELECT name FROM identities")))
    assert stored == set(NASTY_NAMES)

    store.rename_identity("O'Brien", "O'Brien'; DROP TABLE models;--")
    assert "O'Brien'; DROP TABLE models;--" in {i.name for i in store.identities()}
    with pytest.raises(InvalidIdentityError, match="exists"):  # unique violation on PostgreSQL too
        store.rename_identity("x' OR '1'='1", "李小龙")
    removed, _ = store.remove_identity("Robert'); DROP TABLE faces;--")
    assert removed == [ids[1]]
    assert store.count_identities() == len(NASTY_NAMES) - 1
    assert set(Base.metadata.tables) <= set(inspect(store.engine).get_table_names())
    with pytest.raises(InvalidIdentityError):
        store.add_faces(mid, [("x" * 201, "long.png", "f" * 64, emb(1, 0, 0, 0), None)])


# ---- the service -------------------------------------------------------------------------------
def test_face_search_on_postgres_shared_by_two_handles(pg_url, model_dir, gallery_src, tmp_path):
    from facesearch.gallery.facade import FaceSearch

    g = tmp_path / "g"
    for p in PEOPLE:  # the first 3 images of each person enrolled, the 4th is a probe
        (g / p).mkdir(parents=True)
        for f in sorted((gallery_src / p).iterdir())[:3]:
            shutil.copy(f, g / p / f.name)

    with FaceSearch.open(home=tmp_path / "h1", db_url=pg_url, model=model_dir, device="cpu") as fs1:
        assert fs1.store.engine.dialect.name == "postgresql"
        assert not (tmp_path / "h1" / "facesearch.db").exists()  # the gallery is in PostgreSQL, not SQLite
        rep = fs1.enroll_folder(g)
        assert rep.added == 3 * len(PEOPLE) and not rep.failed and not rep.skipped
        assert rep.identities == set(PEOPLE)
        assert fs1.index().ntotal == fs1.store.count_faces() == rep.added
        assert fs1.enroll_folder(g).added == 0  # idempotent: content hashes are found in PostgreSQL

        exact = g / "Bill_Gates" / "Bill_Gates_0002.webp"
        res = fs1.query(exact, top_k=3)
        assert res.matches[0].identity == "Bill_Gates" and res.matches[0].distance == pytest.approx(0.0, abs=1e-5)
        assert res.identity == "Bill_Gates" and res.matches[0].source.endswith("Bill_Gates_0002.webp")
        probe = gallery_src / "Tony_Blair" / "Tony_Blair_0004.webp"
        res1 = fs1.query(probe, top_k=len(PEOPLE))
        assert {m.identity for m in res1.matches} == set(PEOPLE)

        # a second handle: another home (another index file), the same database
        with FaceSearch.open(home=tmp_path / "h2", db_url=pg_url, model=model_dir, device="cpu") as fs2:
            assert fs2.model_id == fs1.model_id
            assert [(i.name, i.faces) for i in fs2.identities()] == [(p, 3) for p in sorted(PEOPLE)]
            res2 = fs2.query(probe, top_k=len(PEOPLE))  # index built from the embeddings in PostgreSQL
            assert [(m.identity, m.face_id) for m in res2.matches] == [(m.identity, m.face_id) for m in res1.matches]
            assert [m.distance for m in res2.matches] == pytest.approx([m.distance for m in res1.matches], abs=1e-5)
            assert (tmp_path / "h2" / "index.fsx").exists()

            # a removal through one handle is seen by the other (revision bump -> stale index -> rebuild)
            assert fs1.remove_identity("Hugo_Chavez") == 3
            assert "Hugo_Chavez" not in {m.identity for m in fs2.query(probe, top_k=len(PEOPLE)).matches}
            assert fs2.index().ntotal == 3 * (len(PEOPLE) - 1)
            assert fs2.remove_identity("Tony_Blair") == 3
            left = {m.identity for m in fs1.query(probe, top_k=len(PEOPLE)).matches}
            assert left == set(PEOPLE) - {"Hugo_Chavez", "Tony_Blair"}
            assert fs1.index().ntotal == fs2.index().ntotal == fs1.store.count_faces() == 3 * (len(PEOPLE) - 2)
            with pytest.raises(UnknownIdentityError):
                fs2.remove_identity("Hugo_Chavez")

            # and an enrollment through the second handle is seen by the first
            rep2 = fs2.enroll_files("Tony_Blair", [probe])
            assert rep2.added == 1
            hit = fs1.query(probe, top_k=1)
            assert hit.identity == "Tony_Blair" and hit.matches[0].face_id == rep2.face_ids[0]


def test_switch_model_copies_staged_embeddings_only_when_complete(store):
    check_switch_model(store)  # the correlated UPDATE and the cascades, on PostgreSQL


def test_a_batch_of_the_old_model_waiting_on_the_switch_is_refused(pg_url):
    """The race on PostgreSQL: `switch_model` has written but not committed when an enroll of the old
    model stores a batch. The batch waits on the model row, reads it again after the commit, and is
    refused; the gallery ends with one model."""
    import threading
    import time

    from facesearch.errors import ModelMismatchError

    reindexer, enroller = Store.open(pg_url), Store.open(pg_url)
    try:
        old = add_model(reindexer)
        new = reindexer.register_model("m@2", dict(reindexer.active_model().config), "1" * 64, "/x").id
        ids, _ = reindexer.add_faces(old, [("a", "1.png", "1" * 64, emb(1, 0, 0, 0), None)])
        reindexer.stage_embeddings(new, [(ids[0], emb(0, 1, 0, 0))])
        go, real_bump = threading.Event(), Store._bump

        def bump_then_wait(s):  # hold switch_model's transaction open after its writes
            r = real_bump(s)
            go.wait(20)
            return r

        reindexer._bump = bump_then_wait
        switched = []
        t = threading.Thread(target=lambda: switched.append(reindexer.switch_model(new)))
        t.start()
        time.sleep(1.0)
        result = {}

        def enroll():
            try:
                result["ok"] = enroller.add_faces(old, [("b", "2.png", "2" * 64, emb(0, 0, 1, 0), None)])
            except ModelMismatchError as e:
                result["refused"] = str(e)

        e = threading.Thread(target=enroll)
        e.start()
        time.sleep(1.0)
        assert not result  # waiting on the model row
        go.set()
        t.join(20)
        e.join(20)
        assert switched == [0] and "refused" in result, result
        assert [(m.key, n) for m, n in reindexer.faces_by_model()] == [("m@2", 1)]
    finally:
        reindexer.close()
        enroller.close()


def test_face_crops_migration_keeps_crops_and_staged_embeddings(store):
    check_face_crops_migration(store)


def test_reading_crops_for_a_reindex_holds_no_transaction_between_chunks(store, pg_url):
    """A reindex pass reads crops chunk by chunk and embeds each (an hour per million faces on 2 cores).
    Between chunks no transaction may stay open: it would hold a lock that makes a schema change
    (`db upgrade`) or a VACUUM FULL wait until the pass ends."""
    mid = add_model(store)
    store.add_faces(mid, [(f"p{i}", f"{i}.png", f"{i:064d}", emb(1, 0, 0, 0), b"png") for i in range(5)])
    crops = store.iter_crops(chunk=2)
    assert len(next(crops)) == 2  # the caller now embeds this chunk
    other = Store.open(pg_url)
    try:
        with other.engine.begin() as conn:
            conn.execute(text("SET LOCAL lock_timeout = '2s'"))
            conn.execute(text("LOCK TABLE faces IN ACCESS EXCLUSIVE MODE"))  # fails if a reader holds faces
    finally:
        other.close()
    assert sum(len(c) for c in crops) == 3
