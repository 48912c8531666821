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
#: the largest ``hnsw.ef_search`` pgvector accepts (its setting's range is 1 .. 1000): a wider ef asked
#: for (``tune_search`` tries up to 1024) searches at this one instead of failing
EF_SEARCH_MAX = 1000
ADD_ROWS = 2000
#: working memory for building the HNSW graph in one go (``maintenance_work_mem`` of the rebuild's transaction
#: only, ``SET LOCAL``): a graph that does not fit is built far more slowly (pgvector's documented slow path:
#: "hnsw graph no longer fits into maintenance_work_mem"). By default it is sized from the rows loaded
#: (:func:`build_memory_for`), never below 64 MB nor the server's own setting (``ALTER DATABASE ... SET
#: maintenance_work_mem`` raises it), and never above :data:`BUILD_MEMORY_MAX` unless the server's setting
#: is higher. ``PgVectorIndex(build_memory=)`` fixes it instead (``"4GB"``, or bytes).
BUILD_MEMORY_MIN, BUILD_MEMORY_MAX = 64 << 20, 4 << 30
#: pgvector's in-memory graph per element beside the vector's allocation (m = 16: neighbour lists and the
#: element), measured on pgvector 0.8 with 128-d vectors: in a serial build (PostgreSQL's allocator rounds
#: the 520-byte vector up to 1024) "no longer fits ... after 2562 tuples" at 3603 kB, 1440 bytes an element;
#: a parallel build packs them tighter (3419 tuples at 4 MB, 1227). tests/integration/test_pgvector_build.py
#: checks that the sized memory holds a serial build's graph and that less does not.
GRAPH_BYTES_PER_ELEMENT = 450
BUILD_MEMORY_MARGIN = 1.25
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


def parse_memory(value) -> int:
    """Bytes of ``"4GB"``, ``"512MB"``, ``"65536kB"`` (PostgreSQL's units) or an int of bytes."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    s = str(value).strip()
    for unit, mult in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10), ("B", 1)):
        if s.endswith(unit) and s[:-len(unit)].strip().isdigit():
            return int(s[:-len(unit)]) * mult
    if s.isdigit():
        return int(s)
    raise ValueError(f"not a memory size: {value!r} (e.g. '4GB', '512MB')")


def element_bytes(dim: int) -> int:
    """One element of pgvector's in-memory HNSW graph: its vector (8 + 4 * dim bytes, as PostgreSQL's
    allocator rounds a small chunk: up to a power of two) and :data:`GRAPH_BYTES_PER_ELEMENT`."""
    v = 8 + 4 * int(dim)
    return (1 << (v - 1).bit_length() if v <= 8192 else v) + GRAPH_BYTES_PER_ELEMENT


def build_memory_for(rows: int, dim: int, server_bytes: int, fixed=None) -> int:
    """``maintenance_work_mem`` (bytes) for building the HNSW graph of ``rows`` vectors of ``dim``."""
    if fixed is not None:
        return parse_memory(fixed)
    need = int(rows * element_bytes(dim) * BUILD_MEMORY_MARGIN)
    return max(server_bytes, min(max(need, BUILD_MEMORY_MIN), BUILD_MEMORY_MAX))


#: PostgreSQL's binary COPY header (signature, flags, extension length) and trailer
COPY_HEADER, COPY_TRAILER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8, b"\xff\xff"


def copy_rows(ids, x) -> bytes:
    """``(face_id bigint, embedding vector)`` rows in PostgreSQL's binary COPY format (between
    :data:`COPY_HEADER` and :data:`COPY_TRAILER`): per row a field count, the id (int8) and the vector in
    pgvector's binary form (int16 dims, int16 0, float4 each), all big-endian. Built by numpy in one go."""
    ids = np.asarray(ids, np.int64)
    x = np.ascontiguousarray(x, np.float32)
    n, d = x.shape
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} vectors")
    row = np.dtype([("nf", ">i2"), ("l1", ">i4"), ("id", ">i8"), ("l2", ">i4"), ("dim", ">i2"), ("unused", ">i2"),
                    ("v", ">f4", (d,))])
    rows = np.empty(n, row)
    rows["nf"], rows["l1"], rows["id"], rows["l2"], rows["dim"], rows["unused"] = 2, 8, ids, 4 + 4 * d, d, 0
    rows["v"] = x
    return rows.tobytes()


