"""``enroll --workers N`` throughput: one process against N worker processes, into SQLite + the FAISS file
(the default gallery) and into PostgreSQL + pgvector (a real server from tests/pg.py, on 127.0.0.1).

The same LFW images (``--n`` of them, picked as benchmarks/enroll.py picks them, extracted to a folder of
identities) are enrolled into a fresh gallery each time with the default model on the CPU, through
``FaceSearch.enroll_folder(root, workers=N)``, the call ``facesearch enroll --workers N`` makes. The clock
runs from the call to its return: the workers' start-up (a spawned process imports torch and loads the
model) is part of what N workers cost, and so is the parent's index build at the end (SQLite). Workers 1
(in process, torch on every core) is the baseline; the ratio is images/s of N workers over it. The runs
of each backend alternate between worker counts (``--repeats``), and the median is reported.

    flock /tmp/facesearch-bench.lock nice -n 5 python -m benchmarks.enroll_workers --n 600 \\
        --out benchmarks/results/enroll-workers-cpu-2core.json

On a 2-core machine two workers have one core each, which is what torch already uses in one process:
expect no gain beyond what overlapping decoding, hashing and database writes with the other worker's
embedding buys.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine  # noqa: E402
from benchmarks.enroll import extract, select_lfw  # noqa: E402


def one(root: Path, work: Path, workers: int, db_url: str | None, vectors: str | None, model: str | None) -> dict:
    from facesearch.gallery.facade import FaceSearch

    home = Path(tempfile.mkdtemp(prefix="home-", dir=work))
    with FaceSearch.open(home=home, db_url=db_url, model=model, device="cpu", vectors=vectors) as fs:
        t = time.perf_counter()
        report = fs.enroll_folder(root, workers=workers)
        s = time.perf_counter() - t
        stored = fs.store.count_faces()
        in_sync = fs.check_index()["in_sync"] if vectors else None
    shutil.rmtree(home, ignore_errors=True)
    return {"workers": workers, "seconds": round(s, 2), "added": report.added, "failed": len(report.failed),
            "stored": stored, "in_sync": in_sync, "images_per_s": round(report.added / s, 2)}


def run(n: int, workers: list[int], repeats: int, backends: list[str], model: str | None) -> dict:
    work = Path(tempfile.mkdtemp(prefix="fs-bench-enroll-workers-"))
    server = None
    rows, notes = [], []
    try:
        folder, enroll, probes = select_lfw(n)
        root, enrolled, _ = extract(folder, enroll, probes, work / "lfw")
        for backend in backends:
            runs: dict[int, list[dict]] = {w: [] for w in workers}
            for _ in range(repeats):
                for w in workers:
                    db_url = vectors = None
                    if backend == "postgresql+pgvector":
                        if server is None:
                            from tests import pg

                            server = pg.start()
                        db_url, vectors = server.url(server.create_database()), "pgvector"
                    r = one(root, work, w, db_url, vectors, model)
                    if r["added"] != len(enrolled) or r["failed"] or r["stored"] != len(enrolled):
                        notes.append(f"{backend} workers {w}: added {r['added']}, failed {r['failed']}, stored "
                                     f"{r['stored']} of {len(enrolled)}")
                    runs[w].append(r)
                    print(f"{backend} workers {w}: {r['images_per_s']} images/s", file=sys.stderr, flush=True)
            base = statistics.median(r["images_per_s"] for r in runs[workers[0]])
            for w in workers:
                ips = statistics.median(r["images_per_s"] for r in runs[w])
                rows.append({"backend": backend, "workers": w, "images": len(enrolled),
                             "images_per_s": round(ips, 2), f"ratio_vs_{workers[0]}": round(ips / base, 3),
                             "runs": runs[w]})
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    from facesearch.model import files

    return {"benchmark": "enroll_workers", "images": n, "model": files.location_of(model or "default"),
            "data": "LFW deep-funneled 112 px pack (aligned crops, no detection), benchmarks/enroll.py's pick",
            "repeats": repeats, "rows": rows, "notes": notes, "machine": machine(), "nice": os.nice(0),
            "cpu_count": os.cpu_count()}


def table(res: dict) -> str:
    base = res["rows"][0]["workers"] if res["rows"] else 1
    lines = [f"{res['images']} LFW images, model {res['model']}, median of {res['repeats']}", "",
             f"| gallery | workers | images/s | vs {base} worker |", "|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['backend']} | {r['workers']} | {r['images_per_s']} | {r[f'ratio_vs_{base}']} |")
    return "\n".join(lines + [f"- {n}" for n in res["notes"]])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=600, help="images to enroll")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts; the first is the baseline")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--backends", default="sqlite,postgresql+pgvector")
    ap.add_argument("--model", default=None, help="a model directory or name (default: the shipped default)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    res = run(a.n, [int(w) for w in a.workers.split(",")], a.repeats, a.backends.split(","), a.model)
    res["table"] = table(res)
    print(res["table"])
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
