"""The store's tables as SQLAlchemy ORM models, and the records its queries return.

The schema itself is owned by the Alembic migrations in ``migrations/`` (tests check that these models
and the migrations agree); ``Base.metadata`` is what ``migrations/env.py`` compares against.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from facesearch.names import MAX_IDENTITY_LENGTH

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


#: tables a migration creates that the models here do not describe: ``face_vectors`` (migration 0008, only
#: where pgvector exists) belongs to the pgvector backend (:mod:`facesearch.index.pgvector`), whose column
#: type SQLAlchemy does not know without the pgvector package; ``migrations/env.py`` leaves them out of
#: the comparison of models and database
OUTSIDE_MODELS = frozenset({"face_vectors"})


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


class ApiKey(Base):
    """A key ``facesearch serve`` accepts: only its SHA-256 is kept (migration 0007)."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: the key's first characters, shown by ``keys list`` to tell keys apart (not enough to use one)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(8))
    name: Mapped[str | None] = mapped_column(String(100), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class IndexState(Base):
    """One row: a counter bumped by every change to faces, so stale index files are detected."""

    __tablename__ = "index_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    #: random id of the last change, new with every revision: identifies the content across databases
    change_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    #: the largest face id ever given (SQLite; see :func:`facesearch.store.dialects.reserve_face_ids`)
    last_face_id: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


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