class PgVectorIndex(SharedIndex):
    backend = "pgvector"

    def __init__(self, engine, dim: int, build_memory=None):
        from sqlalchemy import inspect

        try:
            from pgvector.sqlalchemy import Vector
        except ImportError as e:
            raise FaceSearchError("--vectors pgvector needs the pgvector package: pip install "
                                  "'facesearch[pgvector]'") from e
        self.engine, self.dim = engine, int(dim)
        self.build_memory = None if build_memory is None else parse_memory(build_memory)
        #: what the last rebuild did: rows, load_s, index_s, maintenance_work_mem (bytes), how rows were loaded
        self.last_build: dict = {}
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
        self.ef_search = min(int(ef), EF_SEARCH_MAX)
        if keep:
            from sqlalchemy import text

            with self.engine.begin() as conn:  # COMMENT takes no parameters: the value is an int
                conn.execute(text(f"COMMENT ON INDEX {index_name(self.dim)} IS '{EF_NOTE}{self.ef_search}'"))

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
            conn.execute(text("SELECT set_config('hnsw.ef_search', :ef, true)"), {"ef": str(min(max(k, self.ef_search), EF_SEARCH_MAX))})
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
            self._build(conn, int(conn.exec_driver_sql(f"SELECT count(*) FROM {TABLE}").scalar()))

    def _build(self, conn, rows: int) -> None:
        """CREATE the HNSW index in ``conn``'s transaction with enough ``maintenance_work_mem`` (SET LOCAL)."""
        import time

        from sqlalchemy import text

        server = int(conn.execute(text("SELECT setting::bigint * 1024 FROM pg_settings "
                                       "WHERE name = 'maintenance_work_mem'")).scalar())
        mem = build_memory_for(rows, self.dim, server, self.build_memory)
        conn.execute(text("SELECT set_config('maintenance_work_mem', :m, true)"), {"m": f"{max(1, mem >> 10)}kB"})
        t = time.perf_counter()
        create_hnsw(conn, self.dim)
        self.last_build.update(rows=rows, index_s=round(time.perf_counter() - t, 2), maintenance_work_mem=mem)

    def _copy(self, conn, chunks) -> int:
        """Bulk-load with binary COPY through psycopg 3's ``cursor.copy`` (the rows built by numpy, no
        per-row Python). Only into an empty table: COPY has no ON CONFLICT."""
        n = 0
        with conn.connection.dbapi_connection.cursor() as cur:
            with cur.copy(f"COPY {TABLE} (face_id, embedding) FROM STDIN WITH (FORMAT BINARY)") as cp:
                cp.write(COPY_HEADER)
                for ids, x in chunks:
                    x = np.ascontiguousarray(x, np.float32)
                    if x.shape[1:] != (self.dim,):
                        raise ValueError(f"vectors are {x.shape}, expected (n, {self.dim})")
                    cp.write(copy_rows(ids, x))
                    n += len(ids)
                cp.write(COPY_TRAILER)
        return n

    def replace_all(self, chunks) -> None:
        """One transaction: empty, load (binary COPY under psycopg 3, else INSERTs), build the HNSW graph
        once with the memory it needs. Other connections searching meanwhile wait for it (TRUNCATE's lock)
        and then see the whole new set, never half of it."""
        import time

        from sqlalchemy import text

        with self.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {TABLE}"))
            conn.execute(text(f"DROP INDEX IF EXISTS {index_name(self.dim)}"))
            t = time.perf_counter()
            with conn.connection.dbapi_connection.cursor() as cur:
                has_copy = hasattr(cur, "copy")
            if has_copy:
                rows, how = self._copy(conn, chunks), "binary COPY"
            else:
                chunks = [(np.asarray(i, np.int64), np.asarray(x, np.float32)) for i, x in chunks]
                self._insert(conn, chunks)
                rows, how = sum(len(i) for i, _ in chunks), "INSERT"
            self.last_build = {"load": how, "load_s": round(time.perf_counter() - t, 2)}
            self._build(conn, rows)

    def memory_bytes(self) -> int:
        """The table and its indexes on disk (what PostgreSQL caches in memory when they fit)."""
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT pg_total_relation_size(:t)"), {"t": TABLE}).scalar())
