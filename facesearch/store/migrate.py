"""Schema migrations: where the Alembic scripts are, which revision a database is at, upgrading it.

Alembic is imported only when a migration runs or a revision is looked up in the scripts: a database
already at :data:`HEAD_REVISION` opens without it (it and the scripts cost ~0.3 s a command).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

from facesearch.errors import SchemaError
from facesearch.store.dialects import migration_transaction

#: the newest revision in migrations/versions (tests/test_store.py checks that it is alembic's head): a
#: database stamped with it opens without importing alembic and reading the scripts (~0.3 s a command)
HEAD_REVISION = "0008"


def migrations_dir() -> Path:
    """The Alembic script directory (``migrations/`` of the repo, shipped as ``facesearch._migrations``)."""
    try:
        import facesearch._migrations as m  # installed from a wheel

        return Path(m.__file__).parent
    except ImportError:
        return Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(connection=None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def current_revision(engine: Engine) -> str | None:
    """The schema revision stamped in the database (``alembic_version``), None before the first."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(rows) > 1:  # facesearch's history is one line; alembic would refuse this too
        raise SchemaError(f"the database has several schema revisions ({', '.join(sorted(rows))})")
    return rows[0] if rows else None


def refuse_foreign(conn) -> None:
    """Refuse to migrate a database that holds tables but no facesearch schema revision: it is some other
    application's (a new database has no tables; SQLite's own ``sqlite_*`` aside). Run under the
    migration lock, where another process's half-made schema cannot be seen."""
    insp = inspect(conn)
    if insp.has_table("alembic_version") and conn.execute(text("SELECT count(*) FROM alembic_version")).scalar():
        return
    foreign = sorted(t for t in insp.get_table_names() if not t.startswith("sqlite_") and t != "alembic_version")
    if foreign:
        raise SchemaError(
            f"the database is not a facesearch database: it holds tables ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}) but no facesearch schema revision (alembic_version) "
            "stamped. Nothing was changed; give facesearch an empty database or one it created.")


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def check_schema(engine: Engine) -> None:
    """Refuse a database whose schema this version of facesearch does not know."""
    from alembic.script import ScriptDirectory

    current = current_revision(engine)
    if current is None:
        return  # new, or not facesearch's: upgrade() tells them apart under the migration lock
    script = ScriptDirectory.from_config(alembic_config())
    known = {rev.revision for rev in script.walk_revisions()}
    if current not in known:
        raise SchemaError(
            f"the database is at schema revision {current}, which this facesearch does not know: "
            "it was written by a newer facesearch. Upgrade facesearch; nothing was changed."
        )


def _known(revision: str) -> None:
    """Refuse a revision the migration scripts do not have, naming the ones they do."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    script = ScriptDirectory.from_config(alembic_config())
    try:
        script.get_revisions(revision)
    except CommandError:
        known = sorted(r.revision for r in script.walk_revisions())
        raise SchemaError(f"unknown schema revision {revision!r} (known: {', '.join(known)}, head, base)") from None


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    _known(revision)
    with migration_transaction(engine) as conn:
        refuse_foreign(conn)
        command.upgrade(alembic_config(conn), revision)


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    _known(revision)
    with migration_transaction(engine) as conn:
        command.downgrade(alembic_config(conn), revision)
