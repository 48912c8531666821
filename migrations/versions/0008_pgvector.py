"""face_vectors: a gallery's vectors in its own PostgreSQL database, where pgvector is installed

For ``--vectors pgvector`` (facesearch/index/pgvector.py): the extension, the table ``face_vectors``
(face_id = the store's face id, ``embedding vector`` of no fixed size) and an HNSW index (inner product)
for the built-in models' 128-d embeddings; the backend adds one for another size when a model needs it.
Acts only on PostgreSQL and only where the server offers the extension; elsewhere (SQLite, a server
without pgvector) it changes nothing, and ``--vectors pgvector`` says what is missing. The store's
``faces.embedding`` stays the source of truth: this table is rebuilt from it (``facesearch reindex``).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

DIM = 128  # the built-in models' embedding size


def _has_extension(conn) -> bool:
    return conn.execute(sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")).first() is not None


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql" or not _has_extension(conn):
        return
    # CREATE EXTENSION needs a role allowed to (pgvector is a trusted extension from PostgreSQL 13: a
    # database owner may); where it is refused, the migration still completes, without the table
    with conn.begin_nested() as sp:
        try:
            conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
        except sa.exc.DBAPIError:
            sp.rollback()
            return
    conn.execute(sa.text("CREATE TABLE IF NOT EXISTS face_vectors (face_id BIGINT PRIMARY KEY, "
                         "embedding vector NOT NULL)"))
    conn.execute(sa.text(f"CREATE INDEX IF NOT EXISTS ix_face_vectors_hnsw_{DIM} ON face_vectors USING hnsw "
                         f"((embedding::vector({DIM})) vector_ip_ops) WITH (m = 16, ef_construction = 64) "
                         f"WHERE vector_dims(embedding) = {DIM}"))


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    conn.execute(sa.text("DROP TABLE IF EXISTS face_vectors"))  # the extension stays: others may use it
