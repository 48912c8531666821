"""Query speed, recall and memory against large synthetic galleries, through the real store and index.

One gallery size per process (``python -m benchmarks.scale --size N ...``, started by
:mod:`benchmarks.run`), so that the process peak memory belongs to that size alone:

1. ``N`` synthetic faces (identities with 1 + Poisson(4) images each, drawn by the fitted
   :class:`~benchmarks.synth.FaceGenerator`) are inserted with ``Store.add_faces`` in batches, into a
   fresh SQLite gallery opened by ``FaceSearch.open``.
2. ``FaceSearch.rebuild_index`` builds the index ``auto`` picks for that size from the store (timed).
3. Probes are new images of enrolled identities. Exact top-10 (a flat inner-product index) is the
   ground truth; every index is timed with one probe per call (p50/p99) and with batches of probes;
   approximate indexes report recall@1 and recall@10 against exact.
4. The baselines are plain numpy: for one probe the face_recognition way,
   ``np.linalg.norm(gallery - probe, axis=1)`` + ``argpartition``; for a batch, ``probes @ gallery.T`` in
   gallery chunks + ``argpartition`` (a per-probe loop of the former would take minutes at 1M).
5. Removal on the auto index (``FaceSearch.remove_identity``) is timed and checked, and a separate
   process opens the gallery and serves queries, to measure open time and serving peak memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script (python benchmarks/scale.py): make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import current_rss_bytes, pct_ms, peak_rss_bytes, ratio, time_calls  # noqa: E402
from benchmarks.synth import FaceGenerator, gallery_sizes  # noqa: E402

K = 10
CHUNK = 20_000


def default_indexes(n: int) -> list[str]:
    """Index variants measured at gallery size ``n`` besides exact ``Flat`` and ``auto``.

    Each entry is ``FACTORY`` or ``FACTORY@param=value,...`` (``nprobe`` for IVF, ``efSearch`` for HNSW).
    ``IVF*,SQ8@shared`` reuses the auto IVF index's trained coarse quantizer (saves a second k-means)."""
    from facesearch import index as vindex

    auto = vindex.auto_factory(n)
    ivf = vindex.policy.ivf_auto_factory(n)
    if auto == "Flat":  # exact by default here: show what IVF and HNSW would do
        return [ivf, "SQfp16", "HNSW32,Flat@efSearch=128"]
    nlist = vindex.policy.ivf_lists(auto)
    if vindex.policy.is_reranked(auto):  # the baseline: what auto built here before (IVF over exact vectors)
        flat_lists = max(64, 2 ** int(round(np.log2(2 * np.sqrt(n)))))
        return [f"IVF{flat_lists},Flat"]
    out = [f"IVF{nlist},SQ8@shared"]
    if n <= 200_000:  # HNSW32 at 1M builds in 8 min on 2 busy cores: measured once, docs/speed.md
        out += ["SQfp16", "HNSW32,Flat"]
    return out


def ivf_sharing_quantizer(src, dim: int, kind: str, x: np.ndarray, ids: np.ndarray):
    """An IVF index with another storage (``SQ8``, ``SQfp16``) on ``src``'s trained coarse quantizer."""
    import faiss

    from facesearch import distance
    from facesearch import index as vindex

    ivf = faiss.extract_index_ivf(src.cpu_index)
    q = faiss.IndexFlatIP(dim)
    q.add(ivf.quantizer.reconstruct_n(0, ivf.nlist))
    qt = {"SQ8": faiss.ScalarQuantizer.QT_8bit, "SQfp16": faiss.ScalarQuantizer.QT_fp16}[kind]
    index = faiss.IndexIVFScalarQuantizer(q, dim, ivf.nlist, qt, distance.faiss_metric())
    index.train(x[np.random.default_rng(0).choice(len(x), min(len(x), 200_000), replace=False)])
    index.add_with_ids(x, ids)
    out = vindex.FaissIndex(dim, f"IVF{ivf.nlist},{kind}", index=index)
    out._quantizer = q  # keep the quantizer alive as long as the index
    return out


