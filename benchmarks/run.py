"""Speed and scale benchmarks of facesearch: one command, a table on stdout, a JSON file.

    .venv/bin/python -m benchmarks.run                      # full: LFW enroll + 10k, 100k, 1M galleries
    .venv/bin/python -m benchmarks.run --quick              # smoke run, about a minute
    .venv/bin/python -m benchmarks.run --model DIR --sizes 10k,100k

Steps: (1) enroll a folder of LFW images end to end with ``FaceSearch.enroll_folder`` and with a
hand-rolled sequential baseline; the candidate models side by side (``benchmarks.models``: enroll images/s
and single-query latency of the old MobileNetV2, SFace fp32, fp16-stored and on ONNX Runtime); (2) fit the synthetic face generator to the model's genuine and impostor
distances on those LFW images; (3) for each gallery size, in its own process, insert synthetic faces
through the store, build the indexes, time queries against a numpy brute-force baseline, and measure
recall and memory; (4) on a CUDA machine, exact torch search at 1M and 10M and embedding throughput.
See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script (python benchmarks/run.py): make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

QUICK = {"sizes": "5k", "enroll_images": 150, "baseline_images": 20, "batch": 100, "single": 30, "budget": 2.0,
         "models": "quick"}
FULL = {"sizes": "10k,100k,1M", "enroll_images": 2000, "baseline_images": 200, "batch": 1000, "single": 200,
        "budget": 12.0, "models": "full"}


def parse_size(s: str) -> int:
    s = s.strip().lower().replace("_", "")
    mult = {"k": 1_000, "m": 1_000_000}.get(s[-1:], 1)
    return int(float(s[:-1] if s[-1:] in "km" else s) * mult)


def _fmt_n(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else (
        f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n))


def _f(v, nd=2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{nd}f}"
    return str(v)


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[_f(c) if not isinstance(c, str) else c for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r))  # noqa: E731
    return "\n".join([line(cells[0]), "  ".join("-" * x for x in w)] + [line(r) for r in cells[1:]])


def _ratio(run: dict, enroll: dict) -> float:
    """A run's images/s over the same run's torch enroll, unrounded (a goal is judged on this, never on the
    two-decimal ratio kept in the JSON: 1.4975 is not 1.5)."""
    return run["images_per_s"] / enroll["torch"]["images_per_s"]


def targets(res: dict) -> list[dict]:
    q = res["queries"]
    out = []
    cpu_1m = [r for r in q if r["device"] == "cpu" and r["gallery"] == 1_000_000 and r["batch"] == 1]
    auto = [r for r in cpu_1m if r.get("auto")]
    good = [r for r in cpu_1m if (r["recall_at_1"] or 0) >= 0.99]
    best = min(good, key=lambda r: r["p50_ms"]) if good else None
    if auto:
        a = auto[0]
        out.append({"target": "1M gallery, 2-core CPU: single-probe p50 < 1 ms with recall@1 >= 0.99 (auto index; issue 20)",
                    "reached": f"{a['label']}: p50 {a['p50_ms']:.2f} ms, recall@1 {a['recall_at_1']:.4f}, "
                               f"built in {a.get('build_s')} s",
                    "met": bool(a["p50_ms"] < 1 and a["recall_at_1"] >= 0.99)})
    if best is not None:
        out.append({"target": "1M gallery: fastest measured index with recall@1 >= 0.99",
                    "reached": f"{best['label']}: p50 {best['p50_ms']:.2f} ms, recall@1 {best['recall_at_1']:.4f}",
                    "met": bool(best["p50_ms"] < 5)})
    if not cpu_1m:
        out.append({"target": "1M gallery single-probe p50 < 5 ms", "reached": "not run (1M not in --sizes)",
                    "met": None})
    e = res.get("enroll")
    if e:
        out.append({"target": ">= 200 aligned images/s enroll on this CPU (end to end)",
                    "reached": f"{e['images_per_s']:.1f} images/s ({e['images']} LFW images)",
                    "met": bool(e["images_per_s"] >= 200)})
        if e.get("torch"):
            out.append({"target": "enroll through ONNX Runtime >= 1.5x the same model through torch, same run (issue 20)",
                        "reached": f"{e.get('runtime')}: {e['images_per_s']:.1f} images/s, torch "
                                   f"{e['torch']['images_per_s']:.1f}: {_ratio(e, e):.3f}x",
                        "met": bool(e.get("runtime") == "onnx" and _ratio(e, e) >= 1.5)})
            if (e.get("int8") or {}).get("images_per_s"):
                out.append({"target": "enroll through the int8 copy >= 1.5x the same model through torch, same run (issue 20)",
                            "reached": f"{e['int8']['images_per_s']:.1f} images/s vs torch "
                                       f"{e['torch']['images_per_s']:.1f}: {_ratio(e['int8'], e):.3f}x",
                            "met": bool(_ratio(e["int8"], e) >= 1.5)})
    c = res.get("cli")
    if c and c.get("query"):
        cq = c["query"]
        out.append({"target": "facesearch query, one image, 1,000-face gallery: < 1 s wall time (issue 20)",
                    "reached": f"{cq['onnx_median_s']:.2f} s through ONNX Runtime, {cq['torch_median_s']:.2f} s "
                               f"through torch ({cq['torch_over_onnx']}x)",
                    "met": bool(cq["met"])})
    gpu = [r for r in q if r["device"] == "cuda" and r["gallery"] == 1_000_000]
    if gpu:
        one = min((r for r in gpu if r["batch"] == 1), key=lambda r: r["p50_ms"], default=None)
        thou = min((r for r in gpu if r["batch"] == 1000), key=lambda r: r["p50_ms"], default=None)
        if one:
            out.append({"target": "GPU: 1M exact, one probe < 1 ms",
                        "reached": f"{one['label']}: {one['p50_ms']:.3f} ms",
                        "met": bool(one["p50_ms"] < 1)})
        if thou:
            out.append({"target": "GPU: 1,000 probes x 1M < 5 ms",
                        "reached": f"{thou['label']}: {thou['p50_ms']:.3f} ms",
                        "met": bool(thou["p50_ms"] < 5)})
    else:
        out.append({"target": "GPU targets (1M exact single < 1 ms; 1,000 x 1M < 5 ms)",
                    "reached": "not run: no CUDA device in this run", "met": None})
    flat = [r for r in q if r["index"] == "Flat" and r["device"] == "cpu" and r["batch"] == 1]
    if flat:
        big = max(flat, key=lambda r: r["gallery"])
        out.append({"target": "exact index memory within 1.2x of raw vector bytes",
                    "reached": f"Flat at {_fmt_n(big['gallery'])}: {big['index_bytes_vs_raw']:.3f}x raw "
                               f"({big['index_bytes_per_face']:.0f} B/face)",
                    "met": bool(big["index_bytes_vs_raw"] <= 1.2)})
    return out


#: issue 20's goals, checked by ``issue20`` (the figures are the run's own; the limits are the issue's)
GOAL_1M_P50_MS, GOAL_RECALL, GOAL_CLI_S, GOAL_ENROLL_RATIO = 1.0, 0.99, 1.0, 1.5
GOAL_GPU_1000X1M_MS, GOAL_GPU_10M_MS = 3.0, 1.0


def issue20(res: dict) -> list[dict]:
    """One row per goal of issue 20: what this run measured, against the baseline measured in the same run.
    ``met`` is True/False, or None when the part did not run here or has no limit (``measured`` says which);
    ``detail`` says what was measured."""
    q = res.get("queries", [])
    out: list[dict] = []

    def row(goal, target, measured, baseline="-", ratio="-", met=None, detail=""):
        out.append({"goal": goal, "target": target, "measured": measured, "baseline": baseline, "ratio": ratio,
                    "met": met, "detail": detail})

    one = [r for r in q if r["device"] == "cpu" and r["gallery"] == 1_000_000 and r["batch"] == 1]
    auto = next((r for r in one if r.get("auto")), None)
    exact = next((r for r in one if r["index"] == "Flat" and "thread" not in r["label"]), None)
    goal, target = "1M faces, CPU, one probe, auto index", f"p50 < {GOAL_1M_P50_MS:g} ms, R@1 >= {GOAL_RECALL}"
    if auto is None:
        row(goal, target, "not run (1M not in --sizes)")
    else:
        row(goal, target, f"{auto['p50_ms']:.2f} ms, R@1 {auto['recall_at_1']:.3f}",
            f"exact Flat {exact['p50_ms']:.2f} ms" if exact else f"numpy {auto['baseline_p50_ms']:.0f} ms",
            f"{exact['p50_ms'] / auto['p50_ms']:.1f}x" if exact else f"{auto['speedup_vs_baseline']:.1f}x",
            bool(auto["p50_ms"] < GOAL_1M_P50_MS and auto["recall_at_1"] >= GOAL_RECALL),
            f"{auto['label']}, built in {auto.get('build_s')} s; recall against exact search on the same probes; "
            f"numpy brute force {auto['baseline_p50_ms']:.0f} ms")
    big = next((s for s in res.get("scale", []) if s["gallery"] == 1_000_000), None)
    if big is not None:
        rm = big["remove_identity"]
        row("1M faces, removal in place", "no rebuild", f"{rm['seconds']:.2f} s",
            f"rebuild {big['auto']['rebuild_index_s']:.0f} s", "-",
            bool(rm["in_place"] and rm["removed_absent_from_results"]),
            f"remove_identity of {rm['faces']} faces: in place {rm['in_place']}, gone from results "
            f"{rm['removed_absent_from_results']}")
    c = res.get("cli") or {}
    goal = f"`facesearch query`, 1 image, {(c.get('gallery') or {}).get('faces', 1000):,} faces"
    if c.get("query"):
        cq = c["query"]
        row(goal, f"< {GOAL_CLI_S:g} s wall", f"{cq['onnx_median_s']:.2f} s", f"torch path {cq['torch_median_s']:.2f} s",
            f"{cq['torch_over_onnx']:.2f}x", bool(cq["onnx_median_s"] < GOAL_CLI_S),
            f"fresh process each, median of {c['rounds']} rounds, ONNX Runtime against the same CLI without it")
    else:
        row(goal, f"< {GOAL_CLI_S:g} s wall", f"not run ({c.get('skipped', 'no CLI part')})")
    e = res.get("enroll") or {}
    goal, target = "enroll, same model, ONNX Runtime vs torch", f">= {GOAL_ENROLL_RATIO}x torch"
    if e.get("torch"):
        row(goal, target, f"{e['images_per_s']:.1f} images/s", f"torch {e['torch']['images_per_s']:.1f} images/s",
            f"{_ratio(e, e):.3f}x", bool(e.get("runtime") == "onnx" and _ratio(e, e) >= GOAL_ENROLL_RATIO),
            f"FaceSearch.enroll_folder on {e['images']} LFW images, runtime {e.get('runtime')}")
    else:
        row(goal, target, "not run (no torch comparison in this run)")
    i8 = e.get("int8") or {}
    goal = "enroll, int8 copy (model quantize) vs torch fp32"
    if i8.get("images_per_s") and e.get("torch"):
        row(goal, target, f"{i8['images_per_s']:.1f} images/s", f"torch {e['torch']['images_per_s']:.1f} images/s",
            f"{_ratio(i8, e):.3f}x", bool(_ratio(i8, e) >= GOAL_ENROLL_RATIO),
            f"the same folder, {i8['model_key']}; its LFW accuracy: benchmarks/int8.py")
    elif e.get("torch"):
        row(goal, target, f"not run ({i8.get('skipped', 'no int8 part in this run')})")
    g = res.get("gpu") or {}
    gq = [r for r in q if r["device"] == "cuda"]
    why = g.get("skipped") or ("no GPU rows" if not gq else "not measured")
    for goal, n, b, lim in (("GPU, 1,000 probes x 1M faces", 1_000_000, 1000, GOAL_GPU_1000X1M_MS),
                            ("GPU, 10M faces, one probe, fp16", 10_000_000, 1, GOAL_GPU_10M_MS)):
        rs = [r for r in gq if r["gallery"] == n and r["batch"] == b and (b != 1 or "16" in r["label"])]
        best = min(rs, key=lambda r: r["p50_ms"], default=None)
        if best is None:
            row(goal, f"< {lim:g} ms", f"skipped ({why})")
        else:
            row(goal, f"< {lim:g} ms", f"{best['p50_ms']:.3f} ms",
                f"numpy {best['baseline_p50_ms']:,.0f} ms" if best.get("baseline_p50_ms") else "-",
                f"{best['speedup_vs_baseline']:,.0f}x" if best.get("speedup_vs_baseline") else "-",
                bool(best["p50_ms"] < lim), f"{best['label']}; baseline numpy on the host CPU"
                + (", one probe's time x 1,000" if b > 1 else ""))
    emb = g.get("embedding")
    if emb:
        row("GPU, embedding, batch 256", "(no limit)", f"{emb.get('cuda_fp16_images_per_s')} images/s fp16",
            f"host CPU {emb.get('baseline_images_per_s')} images/s", "-", None,
            f"fp32 {emb.get('cuda_fp32_images_per_s')} images/s")
    else:
        row("GPU, embedding, batch 256", "(no limit)", f"skipped ({why})")
    return out


def report(res: dict) -> str:
    out = []
    m = res["machine"]
    out.append(f"facesearch benchmarks  {res['started']}  {m['cpu']}, {m['cpu_cores']} cores, {m['memory_gib']} GiB"
               f"{', ' + m['cuda'] if m.get('cuda') else ''}  load avg at start {m['load_average_at_start']}")
    out.append(f"model: {res['model']['description']}  ({res['model']['key']})")
    e = res.get("enroll")
    if e:
        out.append("")
        out.append("ENROLL (LFW, end to end)")
        out.append(table([
            ["FaceSearch.enroll_folder", e["images"], e["images_per_s"], e["baseline_images_per_s"],
             e["ratio_vs_baseline"], e["store_bytes_per_face_with_crop"]]],
            ["path", "images", "images/s", "baseline images/s", "x baseline", "store B/face"]))
        out.append("  baseline: " + e["baseline"]["method"] + f" ({e['baseline']['images']} images)")
        if e.get("torch"):
            out.append(f"  the same enroll through torch (runtime switch of the gallery's model): "
                       f"{e['torch']['images_per_s']} images/s; {e.get('runtime')} / torch = {e['ratio_vs_torch']}x")
            if (e.get("int8") or {}).get("images_per_s"):
                out.append(f"  the same enroll with the int8 copy ({e['int8']['model_key']}): {e['int8']['images_per_s']} "
                           f"images/s; int8 / torch = {e['int8']['ratio_vs_torch']}x")
        if "reenroll_images_per_s" in e:
            out.append(f"  the same folder again (all enrolled, found by hash before decoding): "
                       f"{e['reenroll_images_per_s']} images/s, {e['reenroll_ratio_vs_first']}x the first enroll")
        out.append("  single-thread ms per image: " + ", ".join(
            f"{k} {v}" for k, v in e["breakdown"]["ms_per_image"].items()))
        out.append(f"  one-image query through the API (decode + embed + search + lookup): p50 "
                   f"{e['query_one_image_p50_ms']} ms; real LFW rank-1 identification {e['real_rank1_identification']}")
    c = res.get("cli")
    if c and c.get("results"):
        out.append("")
        out.append(f"CLI (one call per fresh process, {c['gallery']['faces']}-face gallery, median of {c['rounds']} rounds)")
        out.append(table([[r["command"], r["median_s"], r["min_s"], r["ratio_vs_baseline"]] for r in c["results"]],
                         ["command", "median s", "min s", "x hand-rolled torch script"]))
    mod = res.get("models")
    if mod and mod.get("rows"):
        from benchmarks.models import table as models_table

        out.append("")
        out.append("CANDIDATE MODELS (CPU, model loaded; ratios against lfw-mobilenet in this run)")
        out.append(models_table(mod))
    f = res.get("fit")
    if f:
        out.append("")
        out.append(f"SYNTHETIC GALLERY FIT (from {f['model']}; a={f['a_within_scale']}, b={f['b_between_scale']}, "
                   f"s={f['s_spread_lognormal']})")
        rows = []
        for kind in ("genuine", "impostor"):
            for src in ("real", "synthetic"):
                s = f[kind][src]
                rows.append([f"{kind} {src}", s["mean"], s["std"], s["p5"], s["p50"], s["p95"], s["n"]])
        out.append(table(rows, ["distances", "mean", "std", "p5", "p50", "p95", "pairs"]))
        out.append(f"  rank-1 identification, real LFW subset {f.get('rank1_real')} vs synthetic with the same "
                   f"layout {f.get('rank1_synthetic')}")
    out.append("")
    out.append("QUERIES (top-10; p50/p99 per call; baseline = plain numpy brute force; speedup = baseline p50 / p50)")
    rows = []
    for r in res["queries"]:
        rows.append([r["label"] + (" *" if r.get("auto") else ""), _fmt_n(r["gallery"]), r["device"], r["batch"],
                     r["p50_ms"], r["p99_ms"], r["queries_per_s"], r["recall_at_1"], r.get("recall_at_10"),
                     r["baseline_p50_ms"], r["speedup_vs_baseline"], r.get("build_s"), r.get("index_bytes_per_face")])
    out.append(table(rows, ["index (* = auto)", "gallery", "dev", "batch", "p50 ms", "p99 ms", "queries/s",
                            "R@1", "R@10", "base p50 ms", "speedup", "build s", "B/face"]))
    if res.get("scale"):
        out.append("")
        out.append("GALLERIES (synthetic faces inserted with Store.add_faces; index built by FaceSearch.rebuild_index)")
        rows = []
        for s in res["scale"]:
            sv = s.get("serve", {})
            rows.append([_fmt_n(s["gallery"]), s["identities"], s["store_insert_s"], s["auto"]["factory"],
                         s["auto"]["rebuild_index_s"], s["store_bytes_per_face"], s.get("api_query_p50_ms"),
                         sv.get("open_and_load_index_s"), sv.get("peak_rss_bytes", 0) / 2**20,
                         sv.get("index_load_peak_bytes_per_face"),
                         s["remove_identity"]["seconds"], s["rank1_identification_exact"], s["seconds"]])
        out.append(table(rows, ["gallery", "people", "insert s", "auto index", "rebuild s", "store B/face",
                                "API p50 ms", "open s", "peak RSS MiB", "load B/face", "remove s", "rank-1 id",
                                "total s"]))
        out.append("  API p50: FaceSearch.search_embeddings (index + identity lookup, top 5 people); open: a new "
                   "process opening the gallery and loading the index; peak RSS: that process (torch and the "
                   "model included); load B/face: its peak minus its RSS before loading the index, per face.")
        out.append("")
        out.append("SEARCH-PARAMETER SWEEPS (single probe, one OpenMP thread; recall against exact)")
        rows = []
        for s in res["scale"]:
            sweeps = dict(s.get("sweeps", {}))
            for key in ("nprobe_sweep", "efSearch_sweep"):
                if s["auto"].get(key):
                    sweeps = {f"auto {s['auto']['factory']}": s["auto"][key], **sweeps}
            for name, pts in sweeps.items():
                for p in pts:
                    key = "nprobe" if "nprobe" in p else "efSearch"
                    rows.append([name, _fmt_n(s["gallery"]), f"{key}={p[key]}", p["p50_ms"], p["p99_ms"],
                                 p["recall_at_1"], p["recall_at_10"]])
        if rows:
            out.append(table(rows, ["index", "gallery", "parameter", "p50 ms", "p99 ms", "R@1", "R@10"]))
    g = res.get("gpu")
    if g and g.get("skipped"):
        out.append("")
        out.append(f"GPU: skipped ({g['skipped']})")
    elif g and g.get("embedding"):
        out.append("")
        out.append("GPU embedding: " + ", ".join(f"{k} {v}" for k, v in g["embedding"].items() if k != "method"))
    out.append("")
    out.append("TARGETS")
    for t in res["targets"]:
        mark = {True: "MET ", False: "MISS", None: "n/a "}[t["met"]]
        out.append(f"  [{mark}] {t['target']}: {t['reached']}")
    if res.get("issue20"):
        out.append("")
        out.append("ISSUE 20 (each goal against its baseline, both measured in this run; n/a: not run here, or no limit)")
        cells = [["", "goal", "target", "measured", "baseline (same run)", "x baseline"]] + [
            [{True: "MET", False: "MISSED", None: "n/a"}[r["met"]], r["goal"], r["target"], r["measured"],
             r["baseline"], r["ratio"]] for r in res["issue20"]]
        w = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
        for i, c in enumerate(cells):
            out.append("  ".join(x.ljust(w[j]) for j, x in enumerate(c)).rstrip())
            if i == 0:
                out.append("  ".join("-" * x for x in w))
        out += [f"  {r['goal']}: {r['detail']}" for r in res["issue20"] if r.get("detail")]
    t = res.get("timings") or {}
    out.append(f"\ntotal {res['total_s']:.0f} s" + (" (" + ", ".join(f"{k} {v:.0f} s" for k, v in t.items()) + ")"
                                                    if t else "") + f"; JSON: {res.get('out')}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run at tiny sizes (about a minute)")
    ap.add_argument("--sizes", help="gallery sizes, e.g. 10k,100k,1M (default 10k,100k,1M; quick: 5k)")
    ap.add_argument("--model", help="model directory (default: the shipped default model if installed, else an "
                                    "ImageNet-initialised encoder built from ../shared/weights)")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/scale-<machine>.json; quick: a temp dir)")
    ap.add_argument("--enroll-images", type=int)
    ap.add_argument("--baseline-images", type=int)
    ap.add_argument("--batch", type=int, help="probes per batch call, also the number of probes (default 1000)")
    ap.add_argument("--single", type=int, help="single-probe calls per index (default 200)")
    ap.add_argument("--budget-s", type=float, help="time budget per measurement (seconds)")
    ap.add_argument("--indexes", help="';'-separated FAISS factories to measure besides Flat and auto, with "
                                      "optional @nprobe=N / @efSearch=N (default: a set per size)")
    ap.add_argument("--gpu-sizes", default="1M,10M", help="gallery sizes for the CUDA exact search (default 1M,10M)")
    ap.add_argument("--no-gpu", action="store_true")
    ap.add_argument("--no-models", action="store_true", help="leave out the candidate models side by side "
                                                             "(benchmarks.models, ~5 min of the full run)")
    ap.add_argument("--no-cli", action="store_true", help="leave out the CLI start-up benchmark "
                                                          "(benchmarks.cli_startup: ONNX Runtime vs torch, ~3 min)")
    ap.add_argument("--workdir", help="keep the galleries here (default: a temp dir, removed at the end)")
    a = ap.parse_args(argv)
    preset = QUICK if a.quick else FULL
    sizes = [parse_size(s) for s in (a.sizes or preset["sizes"]).split(",") if s.strip()]
    n_enroll = a.enroll_images or preset["enroll_images"]
    n_base = a.baseline_images or preset["baseline_images"]
    batch, single = a.batch or preset["batch"], a.single or preset["single"]
    budget = a.budget_s or preset["budget"]

    t_start = time.perf_counter()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="facesearch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 "command": "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "machine": common.machine()}
    try:
        model_dir, desc = common.resolve_model(a.model, work)
        res["model"] = {"description": desc, "dir": str(model_dir), "key": common.model_key(model_dir)}
        log(f"model: {desc}")

        from benchmarks import enroll, synth

        timings = res["timings"] = {}
        lap = time.perf_counter()

        def took(part):
            nonlocal lap
            now = time.perf_counter()
            timings[part] = round(now - lap, 1)
            lap = now

        e, fit_data = enroll.run(model_dir, work, n_enroll, n_base, log=log)
        res["enroll"] = e
        took("enroll")
        if a.no_models:
            res["models"] = {"skipped": "--no-models"}
        else:
            from benchmarks import models

            preset_m = models.QUICK if preset["models"] == "quick" else models.FULL
            mwork = work / "models"
            mwork.mkdir()
            res["models"] = models.run(mwork, preset_m["images"], preset_m["probes"], preset_m["forward_images"],
                                       log=log, parts=preset_m["parts"])
            shutil.rmtree(mwork, ignore_errors=True)
        took("models")
        if a.no_cli:
            res["cli"] = {"skipped": "--no-cli"}
        else:
            from benchmarks import cli_startup

            log("cli: one CLI call per process, ONNX Runtime vs torch")
            cpart = work / "cli-startup.json"
            cli_startup.main(["--rounds", "3" if a.quick else "5", "--faces", "200" if a.quick else "1000",
                              "--out", str(cpart)])
            res["cli"] = json.loads(cpart.read_text())
        took("cli")
        gen, fit = synth.fit(fit_data["emb"], fit_data["labels"])
        fit["model"] = desc
        fit["model_key"] = res["model"]["key"]
        fit["rank1_real"] = round(synth.rank1_identification(
            fit_data["emb"], fit_data["labels"], fit_data["probe_emb"], fit_data["probe_labels"]), 4)
        g, gl, p, pl = synth.synthetic_like(gen, fit_data["labels"], fit_data["probe_labels"])
        fit["rank1_synthetic"] = round(synth.rank1_identification(g, gl, p, pl), 4)
        res["fit"] = fit
        gen_path = work / "generator.npz"
        gen.save(gen_path)
        log(f"fit: genuine {fit['genuine']['real']['mean']}/{fit['genuine']['synthetic']['mean']}, impostor "
            f"{fit['impostor']['real']['mean']}/{fit['impostor']['synthetic']['mean']} (real/synthetic mean)")
        took("fit")

        res["scale"], res["queries"] = [], []
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(common.REPO)] + (
            [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
        for n in sizes:
            log(f"gallery {_fmt_n(n)}:")
            part = work / f"scale-{n}.json"
            cmd = [sys.executable, "-m", "benchmarks.scale", "--size", str(n), "--generator", str(gen_path),
                   "--model", str(model_dir), "--workdir", str(work), "--out", str(part), "--batch", str(batch),
                   "--single", str(single), "--budget-s", str(budget)]
            if a.indexes is not None:
                cmd += ["--indexes", a.indexes]
            r = subprocess.run(cmd, env=env, cwd=common.REPO)
            if r.returncode != 0:
                raise SystemExit(f"gallery {n} failed (exit {r.returncode})")
            s = json.loads(part.read_text())
            res["queries"] += s.pop("queries")
            res["scale"].append(s)
            shutil.rmtree(work / f"gallery-{n}", ignore_errors=True)
            took(f"gallery {_fmt_n(n)}")

        from benchmarks import gpu

        if a.no_gpu:
            res["gpu"] = {"skipped": "--no-gpu"}
        elif not gpu.available():
            res["gpu"] = {"skipped": "no CUDA device visible to torch on this machine"}
        else:
            log("gpu:")
            gsizes = [parse_size(s) for s in a.gpu_sizes.split(",") if s.strip()]
            res["queries"] += gpu.search(gsizes, log=log)
            res["gpu"] = {"embedding": gpu.embedding(model_dir, log=log)}
            took("gpu")
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    res["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    res["total_s"] = round(time.perf_counter() - t_start, 1)
    res["targets"] = targets(res)
    res["issue20"] = issue20(res)
    if a.out:
        out = Path(a.out)
    elif a.quick:
        out = Path(tempfile.gettempdir()) / f"facesearch-scale-quick-{common.machine_tag(res['machine'])}.json"
    else:
        out = common.RESULTS / f"scale-{common.machine_tag(res['machine'])}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        res["out"] = str(out.resolve().relative_to(common.REPO))
    except ValueError:
        res["out"] = str(out)
    out.write_text(json.dumps(res, indent=1, default=_json_default) + "\n")
    print(report(res))
    return 0


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o))


if __name__ == "__main__":
    sys.exit(main())
