"""The one place that reads facesearch's environment variables; only the CLI calls it.

========================  ===============================================  =====================
variable                  what                                             default
========================  ===============================================  =====================
``FACESEARCH_HOME``       folder of the SQLite database and the index      ``~/.facesearch``
``FACESEARCH_DB``         SQLAlchemy URL of another database               the SQLite file there
``FACESEARCH_MODEL``      model spec: a directory, or ``default``          the gallery's model
``FACESEARCH_VECTORS``    where the vectors live: ``pgvector``,            the FAISS file there
                          ``milvus://HOST:PORT/COLL``, ``milvus-lite:///F.db``
========================  ===============================================  =====================

An empty variable counts as unset (as click's ``envvar=`` does). The library itself takes these as
arguments (``FaceSearch.open(home=..., db_url=..., model=...)``) and reads no environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

HOME_ENV = "FACESEARCH_HOME"
DB_ENV = "FACESEARCH_DB"
MODEL_ENV = "FACESEARCH_MODEL"
VECTORS_ENV = "FACESEARCH_VECTORS"
#: the home folder's name in the user's home directory when FACESEARCH_HOME is not set
HOME_DIR_NAME = ".facesearch"
#: the SQLite database's file name in a home folder (when no database URL is given)
DB_FILE = "facesearch.db"


def default_home() -> Path:
    """``~/.facesearch``: the facesearch home when none is given."""
    return Path.home() / HOME_DIR_NAME


@dataclass(frozen=True)
class Settings:
    """Where a gallery lives and which model it uses. ``db_url`` None: the SQLite file in ``home``;
    ``model`` None: the gallery's own model (the built-in one for a new gallery); else the spec as
    given (:func:`facesearch.model.files.resolve`: the string ``default`` is the built-in model, a path
    always a directory)."""

    home: Path
    db_url: str | None = None
    model: str | os.PathLike | None = None
    #: ``--vectors`` (:mod:`facesearch.index.vectors`); None: the FAISS index file in ``home``
    vectors: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        """The settings the environment gives (``~`` in FACESEARCH_HOME expanded)."""
        home = environ.get(HOME_ENV) or None
        return cls(home=Path(home).expanduser() if home else default_home(),
                   db_url=environ.get(DB_ENV) or None, model=environ.get(MODEL_ENV) or None,
                   vectors=environ.get(VECTORS_ENV) or None)

    def override(self, *, home: str | os.PathLike | None = None, db_url: str | None = None,
                 model: str | os.PathLike | None = None, vectors: str | None = None) -> "Settings":
        """These settings with the values given (a command line's options) in place of theirs; None
        keeps the setting as it is."""
        changes: dict = {}
        if home is not None:
            changes["home"] = Path(home).expanduser()
        if db_url is not None:
            changes["db_url"] = db_url
        if model is not None:
            changes["model"] = model
        if vectors is not None:
            changes["vectors"] = vectors
        return replace(self, **changes)