def _set_params(idx, params: dict) -> None:
    import faiss

    ivf = faiss.try_extract_index_ivf(idx.cpu_index)
    for k, v in params.items():
        if k == "nprobe":
            ivf.nprobe = int(v)
            idx.nprobe = int(v)
        elif k == "refine":
            idx.set_refine_candidates(int(v))
        elif k == "efSearch":
            base = idx.cpu_index.index if hasattr(idx.cpu_index, "index") else idx.cpu_index
            faiss.downcast_index(base).hnsw.efSearch = int(v)
        else:
            raise ValueError(f"unknown index parameter {k}")


def _params_of(idx) -> dict:
    import faiss

    ivf = faiss.try_extract_index_ivf(idx.cpu_index)
    if ivf is not None:
        out = {"nprobe": int(ivf.nprobe), "nlist": int(ivf.nlist)}
        if getattr(idx, "refine_candidates", None) is not None:
            out["refine"] = idx.refine_candidates
        return out
    base = idx.cpu_index.index if hasattr(idx.cpu_index, "index") else idx.cpu_index
    base = faiss.downcast_index(base)
    if hasattr(base, "hnsw"):
        return {"efSearch": int(base.hnsw.efSearch)}
    return {}


def _recall(dist, ids, d0, i0) -> tuple[float, float]:
    """recall@1: the approximate top-1 is the exact top-1 (or ties with it); recall@10: overlap of top-10s."""
    r1 = np.mean((ids[:, 0] == i0[:, 0]) | (dist[:, 0] <= d0[:, 0] + 1e-6))
    r10 = np.mean([len(set(a.tolist()) & set(b.tolist())) / K for a, b in zip(ids, i0)])
    return round(float(r1), 4), round(float(r10), 4)


def numpy_single(gallery: np.ndarray, probe: np.ndarray, k: int = K):
    """face_recognition-style: Euclidean distance to every gallery face, then the k smallest."""
    d = np.linalg.norm(gallery - probe, axis=1)
    top = np.argpartition(d, k)[:k]
    return top[np.argsort(d[top])]


