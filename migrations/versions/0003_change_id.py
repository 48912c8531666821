"""index_state.change_id: a random id of the store's last change, stamped into the index file

The revision counter alone cannot tell two databases apart: both start at 0 and count up, so an index
file written for one (two --db URLs sharing one --home, or a database copied into another home) could
be taken for the other and answer queries with the wrong faces. Every change now also writes a new
random id, and an index file is used only when its stamp carries the id of the store's last change.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("index_state") as batch:  # batch: SQLite cannot alter tables in place
        batch.add_column(sa.Column("change_id", sa.String(length=32), nullable=True))
    # each database gets its own id now, so even two that never changed again differ
    op.execute(sa.text("UPDATE index_state SET change_id = :c").bindparams(c=uuid.uuid4().hex))


def downgrade() -> None:
    with op.batch_alter_table("index_state") as batch:
        batch.drop_column("change_id")
