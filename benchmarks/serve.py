#!/usr/bin/env python
"""`facesearch serve` under load on loopback: query latency and throughput at 1, 8 and 32 concurrent
clients, with micro-batching on and off, against one CLI process per query (the baseline).

    python -m benchmarks.serve [--faces 10000] [--seconds 8] [--clients 1,8,32] [--cli-runs 5]

Set-up: a temporary home with the built-in model; ``--real`` LFW people enrolled through the library
(3 aligned crops each), then random unit vectors added to the store under made-up identities until the
gallery holds ``--faces`` faces (a 1:N search's cost depends on how many faces there are, not on who they
are; the index is built by the gallery's own policy). Probes are other LFW images of the enrolled people,
uploaded as files. Each cell runs a fresh set of client threads (one keep-alive connection each, sending
requests back to back) for ``--seconds`` after one second of warm-up. The clients run on the same 2 cores
as the server, and so load both modes alike.

Writes benchmarks/results/serve-<machine>.json and prints a table: p50/p99 latency, requests a second,
errors, and each mode's throughput against one client without batching and against the CLI.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import LFW_ZIP, machine, ratio, write_result  # noqa: E402
from tests import serving  # noqa: E402


def lfw_people(z: zipfile.ZipFile, n: int, per_person: int) -> dict[str, list[str]]:
    by: dict[str, list[str]] = {}
    for name in sorted(z.namelist()):
        if name.endswith(".webp"):
            by.setdefault(name.split("/")[-2], []).append(name)
    chosen = [p for p in sorted(by) if len(by[p]) > per_person][:n]
    return {p: by[p] for p in chosen}


def build_gallery(home: Path, faces: int, real: int) -> tuple[list[tuple[str, bytes]], dict]:
    """Enroll ``real`` LFW people (3 crops each), pad with random unit vectors to ``faces``; the probes."""
    from facesearch.gallery import FaceSearch

    z = zipfile.ZipFile(LFW_ZIP)
    people = lfw_people(z, real, 3)
    t = time.perf_counter()
    with FaceSearch.open(home=home, device="cpu") as fs:
        report = fs.enroll_items([(p, f"lfw:{m}", z.read(m)) for p, ms in people.items() for m in ms[:3]])
        enrolled_s = time.perf_counter() - t
        dim = fs.config.embedding_dim
        rng = np.random.default_rng(0)
        left = faces - report.added
        t = time.perf_counter()
        for start in range(0, left, 5000):
            n = min(5000, left - start)
            emb = rng.standard_normal((n, dim)).astype(np.float32)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            rows = [(f"synthetic-{(start + i) // 3:05d}", f"synthetic:{start + i}", uuid.uuid4().hex * 2, e, None)
                    for i, e in enumerate(emb)]
            fs.store.add_faces(fs.model_id, rows)
        fs.rebuild_index()
        total, index = fs.store.count_faces(), fs.index().factory
    probes = [(f"{p}.webp", z.read(ms[3])) for p, ms in people.items()]
    return probes, {"faces": total, "real_faces": report.added, "real_people": len(people), "index": index,
                    "enroll_s": round(enrolled_s, 1), "padding_s": round(time.perf_counter() - t, 1)}


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"probe\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/webp\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def load(port: int, probes: list[tuple[str, bytes]], clients: int, seconds: float) -> dict:
    bodies = [multipart(n, d) for n, d in probes]
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start_at = time.monotonic() + 0.2
    warm_until, stop_at = start_at + 1.0, start_at + 1.0 + seconds

    def client(c: int):
        conn = http.client.HTTPConnection(serving.HOST, port, timeout=60)
        i = c
        while time.monotonic() < start_at:
            time.sleep(0.005)
        while True:
            t0 = time.monotonic()
            if t0 >= stop_at:
                break
            body, kind = bodies[i % len(bodies)]
            i += clients
            try:
                conn.request("POST", "/v1/query?top_k=5", body, {"Content-Type": kind})
                r = conn.getresponse()
                payload = r.read()
                ok = r.status == 200 and b'"matches"' in payload
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(serving.HOST, port, timeout=60)
            t1 = time.monotonic()
            if t0 >= warm_until:
                lat[c].append(t1 - t0)
                errors[c] += not ok
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    all_lat = np.asarray([x for xs in lat for x in xs])
    n = len(all_lat)
    return {"clients": clients, "requests": n, "errors": int(sum(errors)),
            "p50_ms": round(float(np.percentile(all_lat, 50)) * 1e3, 2) if n else None,
            "p99_ms": round(float(np.percentile(all_lat, 99)) * 1e3, 2) if n else None,
            "requests_per_s": round(n / seconds, 2)}


def batch_sizes(port: int) -> dict:
    conn = http.client.HTTPConnection(serving.HOST, port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("facesearch_embed_batch_size_sum"):
            total = float(line.split()[-1])
        elif line.startswith("facesearch_embed_batch_size_count"):
            count = float(line.split()[-1])
    return {"forward_passes": int(count), "mean_batch": round(total / count, 2) if count else None}


def cli_query(home: Path, probe: Path, runs: int) -> dict:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "facesearch", "--home", str(home), "--device", "cpu", "query",
                            str(probe), "--json"], capture_output=True, text=True, timeout=300)
        times.append(time.perf_counter() - t)
        if r.returncode != 0:
            raise RuntimeError(f"facesearch query failed: {r.stderr[-2000:]}")
    return {"runs": runs, "median_s": round(float(np.median(times)), 3), "min_s": round(min(times), 3),
            "requests_per_s": round(1 / float(np.median(times)), 3)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=10_000)
    ap.add_argument("--real", type=int, default=200, help="LFW people enrolled from their images")
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds per cell")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--cli-runs", type=int, default=5)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="facesearch-serve-bench-"))
    try:
        home = work / "home"
        probes, gallery = build_gallery(home, args.faces, args.real)
        print(f"gallery: {gallery}", file=sys.stderr)
        modes = {}
        for mode, flags in (("batching", []), ("no_batching", ["--no-batching"])):
            server = serving.start(home, "--no-auth", "--rate", "1000000", "--burst", "1000000", *flags,
                                   log=work / f"{mode}.log")
            try:
                modes[mode] = {"cells": [load(server.port, probes, c, args.seconds) for c in clients]}
                modes[mode].update(batch_sizes(server.port))
            finally:
                server.stop()
            print(f"{mode}: {modes[mode]}", file=sys.stderr)
        probe = work / probes[0][0]
        probe.write_bytes(probes[0][1])
        cli = cli_query(home, probe, args.cli_runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    one = next(c for c in modes["no_batching"]["cells"] if c["clients"] == min(clients))["requests_per_s"]
    for mode in modes.values():
        for c in mode["cells"]:
            c["throughput_vs_one_client_unbatched"] = ratio(c["requests_per_s"], one)
            c["throughput_vs_cli"] = ratio(c["requests_per_s"], cli["requests_per_s"])
    res = {"benchmark": "serve", "machine": info, "gallery": gallery, "seconds_per_cell": args.seconds,
           "modes": modes, "baseline_cli_process_per_query": cli,
           "note": "clients and server share the machine's cores; latencies are from the client's side"}
    path = write_result(res, args.out, "serve")
    print(table(res))
    print(f"wrote {path}")
    return res


def table(res: dict) -> str:
    rows = ["| mode | clients | p50 ms | p99 ms | requests/s | errors | vs 1 client unbatched | vs CLI |",
            "|---|---|---|---|---|---|---|---|"]
    for name, mode in res["modes"].items():
        for c in mode["cells"]:
            rows.append(f"| {name.replace('_', ' ')} | {c['clients']} | {c['p50_ms']} | {c['p99_ms']} | "
                        f"{c['requests_per_s']} | {c['errors']} | {c['throughput_vs_one_client_unbatched']}x | "
                        f"{c['throughput_vs_cli']}x |")
    cli = res["baseline_cli_process_per_query"]
    rows.append(f"| CLI process per query | 1 | {cli['median_s'] * 1e3:.0f} | - | {cli['requests_per_s']} | 0 | "
                f"- | 1.0x |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
