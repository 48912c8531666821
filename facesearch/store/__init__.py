"""The metadata store: identities, faces (with their embeddings) and models, in any SQLAlchemy database.

The store is the source of truth: it keeps every embedding, so the FAISS index can always be
rebuilt from it. Its schema is owned by the Alembic migrations in ``migrations/``; the store
upgrades a database to the newest schema when it opens one, and refuses a database whose
schema is newer than this version of facesearch.

Every mutation bumps ``index_state.revision`` in the same transaction; an index file stamped
with an older revision is stale and gets rebuilt.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import unicodedata
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    and_,
    create_engine,
    delete,
    event,
    func,
    insert as insert_,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from facesearch.errors import (
    FaceSearchError,
    InvalidIdentityError,
    ModelMismatchError,
    SchemaError,
    UnknownIdentityError,
)

try:
    import fcntl
except ImportError:  # Windows has no flock: SQLite migrations there run unserialised (see _migration_lock)
    fcntl = None

MAX_IDENTITY_LENGTH = 200
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ModelRecord(Base):
    """An encoder that produced embeddings. ``threshold`` is a distance: match when distance <= threshold."""

    __tablename__ = "models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(128), unique=True)  # name@weights-sha256[:12]
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(32))
    embedding_dim: Mapped[int] = mapped_column(Integer)
    distance: Mapped[str] = mapped_column(String(32))
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    weights_sha256: Mapped[str] = mapped_column(String(64))
    preprocessing: Mapped[dict] = mapped_column(JSON)
    config: Mapped[dict] = mapped_column(JSON)
    location: Mapped[str] = mapped_column(String(1024))  # model directory, or "builtin:<name>"
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Identity(Base):
    __tablename__ = "identities"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_IDENTITY_LENGTH), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    faces: Mapped[list["Face"]] = relationship(back_populates="identity", cascade="all, delete-orphan",
                                               passive_deletes=True)


class Face(Base):
    """One enrolled face image. ``id`` is also its id in the FAISS index."""

    __tablename__ = "faces"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    identity_id: Mapped[int] = mapped_column(ForeignKey("identities.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    source: Mapped[str] = mapped_column(String(1024))
    content_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)  # float32, little-endian, embedding_dim values
    #: with --detect: the face's box, score and landmarks in the source photo (facesearch.detect.Face.to_dict)
    #: and faces_in_photo; NULL when the source was an aligned crop
    detection: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)  # None: SQL NULL
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    identity: Mapped[Identity] = relationship(back_populates="faces")


class FaceCrop(Base):
    """The aligned face crop (PNG) a face's embedding came from, kept so that ``reindex --model`` can
    re-embed it. Its own table: a change to a face's row (a model switch) does not rewrite it."""

    __tablename__ = "face_crops"
    face_id: Mapped[int] = mapped_column(ForeignKey("faces.id", ondelete="CASCADE"), primary_key=True)
    crop_png: Mapped[bytes] = mapped_column(LargeBinary)


class StagedEmbedding(Base):
    """A face's embedding by a model the gallery is switching to (``reindex --model``), kept apart until
    every face has one; then copied into ``faces`` in one transaction."""

    __tablename__ = "staged_embeddings"
    face_id: Mapped[int] = mapped_column(ForeignKey("faces.id", ondelete="CASCADE"), primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)


class IndexState(Base):
    """One row: a counter bumped by every change to faces, so stale index files are detected."""

    __tablename__ = "index_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    #: random id of the last change, new with every revision: identifies the content across databases
    change_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    #: the largest face id ever given (SQLite; see :meth:`Store._reserve_face_ids`)
    last_face_id: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


def validate_identity(name: str) -> str:
    """Return ``name`` if it is a safe identity name, else raise InvalidIdentityError."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidIdentityError("identity name is empty")
    if name != name.strip():
        raise InvalidIdentityError(f"identity name {name!r} has leading or trailing spaces")
    if len(name) > MAX_IDENTITY_LENGTH:
        raise InvalidIdentityError(f"identity name longer than {MAX_IDENTITY_LENGTH} characters")
    if "/" in name or "\\" in name:
        raise InvalidIdentityError(f"identity name {name!r} contains a path separator")
    if name in (".", "..") or name.startswith("."):
        raise InvalidIdentityError(f"identity name {name!r} may not start with '.'")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        raise InvalidIdentityError(f"identity name {name!r} contains control characters")
    return name


def _upsert(dialect: str):
    """The INSERT construct with ``on_conflict_do_update`` for this database, or None (not SQLite or
    PostgreSQL)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        return None
    return insert


