"""Alembic environment for facesearch.

facesearch runs migrations in-process (``facesearch db upgrade``, or automatically when a store
opens) and hands its connection over in ``config.attributes["connection"]``. Run from the command
line (``alembic -x url=sqlite:///path/to/facesearch.db upgrade head``) it makes its own engine.
"""

from alembic import context
from sqlalchemy import create_engine

from facesearch.store import Base

target_metadata = Base.metadata


def _run(connection):
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if context.is_offline_mode():
    context.configure(url=context.get_x_argument(as_dictionary=True).get("url"), target_metadata=target_metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option("sqlalchemy.url")
    engine = create_engine(url)
    with engine.begin() as conn:
        _run(conn)
