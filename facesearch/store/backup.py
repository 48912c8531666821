"""A consistent copy of a SQLite gallery, taken while other processes keep working (``facesearch db backup``)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sqlalchemy.engine import Engine

from facesearch.errors import FaceSearchError
from facesearch.files import remove_orphans, temp_path
from facesearch.store.migrate import current_revision


def backup(engine: Engine, dest: str | os.PathLike) -> dict:
    """Write a consistent copy of the SQLite store ``engine`` opens to ``dest``, which must not exist yet.

    SQLite's online backup copies a snapshot while other processes keep reading and writing
    (copying the file by hand can miss what is still in its write-ahead log). The copy is
    written to a temporary file, checked with ``PRAGMA integrity_check``, made a single
    self-contained file (no WAL), created owner-only, and only then linked to ``dest``: an
    interrupted backup leaves no half-written ``dest``. For PostgreSQL use ``pg_dump``.
    """
    if engine.dialect.name != "sqlite":
        raise FaceSearchError(
            f"backup copies SQLite databases; this one is {engine.dialect.name}: use its own "
            "tools (PostgreSQL: pg_dump)")
    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        raise FaceSearchError(f"{dest} exists; facesearch does not overwrite a backup")
    if not dest.parent.is_dir():
        raise FaceSearchError(f"{dest.parent}: no such directory")
    if current_revision(engine) is None:
        raise FaceSearchError(f"{engine.url.database} holds no facesearch gallery: nothing to back up")
    remove_orphans(dest)  # the temp copies of backups that were killed half-way
    tmp = temp_path(dest)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        counts = _backup_to(engine, tmp, dest)
    except sqlite3.Error as e:
        raise FaceSearchError(f"backup to {dest} failed: {e} (nothing was written there)") from None
    finally:
        for leftover in (tmp, Path(f"{tmp}-journal"), Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            if leftover.exists():
                os.unlink(leftover)
    return {"path": str(dest), "bytes": dest.stat().st_size, **counts}


def _backup_to(engine: Engine, tmp: Path, dest: Path) -> dict:
    raw = engine.raw_connection()
    try:
        target = sqlite3.connect(tmp)
        try:
            raw.driver_connection.backup(target)  # all pages in one step: one snapshot
            target.execute("PRAGMA journal_mode=DELETE")
            check = target.execute("PRAGMA integrity_check").fetchone()[0]
            counts = {"faces": target.execute("SELECT count(*) FROM faces").fetchone()[0],
                      "identities": target.execute("SELECT count(*) FROM identities").fetchone()[0],
                      "schema": target.execute("SELECT version_num FROM alembic_version").fetchone()[0]}
        finally:
            target.close()
    finally:
        raw.close()
    if check != "ok":
        raise FaceSearchError(f"the backup failed SQLite's integrity check: {check}")
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    try:
        os.link(tmp, dest)  # fails rather than replace a file created meanwhile
    except FileExistsError:
        raise FaceSearchError(f"{dest} exists; facesearch does not overwrite a backup") from None
    except OSError:  # a file system without hard links
        if dest.exists():
            raise FaceSearchError(f"{dest} exists; facesearch does not overwrite a backup") from None
        os.replace(tmp, dest)
    return counts
