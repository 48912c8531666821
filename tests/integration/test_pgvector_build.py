"""pgvector's rebuild (``PgVectorIndex.replace_all``, what ``facesearch reindex`` does) on a real PostgreSQL
with the extension (tests/pg.py): the rows are bulk-loaded with binary COPY, exactly (ids and vectors as
given), and the HNSW graph is built with ``maintenance_work_mem`` sized from the rows, for that
transaction only, large enough that pgvector never takes its slow path ("hnsw graph no longer fits into
maintenance_work_mem"); the sizing rule's per-element figure is checked against pgvector's own notice."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pgvector", reason="pgvector (facesearch[pgvector]) is needed for these tests")
pytest.importorskip("psycopg", reason="psycopg (3) is needed for the PostgreSQL tests")

N, DIM = 3000, 128
TOO_SMALL = "no longer fits into maintenance_work_mem"
SERVER = "1MB"  # the test database's maintenance_work_mem


def unit(rng, n, d=DIM):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def engine_and_notices(pg_url):
    from sqlalchemy import create_engine, event, text

    from facesearch.store import Store

    Store.open(pg_url).close()  # migration 0008: the table and its HNSW index
    engine = create_engine(pg_url)
    with engine.begin() as conn:  # the database's own setting, below the sizing rule's figures (1 MB)
        name = conn.execute(text("SELECT current_database()")).scalar()
        conn.execute(text(f'ALTER DATABASE "{name}" SET maintenance_work_mem = \'{SERVER}\''))
    engine.dispose()
    notices: list[str] = []

    @event.listens_for(engine, "connect")
    def on_connect(dbapi, _record):
        dbapi.add_notice_handler(lambda d: notices.append(d.message_primary or ""))

    yield engine, notices
    engine.dispose()


def chunks(ids, x, size=1000):
    return ((ids[i:i + size], x[i:i + size]) for i in range(0, len(ids), size))


def test_replace_all_copies_exactly_and_builds_the_graph_in_memory(engine_and_notices, monkeypatch):
    from sqlalchemy import text

    import facesearch.index.pgvector as pgv

    engine, notices = engine_and_notices
    # the sizing rule alone (no 64 MB floor, no margin), so that the per-element figure is what is tested
    monkeypatch.setattr(pgv, "BUILD_MEMORY_MIN", 0)
    monkeypatch.setattr(pgv, "BUILD_MEMORY_MARGIN", 1.0)
    rng = np.random.default_rng(0)
    x, ids = unit(rng, N), np.arange(1, N + 1, dtype=np.int64) * 3 + 11
    idx = pgv.PgVectorIndex(engine, DIM)
    idx.add(ids[:5], x[:5] * 0)  # rows a rebuild must replace, not keep
    idx.replace_all(chunks(ids, x))
    b = idx.last_build
    assert b["load"] == "binary COPY" and b["rows"] == N
    assert b["maintenance_work_mem"] == N * pgv.element_bytes(DIM)
    assert not [n for n in notices if TOO_SMALL in n], notices  # the graph fitted
    assert idx.ntotal == N and idx.ids().tolist() == ids.tolist()
    got = idx.vectors(ids[[0, 1, 2, N - 1]])
    for j, f in enumerate(ids[[0, 1, 2, N - 1]]):
        assert np.array_equal(got[int(f)], x[[0, 1, 2, N - 1][j]])  # float32 through COPY bit for bit
    idx.set_ef_search(200)
    d, i = idx.search(x[:20], 1)
    assert (i[:, 0] == ids[:20]).mean() >= 0.95 and np.abs(d[i[:, 0] == ids[:20], 0]).max() < 1e-5
    with engine.connect() as conn:  # SET LOCAL: the database's and the next transaction's setting is untouched
        assert conn.execute(text("SHOW maintenance_work_mem")).scalar() == SERVER
        assert conn.execute(text("SELECT count(*) FROM pg_indexes WHERE indexname = :n"),
                            {"n": pgv.index_name(DIM)}).scalar() == 1


def test_too_little_memory_is_what_the_sizing_avoids(engine_and_notices, monkeypatch):
    """The negative control: sized 10% short of the rule, pgvector says the graph did not fit."""
    import facesearch.index.pgvector as pgv

    engine, notices = engine_and_notices
    monkeypatch.setattr(pgv, "BUILD_MEMORY_MIN", 0)
    monkeypatch.setattr(pgv, "BUILD_MEMORY_MARGIN", 0.9)
    rng = np.random.default_rng(1)
    idx = pgv.PgVectorIndex(engine, DIM)
    idx.replace_all(chunks(np.arange(1, N + 1, dtype=np.int64), unit(rng, N)))
    assert [n for n in notices if TOO_SMALL in n], notices


def test_build_memory_is_configurable_and_never_below_the_servers(engine_and_notices):
    from sqlalchemy import text

    import facesearch.index.pgvector as pgv

    engine, _ = engine_and_notices
    assert pgv.parse_memory("4GB") == 4 << 30 and pgv.parse_memory("512MB") == 512 << 20
    assert pgv.parse_memory("65536kB") == 64 << 20 and pgv.parse_memory(1234) == 1234
    with pytest.raises(ValueError):
        pgv.parse_memory("lots")
    server = 64 << 20
    assert pgv.build_memory_for(1000, DIM, server) == server  # small: the server's own setting
    million = pgv.build_memory_for(1_000_000, DIM, server)
    assert 1 << 30 < million <= pgv.BUILD_MEMORY_MAX  # 1M faces: over a GB, capped
    assert pgv.build_memory_for(10 ** 9, DIM, server) == pgv.BUILD_MEMORY_MAX
    assert pgv.build_memory_for(10 ** 9, DIM, 8 << 30) == 8 << 30  # a DBA's larger setting wins
    assert pgv.build_memory_for(10 ** 9, DIM, server, "2GB") == 2 << 30  # fixed by the caller
    rng = np.random.default_rng(2)
    idx = pgv.PgVectorIndex(engine, DIM, build_memory="96MB")
    idx.replace_all(chunks(np.arange(1, 201, dtype=np.int64), unit(rng, 200)))
    assert idx.last_build["maintenance_work_mem"] == 96 << 20
    with engine.connect() as conn:
        assert conn.execute(text("SHOW maintenance_work_mem")).scalar() == SERVER
    idx = pgv.PgVectorIndex(engine, DIM)  # by default: at least the 64 MB floor, above the database's 1 MB
    idx.replace_all(chunks(np.arange(1, 201, dtype=np.int64), unit(rng, 200)))
    assert idx.last_build["maintenance_work_mem"] == pgv.BUILD_MEMORY_MIN


def test_an_ef_wider_than_pgvector_accepts_searches_at_its_largest(engine_and_notices):
    """tune_search tries efSearch up to 1024; pgvector's hnsw.ef_search stops at 1000. Asked for 1024 (as a
    1M reindex that had not reached its recall by 768 asked, and failed with 'outside the valid range'), the
    index searches at 1000 and keeps 1000."""
    from sqlalchemy import text

    import facesearch.index.pgvector as pgv

    engine, _ = engine_and_notices
    rng = np.random.default_rng(3)
    x = unit(rng, 300)
    idx = pgv.PgVectorIndex(engine, DIM)
    idx.replace_all(chunks(np.arange(1, 301, dtype=np.int64), x))
    idx.set_ef_search(1024, keep=True)
    assert idx.ef_search == pgv.EF_SEARCH_MAX == 1000
    d, i = idx.search(x[:3], 5)
    assert i[:, 0].tolist() == [1, 2, 3]
    with engine.connect() as conn:
        note = conn.execute(text("SELECT obj_description(to_regclass(:n), 'pg_class')"),
                            {"n": pgv.index_name(DIM)}).scalar()
    assert note == f"{pgv.EF_NOTE}1000"
