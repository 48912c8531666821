"""Where a gallery's vectors live: the ``--vectors URL`` (env ``FACESEARCH_VECTORS``).

==============================================  =============================================================
URL                                             vectors in
==============================================  =============================================================
(none), ``faiss``                               the FAISS index file in the gallery's home (the default)
``pgvector``                                    the gallery's own PostgreSQL database (``--db``): table
                                                ``face_vectors``, HNSW index (migration 0008)
``milvus://HOST:PORT/COLLECTION``               a Milvus server or cluster (``milvus+https://`` for TLS;
                                                ``?token=USER:PASSWORD`` or an API key)
``milvus-lite:///ABS/PATH.db[?collection=C]``   an embedded Milvus (milvus-lite) in that file, one process
``milvus-lite:PATH.db``                         the same, the path relative to the gallery's home
==============================================  =============================================================

The collection (default ``facesearch``) is the gallery's: several galleries share one Milvus by taking
one collection each. Neither pymilvus nor pgvector is imported unless its URL is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from facesearch.errors import FaceSearchError

DEFAULT_COLLECTION = "facesearch"
_COLLECTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


@dataclass(frozen=True)
class VectorsURL:
    """A parsed ``--vectors`` URL. ``kind``: ``faiss``, ``pgvector``, ``milvus`` or ``milvus-lite``."""

    kind: str
    #: milvus: the server URI (``http://host:port``); milvus-lite: the file's path; else empty
    uri: str = ""
    collection: str = DEFAULT_COLLECTION
    token: str = ""

    @property
    def shared(self) -> bool:
        return self.kind != "faiss"

    def show(self) -> str:
        """The URL without its token, for messages and ``info``."""
        if self.kind == "milvus":
            return f"milvus://{self.uri.split('://', 1)[1]}/{self.collection}"
        if self.kind == "milvus-lite":
            return f"milvus-lite://{self.uri}?collection={self.collection}"
        return self.kind


def parse(url: "str | VectorsURL | None", home: Path | None = None) -> VectorsURL:
    """Parse a ``--vectors`` URL (see the module's table); raise FaceSearchError for one it cannot use."""
    if isinstance(url, VectorsURL):
        return url
    if url is None or url.strip() in ("", "faiss"):
        return VectorsURL("faiss")
    url = url.strip()
    if url in ("pgvector", "pgvector:", "pgvector://"):
        return VectorsURL("pgvector")
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if parts.scheme in ("milvus", "milvus+http", "milvus+https"):
        if not parts.hostname:
            raise FaceSearchError(f"--vectors {url!r}: no host (write milvus://HOST:PORT/COLLECTION)")
        collection = parts.path.strip("/") or query.get("collection", DEFAULT_COLLECTION)
        scheme = "https" if parts.scheme == "milvus+https" else "http"
        token = query.get("token", "")
        return VectorsURL("milvus", f"{scheme}://{parts.hostname}:{parts.port or 19530}", _collection(collection, url),
                          token)
    if parts.scheme == "milvus-lite":
        path = (parts.netloc + parts.path) if parts.netloc else parts.path
        if not path:
            raise FaceSearchError(f"--vectors {url!r}: no file (write milvus-lite:///path/to/file.db)")
        p = Path(path).expanduser()
        if not p.is_absolute():
            p = (home or Path.cwd()) / p
        if p.suffix != ".db":  # milvus-lite takes a local file only when its name ends in .db
            raise FaceSearchError(f"--vectors {url!r}: a milvus-lite file's name must end in .db")
        return VectorsURL("milvus-lite", str(p), _collection(query.get("collection", DEFAULT_COLLECTION), url))
    raise FaceSearchError(f"--vectors {url!r}: not a vectors URL this facesearch knows (faiss, pgvector, "
                          "milvus://HOST:PORT/COLLECTION, milvus-lite:///PATH.db)")


def _collection(name: str, url: str) -> str:
    if not _COLLECTION.match(name):
        raise FaceSearchError(f"--vectors {url!r}: the collection name {name!r} must be letters, digits and "
                              "underscores, not starting with a digit")
    return name


def open_shared(spec: VectorsURL, dim: int, engine=None):
    """Connect to the vectors of ``spec`` (a shared kind) for ``dim``-d embeddings, creating the collection
    or table where it is missing. ``engine``: the store's SQLAlchemy engine (pgvector uses its database)."""
    if spec.kind == "pgvector":
        from facesearch.index.pgvector import PgVectorIndex

        if engine is None or engine.dialect.name != "postgresql":
            raise FaceSearchError("--vectors pgvector keeps the vectors in the gallery's PostgreSQL database: "
                                  "give one with --db postgresql+psycopg://... (FACESEARCH_DB)")
        return PgVectorIndex(engine, dim)
    if spec.kind in ("milvus", "milvus-lite"):
        from facesearch.index.milvus import MilvusIndex

        return MilvusIndex(spec.uri, spec.collection, dim, token=spec.token, location=spec.show())
    raise ValueError(f"not a shared vectors URL: {spec}")
