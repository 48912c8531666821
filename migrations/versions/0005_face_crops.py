"""face_crops: the face crops move out of the faces table

A face's row held its aligned crop (about 20 KB as PNG). SQLite rewrites a whole row when any column of
it changes, so the one transaction that switches a gallery to a new model (``reindex --model``) rewrote
every crop: for 20,000 faces 2.0 s and a write-ahead log as large as the database, growing linearly.
Kept in their own table, the crops are not touched by the switch. Upgrading moves them once.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


# SQLite rebuilds a table to drop or add a column (batch mode), and dropping the old ``faces`` table runs
# an implicit DELETE whose ON DELETE CASCADE empties every table that refers to it. So the rows of those
# tables are parked in plain tables (no foreign key) while ``faces`` is rebuilt, then put back. A later
# migration that rebuilds ``faces`` must do the same.
def _park(table: str) -> None:
    op.execute(f"CREATE TABLE parked_{table} AS SELECT * FROM {table}")
    op.execute(f"DELETE FROM {table}")


def _unpark(table: str) -> None:
    op.execute(f"INSERT INTO {table} SELECT * FROM parked_{table}")
    op.execute(f"DROP TABLE parked_{table}")


def upgrade() -> None:
    op.execute("CREATE TABLE parked_face_crops AS SELECT id AS face_id, crop_png FROM faces WHERE crop_png IS NOT NULL")
    _park("staged_embeddings")
    with op.batch_alter_table("faces") as batch:  # batch: SQLite cannot drop a column in place
        batch.drop_column("crop_png")
    op.create_table(
        "face_crops",
        sa.Column("face_id", sa.Integer(), nullable=False),
        sa.Column("crop_png", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["face_id"], ["faces.id"], name=op.f("fk_face_crops_face_id_faces"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("face_id", name=op.f("pk_face_crops")),
    )
    _unpark("face_crops")
    _unpark("staged_embeddings")


def downgrade() -> None:
    _park("face_crops")
    op.execute("CREATE UNIQUE INDEX ix_parked_face_crops_face_id ON parked_face_crops (face_id)")  # for the UPDATE
    _park("staged_embeddings")
    with op.batch_alter_table("faces") as batch:
        batch.add_column(sa.Column("crop_png", sa.LargeBinary(), nullable=True))
    op.execute("UPDATE faces SET crop_png = (SELECT p.crop_png FROM parked_face_crops p WHERE p.face_id = faces.id)")
    op.execute("DROP TABLE parked_face_crops")
    op.drop_table("face_crops")
    _unpark("staged_embeddings")
