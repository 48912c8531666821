"""The metadata store: identities, faces (with their embeddings) and models, in any SQLAlchemy database.

The store is the source of truth: it keeps every embedding, so the FAISS index can always be
rebuilt from it. Its schema is owned by the Alembic migrations in ``migrations/``; the store
upgrades a database to the newest schema when it opens one, and refuses a database whose
schema is newer than this version of facesearch.

Every mutation bumps ``index_state.revision`` in the same transaction; an index file stamped
with an older revision is stale and gets rebuilt.

The parts: :mod:`~facesearch.store.schema` (the tables), :mod:`~facesearch.store.store` (the
:class:`Store`, its queries in ``faces``, ``identities`` and ``models``), ``revision`` (the counter),
:mod:`~facesearch.store.dialects` (every SQLite/PostgreSQL difference), :mod:`~facesearch.store.migrate`
(Alembic) and :mod:`~facesearch.store.backup`. Importing this package does not import alembic.
"""

from facesearch.names import MAX_IDENTITY_LENGTH, nfc_name, validate_identity
from facesearch.store.migrate import HEAD_REVISION, alembic_config, migrations_dir
from facesearch.store.schema import (
    NAMING,
    Base,
    Face,
    FaceCrop,
    FaceInfo,
    Identity,
    IdentityInfo,
    IndexState,
    ModelRecord,
    StagedEmbedding,
    utcnow,
)
from facesearch.store.store import Store

__all__ = [
    "HEAD_REVISION", "MAX_IDENTITY_LENGTH", "NAMING", "Base", "Face", "FaceCrop", "FaceInfo", "Identity",
    "IdentityInfo", "IndexState", "ModelRecord", "StagedEmbedding", "Store", "alembic_config",
    "migrations_dir", "nfc_name", "utcnow", "validate_identity",
]
