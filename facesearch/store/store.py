"""The :class:`Store` class: opening a database (creating and migrating it), its schema and revision.

Its queries live with what they are about: :mod:`~facesearch.store.faces`,
:mod:`~facesearch.store.identities` and :mod:`~facesearch.store.models` (models and switching between
them); what differs between SQLite and PostgreSQL is in :mod:`~facesearch.store.dialects`.
"""

from __future__ import annotations

import os

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import sessionmaker

from facesearch.errors import FaceSearchError
from facesearch.store import backup as _backup, dialects, migrate
from facesearch.store.faces import FacesMixin
from facesearch.store.identities import IdentitiesMixin
from facesearch.store.models import ModelsMixin
from facesearch.store.revision import read_revision, read_state


class Store(FacesMixin, IdentitiesMixin, ModelsMixin):
    """Access to the metadata database. Open with :meth:`Store.open`."""

    def __init__(self, engine: Engine):
        self.engine = engine
        #: opened read-only because the database could not be written (a full disk, a read-only folder)
        self.read_only = False
        self.Session = sessionmaker(engine, expire_on_commit=False)

    # ---- opening and schema -------------------------------------------------------------
    @classmethod
    def open(cls, url: str, upgrade: bool = True) -> "Store":
        """Open the database at ``url``, creating and migrating it as needed. Problems a user can fix
        (a bad URL, a server that does not answer, a file that is not a database, a folder that
        cannot be written) raise :class:`FaceSearchError` saying which database and why."""
        from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

        try:
            shown = make_url(url).render_as_string(hide_password=True)
        except (ArgumentError, ValueError) as e:  # not echoed: the URL may hold a password
            raise FaceSearchError(f"the database URL is not valid ({type(e).__name__}: "
                                  f"{str(e).replace(url, '<url>')[:200]})") from None
        path = dialects.sqlite_path(url)
        dialects.check_driver(url, shown)
        try:
            if path is not None:
                dialects.create_sqlite_file(path)
            return cls._open(url, upgrade)
        except NoSuchModuleError as e:
            raise FaceSearchError(f"cannot use database {shown}: {e}") from None
        except DBAPIError as e:
            why = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
            ro = dialects.read_only_url(path)
            if ro is not None:  # a full disk or a read-only folder: what only reads still works
                try:
                    store = cls._open(ro, upgrade=False)
                except (DBAPIError, FaceSearchError):
                    store = None
                if store is not None and store.current_revision() == migrate.HEAD_REVISION:
                    import warnings

                    from facesearch.errors import FaceSearchWarning

                    warnings.warn(f"database {shown} cannot be written ({why}): opened read-only, so "
                                  "searching works and changes fail until that is fixed", FaceSearchWarning,
                                  stacklevel=2)
                    store.read_only = True
                    return store
                if store is not None:
                    store.close()
            raise FaceSearchError(f"cannot open database {shown}: {why}{dialects.sqlite_open_hint(path)}") from None
        except OSError as e:
            raise FaceSearchError(f"cannot open database {shown}: {e.strerror or e}: {e.filename or path}") from None

    @classmethod
    def _open(cls, url: str, upgrade: bool) -> "Store":
        engine = create_engine(url, future=True)
        dialects.configure(engine)
        store = cls(engine)
        try:
            if store.current_revision() != migrate.HEAD_REVISION:  # at head: alembic is not even imported
                store.check_schema()
                if upgrade:
                    store.upgrade()
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        self.engine.dispose()

    def current_revision(self) -> str | None:
        """The schema revision stamped in the database (``alembic_version``), None before the first."""
        return migrate.current_revision(self.engine)

    def head_revision(self) -> str:
        return migrate.head_revision()

    def check_schema(self) -> None:
        """Refuse a database whose schema this version of facesearch does not know."""
        migrate.check_schema(self.engine)

    def upgrade(self, revision: str = "head") -> None:
        migrate.upgrade(self.engine, revision)

    def downgrade(self, revision: str) -> None:
        migrate.downgrade(self.engine, revision)

    def backup(self, dest: str | os.PathLike) -> dict:
        """Write a consistent copy of this SQLite store to ``dest`` (see :func:`facesearch.store.backup.backup`)."""
        return _backup.backup(self.engine, dest)

    # ---- revision counter ---------------------------------------------------------------
    def revision(self) -> int:
        with self.Session() as s:
            return read_revision(s)

    def state(self) -> tuple[int, str]:
        """``(revision, change_id)``: the revision counter and the random id of the change that set it."""
        with self.Session() as s:
            return read_state(s)
