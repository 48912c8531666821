#!/usr/bin/env python
"""Memory and time of saving and loading the index file, facesearch against a one-buffer baseline.

    python -m benchmarks.index_io [--faces 1000000] [--factory Flat] [--rounds 3]

* ``facesearch``: ``index.save`` / ``index.load`` as the service runs them: the FAISS payload streamed in
  pieces (hashed in one pass, written or read in another), never held as a second copy.
* ``baseline``: the obvious code (and facesearch's before): ``faiss.serialize_index(...).tobytes()``,
  header + payload concatenated and written; on load ``read_bytes()``, slice, SHA-256,
  ``faiss.deserialize_index``.

Each measurement runs in a fresh process holding a random unit-vector index of ``--faces`` faces; it
resets the kernel's peak-RSS mark (``/proc/self/clear_refs``) just before the operation and reports
``peak - rss_before`` per face next to the index's own size per face. Both modes read and write the same
file format. Writes benchmarks/results/index-io-<machine>.json and prints a table with ratios.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import current_rss_bytes, machine, peak_rss_bytes, ratio, write_result  # noqa: E402


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _build(faces: int, dim: int, factory: str, seed: int = 0):
    from facesearch import index as vindex

    rng = np.random.default_rng(seed)
    chunk = 50_000

    def chunks():
        for start in range(0, faces, chunk):
            x = rng.standard_normal((min(chunk, faces - start), dim), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            yield np.arange(start + 1, start + 1 + len(x), dtype=np.int64), x

    return vindex.build(dim, chunks(), faces, factory, "faiss-cpu")


def _baseline_save(index, path: Path, stamp) -> None:
    import faiss

    from facesearch import index as vindex
    from facesearch.model.config import write_private_atomic

    payload = faiss.serialize_index(index.cpu_index).tobytes()
    header = dict(stamp.__dict__, format=vindex.FORMAT, sha256=hashlib.sha256(payload).hexdigest(),
                  size=len(payload))
    hb = json.dumps(header, sort_keys=True).encode()
    write_private_atomic(path, vindex.MAGIC + struct.pack("<I", len(hb)) + hb + payload)


def _baseline_load(path: Path, stamp):
    import faiss

    from facesearch import index as vindex

    _, header = vindex.read_stamp(path)
    data = path.read_bytes()
    off = len(vindex.MAGIC) + 4 + struct.unpack_from("<I", data, len(vindex.MAGIC))[0]
    payload = data[off:]
    if hashlib.sha256(payload).hexdigest() != header["sha256"]:
        raise RuntimeError("checksum")
    return vindex.FaissIndex(stamp.dim, stamp.factory, index=faiss.deserialize_index(np.frombuffer(payload, np.uint8)))


def child(op: str, mode: str, path: Path, faces: int, dim: int, factory: str) -> dict:
    """One measurement in this (fresh) process; prints a JSON line."""
    from facesearch import index as vindex

    if op == "save":
        idx = _build(faces, dim, factory)
        stamp = vindex.Stamp("bench", 1, idx.ntotal, dim, idx.factory, "faiss-cpu")
        r0 = current_rss_bytes()
        reset = _reset_peak()
        t = time.perf_counter()
        (vindex.save if mode == "facesearch" else _baseline_save)(idx, path, stamp)
        dt = time.perf_counter() - t
    else:
        stamp, _ = vindex.read_stamp(path)
        import faiss  # noqa: F401  (imported before the baseline so neither pays for it)

        r0 = current_rss_bytes()
        reset = _reset_peak()
        t = time.perf_counter()
        idx = vindex.load(path, stamp, "faiss-cpu") if mode == "facesearch" else _baseline_load(path, stamp)
        dt = time.perf_counter() - t
        assert idx.ntotal == faces
    peak = peak_rss_bytes()
    return {"op": op, "mode": mode, "seconds": round(dt, 3), "rss_before_bytes": r0, "peak_bytes": peak,
            "extra_peak_bytes_per_face": round((peak - r0) / faces, 1), "peak_reset": reset}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faces", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--factory", default="Flat")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", nargs=3, metavar=("OP", "MODE", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        op, mode, path = args.child
        print(json.dumps(child(op, mode, Path(path), args.faces, args.dim, args.factory)))
        return 0

    def run_child(op, mode, path):
        cmd = [sys.executable, "-m", "benchmarks.index_io", "--faces", str(args.faces), "--dim", str(args.dim),
               "--factory", args.factory, "--child", op, mode, str(path)]
        out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    info = machine()
    rows: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="fs-index-io-") as tmp:
        path = Path(tmp) / "index.fsx"
        run_child("save", "facesearch", path)  # the file every load reads
        file_bytes = path.stat().st_size
        for _ in range(args.rounds):
            for op in ("save", "load"):
                for mode in ("facesearch", "baseline"):
                    target = path if op == "load" else Path(tmp) / f"out-{mode}.fsx"
                    rows.setdefault((op, mode), []).append(run_child(op, mode, target))
            # both modes wrote the same bytes
            a, b = (Path(tmp) / "out-facesearch.fsx").read_bytes(), (Path(tmp) / "out-baseline.fsx").read_bytes()
            assert a == b, "facesearch and baseline wrote different files"
    index_bpf = file_bytes / args.faces
    table = []
    for (op, mode), rs in rows.items():
        table.append({"op": op, "mode": mode, "rounds": len(rs),
                      "seconds": float(np.median([r["seconds"] for r in rs])),
                      "extra_peak_bytes_per_face": float(np.median([r["extra_peak_bytes_per_face"] for r in rs])),
                      "runs": rs})
    for r in table:
        base = next(x for x in table if x["op"] == r["op"] and x["mode"] == "baseline")
        r["peak_ratio_vs_baseline"] = ratio(r["extra_peak_bytes_per_face"], base["extra_peak_bytes_per_face"])
        r["time_ratio_vs_baseline"] = ratio(r["seconds"], base["seconds"])
        r["peak_over_index_size"] = round(r["extra_peak_bytes_per_face"] / index_bpf, 2)
    res = {"benchmark": "index file save/load: peak memory and time, streamed (facesearch) vs one buffer (baseline)",
           "faces": args.faces, "dim": args.dim, "factory": args.factory, "file_bytes": file_bytes,
           "index_bytes_per_face": round(index_bpf, 1), "results": table, "machine": info,
           "note": "extra peak: the process's peak RSS during the operation minus its RSS just before, per face "
                   "(save: the index is already in memory; load: it is being built). Median over rounds."}
    out = write_result(res, args.out, "index-io")
    print(f"\n{args.faces:,} faces, {args.factory}, index file {index_bpf:.0f} B/face")
    print(f"{'op':5s} {'mode':11s} {'seconds':>8s} {'extra peak B/face':>18s} {'x index':>8s} {'peak ratio':>11s} "
          f"{'time ratio':>11s}")
    for r in table:
        print(f"{r['op']:5s} {r['mode']:11s} {r['seconds']:8.2f} {r['extra_peak_bytes_per_face']:18.1f} "
              f"{r['peak_over_index_size']:8.2f} {r['peak_ratio_vs_baseline']:11.2f} {r['time_ratio_vs_baseline']:11.2f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
