#!/usr/bin/env python
"""Regenerate README.md's speed table from the benchmark result files (never hand-copied numbers).

    python scripts/speed_table.py                      # every row from make bench's result on this machine
    python scripts/speed_table.py --bench benchmarks/results/scale-cpu-2core.json   # the same, named
    python scripts/speed_table.py [--scale benchmarks/results/scale-1m-cpu-2core.json --scale ...]
                                  [--run benchmarks/results/issue20-cpu-2core.json] [--check | --print]

Reads the JSON that ``make bench`` (benchmarks/run.py) writes, and writes the table between the markers
``<!-- speed-table:begin -->`` and ``<!-- speed-table:end -->`` in README.md. Each row names its source file;
a figure a file does not have is left out, not guessed. ``--bench FILE`` takes every row (enroll, CLI, queries,
memory) from one ``make bench`` result; it is the default (``benchmarks/results/scale-cpu-2core.json``) when
none of ``--bench``, ``--scale``, ``--run`` and ``--cli`` is given. ``--check`` exits 1 when README.md's table is not what the files give
(for CI), without writing; ``--print`` prints the table and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- speed-table:begin -->", "<!-- speed-table:end -->"


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _n(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def _size(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k"


def _query_rows(res: dict, src: str) -> list[list[str]]:
    rows = []
    fit = res.get("model", {}).get("description", "?")
    q = [r for r in res.get("queries", []) if r.get("device") == "cpu"]
    for n in sorted({r["gallery"] for r in q}, reverse=True):
        auto = [r for r in q if r["gallery"] == n and r.get("auto")]
        for r in auto:
            what = "one probe, p50" if r["batch"] == 1 else f"{r['batch']:,} probes per call"
            params = " ".join(f"{k} {v}" for k, v in (r.get("params") or {}).items() if k != "nlist")
            label = r["index"] + (f", {params} chosen at build" if params else "")
            val = (f"{r['p50_ms']:.2f} ms, recall@1 {r['recall_at_1']:.3f}" if r["batch"] == 1
                   else f"{r['p50_ms'] / 1e3:.2f} s")
            base = f"{r['baseline_p50_ms']:.1f} ms" if r["batch"] == 1 else f"{r['baseline_p50_ms'] / 1e3:.2f} s"
            exact = next((x for x in q if x["gallery"] == n and x["batch"] == r["batch"] and x["index"] == "Flat"
                          and not x.get("auto") and "thread" not in x.get("label", "")), None)
            if exact is not None:  # the exact index of the same run, the recall's reference
                base += (f" (numpy; exact Flat {exact['p50_ms']:.1f} ms)" if r["batch"] == 1
                         else f" (numpy; exact Flat {exact['p50_ms'] / 1e3:.2f} s)")
            else:
                base += " (numpy)"
            rows.append([f"{_size(n)} faces fitted to {fit}, {what} (`auto` = {label}; built in {r.get('build_s')} s)", val,
                         base, f"{r['speedup_vs_baseline']:.1f}x", src])
    return rows


def rows(scale: dict | list | None, scale_src: str | list, run: dict | None, run_src: str,
         cli: dict | None = None, cli_src: str = "") -> list[list[str]]:
    """The table's rows: enroll and CLI from ``run`` (else the first scale file that has them; the CLI row
    from ``cli``, ``{"cli": <benchmarks.cli_startup's result>}``, when given), queries and memory from each
    scale file (``scale``/``scale_src``: one, or lists of them in order)."""
    scales = list(zip(scale, scale_src)) if isinstance(scale, list) else [(scale, scale_src)]
    scales = [(r, s) for r, s in scales if r]
    scale, scale_src = scales[0] if scales else (None, scale_src)
    out: list[list[str]] = []
    for res, src in ((run, run_src), *scales):
        if not res or not res.get("enroll"):
            continue
        e = res["enroll"]
        model = res.get("model", {}).get("description", "?")
        if e.get("torch"):
            out.append([f"enroll, LFW images/s ({model}, {e.get('runtime')} vs torch, same run)",
                        _n(e["images_per_s"]), f"{_n(e['torch']['images_per_s'])} (torch)",
                        f"{e['images_per_s'] / e['torch']['images_per_s']:.3f}x", src])
            i8 = e.get("int8") or {}
            if i8.get("images_per_s"):
                out.append([f"enroll, LFW images/s, its int8 copy (`model quantize`) vs the same model through torch",
                            _n(i8["images_per_s"]), f"{_n(e['torch']['images_per_s'])} (torch)",
                            f"{i8['images_per_s'] / e['torch']['images_per_s']:.3f}x", src])
        out.append([f"enroll, LFW images/s ({model}; decode, embed, store, index)", _n(e["images_per_s"]),
                    f"{_n(e['baseline_images_per_s'])} (per image, batch 1)", f"{e['ratio_vs_baseline']:.1f}x", src])
        break
    for res, src in ((cli, cli_src), (run, run_src), *scales):  # the CLI file (benchmarks.cli_startup) first
        c = (res or {}).get("cli")
        if c and c.get("query"):
            cq = c["query"]
            out.append([f"`facesearch query` one image, {c['gallery']['faces']:,}-face gallery, wall time "
                        f"(median of {c['rounds']})", f"{cq['onnx_median_s']:.2f} s (ONNX Runtime)",
                        f"{cq['torch_median_s']:.2f} s (torch)", f"{cq['torch_over_onnx']:.2f}x", src])
            break
    for res, src in scales:
        out += _query_rows(res, src)
    if scale:
        flat = [r for r in scale.get("queries", []) if r["index"] == "Flat" and r["batch"] == 1]
        if flat:
            big = max(flat, key=lambda r: r["gallery"])
            out.append(["exact index memory per face", f"{big['index_bytes_per_face']:.0f} B",
                        "512 B raw vectors", f"{big['index_bytes_vs_raw']:.3f}x", scale_src])
    return out


def render(table_rows: list[list[str]]) -> str:
    lines = ["| figure | facesearch | baseline | ratio | source |", "| --- | --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(r[:4] + [f"`{r[4]}`"]) + " |" for r in table_rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=Path, action="append", help="scale result files, in table order (default: "
                    "benchmarks/results/scale-1m-cpu-2core.json, then scale-cpu-2core.json)")
    ap.add_argument("--run", type=Path, help="default: benchmarks/results/issue20-cpu-2core.json")
    ap.add_argument("--cli", type=Path, help="the CLI wall-time file of benchmarks.cli_startup (its query row is "
                    "taken first; default: benchmarks/results/cli-startup-cpu-2core.json)")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--bench", type=Path, help="one make bench result (benchmarks/results/scale-<machine>.json): "
                    "every row from it, in place of --run, --scale and --cli")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 when README.md's table differs; write nothing")
    mode.add_argument("--print", action="store_true", help="print the table; write nothing")
    a = ap.parse_args(argv)
    if a.bench is None and a.scale is None and a.run is None and a.cli is None:
        a.bench = RESULTS / "scale-cpu-2core.json"  # one make bench run gives every row
    a.run = a.run or RESULTS / "issue20-cpu-2core.json"
    a.cli = a.cli or RESULTS / "cli-startup-cpu-2core.json"
    rel = lambda p: str(p.resolve().relative_to(ROOT)) if p.resolve().is_relative_to(ROOT) else str(p)  # noqa: E731
    if a.bench is not None:
        if _load(a.bench) is None:
            print(f"{a.bench}: not a readable result file", file=sys.stderr)
            return 2
        a.run, a.scale, a.cli = a.bench, [a.bench], a.bench  # its "cli" part is found through the run
    scales = a.scale or [RESULTS / "scale-1m-cpu-2core.json", RESULTS / "scale-cpu-2core.json"]
    cli = _load(a.cli) if a.cli.exists() and a.bench is None else None
    table = render(rows([_load(p) for p in scales], [rel(p) for p in scales], _load(a.run), rel(a.run),
                        {"cli": cli} if cli else None, rel(a.cli)))
    if a.print:
        print(table)
        return 0
    text = a.readme.read_text()
    if BEGIN not in text or END not in text:
        print(f"{a.readme} has no {BEGIN} ... {END} markers", file=sys.stderr)
        return 2
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{table}\n{END}{tail}"
    if a.check:
        if new != text:
            print("README.md's speed table is not what the result files give: run scripts/speed_table.py",
                  file=sys.stderr)
            return 1
        return 0
    a.readme.write_text(new)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
