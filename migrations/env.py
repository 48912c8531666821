"""Alembic environment for facesearch.

facesearch runs migrations in-process (``facesearch db upgrade``, or automatically when a store
opens) and hands its connection over in ``config.attributes["connection"]``. Run from the command
line (``alembic -x url=sqlite:///path/to/facesearch.db upgrade head``) it makes its own engine.
"""

from alembic import context
from sqlalchemy import create_engine

from facesearch.store import Base
from facesearch.store.schema import OUTSIDE_MODELS

target_metadata = Base.metadata


def _include(obj, name, type_, reflected, compare_to):
    """Leave the backends' own tables (pgvector's face_vectors) out of the models-vs-database check."""
    table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", None)
    return table not in OUTSIDE_MODELS


def _run(connection):
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=_include,
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