def nfc_name(name: str) -> str:
    """One form for names that look the same: macOS writes folder names decomposed (e + combining
    accent), keyboards type them composed. New identities are stored in NFC."""
    return unicodedata.normalize("NFC", name) if isinstance(name, str) else name


def _spellings(name: str) -> list[str]:
    """``name``, its NFC form, its NFD form (a gallery from before names were normalised may hold
    either): the first one stored is the identity meant."""
    return list(dict.fromkeys([name, nfc_name(name), unicodedata.normalize("NFD", name)]))


def _find_identity(s: Session, name: str) -> "Identity | None":
    forms = _spellings(name)
    found = {i.name: i for i in s.scalars(select(Identity).where(Identity.name.in_(forms)))}
    return next((found[f] for f in forms if f in found), None)


@dataclass(frozen=True)
class FaceInfo:
    face_id: int
    identity: str
    source: str


@dataclass(frozen=True)
class IdentityInfo:
    name: str
    faces: int
    created_at: dt.datetime


def _sqlite_path(url: str | URL) -> Path | None:
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:" and not u.database.startswith("file:"):
        return Path(u.database)
    return None


@contextmanager
def _migration_lock(db_path: Path | None) -> Iterator[None]:
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


def migrations_dir() -> Path:
    """The Alembic script directory (``migrations/`` of the repo, shipped as ``facesearch._migrations``)."""
    try:
        import facesearch._migrations as m  # installed from a wheel

        return Path(m.__file__).parent
    except ImportError:
        return Path(__file__).resolve().parents[2] / "migrations"


#: the newest revision in migrations/versions (tests/test_store.py checks that it is alembic's head): a
#: database stamped with it opens without importing alembic and reading the scripts (~0.3 s a command)
HEAD_REVISION = "0006"


