"""`facesearch db backup`: a consistent, owner-only copy of a SQLite gallery, usable as a gallery."""

import json
import os
import stat
import threading

import numpy as np
import pytest
from click.testing import CliRunner

from facesearch.cli import cli
from facesearch.errors import FaceSearchError
from facesearch.gallery.facade import DB_FILE, FaceSearch
from facesearch.store import Store
from tests.unit.test_store import add_model
from tests.integration.test_service import gallery_with_holdout


def test_backup_is_a_gallery_of_its_own(fs, gallery_src, model_dir, tmp_path):
    g = gallery_with_holdout(gallery_src, tmp_path / "g", 2)
    rep = fs.enroll_folder(g)
    probe = sorted((gallery_src / "Bill_Gates").iterdir())[-1]
    before = fs.query(probe)
    dest = tmp_path / "backups" / "gallery.db"
    dest.parent.mkdir()
    r = fs.store.backup(dest)
    assert r["faces"] == rep.added and r["identities"] == len(rep.identities) and r["schema"] == fs.store.head_revision()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert sorted(os.listdir(dest.parent)) == ["gallery.db"]  # one file: no WAL, no temp file left
    # a new home with the copy as its database: the index is rebuilt from the stored embeddings
    home = tmp_path / "restored"
    home.mkdir()
    os.link(dest, home / DB_FILE)
    with FaceSearch.open(home=home, model=model_dir, device="cpu", backend="faiss-cpu") as other:
        assert other.store.count_faces() == rep.added
        after = other.query(probe)
    assert [(m.identity, m.face_id) for m in after.matches] == [(m.identity, m.face_id) for m in before.matches]
    np.testing.assert_allclose([m.distance for m in after.matches], [m.distance for m in before.matches], atol=1e-6)


def test_backup_never_overwrites(tmp_path):
    (tmp_path / "db").mkdir()
    store = Store.open(f"sqlite:///{tmp_path / 'db' / 'f.db'}")
    dest = tmp_path / "b.db"
    dest.write_bytes(b"an older backup")
    try:
        with pytest.raises(FaceSearchError, match="exists"):
            store.backup(dest)
        with pytest.raises(FaceSearchError, match="no such directory"):
            store.backup(tmp_path / "missing" / "b.db")
    finally:
        store.close()
    assert dest.read_bytes() == b"an older backup"
    assert sorted(os.listdir(tmp_path)) == ["b.db", "db"]


def test_backup_while_another_connection_writes_is_one_snapshot(tmp_path):
    """Each transaction of the writer adds 3 faces and bumps the revision by one, so a consistent copy
    has exactly 3 faces per revision; a copy taken between the two would not."""
    url = f"sqlite:///{tmp_path / 'live.db'}"
    writer_store, reader_store = Store.open(url), Store.open(url)
    mid = add_model(writer_store)
    base = writer_store.revision()
    stop = threading.Event()
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(3000, 4)).astype(np.float32)

    def write():
        i = 0
        while not stop.is_set() and i < 900:
            writer_store.add_faces(mid, [(f"p{i}", f"f{i}_{k}", f"{i:060d}{k:04d}", vecs[3 * i + k], b"x" * 2000)
                                         for k in range(3)])
            i += 1

    t = threading.Thread(target=write)
    t.start()
    copies = []
    try:
        for n in range(6):
            copies.append(reader_store.backup(tmp_path / f"copy{n}.db"))
    finally:
        stop.set()
        t.join()
    assert len({c["faces"] for c in copies}) > 1  # the writer was running while copies were taken
    for c in copies:
        s = Store.open(f"sqlite:///{c['path']}")
        try:
            assert s.count_faces() == c["faces"] == 3 * (s.revision() - base)
            assert sum(len(chunk[0]) for chunk in s.iter_embeddings()) == c["faces"]
        finally:
            s.close()
    writer_store.close()
    reader_store.close()


def test_cli_backup_json(tmp_path, model_dir, gallery_src):
    home = tmp_path / "home"
    runner = CliRunner()
    args = ["--home", str(home), "--model", str(model_dir), "--device", "cpu"]
    r = runner.invoke(cli, args + ["enroll", "-i", "Bill_Gates", *map(str, sorted((gallery_src / "Bill_Gates").iterdir())[:2])])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, args + ["db", "backup", str(tmp_path / "b.db"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["faces"] == 2 and out["identities"] == 1 and (tmp_path / "b.db").is_file()
    r = runner.invoke(cli, args + ["db", "backup", str(tmp_path / "b.db")])
    assert r.exit_code == 1 and "exists" in r.output and "Traceback" not in r.output


def test_a_failed_backup_leaves_nothing_and_a_missing_gallery_is_not_created(tmp_path):
    """A disk that fills up during the copy (a file size limit, in a child process) gives a one-line
    error and leaves no file behind; `db backup` of a home that does not exist creates no database."""
    import subprocess
    import sys
    import textwrap

    from tests.conftest import REPO

    home = tmp_path / "home"
    home.mkdir()
    store = Store.open(f"sqlite:///{home / DB_FILE}")
    mid = add_model(store)
    rng = np.random.default_rng(0)
    store.add_faces(mid, [(f"p{i}", f"f{i}", f"{i:064x}", rng.normal(size=4).astype("f4"), os.urandom(4000))
                          for i in range(300)])
    store.close()
    out = tmp_path / "out"
    out.mkdir()
    code = textwrap.dedent(f"""
        import resource, signal, sys
        from click.testing import CliRunner
        from facesearch.cli import cli
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, resource.RLIM_INFINITY))
        r = CliRunner().invoke(cli, ["--home", {str(home)!r}, "db", "backup", {str(out / "b.db")!r}])
        print(r.exit_code, r.output.strip())
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.stdout.startswith("1 Error: backup to") and "nothing was written there" in r.stdout, r.stdout + r.stderr
    assert os.listdir(out) == []
    r = CliRunner().invoke(cli, ["--home", str(tmp_path / "typo"), "db", "backup", str(out / "b.db")])
    assert r.exit_code == 1 and "no gallery at" in r.output and not (tmp_path / "typo").exists()
