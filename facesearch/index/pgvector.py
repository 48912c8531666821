"""Vectors in the gallery's own PostgreSQL database, with the pgvector extension.

Table ``face_vectors`` (created by migration 0008 where the extension exists; here too, if the extension
was installed later): ``face_id`` (the store's face id, primary key) and ``embedding`` (``vector``, no
fixed size, so a gallery can switch to a model of another size), and one HNSW index per embedding size,
partial on it: ``USING hnsw ((embedding::vector(D)) vector_ip_ops) WHERE vector_dims(embedding) = D`` (how
pgvector indexes vectors of several sizes). It ranks by ``<#>``, the negative inner product of the unit
vectors: the one distance is ``1 + (a <#> b)``. One gallery per database (as for the store).

SQL is parameterised; the only values written into statements are the embedding size ``D`` (an int: a
type modifier and an index predicate cannot be parameters) and fixed names. pgvector's Python package
(``facesearch[pgvector]``) is imported here only.
"""

from __future__ import annotations

import numpy as np

from facesearch import distance
from facesearch.errors import FaceSearchError
from facesearch.index.base import SharedIndex

TABLE = "face_vectors"
#: pgvector's HNSW build parameters (its defaults) and the ef_search floor (k is used when larger)
HNSW_M, HNSW_EF_CONSTRUCTION, EF_SEARCH = 16, 64, 64
ADD_ROWS = 2000
#: working memory for building the HNSW graph in one go (``maintenance_work_mem`` of that transaction only):
#: a graph that does not fit is built far more slowly (pgvector's advice); 100k 128-d faces take about 80 MB
BUILD_MEMORY = "256MB"
#: how the measured ef_search is kept: the HNSW index's comment
EF_NOTE = "facesearch ef_search="