def numpy_batch(gallery: np.ndarray, probes: np.ndarray, k: int = K, chunk: int = 65_536):
    """Plain numpy brute force for a batch: inner products in gallery chunks, top-k per chunk, merged."""
    best_s = best_i = None
    for s in range(0, len(gallery), chunk):
        sims = probes @ gallery[s : s + chunk].T
        kk = min(k, sims.shape[1] - 1)
        part = np.argpartition(-sims, kk, axis=1)[:, :k]
        ps = np.take_along_axis(sims, part, 1)
        pi = part + s
        if best_s is not None:
            ps, pi = np.concatenate([best_s, ps], 1), np.concatenate([best_i, pi], 1)
        order = np.argsort(-ps, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(ps, order, 1), np.take_along_axis(pi, order, 1)
    return best_s, best_i


def run_size(n: int, gen: FaceGenerator, model_dir: Path, workdir: Path, n_probes: int = 1000,
             n_single: int = 200, indexes: list[str] | None = None, seed: int = 0,
             budget_s: float = 20.0, serve_check: bool = True, log=print) -> dict:
    from facesearch import index as vindex
    from facesearch.gallery.facade import FaceSearch

    rng = np.random.default_rng(seed + n)
    t_all = time.perf_counter()
    out: dict = {"gallery": n, "queries": []}
    home = workdir / f"gallery-{n}"
    fs = FaceSearch.open(home=home, model=model_dir, device="cpu", backend="faiss-cpu", keep_crops=False)
    dim = fs.config.embedding_dim
    if gen.dim != dim:
        raise SystemExit(f"generator is {gen.dim}-d but the model embeds in {dim}-d")

    # ---- 1. generate and insert through the store ---------------------------------------
    sizes = gallery_sizes(n, rng)
    centres, spread = gen.identities(len(sizes), rng)
    labels = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    x = np.empty((n, dim), np.float32)
    ids = np.empty(n, np.int64)
    t_gen = t_ins = 0.0
    for s in range(0, n, CHUNK):
        t = time.perf_counter()
        lab = labels[s : s + CHUNK]
        x[s : s + len(lab)] = gen.images(centres[lab], spread[lab], rng)
        rows = [(f"person{int(p):07d}", f"synthetic/person{int(p):07d}/{s + j}", f"{s + j:064x}", x[s + j], None)
                for j, p in enumerate(lab)]
        t_gen += time.perf_counter() - t
        t = time.perf_counter()
        new_ids, _ = fs.store.add_faces(fs.model_id, rows)
        t_ins += time.perf_counter() - t
        ids[s : s + len(lab)] = new_ids
    with fs.store.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    store_bytes = (home / "facesearch.db").stat().st_size
    out.update({"identities": int(len(sizes)), "faces_per_identity_mean": round(n / len(sizes), 2),
                "generate_s": round(t_gen, 2), "store_insert_s": round(t_ins, 2),
                "store_insert_faces_per_s": round(n / t_ins, 1), "store_bytes": store_bytes,
                "store_bytes_per_face": round(store_bytes / n, 1)})
    log(f"  {n}: generated in {t_gen:.1f}s, inserted into SQLite in {t_ins:.1f}s")

    # ---- 2. the auto index, built from the store by the service -------------------------
    t = time.perf_counter()
    auto_idx = fs.rebuild_index()
    t_build = time.perf_counter() - t
    out["auto"] = {"factory": auto_idx.factory, "params": _params_of(auto_idx), "rebuild_index_s": round(t_build, 2),
                   "index_file_bytes": fs.index_path.stat().st_size,
                   "nprobe_tuning": getattr(auto_idx, "tuning", None),
                   "what": "FaceSearch.rebuild_index: read embeddings from SQLite, train (IVF), add, tune nprobe or "
                           "efSearch, save file"}
    out["process_peak_rss_after_build_bytes"] = peak_rss_bytes()
    log(f"  {n}: auto -> {auto_idx.factory} {_params_of(auto_idx)}, rebuild_index {t_build:.1f}s")

    # ---- 3. probes and exact ground truth ------------------------------------------------
    who = rng.choice(len(sizes), n_probes)
    probes = gen.images(centres[who], spread[who], rng)
    chunks = [(ids[s : s + 50_000], x[s : s + 50_000]) for s in range(0, n, 50_000)]
    if auto_idx.factory == "Flat":
        exact, t_exact_build = auto_idx, t_build
    else:
        t = time.perf_counter()
        exact = vindex.build(dim, chunks, n, "Flat", "faiss-cpu")
        t_exact_build = time.perf_counter() - t
    t = time.perf_counter()
    d0, i0 = exact.search(probes, K)  # the exact batch call doubles as the ground truth
    exact_first_batch = time.perf_counter() - t
    out["rank1_identification_exact"] = round(float(np.mean(
        labels[np.searchsorted(ids, i0[:, 0])] == who)), 4)

    # ---- 4. baselines (plain numpy) -------------------------------------------------------
    log(f"  {n}: numpy baselines")
    base_single = time_calls(lambda i: numpy_single(x, probes[i % n_probes]), n_single, budget_s / 2, min_n=5)
    nb = n_probes
    base_batch = time_calls(lambda i: numpy_batch(x, probes), 5, budget_s / 2, warmup=0, min_n=1)
    b1 = {"p50": pct_ms(base_single, 50), "p99": pct_ms(base_single, 99), "calls": len(base_single)}
    bb = {"p50": pct_ms(base_batch, 50), "p99": pct_ms(base_batch, 99), "calls": len(base_batch)}
    out["baseline"] = {"single": dict(b1, method="np.linalg.norm(gallery - probe, axis=1) + argpartition "
                                      "(face_recognition style), fp32"),
                       "batch": dict(bb, method="probes @ gallery.T in chunks of 65536 + argpartition, fp32")}

    # ---- 5. every index: latency, throughput, recall, memory ------------------------------
    def measure(idx, label: str, factory: str, build_s: float, is_auto: bool, first=None):
        """Time one index; ``first``: (seconds, dist, ids) of a batch call already made."""
        single = time_calls(lambda i: idx.search(probes[i % n_probes : i % n_probes + 1], K), n_single,
                            budget_s / 2, warmup=3, min_n=5)
        if first is None:
            t = time.perf_counter()
            dist, got = idx.search(probes, K)
            first = (time.perf_counter() - t, dist, got)
        batched = [first[0]]
        if first[0] < budget_s / 8:  # more batch calls while they are cheap
            batched += time_calls(lambda i: idx.search(probes, K), 4, budget_s / 2 - first[0], warmup=0, min_n=1)
        r1, r10 = _recall(first[1], first[2], d0, i0)
        mem = idx.memory_bytes()
        common = {"index": factory, "label": label, "params": _params_of(idx), "gallery": n, "device": "cpu",
                  "auto": is_auto, "recall_at_1": r1, "recall_at_10": r10, "build_s": round(build_s, 2),
                  "index_bytes": mem, "index_bytes_per_face": round(mem / n, 1),
                  "index_bytes_vs_raw": round(mem / (n * dim * 4), 3)}
        for b, times, base in ((1, single, b1), (nb, batched, bb)):
            p50 = pct_ms(times, 50)
            out["queries"].append(dict(common, batch=b, p50_ms=p50, p99_ms=pct_ms(times, 99), calls=len(times),
                                       queries_per_s=round(b / (p50 / 1e3), 1),
                                       baseline_p50_ms=base["p50"], baseline_p99_ms=base["p99"],
                                       baseline_queries_per_s=round(b / (base["p50"] / 1e3), 1),
                                       speedup_vs_baseline=ratio(base["p50"], p50)))
        log(f"  {n}: {label:32s} p50 {pct_ms(single, 50):8.3f} ms  batch {nb} {pct_ms(batched, 50):9.1f} ms  "
            f"recall@1 {r1:.4f}  build {build_s:.1f}s")

    def measure_threads(idx, label: str, threads: int):
        """Single-probe latency of an index ``measure`` timed as ``label``, with FAISS on ``threads`` OpenMP
        threads, as a row ``label, N thread(s)``. One thread: the single-probe rule of FaissIndex.search
        (``faiss_index.ONE_THREAD_QUERIES``) forced. More threads lift that rule: FAISS's own search on them (for
        a re-ranked IVF its default split of the queries, not the lists: ``faiss_index.FAST_SCAN_SPLIT``), to
        show what the rule avoids. The ``auto`` row itself is what a gallery does: a re-ranked IVF splits one
        probe's lists on the threads ``faiss_index.ProbeThreads`` measures faster."""
        import faiss

        from facesearch.index import faiss_index

        before, before_rule = faiss.omp_get_max_threads(), faiss_index.ONE_THREAD_QUERIES
        faiss.omp_set_num_threads(threads)
        faiss_index.ONE_THREAD_QUERIES = 1 if threads == 1 else 0
        try:
            single = time_calls(lambda i: idx.search(probes[i % n_probes : i % n_probes + 1], K), n_single,
                                budget_s / 2, warmup=3, min_n=5)
        finally:
            faiss.omp_set_num_threads(before)
            faiss_index.ONE_THREAD_QUERIES = before_rule
        row = next(r for r in out["queries"] if r["label"] == label and r["batch"] == 1)
        p50 = pct_ms(single, 50)
        named = f"{label}, {threads} thread" + ("" if threads == 1 else "s")
        out["queries"].append(dict(row, label=named, auto=False, p50_ms=p50, p99_ms=pct_ms(single, 99),
                                   calls=len(single), queries_per_s=round(1 / (p50 / 1e3), 1), omp_threads=threads,
                                   speedup_vs_baseline=ratio(row["baseline_p50_ms"], p50)))
        log(f"  {n}: {named:32s} p50 {p50:8.3f} ms")

    def sweep(idx, name: str, values: list[int]) -> list[dict]:
        """Recall and single-probe latency (one OpenMP thread) of a built index across its search parameter."""
        import faiss

        rows = []
        keep = _params_of(idx)
        threads = faiss.omp_get_max_threads()
        for v in values:
            _set_params(idx, {name: v})
            dist, got = idx.search(probes, K)
            r1, r10 = _recall(dist, got, d0, i0)
            faiss.omp_set_num_threads(1)
            try:
                single = time_calls(lambda i: idx.search(probes[i % n_probes : i % n_probes + 1], K),
                                    min(n_single, 60), budget_s / 6, warmup=2, min_n=5)
            finally:
                faiss.omp_set_num_threads(threads)
            rows.append({name: v, "p50_ms": pct_ms(single, 50), "p99_ms": pct_ms(single, 99),
                         "recall_at_1": r1, "recall_at_10": r10, "omp_threads": 1})
            log(f"  {n}:   {name}={v}: p50 {pct_ms(single, 50):.3f} ms recall@1 {r1:.4f} recall@10 {r10:.4f}")
            if r1 >= 0.999 and r10 >= 0.999:
                break
        _set_params(idx, {name: keep[name]})
        return rows

    measure(exact, "Flat (exact)", "Flat", t_exact_build, auto_idx.factory == "Flat", (exact_first_batch, d0, i0))
    measure_threads(exact, "Flat (exact)", 1)
    if auto_idx is not exact:
        label = f"auto: {auto_idx.factory} " + " ".join(f"{k}={v}" for k, v in _params_of(auto_idx).items()
                                                         if k != "nlist")
        measure(auto_idx, label, auto_idx.factory, t_build, True)
        measure_threads(auto_idx, label, 1)
        measure_threads(auto_idx, label, 2)
        if "efSearch" in _params_of(auto_idx):
            out["auto"]["efSearch_sweep"] = sweep(auto_idx, "efSearch", [16, 32, 64, 128, 256, 512, 1024])
        elif vindex.policy.is_reranked(auto_idx.factory):
            out["auto"]["nprobe_sweep"] = sweep(auto_idx, "nprobe", [64, 128, 256, 384, 512, 640, 768, 1024, 1536])
        else:
            out["auto"]["nprobe_sweep"] = sweep(auto_idx, "nprobe", [8, 16, 32, 64, 128, 256, 512])
    # end to end through the API: index search + identity lookup in SQLite (top 5 identities)
    api = time_calls(lambda i: fs.search_embeddings(probes[i % n_probes], top_k=5), n_single, budget_s / 2,
                     warmup=3, min_n=5)
    out["api_query_p50_ms"] = pct_ms(api, 50)
    out["api_query_p99_ms"] = pct_ms(api, 99)
    del exact
    for spec in indexes if indexes is not None else default_indexes(n):
        factory, _, ps = spec.partition("@")
        params = dict(p.split("=", 1) if "=" in p else (p, "1") for p in ps.split(",")) if ps else {}
        shared = params.pop("shared", None) is not None
        t = time.perf_counter()
        if shared and auto_idx.factory.startswith("IVF"):
            idx = ivf_sharing_quantizer(auto_idx, dim, factory.split(",")[1], x, ids)
            params.setdefault("nprobe", str(_params_of(auto_idx)["nprobe"]))
        else:
            idx = vindex.build(dim, chunks, n, factory, "faiss-cpu")
        bt = time.perf_counter() - t
        _set_params(idx, params)
        label = factory + "".join(f" {k}={v}" for k, v in (params or {
            k: v for k, v in _params_of(idx).items() if k != "nlist"}).items()) + (" (auto's quantizer)" if shared else "")
        measure(idx, label, factory, bt, False)
        if factory.startswith("HNSW"):
            out.setdefault("sweeps", {})[factory] = sweep(idx, "efSearch", [32, 64, 128, 256, 512])
        elif factory.startswith("IVF") and not shared:
            out.setdefault("sweeps", {})[factory] = sweep(idx, "nprobe", [32, 128, 512])
        del idx

    # ---- 6. removal on the auto index, in place ------------------------------------------
    victim = f"person{int(who[0]):07d}"
    gone = ids[labels == who[0]]
    before = fs.indexes.loaded
    t = time.perf_counter()
    removed = fs.remove_identity(victim)
    t_rm = time.perf_counter() - t
    _, got = fs.index().search(probes[:1], K)
    out["remove_identity"] = {"faces": removed, "seconds": round(t_rm, 3), "in_place": fs.indexes.loaded is before,
                              "removed_absent_from_results": bool(not np.isin(got, gone).any()),
                              "what": "FaceSearch.remove_identity: store delete, index remove_ids, index file save"}
    log(f"  {n}: remove_identity {removed} faces in {t_rm:.2f}s (in place: {fs.indexes.loaded is before})")
    fs.close()
    out["process_peak_rss_bytes"] = peak_rss_bytes()
    out["process_rss_end_bytes"] = current_rss_bytes()

    # ---- 7. a fresh serving process: open, load index once, answer queries ----------------
    if serve_check:
        np.save(workdir / f"probes-{n}.npy", probes[:50])
        code = (
            "import json,time,numpy as np;t=time.perf_counter();"
            "from benchmarks.common import peak_rss_bytes,current_rss_bytes;"
            "from facesearch.gallery.facade import FaceSearch;"
            f"fs=FaceSearch.open(home={str(home)!r},device='cpu',backend='faiss-cpu');r0=current_rss_bytes();"
            "fs.index();"
            "t_open=time.perf_counter()-t;"
            f"q=np.load({str(workdir / f'probes-{n}.npy')!r});ts=[]\n"
            "for p in q:\n t=time.perf_counter();fs.search_embeddings(p,top_k=5);ts.append(time.perf_counter()-t)\n"
            "print(json.dumps({'open_s':t_open,'p50_ms':float(np.median(ts)*1e3),"
            "'peak_rss_bytes':peak_rss_bytes(),'rss_before_index_bytes':r0}))"
        )
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parents[1])
        if r.returncode == 0:
            s = json.loads(r.stdout.strip().splitlines()[-1])
            out["serve"] = {"open_and_load_index_s": round(s["open_s"], 2), "api_query_p50_ms": round(s["p50_ms"], 3),
                            "peak_rss_bytes": s["peak_rss_bytes"],
                            "peak_rss_bytes_per_face": round(s["peak_rss_bytes"] / n, 1),
                            "rss_before_index_bytes": s["rss_before_index_bytes"],
                            "index_load_peak_bytes_per_face": round(
                                (s["peak_rss_bytes"] - s["rss_before_index_bytes"]) / n, 1),
                            "what": "a new process: FaceSearch.open (model) + load the index file once, then "
                                    "50 queries via search_embeddings; index_load_peak: peak minus the RSS "
                                    "before loading the index"}
        else:
            out["serve"] = {"error": r.stderr[-2000:]}
    out["seconds"] = round(time.perf_counter() - t_all, 1)
    return out


def main(argv=None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not any(a == "--size" or a.startswith("--size=") for a in args):
        from benchmarks import run  # no gallery size given: the whole benchmark (python benchmarks/scale.py)

        raise SystemExit(run.main(args))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--generator", required=True, help=".npz written by FaceGenerator.save")
    ap.add_argument("--model", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=1000, help="probes per batch call (also the probe set)")
    ap.add_argument("--single", type=int, default=200)
    ap.add_argument("--budget-s", type=float, default=20.0)
    ap.add_argument("--indexes", default=None, help="';'-separated FACTORY[@param=value,...] (default: a set per size)")
    ap.add_argument("--no-serve-check", action="store_true")
    a = ap.parse_args(argv)
    indexes = [s for s in a.indexes.split(";") if s] if a.indexes is not None else None
    res = run_size(a.size, FaceGenerator.load(a.generator), Path(a.model), Path(a.workdir), a.batch, a.single,
                   indexes, budget_s=a.budget_s, serve_check=not a.no_serve_check,
                   log=lambda m: print(m, file=sys.stderr, flush=True))
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
