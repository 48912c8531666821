"""Every difference between the databases the store runs on, in one place.

SQLite (the default: one file next to the index) and PostgreSQL are the two the store knows; any other
SQLAlchemy database gets the portable fallbacks. What differs: where a SQLite file is and how it is
created, the pragmas of each SQLite connection, how migrations are serialised between processes (a file
lock next to a SQLite database, an advisory lock on PostgreSQL), the INSERT ... ON CONFLICT construct,
row locks (PostgreSQL's ``FOR KEY SHARE``) and how new face ids are chosen (SQLite would reuse ids).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Select, event, func, select, text, update
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.orm import Session

from facesearch.store.schema import Face, IndexState

try:
    import fcntl
except ImportError:  # Windows has no flock: SQLite migrations there run unserialised (see _file_lock)
    fcntl = None

#: the key of PostgreSQL's transaction-scoped advisory lock that serialises facesearch's migrations
PG_MIGRATION_LOCK = 7242351


def sqlite_path(url: str | URL) -> Path | None:
    """The file of a SQLite database URL; None for any other database, an in-memory one or a ``file:`` URI."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:" and not u.database.startswith("file:"):
        return Path(u.database)
    return None


def create_sqlite_file(path: Path) -> None:
    """Create an empty database file, owner-only (SQLite gives its WAL files the same mode). Its folder
    must exist: a mistyped URL must not leave folders behind (the home folder is made by the gallery)."""
    if not path.parent.is_dir():
        from facesearch.errors import FaceSearchError

        raise FaceSearchError(f"cannot create database {path}: the folder {path.parent} does not exist "
                              "(create it first; facesearch only creates its --home folder)")
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def check_driver(url: str | URL, shown: str) -> None:
    """Refuse a database whose SQLAlchemy driver cannot be loaded, saying which ones facesearch runs on."""
    from sqlalchemy.exc import NoSuchModuleError

    from facesearch.errors import FaceSearchError

    u = make_url(url)
    try:
        u.get_dialect().import_dbapi()  # the dialect class's driver module: what create_engine imports
    except (NoSuchModuleError, ImportError) as e:
        why = f"its driver is not installed ({e})" if isinstance(e, ImportError) else f"unknown database kind ({e})"
        raise FaceSearchError(
            f"cannot use database {shown}: {why}. facesearch runs on SQLite (sqlite:///path/to/file.db) and "
            "PostgreSQL (postgresql+psycopg://user@host/db, pip install 'facesearch[postgres]')") from None


def read_only_url(path: Path | None) -> str | None:
    """A URL that reads the SQLite file at ``path`` without writing anything next to it, for when it
    cannot be opened normally because the disk is full or the folder is read-only (WAL mode needs its
    ``-wal`` and ``-shm`` files, even to read). Only where no other connection has changes in a write-ahead
    log (none there, or empty): ``immutable`` reads the database file alone. None where that does not hold."""
    if path is None or not path.is_file():
        return None
    wal = path.with_name(path.name + "-wal")
    try:
        if wal.exists() and wal.stat().st_size > 0:
            return None
    except OSError:
        return None
    return f"sqlite:///file:{path.resolve()}?mode=ro&immutable=1&uri=true"


def sqlite_open_hint(path: Path | None) -> str:
    """Why a SQLite file may fail to open that the driver's message does not say, or ''."""
    if path is not None and path.parent.is_dir() and not os.access(path.parent, os.W_OK):
        return f" ({path.parent} is not writable: SQLite writes its journal next to the database, even to read)"
    return ""


def configure(engine: Engine) -> None:
    """Set what each new connection needs: for SQLite, foreign keys, a busy timeout, WAL and secure delete."""
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA journal_mode=WAL")
        # face data is biometric: what is removed is overwritten with zeros, not left in free pages
        cur.execute("PRAGMA secure_delete=ON")
        cur.close()


@contextmanager
def _file_lock(db_path: Path | None) -> Iterator[None]:
    """Hold an exclusive OS lock on ``<db>.migrate.lock`` while a SQLite file is migrated.

    SQLite runs Alembic's DDL outside any transaction, so two processes opening a brand-new
    database at once would both see no ``alembic_version`` and both create the schema (one fails
    with "table ... already exists"). PostgreSQL is serialised with an advisory lock instead; an
    in-memory database (``db_path`` None) belongs to one connection and needs no lock.

    The lock file is created owner-only next to the database and left there (removing it would
    reopen the race). ``flock`` locks belong to the open file, so threads of one process are
    serialised too. Where there is no ``fcntl`` (Windows) this lock is a no-op, and so is it where
    the lock file cannot be created because the folder or filesystem is read-only: nobody can
    create the database there either.
    """
    if db_path is None or fcntl is None:
        yield
        return
    lock_path = db_path.with_name(db_path.name + ".migrate.lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks until whoever is migrating has finished
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextmanager
def migration_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction to migrate in, held by one process at a time: of two processes opening a new database
    at once, one migrates and the other then finds it at head. SQLite: the file lock of :func:`_file_lock`;
    PostgreSQL: a transaction-scoped advisory lock."""
    with _file_lock(sqlite_path(engine.url)), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text(f"SELECT pg_advisory_xact_lock({PG_MIGRATION_LOCK})"))
        yield conn


def upsert(dialect: str):
    """The INSERT construct with ``on_conflict_do_update`` for this database, or None (not SQLite or
    PostgreSQL)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        return None
    return insert


def lock_against_removal(q: Select, dialect: str) -> Select:
    """``q`` locking the rows it reads against deletion until the transaction ends: PostgreSQL's ``FOR KEY
    SHARE`` (updates go on); SQLite's write lock, taken by the transaction's first write, covers it."""
    return q.with_for_update(key_share=True) if dialect == "postgresql" else q


def reserve_face_ids(s: Session, dialect: str, n: int) -> list[int | None]:
    """Ids for ``n`` new faces. SQLite would give a new row the largest id present plus one, so the id
    of a removed last face went to the next one enrolled; ids are taken above the largest ever given
    instead (one UPDATE: it takes the write lock, and concurrent writers wait for it). PostgreSQL's
    sequence never repeats an id: None lets it choose."""
    if dialect != "sqlite" or n == 0:
        return [None] * n
    top = select(func.coalesce(func.max(Face.id), 0)).scalar_subquery()
    s.execute(update(IndexState).where(IndexState.id == 1).values(
        last_face_id=func.max(IndexState.last_face_id, top) + n))
    last = int(s.scalar(select(IndexState.last_face_id).where(IndexState.id == 1)))
    return list(range(last - n + 1, last + 1))
