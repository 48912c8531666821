"""faces.detection: where in the source photo a detected face was (box, score, five landmarks)

Faces enrolled with --detect come from a photo, not from an aligned crop. The detection is kept so that
a face can be aligned again from its source file (``reindex --model`` when no crop was stored) and so
that users can see which face of a group photo was enrolled. NULL for faces given as aligned crops.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("faces") as batch:  # batch: SQLite cannot alter tables in place
        batch.add_column(sa.Column("detection", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("faces") as batch:
        batch.drop_column("detection")
