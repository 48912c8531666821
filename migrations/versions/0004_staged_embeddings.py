"""staged_embeddings: a `reindex --model` writes the new model's embeddings here first

Re-embedding a large gallery takes long (about 1 hour per million faces on 2 CPU cores). Writing each
new embedding over the old one left the gallery mixed, unusable by every other process while it ran and
after an interruption. The new embeddings are now staged beside the faces, the gallery keeps answering
with its model, and the switch is one transaction that copies them in once every face has one.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "staged_embeddings",
        sa.Column("face_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["face_id"], ["faces.id"], name=op.f("fk_staged_embeddings_face_id_faces"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_staged_embeddings_model_id_models"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("face_id", "model_id", name=op.f("pk_staged_embeddings")),
    )


def downgrade() -> None:
    op.drop_table("staged_embeddings")
