"""index_state.last_face_id: face ids are never given twice (SQLite)

SQLite gives a new row the largest id in the table plus one, so removing the face with the largest id and
enrolling another gave the newcomer the removed face's id. A face id is also its vector's id in the index
and what query results, `identities show` and `remove_faces` name: a script that kept an id could remove
or report another person's face. The store now reserves ids above the largest ever given, recorded here.
PostgreSQL's sequence never gives an id twice and is left as it is.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("index_state") as batch:  # a one-row table: SQLite's rebuild costs nothing
        batch.add_column(sa.Column("last_face_id", sa.Integer(), nullable=False, server_default="0"))
    # ids given before (and since removed) cannot be known any more; the largest one still present is
    op.execute(sa.text("UPDATE index_state SET last_face_id = (SELECT coalesce(max(id), 0) FROM faces)"))


def downgrade() -> None:
    with op.batch_alter_table("index_state") as batch:
        batch.drop_column("last_face_id")
