import multiprocessing
import os
import stat
import traceback

import numpy as np
import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text

from facesearch.errors import FaceSearchError, InvalidIdentityError, SchemaError, UnknownIdentityError
from facesearch.store import Base, Store, alembic_config, validate_identity


@pytest.fixture
def store(tmp_path):
    (tmp_path / "db").mkdir()
    s = Store.open(f"sqlite:///{tmp_path / 'db' / 'f.db'}")
    yield s
    s.close()


def add_model(store):
    cfg = {"name": "m", "embedding_dim": 4, "distance": "cosine", "threshold": 0.4, "input_size": 112,
           "crop_fraction": 1.0, "mean": [0, 0, 0], "std": [1, 1, 1]}
    rec = store.register_model("m@1", cfg, "0" * 64, "/nowhere")
    store.set_active_model(rec.id)
    return rec.id


def emb(*v):
    a = np.asarray(v, np.float32)
    return a / np.linalg.norm(a)


def test_schema_comes_from_migrations_and_matches_models(store):
    assert store.current_revision() == store.head_revision()
    with store.engine.begin() as conn:
        command.check(alembic_config(conn))  # raises if models and migrations disagree
    tables = set(inspect(store.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables


def test_face_detection_migration_keeps_enrolled_faces(store):
    """0002 adds faces.detection to a gallery enrolled under 0001; the faces, their vectors and crops stay
    (SQLite rebuilds the table to alter it), and going back down drops only the new column."""
    mid = add_model(store)
    store.downgrade("0001")
    assert "detection" not in {c["name"] for c in inspect(store.engine).get_columns("faces")}
    with store.engine.begin() as conn:  # a face enrolled by the 0001 schema
        conn.execute(text("INSERT INTO identities (id, name, created_at) VALUES (1, 'a', '2026-01-01')"))
        conn.execute(text("INSERT INTO faces (id, identity_id, model_id, source, content_sha256, embedding, "
                          "crop_png, created_at) VALUES (7, 1, :m, 'old.png', :sha, :emb, :png, '2026-01-01')"),
                     {"m": mid, "sha": "e" * 64, "emb": emb(1, 0, 0, 0).tobytes(), "png": b"png"})
    store.upgrade()
    assert store.current_revision() == store.head_revision()
    with store.engine.begin() as conn:
        command.check(alembic_config(conn))
    assert [r[:4] for chunk in store.iter_crops() for r in chunk] == [(7, "old.png", b"png", None)]
    det = {"box": [1, 2, 30, 40], "score": 0.9, "landmarks": [[1.5, 2.0]] * 5}
    ids, _ = store.add_faces(mid, [("a", "new.jpg", "f" * 64, emb(0, 1, 0, 0), None),
                                   ("a", "crop.png", "c" * 64, emb(0, 0, 1, 0), None)], [det, None])
    assert [r[:4] for chunk in store.iter_crops() for r in chunk][-2:] == [(ids[0], "new.jpg", None, det),
                                                                       (ids[1], "crop.png", None, None)]
    with store.engine.begin() as conn:  # no detection is SQL NULL, not the JSON text 'null'
        assert conn.execute(text("SELECT id FROM faces WHERE detection IS NULL ORDER BY id")).scalars().all() == [
            7, ids[1]]
    store.downgrade("0001")
    assert store.known_hashes(["e" * 64, "f" * 64, "c" * 64]) == {"e" * 64: "a", "f" * 64: "a", "c" * 64: "a"}
    store.upgrade()
    np.testing.assert_array_equal(store.embeddings([7]), [emb(1, 0, 0, 0)])


def test_every_change_gets_a_new_random_id_and_databases_differ(store, tmp_path):
    """0003: the change id tells two databases (and two revisions) apart, unlike the counter."""
    other = Store.open(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        (r0, c0), (o0, oc0) = store.state(), other.state()
        assert r0 == o0 == 0 and len(c0) == len(oc0) == 32 and c0 != oc0
        mid, omid = add_model(store), add_model(other)
        store.add_faces(mid, [("a", "1.png", "1" * 64, emb(1, 0, 0, 0), None)])
        other.add_faces(omid, [("a", "1.png", "1" * 64, emb(1, 0, 0, 0), None)])
        (r1, c1), (o1, oc1) = store.state(), other.state()
        assert r1 == o1 > r0 and len({c0, c1, oc1}) == 3  # same counter, different ids
        # down to 0002 and up again: the faces stay, and the database gets a fresh id
        store.downgrade("0002")
        assert "change_id" not in {c["name"] for c in inspect(store.engine).get_columns("index_state")}
        store.upgrade()
        r2, c2 = store.state()
        assert r2 == r1 and len(c2) == 32 and c2 != c1 and store.count_faces() == 1
    finally:
        other.close()


def check_switch_model(store):
    """Staged embeddings replace the faces' only when every face has one, in one transaction; until then
    nothing changes (not even the revision). Shared with the PostgreSQL tests."""
    old = add_model(store)
    new = store.register_model("m@2", dict(store.active_model().config), "1" * 64, "/elsewhere").id
    ids, _ = store.add_faces(old, [("a", f"{i}.png", f"{i:064x}", emb(1, i, 0, 0), None) for i in range(3)])
    rev = store.revision()
    store.stage_embeddings(new, [(ids[0], emb(0, 0, 1, 0)), (ids[1], emb(0, 0, 0, 1))])
    store.stage_embeddings(new, [(ids[1], emb(0, 1, 1, 0))])  # staged again: replaced, not added
    assert store.count_staged(new) == 2 and store.revision() == rev
    # a face removed after its crop was read and before its embedding is staged is left out
    gone, _ = store.add_faces(old, [("a", "x.png", "9" * 64, emb(1, 0, 1, 0), None)])
    store.remove_faces(gone)
    rev = store.revision()
    store.stage_embeddings(new, [(gone[0], emb(0, 0, 1, 1))])
    assert store.count_staged(new) == 2
    # what a reindex to a third model left behind is dropped when a reindex to `new` starts
    third = store.register_model("m@3", dict(store.active_model().config), "3" * 64, "/third").id
    store.stage_embeddings(third, [(ids[0], emb(1, 1, 0, 0))])
    assert store.unstage_others(new) == 1 and store.count_staged(third) == 0 and store.count_staged(new) == 2
    assert store.switch_model(new) == 1  # ids[2] has none yet: nothing changes
    assert store.active_model().id == old and store.revision() == rev and store.count_faces(old) == 3
    assert [len(c) for c in store.iter_crops(pending_for=new)] == [1]
    store.stage_embeddings(new, [(ids[2], emb(1, 1, 1, 1))])
    assert store.switch_model(new) == 0
    assert store.active_model().id == new and store.revision() == rev + 1 and store.count_faces(new) == 3
    np.testing.assert_allclose(store.embeddings(ids), [emb(0, 0, 1, 0), emb(0, 1, 1, 0), emb(1, 1, 1, 1)])
    assert store.count_staged(new) == 0
    store.stage_embeddings(old, [(ids[0], emb(1, 0, 0, 0))])
    store.remove_faces([ids[0]])  # a removed face takes its staged embedding with it
    assert store.count_staged(old) == 0


def check_face_crops_migration(store):
    """0005 moves the crops out of ``faces``. Rebuilding ``faces`` (SQLite) must not let its ON DELETE
    CASCADE empty the tables that refer to it: crops and staged embeddings survive up and down."""
    mid = add_model(store)
    store.downgrade("0004")
    with store.engine.begin() as conn:  # a face with a crop and a staged embedding, under 0004
        conn.execute(text("INSERT INTO identities (id, name, created_at) VALUES (1, 'a', '2026-01-01')"))
        conn.execute(text("INSERT INTO faces (id, identity_id, model_id, source, content_sha256, embedding, "
                          "crop_png, created_at) VALUES (7, 1, :m, 'old.png', :sha, :emb, :png, '2026-01-01')"),
                     {"m": mid, "sha": "e" * 64, "emb": emb(1, 0, 0, 0).tobytes(), "png": b"png"})
        conn.execute(text("INSERT INTO staged_embeddings (face_id, model_id, embedding) VALUES (7, :m, :e)"),
                     {"m": mid, "e": emb(0, 1, 0, 0).tobytes()})
    store.upgrade()
    with store.engine.begin() as conn:
        command.check(alembic_config(conn))
    assert [r[:4] for chunk in store.iter_crops() for r in chunk] == [(7, "old.png", b"png", None)]
    assert store.count_staged(mid) == 1
    assert not [t for t in inspect(store.engine).get_table_names() if t.startswith("parked_")]
    store.downgrade("0004")
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT id, crop_png FROM faces")).all() == [(7, b"png")]
        assert conn.execute(text("SELECT face_id FROM staged_embeddings")).all() == [(7,)]
    store.upgrade()
    assert [r[:4] for chunk in store.iter_crops() for r in chunk] == [(7, "old.png", b"png", None)]
    store.remove_faces([7])  # the crop goes with its face
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM face_crops")).scalar() == 0


def test_face_crops_migration_keeps_crops_and_staged_embeddings(store):
    check_face_crops_migration(store)


def test_removed_faces_leave_no_bytes_in_the_database_file(tmp_path):
    """secure_delete: a removed face's crop and embedding are overwritten, not left in free pages (checked
    in the file after a checkpoint has moved everything out of the write-ahead log)."""
    path = tmp_path / "f.db"
    store = Store.open(f"sqlite:///{path}")
    mid = add_model(store)
    rng = np.random.default_rng(0)
    crop, vec = rng.bytes(3000), rng.normal(size=4).astype(np.float32)
    store.add_faces(mid, [("keep", "k.png", "1" * 64, emb(1, 0, 0, 0), b"kept crop")])
    store.add_faces(mid, [("gone", "g.png", "2" * 64, vec, crop)])
    store.remove_identity("gone")
    with store.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    data = path.read_bytes()
    assert b"kept crop" in data and crop not in data and vec.astype("<f4").tobytes() not in data


def test_switch_model_copies_staged_embeddings_only_when_complete(store):
    check_switch_model(store)


def test_names_that_look_the_same_are_one_identity(store):
    """macOS folder names are decomposed (e + U+0301), typed names composed: one person, one identity,
    found under either spelling; a gallery that stored the decomposed form keeps using it."""
    mid = add_model(store)
    nfd, nfc = "Jose\u0301 Ramos", "Jos\u00e9 Ramos"
    store.add_faces(mid, [(nfd, "1.png", "1" * 64, emb(1, 0, 0, 0), None)])
    store.add_faces(mid, [(nfc, "2.png", "2" * 64, emb(0, 1, 0, 0), None)])
    assert [(i.name, i.faces) for i in store.identities()] == [(nfc, 2)]
    assert [f.face_id for f in store.identity_faces(nfd)] == [f.face_id for f in store.identity_faces(nfc)]
    with store.engine.begin() as conn:  # a gallery from before: the decomposed spelling is stored
        conn.execute(text("INSERT INTO identities (name, created_at) VALUES (:n, '2026-01-01')"),
                     {"n": "Rene\u0301"})
    store.add_faces(mid, [("Ren\u00e9", "3.png", "3" * 64, emb(0, 0, 1, 0), None)])
    assert ("Rene\u0301", 1) in [(i.name, i.faces) for i in store.identities()]
    store.add_faces(mid, [("Bob", "4.png", "4" * 64, emb(1, 1, 0, 0), None)])
    with pytest.raises(InvalidIdentityError, match="exists already"):  # René, in the other spelling
        store.rename_identity("Bob", "Ren\u00e9")
    store.remove_identity("Bob")
    store.rename_identity("Ren\u00e9", "Zo\u0065\u0308")  # renamed by its composed spelling, stored composed
    assert "Zo\u00eb" in [i.name for i in store.identities()]
    assert len(store.remove_identity(nfd)[0]) == 2
    assert [i.name for i in store.identities()] == ["Zo\u00eb"]


def test_downgrade_and_upgrade_round_trip(store):
    store.downgrade("base")
    assert store.current_revision() is None
    assert "faces" not in inspect(store.engine).get_table_names()
    store.upgrade()
    assert store.current_revision() == store.head_revision()
    assert store.revision() == 0


def test_database_from_a_newer_schema_is_refused_untouched(tmp_path):
    url = f"sqlite:///{tmp_path / 'f.db'}"
    s = Store.open(url)
    with s.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_future'"))
    s.close()
    with pytest.raises(SchemaError, match="newer facesearch"):
        Store.open(url)
    s = Store(create_engine(url))  # plain engine: no upgrade attempted
    assert s.current_revision() == "ffff_future"  # nothing was changed


def test_staging_leaves_out_a_face_whose_id_holds_other_content(store):
    """stage_embeddings with the content each embedding came from: a face id that now holds other
    content (a database from before migration 0006 reused ids) is not given that embedding."""
    mid = add_model(store)
    ids, _ = store.add_faces(mid, [("a", "1.png", "1" * 64, emb(1, 0, 0, 0), b"png")])
    new = store.register_model("m@2", dict(store.active_model().config), "2" * 64, "/x").id
    store.stage_embeddings(new, [(ids[0], emb(0, 1, 0, 0))], {ids[0]: "9" * 64})
    assert store.count_staged(new) == 0
    store.stage_embeddings(new, [(ids[0], emb(0, 1, 0, 0))], {ids[0]: "1" * 64})
    assert store.count_staged(new) == 1


def test_migration_0006_records_the_largest_face_id(tmp_path):
    url = f"sqlite:///{tmp_path / 'f.db'}"
    s = Store.open(url)
    mid = add_model(s)
    ids, _ = s.add_faces(mid, [(n, f"{n}.png", n * 64, emb(1, 0, 0, 0), None) for n in "abc"])
    s.remove_faces([ids[1]])
    s.downgrade("0005")
    s.upgrade()
    with s.engine.connect() as conn:
        assert conn.execute(text("SELECT last_face_id FROM index_state")).scalar() == ids[2]
    s.remove_faces([ids[2]])  # now the last one: its id is not given again
    more, _ = s.add_faces(mid, [("d", "d.png", "d" * 64, emb(0, 1, 0, 0), None)])
    assert more == [ids[2] + 1]
    s.close()


def test_the_revision_open_takes_for_head_is_alembic_s_head(tmp_path):
    """Store.open skips alembic for a database at HEAD_REVISION: that constant must be the newest
    migration, or a database one migration behind would never be upgraded."""
    from facesearch.store import HEAD_REVISION

    url = f"sqlite:///{tmp_path / 'f.db'}"
    s = Store.open(url)
    assert s.current_revision() == s.head_revision() == HEAD_REVISION
    s.downgrade("0004")
    s.close()
    s = Store.open(url)  # one revision behind: upgraded on open
    assert s.current_revision() == HEAD_REVISION
    s.close()


def test_database_file_is_owner_only(tmp_path):
    Store.open(f"sqlite:///{tmp_path / 'f.db'}").close()
    assert stat.S_IMODE(os.stat(tmp_path / "f.db").st_mode) == 0o600


def test_a_database_url_in_a_missing_folder_is_refused_and_creates_nothing(tmp_path):
    with pytest.raises(FaceSearchError, match=r"the folder .*/no/such does not exist"):
        Store.open(f"sqlite:///{tmp_path / 'no' / 'such' / 'f.db'}")
    assert not (tmp_path / "no").exists()


def test_unknown_database_drivers_are_refused_with_what_works(tmp_path):
    with pytest.raises(FaceSearchError, match=r"mysql://x: its driver is not installed.*SQLite.*PostgreSQL"):
        Store.open("mysql://x")
    with pytest.raises(FaceSearchError, match=r"foo://x: unknown database kind"):
        Store.open("foo://x")


def test_a_database_that_is_not_a_facesearch_one_is_refused_untouched(tmp_path):
    import sqlite3

    path = tmp_path / "app.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE models (id INTEGER)")
        c.execute("CREATE TABLE people (name TEXT)")
    with pytest.raises(SchemaError, match=r"not a facesearch database: it holds tables \(models, people\)"):
        Store.open(f"sqlite:///{path}")
    with sqlite3.connect(path) as c:
        tables = sorted(r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    assert tables == ["models", "people"]


def _open_at_the_barrier(url, barrier, results):
    """Child process: Store.open a database at the same instant as its siblings, report how it went."""
    try:
        barrier.wait(timeout=60)  # Store is imported in every child: from here on they race to open
        s = Store.open(url)
        results.put(("ok", s.current_revision()))
        s.close()
    except BaseException:
        results.put(("error", traceback.format_exc()))


def test_processes_creating_one_new_database_at_once_migrate_it_once(tmp_path):
    n = 6
    db = tmp_path / "db" / "f.db"
    db.parent.mkdir()
    url = f"sqlite:///{db}"
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_open_at_the_barrier, args=(url, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        got = [results.get(timeout=60) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    errors = [detail for status, detail in got if status != "ok"]
    assert not errors, errors[0]
    assert [p.exitcode for p in procs] == [0] * n

    s = Store.open(url)
    try:
        head = s.head_revision()
        assert [detail for _, detail in got] == [head] * n
        with s.engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head]
        mid = add_model(s)
        ids, _ = s.add_faces(mid, [("a", "1.png", "1" * 64, emb(1, 0, 0, 0), None)])
        assert [(i.name, i.faces) for i in s.identities()] == [("a", 1)]
        assert s.face_info(ids)[ids[0]].identity == "a"
        np.testing.assert_allclose(s.embeddings(ids), [emb(1, 0, 0, 0)])
    finally:
        s.close()
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(f"{db}.migrate.lock").st_mode) == 0o600  # the lock file they took turns on


@pytest.mark.parametrize("name", ["", " x", "a/b", "..", "../etc", "a\\b", "tab\there", "nl\n", "\x00x", ".hidden",
                                  "x" * 201])
def test_bad_identity_names_are_rejected(name):
    with pytest.raises(InvalidIdentityError):
        validate_identity(name)


@pytest.mark.parametrize("name", ["Bill_Gates", "José Ramos-Horta", "O'Brien", "Robert'); DROP TABLE faces;--", "李小龙"])
def test_good_identity_names_are_kept_verbatim(store, name):
    mid = add_model(store)
    ids, _ = store.add_faces(mid, [(name, "src.png", "a" * 64, emb(1, 0, 0, 0), None)])
    assert [i.name for i in store.identities()] == [name]
    assert store.face_info(ids)[ids[0]].identity == name
    assert "faces" in inspect(store.engine).get_table_names()


def test_faces_round_trip_and_revision_bumps(store):
    mid = add_model(store)
    r0 = store.revision()
    ids, r1 = store.add_faces(mid, [("a", "1.png", "1" * 64, emb(1, 0, 0, 0), None),
                                    ("b", "2.png", "2" * 64, emb(0, 1, 0, 0), b"png")])
    assert r1 == r0 + 1
    chunks = list(store.iter_embeddings())
    got_ids = np.concatenate([c[0] for c in chunks])
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_allclose(np.concatenate([c[1] for c in chunks]), [emb(1, 0, 0, 0), emb(0, 1, 0, 0)])
    assert store.known_hashes(["1" * 64, "9" * 64]) == {"1" * 64: "a"}
    removed, r2 = store.remove_identity("a")
    assert removed == [ids[0]] and r2 == r1 + 1
    assert store.count_faces() == 1
    with pytest.raises(UnknownIdentityError):
        store.remove_identity("a")


def test_a_failed_batch_writes_nothing(store):
    mid = add_model(store)
    store.add_faces(mid, [("a", "1.png", "1" * 64, emb(1, 0, 0, 0), None)])
    rev = store.revision()
    with pytest.raises(Exception):  # the second row repeats a content hash: the whole batch rolls back
        store.add_faces(mid, [("new", "2.png", "2" * 64, emb(0, 1, 0, 0), None),
                              ("new", "3.png", "1" * 64, emb(0, 0, 1, 0), None)])
    assert store.count_faces() == 1 and store.revision() == rev
    assert [i.name for i in store.identities()] == ["a"]


def test_rename_keeps_faces_and_refuses_duplicates(store):
    mid = add_model(store)
    store.add_faces(mid, [("a", "1.png", "1" * 64, emb(1, 0, 0, 0), None), ("b", "2.png", "2" * 64, emb(0, 1, 0, 0), None)])
    store.rename_identity("a", "c")
    assert {i.name: i.faces for i in store.identities()} == {"b": 1, "c": 1}
    with pytest.raises(InvalidIdentityError, match="exists"):
        store.rename_identity("c", "b")
    with pytest.raises(InvalidIdentityError):
        store.rename_identity("c", "../x")