def extension_available(conn) -> bool:
    from sqlalchemy import text

    return conn.execute(text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")).first() is not None


def create_table(conn) -> None:
    """The extension and the table (idempotent); what migration 0008 does."""
    from sqlalchemy import text

    conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
    conn.execute(text(f"CREATE TABLE IF NOT EXISTS {TABLE} (face_id BIGINT PRIMARY KEY, embedding vector NOT NULL)"))


def index_name(dim: int) -> str:
    return f"ix_{TABLE}_hnsw_{int(dim)}"


def create_hnsw(conn, dim: int) -> None:
    from sqlalchemy import text

    d = int(dim)
    conn.execute(text(f"CREATE INDEX IF NOT EXISTS {index_name(d)} ON {TABLE} USING hnsw "
                      f"((embedding::vector({d})) vector_ip_ops) WITH (m = {HNSW_M}, ef_construction = "
                      f"{HNSW_EF_CONSTRUCTION}) WHERE vector_dims(embedding) = {d}"))


class PgVectorIndex(SharedIndex):
    backend = "pgvector"

    def __init__(self, engine, dim: int):
        from sqlalchemy import inspect

        try:
            from pgvector.sqlalchemy import Vector
        except ImportError as e:
            raise FaceSearchError("--vectors pgvector needs the pgvector package: pip install "
                                  "'facesearch[pgvector]'") from e
        self.engine, self.dim = engine, int(dim)
        self._vector = Vector(self.dim)
        self.factory = f"HNSW{HNSW_M}"
        self.location = "pgvector"
        self.ef_search = EF_SEARCH
        with engine.begin() as conn:
            if not inspect(conn).has_table(TABLE):
                if not extension_available(conn):
                    raise FaceSearchError(
                        "--vectors pgvector: this PostgreSQL server has no pgvector extension (install it on the "
                        "server, see https://github.com/pgvector/pgvector), or use another --vectors")
                create_table(conn)
            create_hnsw(conn, self.dim)
            self.ef_search = self._kept_ef(conn) or EF_SEARCH

    def _kept_ef(self, conn) -> int | None:
        """The ef_search a rebuild measured, kept as the HNSW index's comment (``facesearch ef_search=N``)."""
        from sqlalchemy import text

        note = conn.execute(text("SELECT obj_description(to_regclass(:n), 'pg_class')"),
                            {"n": index_name(self.dim)}).scalar()
        if note and note.startswith(EF_NOTE):
            try:
                return int(note[len(EF_NOTE):])
            except ValueError:
                return None
        return None

    def set_ef_search(self, ef: int, keep: bool = False) -> None:
        self.ef_search = int(ef)
        if keep:
            from sqlalchemy import text

            with self.engine.begin() as conn:  # COMMENT takes no parameters: the value is an int
                conn.execute(text(f"COMMENT ON INDEX {index_name(self.dim)} IS '{EF_NOTE}{int(ef)}'"))

    def _sql(self, s: str, **types):
        from sqlalchemy import bindparam, text

        return text(s).bindparams(*(bindparam(k, type_=t) for k, t in types.items()))

    @property
    def ntotal(self) -> int:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {TABLE}")).scalar())

    def add(self, ids, x) -> None:
        ids = np.asarray(ids, np.int64)
        x = np.ascontiguousarray(x, np.float32)
        if x.shape != (len(ids), self.dim):
            raise ValueError(f"vectors are {x.shape}, expected ({len(ids)}, {self.dim})")
        with self.engine.begin() as conn:
            self._insert(conn, [(ids, x)])

    def _insert(self, conn, chunks) -> None:
        stmt = self._sql(f"INSERT INTO {TABLE} (face_id, embedding) VALUES (:id, :v) "
                         "ON CONFLICT (face_id) DO UPDATE SET embedding = EXCLUDED.embedding", v=self._vector)
        for ids, x in chunks:
            x = np.ascontiguousarray(x, np.float32)
            for i in range(0, len(ids), ADD_ROWS):
                conn.execute(stmt, [{"id": int(f), "v": v} for f, v in zip(ids[i:i + ADD_ROWS], x[i:i + ADD_ROWS])])

    def remove(self, ids) -> int:
        from sqlalchemy import text

        ids = sorted({int(i) for i in ids})
        if not ids:
            return 0
        with self.engine.begin() as conn:
            return len(conn.execute(text(f"DELETE FROM {TABLE} WHERE face_id = ANY(:ids) RETURNING face_id"),
                                    {"ids": ids}).all())

    def search(self, queries, k: int):
        from sqlalchemy import text

        q = np.atleast_2d(np.ascontiguousarray(queries, np.float32))
        k = max(1, int(k))
        d = self.dim
        expr = f"(embedding::vector({d})) <#> CAST(:q AS vector({d}))"
        stmt = self._sql(f"SELECT face_id, {expr} FROM {TABLE} WHERE vector_dims(embedding) = {d} "
                         f"ORDER BY {expr} LIMIT :k", q=self._vector)
        dist = np.full((len(q), k), np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        with self.engine.begin() as conn:
            conn.execute(text("SELECT set_config('hnsw.ef_search', :ef, true)"), {"ef": str(max(k, self.ef_search))})
            for r, v in enumerate(q):
                rows = conn.execute(stmt, {"q": v, "k": k}).all()
                for c, (fid, neg_ip) in enumerate(rows):
                    ids[r, c] = fid
                    dist[r, c] = distance.clip(float(distance.from_similarity(-neg_ip)))
        return dist, ids

    def ids(self) -> np.ndarray:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            rows = conn.execute(text(f"SELECT face_id FROM {TABLE} ORDER BY face_id")).scalars().all()
        return np.asarray(rows, np.int64)

    def vectors(self, ids) -> dict[int, np.ndarray]:
        from sqlalchemy import column, select, table

        t = table(TABLE, column("face_id"), column("embedding", self._vector))
        ids = [int(i) for i in ids]
        out = {}
        with self.engine.connect() as conn:
            for i in range(0, len(ids), 1000):
                rows = conn.execute(select(t.c.face_id, t.c.embedding).where(t.c.face_id.in_(ids[i:i + 1000])))
                out.update({int(f): np.asarray(v, np.float32) for f, v in rows})
        return out

    def reset(self) -> None:
        """Empty the table and drop this size's HNSW index: a bulk load then builds the graph once
        (:meth:`finish`), far faster than inserting into it row by row."""
        from sqlalchemy import text

        with self.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {TABLE}"))
            conn.execute(text(f"DROP INDEX IF EXISTS {index_name(self.dim)}"))

    def finish(self) -> None:
        with self.engine.begin() as conn:
            create_hnsw(conn, self.dim)

    def replace_all(self, chunks) -> None:
        """One transaction: empty, load, build the HNSW graph once. Other connections searching meanwhile
        wait for it (TRUNCATE's lock) and then see the whole new set, never half of it."""
        from sqlalchemy import text

        with self.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {TABLE}"))
            conn.execute(text(f"DROP INDEX IF EXISTS {index_name(self.dim)}"))
            self._insert(conn, chunks)
            conn.execute(text("SELECT set_config('maintenance_work_mem', :m, true)"), {"m": BUILD_MEMORY})
            create_hnsw(conn, self.dim)

    def memory_bytes(self) -> int:
        """The table and its indexes on disk (what PostgreSQL caches in memory when they fit)."""
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT pg_total_relation_size(:t)"), {"t": TABLE}).scalar())
