"""GPU figures (run only where torch sees CUDA): exact search in torch and embedding throughput.

Part of ``python -m benchmarks.run``; alone (needs torch, not faiss or SQLAlchemy)::

    python -m benchmarks.gpu --model DIR --out benchmarks/results/scale-h100-gpu.json

* Exact search with :class:`facesearch.index.TorchIndex` (matmul + top-k) in fp16 and fp32 storage, on
  galleries of 1M and 10M unit vectors, one probe per call and 1,000 probes per call. The baseline is the
  plain numpy brute force on the host CPU (one probe, face_recognition style), as on the CPU benchmark.
  Exact search time does not depend on how the vectors are distributed, so the gallery is drawn from the
  fitted generator only when it is small enough to do so quickly; otherwise Gaussian unit vectors.
* Embedding throughput of the encoder on the GPU (batches of 256 aligned 112 px crops, fp32 and autocast
  fp16), against the same model on the host CPU.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.common import pct_ms, ratio

K = 10


def available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def search(sizes=(1_000_000, 10_000_000), batches=(1, 1000), dtypes=("float16", "float32"), dim: int = 128,
           device: str = "cuda", n_single: int = 200, log=print) -> list[dict]:
    import torch

    from facesearch import index as vindex

    rows = []
    g = torch.Generator(device=device).manual_seed(0)
    for n in sizes:
        x = torch.randn((n, dim), generator=g, device=device, dtype=torch.float32)
        x = torch.nn.functional.normalize(x, dim=1)
        probes = torch.nn.functional.normalize(torch.randn((max(batches), dim), generator=g, device=device), dim=1)
        probes_np = probes.cpu().numpy()
        # baseline: numpy brute force on the host, one probe (a few calls: it is slow at 10M)
        host = None
        base = []
        try:
            host = x.cpu().numpy()
            for i in range(5):
                t = time.perf_counter()
                d = np.linalg.norm(host - probes_np[i], axis=1)
                np.argpartition(d, K)[:K]
                base.append(time.perf_counter() - t)
                if sum(base) > 8:
                    break
        except MemoryError:
            base = []
        del host
        base_p50 = pct_ms(base, 50) if base else None
        for dt in dtypes:
            idx = vindex.TorchIndex(dim, device=device, dtype=dt)
            idx.vectors = x.to(getattr(torch, dt))
            idx.ids = torch.arange(1, n + 1, device=device, dtype=torch.int64)
            for b in batches:
                q = probes_np[:b]
                for _ in range(3):
                    idx.search(q, K)
                _sync()
                times = []
                t_end = time.perf_counter() + 10
                for i in range(n_single if b == 1 else 30):
                    qi = probes_np[i % len(probes_np) : i % len(probes_np) + 1] if b == 1 else q
                    t = time.perf_counter()
                    idx.search(qi, K)  # returns numpy: includes the device sync and copy back
                    times.append(time.perf_counter() - t)
                    if time.perf_counter() > t_end and len(times) >= 5:
                        break
                p50 = pct_ms(times, 50)
                rows.append({"index": f"TorchFlat-{dt}", "label": f"torch exact {dt}", "gallery": n,
                             "device": "cuda" if device == "cuda" else device,
                             "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
                             "batch": b, "p50_ms": p50,
                             "p99_ms": pct_ms(times, 99), "calls": len(times),
                             "queries_per_s": round(b / (p50 / 1e3), 1),
                             "recall_at_1": 1.0 if dt == "float32" else None,
                             "recall_at_10": 1.0 if dt == "float32" else None,
                             "baseline_p50_ms": round(base_p50 * b, 3) if base_p50 else None,
                             "baseline_method": "numpy brute force on the host CPU, one probe per call; for a "
                                                "batch, that time x batch (extrapolated)",
                             "speedup_vs_baseline": ratio(base_p50 * b, p50) if base_p50 else None,
                             "index_bytes": int(idx.memory_bytes()),
                             "index_bytes_per_face": round(idx.memory_bytes() / n, 1)})
                log(f"  gpu {n}: {dt} batch {b}: p50 {p50:.3f} ms")
            del idx
        # fp16 recall against fp32 at the largest batch
        try:
            i16 = vindex.TorchIndex(dim, device=device, dtype="float16")
            i16.vectors, i16.ids = x.half(), torch.arange(1, n + 1, device=device, dtype=torch.int64)
            i32 = vindex.TorchIndex(dim, device=device, dtype="float32")
            i32.vectors, i32.ids = x, i16.ids
            d16, a = i16.search(probes_np, K)
            d32, b_ = i32.search(probes_np, K)
            r1 = float(np.mean((a[:, 0] == b_[:, 0]) | (d16[:, 0] <= d32[:, 0] + 1e-3)))
            r10 = float(np.mean([len(set(u) & set(v)) / K for u, v in zip(a.tolist(), b_.tolist())]))
            for r in rows:
                if r["gallery"] == n and r["index"] == "TorchFlat-float16":
                    r["recall_at_1"], r["recall_at_10"] = round(r1, 4), round(r10, 4)
            del i16, i32
        except Exception as e:  # pragma: no cover - GPU memory limits
            log(f"  gpu {n}: fp16 recall check skipped: {e}")
        del x
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def embedding(model_dir, device: str = "cuda", batch: int = 256, seconds: float = 10.0, log=print) -> dict:
    import torch

    from facesearch.model import encoder

    out = {}
    x = np.random.default_rng(0).integers(0, 256, (batch, 3, 112, 112), dtype=np.uint8)
    for dev in (device, "cpu"):
        model = encoder.load(model_dir, dev)
        for mode in (("fp32", "fp16") if dev != "cpu" else ("fp32",)):
            def run():
                if mode == "fp16":
                    with torch.autocast("cuda", dtype=torch.float16):
                        return encoder.embed(model, x, batch_size=batch)
                return encoder.embed(model, x, batch_size=batch)

            run()
            _sync()
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < (seconds if dev != "cpu" else seconds / 2):
                run()
                n += batch
            _sync()
            out[f"{dev if dev == 'cpu' else 'cuda'}_{mode}_images_per_s"] = round(n / (time.perf_counter() - t0), 1)
    out["baseline_images_per_s"] = out.get("cpu_fp32_images_per_s")
    out["method"] = f"encoder.embed on uint8 crops, batch {batch}, host-to-device copy included; baseline: the host CPU"
    log(f"  gpu embedding: {out}")
    return out


def main(argv=None) -> int:
    import argparse
    import json
    import sys
    from pathlib import Path

    from benchmarks import common
    from benchmarks.run import parse_size, targets

    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description="exact GPU search and embedding")
    ap.add_argument("--model", help="model directory for the embedding throughput (default: skip it)")
    ap.add_argument("--sizes", default="1M,10M")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if not available():
        print("no CUDA device visible to torch: nothing to measure", file=sys.stderr)
        return 1
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    res = {"machine": common.machine(), "queries": search([parse_size(s) for s in a.sizes.split(",")], log=log)}
    if a.model:
        res["gpu"] = {"embedding": embedding(a.model, log=log)}
    res["total_s"] = round(time.perf_counter() - t0, 1)
    res["targets"] = targets(res)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    for r in res["queries"]:
        print(f"{r['label']:22s} {r['gallery']:>9,d} batch {r['batch']:5d}  p50 {r['p50_ms']:9.3f} ms  "
              f"p99 {r['p99_ms']:9.3f} ms  R@1 {r['recall_at_1']}  x{r['speedup_vs_baseline']} vs numpy")
    for t in res["targets"]:
        print(f"  [{ {True: 'MET ', False: 'MISS', None: 'n/a '}[t['met']] }] {t['target']}: {t['reached']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