def alembic_config(connection=None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


class Store:
    """Access to the metadata database. Open with :meth:`Store.open`."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.Session = sessionmaker(engine, expire_on_commit=False)

    # ---- opening and schema -------------------------------------------------------------
    @classmethod
    def open(cls, url: str, upgrade: bool = True) -> "Store":
        """Open the database at ``url``, creating and migrating it as needed. Problems a user can fix
        (a bad URL, a server that does not answer, a file that is not a database, a folder that
        cannot be written) raise :class:`FaceSearchError` saying which database and why."""
        from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

        try:
            shown = make_url(url).render_as_string(hide_password=True)
        except (ArgumentError, ValueError) as e:  # not echoed: the URL may hold a password
            raise FaceSearchError(f"the database URL is not valid ({type(e).__name__}: "
                                  f"{str(e).replace(url, '<url>')[:200]})") from None
        path = _sqlite_path(url)
        try:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                if not path.exists():  # created owner-only; SQLite gives its WAL files the same mode
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            return cls._open(url, upgrade)
        except NoSuchModuleError as e:
            raise FaceSearchError(f"cannot use database {shown}: {e}") from None
        except DBAPIError as e:
            why = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
            if path is not None and path.parent.is_dir() and not os.access(path.parent, os.W_OK):
                why += f" ({path.parent} is not writable: SQLite writes its journal next to the database, even to read)"
            raise FaceSearchError(f"cannot open database {shown}: {why}") from None
        except OSError as e:
            raise FaceSearchError(f"cannot open database {shown}: {e.strerror or e}: {e.filename or path}") from None

    @classmethod
    def _open(cls, url: str, upgrade: bool) -> "Store":
        engine = create_engine(url, future=True)
        if engine.dialect.name == "sqlite":

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn, _record):
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.execute("PRAGMA journal_mode=WAL")
                # face data is biometric: what is removed is overwritten with zeros, not left in free pages
                cur.execute("PRAGMA secure_delete=ON")
                cur.close()

        store = cls(engine)
        try:
            if store.current_revision() != HEAD_REVISION:  # at head: alembic is not even imported
                store.check_schema()
                if upgrade:
                    store.upgrade()
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        self.engine.dispose()

    def current_revision(self) -> str | None:
        """The schema revision stamped in the database (``alembic_version``), None before the first."""
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        if len(rows) > 1:  # facesearch's history is one line; alembic would refuse this too
            raise SchemaError(f"the database has several schema revisions ({', '.join(sorted(rows))})")
        return rows[0] if rows else None

    def head_revision(self) -> str:
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(alembic_config()).get_current_head()

    def check_schema(self) -> None:
        """Refuse a database whose schema this version of facesearch does not know."""
        from alembic.script import ScriptDirectory

        current = self.current_revision()
        if current is None:
            return
        script = ScriptDirectory.from_config(alembic_config())
        known = {rev.revision for rev in script.walk_revisions()}
        if current not in known:
            raise SchemaError(
                f"the database is at schema revision {current}, which this facesearch does not know: "
                "it was written by a newer facesearch. Upgrade facesearch; nothing was changed."
            )

    def upgrade(self, revision: str = "head") -> None:
        from alembic import command

        # two processes opening a new database: one migrates, the other then finds it at head
        with _migration_lock(_sqlite_path(self.engine.url)), self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(7242351)"))
            command.upgrade(alembic_config(conn), revision)

    def downgrade(self, revision: str) -> None:
        from alembic import command

        with _migration_lock(_sqlite_path(self.engine.url)), self.engine.begin() as conn:
            command.downgrade(alembic_config(conn), revision)

    # ---- backup ---------------------------------------------------------------------------
    def backup(self, dest: str | os.PathLike) -> dict:
        """Write a consistent copy of this SQLite store to ``dest``, which must not exist yet.

        SQLite's online backup copies a snapshot while other processes keep reading and writing
        (copying the file by hand can miss what is still in its write-ahead log). The copy is
        written to a temporary file, checked with ``PRAGMA integrity_check``, made a single
        self-contained file (no WAL), created owner-only, and only then linked to ``dest``: an
        interrupted backup leaves no half-written ``dest``. For PostgreSQL use ``pg_dump``.
        """
        import sqlite3

        if self.engine.dialect.name != "sqlite":
            raise FaceSearchError(
                f"backup copies SQLite databases; this one is {self.engine.dialect.name}: use its own "
                "tools (PostgreSQL: pg_dump)")
        dest = Path(dest)
        if dest.exists() or dest.is_symlink():
            raise FaceSearchError(f"{dest} exists; facesearch does not overwrite a backup")
        if not dest.parent.is_dir():
            raise FaceSearchError(f"{dest.parent}: no such directory")
        if self.current_revision() is None:
            raise FaceSearchError(f"{self.engine.url.database} holds no facesearch gallery: nothing to back up")
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            counts = self._backup_to(tmp, dest)
        except sqlite3.Error as e:
            raise FaceSearchError(f"backup to {dest} failed: {e} (nothing was written there)") from None
        finally:
            for leftover in (tmp, Path(f"{tmp}-journal"), Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
                if leftover.exists():
                    os.unlink(leftover)
        return {"path": str(dest), "bytes": dest.stat().st_size, **counts}

    def _backup_to(self, tmp: Path, dest: Path) -> dict:
        import sqlite3

        raw = self.engine.raw_connection()
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

    # ---- revision counter ---------------------------------------------------------------
    def revision(self) -> int:
        with self.Session() as s:
            return int(s.scalar(select(IndexState.revision).where(IndexState.id == 1)) or 0)

    def state(self) -> tuple[int, str]:
        """``(revision, change_id)``: the revision counter and the random id of the change that set it."""
        with self.Session() as s:
            row = s.execute(select(IndexState.revision, IndexState.change_id).where(IndexState.id == 1)).first()
        return (int(row[0] or 0), row[1] or "") if row else (0, "")

    @staticmethod
    def _bump(s: Session) -> int:
        s.execute(update(IndexState).where(IndexState.id == 1)
                  .values(revision=IndexState.revision + 1, change_id=uuid.uuid4().hex))
        return int(s.scalar(select(IndexState.revision).where(IndexState.id == 1)))

    # ---- models -------------------------------------------------------------------------
    def register_model(self, key: str, config: dict, weights_sha256: str, location: str) -> ModelRecord:
        with self.Session.begin() as s:
            rec = s.scalar(select(ModelRecord).where(ModelRecord.key == key))
            if rec is None:
                rec = ModelRecord(
                    key=key, name=config["name"], version=str(config.get("format_version", 1)),
                    embedding_dim=int(config["embedding_dim"]), distance=config["distance"],
                    threshold=config.get("threshold"), weights_sha256=weights_sha256,
                    preprocessing={k: config[k] for k in ("input_size", "crop_fraction", "mean", "std")},
                    config=config, location=location, active=False,
                )
                s.add(rec)
                s.flush()
            return rec

    def active_model(self) -> ModelRecord | None:
        with self.Session() as s:
            return s.scalar(select(ModelRecord).where(ModelRecord.active.is_(True)))

    def set_active_model(self, model_id: int) -> None:
        with self.Session.begin() as s:
            s.execute(update(ModelRecord).values(active=False))
            s.execute(update(ModelRecord).where(ModelRecord.id == model_id).values(active=True))
            self._bump(s)

    # ---- switching models (reindex --model) ------------------------------------------------
    def stage_embeddings(self, model_id: int, updates: Sequence[tuple[int, np.ndarray]],
                         content: dict[int, str] | None = None) -> None:
        """Keep ``(face_id, embedding)`` of model ``model_id`` beside the faces, for :meth:`switch_model`.
        The gallery does not change (no new revision): searches go on with its current embeddings.
        ``content``: face id -> the content SHA-256 the embedding was made from (as :meth:`iter_crops`
        gives it); a face whose id now holds other content is left out."""
        rows = {int(f): np.ascontiguousarray(e, dtype="<f4").tobytes() for f, e in updates}
        with self.Session.begin() as s:
            # a face removed since its crop was read is left out (its row would break the foreign key), and
            # so is a face enrolled since under the same id (SQLite gives a removed last id to the next
            # face); the rows kept are locked against removal until this commits (PostgreSQL; SQLite: write
            # lock)
            q = select(Face.id, Face.content_sha256).where(Face.id.in_(list(rows)))
            if self.engine.dialect.name == "postgresql":
                q = q.with_for_update(key_share=True)
            alive = {fid for fid, sha in s.execute(q) if content is None or content.get(fid) == sha}
            values = [{"face_id": f, "model_id": model_id, "embedding": e} for f, e in rows.items() if f in alive]
            insert = _upsert(self.engine.dialect.name)
            if not values:
                return
            if insert is not None:  # staged again (a rerun, or two runs at once) replaces, never collides
                ins = insert(StagedEmbedding).values(values)
                s.execute(ins.on_conflict_do_update(index_elements=["face_id", "model_id"],
                                                    set_={"embedding": ins.excluded.embedding}))
            else:  # another database: replace by delete and insert
                s.execute(delete(StagedEmbedding).where(StagedEmbedding.model_id == model_id,
                                                        StagedEmbedding.face_id.in_([v["face_id"] for v in values])))
                s.execute(insert_(StagedEmbedding), values)

    def unstage_others(self, model_id: int, own_too: bool = False) -> int:
        """Drop the embeddings staged for any model but ``model_id`` (reindexes given up), and with
        ``own_too`` those staged for it as well; returns how many."""
        with self.Session.begin() as s:
            q = delete(StagedEmbedding)
            return s.execute(q if own_too else q.where(StagedEmbedding.model_id != model_id)).rowcount

    def count_staged(self, model_id: int) -> int:
        with self.Session() as s:
            return int(s.scalar(select(func.count()).select_from(StagedEmbedding)
                                .where(StagedEmbedding.model_id == model_id)))

    def switch_model(self, model_id: int) -> int:
        """Make ``model_id`` the gallery's model in one transaction, if every face is embedded by it or
        has an embedding staged for it: the staged ones replace the faces' embeddings, the staging
        table is emptied. Else nothing changes. Returns how many faces lack one (0: switched).
        Together with the check in :meth:`add_faces` no face of the old model is added after it."""

        class _Left(Exception):
            pass

        staged = select(StagedEmbedding.embedding).where(StagedEmbedding.face_id == Face.id,
                                                         StagedEmbedding.model_id == model_id)
        try:
            with self.Session.begin() as s:
                s.execute(update(ModelRecord).values(active=False))  # takes the write lock first
                s.execute(update(ModelRecord).where(ModelRecord.id == model_id).values(active=True))
                left = int(s.scalar(select(func.count(Face.id)).where(Face.model_id != model_id,
                                                                         ~staged.exists())))
                if left:
                    raise _Left(left)
                s.execute(update(Face).where(staged.exists())
                          .values(embedding=staged.scalar_subquery(), model_id=model_id)
                          .execution_options(synchronize_session=False))
                s.execute(delete(StagedEmbedding))
                self._bump(s)
        except _Left as e:
            return e.args[0]
        return 0

    def model_location(self, model_id: int) -> str | None:
        with self.Session() as s:
            return s.scalar(select(ModelRecord.location).where(ModelRecord.id == model_id))

    def faces_by_model(self) -> list[tuple[ModelRecord, int]]:
        """``(model, number of faces it embedded)`` for each model that embedded any, most first."""
        with self.Session() as s:
            rows = s.execute(select(ModelRecord, func.count(Face.id)).join(Face, Face.model_id == ModelRecord.id)
                             .group_by(ModelRecord.id).order_by(func.count(Face.id).desc())).all()
            return [(m, int(n)) for m, n in rows]

    # ---- faces --------------------------------------------------------------------------
    def known_hashes(self, hashes: Sequence[str]) -> dict[str, str]:
        """Which of these content hashes are enrolled already: sha256 -> identity name."""
        out: dict[str, str] = {}
        hashes = list(set(hashes))
        with self.Session() as s:
            for i in range(0, len(hashes), 500):
                rows = s.execute(
                    select(Face.content_sha256, Identity.name).join(Identity)
                    .where(Face.content_sha256.in_(hashes[i : i + 500]))
                )
                out.update({h: n for h, n in rows})
        return out

    def add_faces(self, model_id: int, faces: Sequence[tuple[str, str, str, np.ndarray, bytes | None]],
                  detections: Sequence[dict | None] | None = None) -> tuple[list[int], int]:
        """Insert faces ``(identity, source, sha256, embedding, crop_png)`` in one transaction;
        ``detections`` (one per face, or None) says where each was found in its source photo.

        Returns the new face ids and the store revision after the insert. All or nothing.
        """
        if detections is None:
            detections = [None] * len(faces)
        elif len(detections) != len(faces):
            raise ValueError("one detection (or None) per face")
        with self.Session.begin() as s:
            names = {f[0] for f in faces}
            stored = dict(s.execute(select(Identity.name, Identity.id)
                                    .where(Identity.name.in_({f for n in names for f in _spellings(n)}))).all())
            # each name -> the identity stored under one of its spellings, else a new one (in NFC)
            ids = {n: next((stored[f] for f in _spellings(n) if f in stored), None) for n in names}
            new = [Identity(name=validate_identity(n)) for n in sorted({nfc_name(n) for n, i in ids.items() if i is None})]
            s.add_all(new)
            s.flush()  # one flush for all new identities (a flush each made 1M-face inserts 3x slower)
            created = {i.name: i.id for i in new}
            ids = {n: i if i is not None else created[nfc_name(n)] for n, i in ids.items()}
            face_ids = self._reserve_face_ids(s, len(faces))
            rows = [
                Face(id=fid, identity_id=ids[name], model_id=model_id, source=source[:1024], content_sha256=sha,
                     embedding=np.ascontiguousarray(emb, dtype="<f4").tobytes(), detection=det)
                for fid, (name, source, sha, emb, crop), det in zip(face_ids, faces, detections)
            ]
            s.add_all(rows)
            s.flush()
            s.add_all([FaceCrop(face_id=r.id, crop_png=f[4]) for r, f in zip(rows, faces) if f[4] is not None])
            s.flush()
            # checked after the writes, holding the write lock (SQLite) or the model row (PostgreSQL):
            # a `reindex --model` that switched models meanwhile makes this batch fail, not mix models
            # lock this batch's own model row by id: a switch that is not committed yet holds it, and
            # once it commits the row is read again (a lock on "the active row" would miss the new one)
            mine = s.execute(select(ModelRecord.active).where(ModelRecord.id == model_id).with_for_update()).scalar()
            active = None if mine else s.execute(
                select(ModelRecord.id, ModelRecord.key).where(ModelRecord.active.is_(True))).first()
            if active is not None:
                raise ModelMismatchError(
                    f"the gallery's model is now {active.key} (a `facesearch reindex --model` switched it "
                    "while these faces were being embedded); nothing of this batch was stored. Run the "
                    "command again: it uses the gallery's new model and skips what is stored.")
            return [r.id for r in rows], self._bump(s)

    def _reserve_face_ids(self, s: Session, n: int) -> list[int | None]:
        """Ids for ``n`` new faces. SQLite would give a new row the largest id present plus one, so the id
        of a removed last face went to the next one enrolled; ids are taken above the largest ever given
        instead (one UPDATE: it takes the write lock, and concurrent writers wait for it). PostgreSQL's
        sequence never repeats an id: None lets it choose."""
        if self.engine.dialect.name != "sqlite" or n == 0:
            return [None] * n
        top = select(func.coalesce(func.max(Face.id), 0)).scalar_subquery()
        s.execute(update(IndexState).where(IndexState.id == 1).values(
            last_face_id=func.max(IndexState.last_face_id, top) + n))
        last = int(s.scalar(select(IndexState.last_face_id).where(IndexState.id == 1)))
        return list(range(last - n + 1, last + 1))

    def iter_embeddings(self, model_id: int | None = None, chunk: int = 50_000
                        ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(ids int64, embeddings float32 n x d)`` chunks, ordered by face id."""
        last = 0
        with self.Session() as s:
            while True:
                q = select(Face.id, Face.embedding).where(Face.id > last).order_by(Face.id).limit(chunk)
                if model_id is not None:
                    q = q.where(Face.model_id == model_id)
                rows = s.execute(q).all()
                if not rows:
                    return
                ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
                embs = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1)
                last = int(ids[-1])
                yield ids, embs.astype(np.float32)

    def embeddings(self, face_ids: Sequence[int]) -> np.ndarray:
        with self.Session() as s:
            rows = dict(s.execute(select(Face.id, Face.embedding).where(Face.id.in_(list(face_ids)))).all())
        return np.stack([np.frombuffer(rows[i], dtype="<f4") for i in face_ids]).astype(np.float32)

    def face_info(self, face_ids: Sequence[int]) -> dict[int, FaceInfo]:
        out: dict[int, FaceInfo] = {}
        face_ids = [int(i) for i in set(face_ids)]
        with self.Session() as s:
            for i in range(0, len(face_ids), 500):
                rows = s.execute(
                    select(Face.id, Identity.name, Face.source).join(Identity)
                    .where(Face.id.in_(face_ids[i : i + 500]))
                )
                out.update({fid: FaceInfo(fid, name, src) for fid, name, src in rows})
        return out

    @staticmethod
    def _pending(model_id: int, own_too: bool, after: int = 0):
        """Faces with no embedding staged for model ``model_id`` and (unless ``own_too``) not embedded
        by it: what a reindex to it has left to do."""
        # "> after" here too: else PostgreSQL's plan reads every staged row on each chunk
        staged = select(StagedEmbedding.face_id).where(StagedEmbedding.face_id == Face.id,
                                                       StagedEmbedding.face_id > after,
                                                       StagedEmbedding.model_id == model_id)
        return ~staged.exists() if own_too else and_(Face.model_id != model_id, ~staged.exists())

    def count_pending(self, model_id: int, own_too: bool = False) -> int:
        """How many faces :meth:`iter_crops` with the same arguments yields."""
        with self.Session() as s:
            return int(s.scalar(select(func.count(Face.id)).where(self._pending(model_id, own_too))))

    def iter_crops(self, chunk: int = 256, pending_for: int | None = None, own_too: bool = False
                   ) -> Iterator[list[tuple[int, str, bytes | None, dict | None, str]]]:
        """Yield lists of ``(face_id, source, crop_png, detection, content_sha256)`` for re-embedding (with
        ``pending_for``: only faces with no embedding staged for that model, and unless ``own_too``,
        not embedded by it either)."""
        last = 0
        while True:
            q = (select(Face.id, Face.source, FaceCrop.crop_png, Face.detection, Face.content_sha256)
                 .outerjoin(FaceCrop, FaceCrop.face_id == Face.id).where(Face.id > last))
            if pending_for is not None:
                q = q.where(self._pending(pending_for, own_too, last))
            # a transaction per chunk, closed before the caller embeds it: one held for a whole pass
            # (an hour per million faces) would make `db upgrade` on PostgreSQL wait that long
            with self.Session() as s:
                rows = s.execute(q.order_by(Face.id).limit(chunk)).all()
            if not rows:
                return
            last = rows[-1][0]
            yield [tuple(r) for r in rows]

    def replace_embeddings(self, model_id: int, updates: Sequence[tuple[int, np.ndarray]]) -> int:
        """Set new embeddings (from model ``model_id``) for existing faces; returns the new revision."""
        with self.Session.begin() as s:
            for fid, emb in updates:
                s.execute(update(Face).where(Face.id == fid).values(
                    embedding=np.ascontiguousarray(emb, dtype="<f4").tobytes(), model_id=model_id))
            return self._bump(s)

    def count_faces(self, model_id: int | None = None) -> int:
        with self.Session() as s:
            q = select(func.count(Face.id))
            if model_id is not None:
                q = q.where(Face.model_id == model_id)
            return int(s.scalar(q))

    def count_identities(self) -> int:
        with self.Session() as s:
            return int(s.scalar(select(func.count(Identity.id))))

    def model_ids_in_use(self) -> set[int]:
        with self.Session() as s:
            return set(s.scalars(select(Face.model_id).distinct()))

    # ---- identities ---------------------------------------------------------------------
    def identities(self) -> list[IdentityInfo]:
        with self.Session() as s:
            rows = s.execute(
                select(Identity.name, func.count(Face.id), Identity.created_at)
                .outerjoin(Face).group_by(Identity.id).order_by(Identity.name)
            )
            return [IdentityInfo(n, int(c), t) for n, c, t in rows]

    def identity_faces(self, name: str) -> list[FaceInfo]:
        with self.Session() as s:
            ident = _find_identity(s, name)
            if ident is None:
                raise UnknownIdentityError(f"no identity named {name!r}")
            return [FaceInfo(f.id, ident.name, f.source) for f in sorted(ident.faces, key=lambda f: f.id)]

    def rename_identity(self, old: str, new: str) -> None:
        new = nfc_name(validate_identity(new))
        try:
            with self.Session.begin() as s:
                ident = _find_identity(s, old)
                if ident is None:
                    raise UnknownIdentityError(f"no identity named {old!r}")
                taken = _find_identity(s, new)
                if taken is not None and taken.id != ident.id:
                    raise InvalidIdentityError(f"an identity named {new!r} exists already")
                ident.name = new
                s.flush()
                self._bump(s)
        except IntegrityError as e:
            raise InvalidIdentityError(f"an identity named {new!r} exists already") from e

    def remove_identity(self, name: str) -> tuple[list[int], int]:
        """Delete an identity and its faces; returns the removed face ids and the new revision."""
        with self.Session.begin() as s:
            ident = _find_identity(s, name)
            if ident is None:
                raise UnknownIdentityError(f"no identity named {name!r}")
            face_ids = list(s.scalars(select(Face.id).where(Face.identity_id == ident.id)))
            s.delete(ident)
            s.flush()
            return face_ids, self._bump(s)

    def remove_faces(self, face_ids: Sequence[int]) -> tuple[list[int], int]:
        with self.Session.begin() as s:
            found = list(s.scalars(select(Face.id).where(Face.id.in_(list(face_ids)))))
            for f in s.scalars(select(Face).where(Face.id.in_(found))):
                s.delete(f)
            s.flush()
            return found, self._bump(s)
