#!/usr/bin/env python
"""Images per ONNX Runtime pass: how fast each built-in model embeds at 1, 2, 4, 8 and 16 images a pass.

    python -m benchmarks.onnx_batch [--crops 64] [--rounds 3] [--out PATH]

Why enroll's tuner chooses the images per pass where ONNX Runtime embeds (``ThreadTuner.offer_batches``)
instead of taking the model's forward batch (torch's activation rule, kept in the export's metadata): the
models disagree on what suits them. Measured on the same aligned LFW crops (one image each of ``--crops``
LFW people in no View 2 pair, in SFace's geometry), for SFace's fp32 export, its int8 copy (what
``facesearch model quantize`` makes by default) and lfw-mobilenet's export, on one thread and on every
core, the models and sizes taking turns, best of ``--rounds``. The baseline is each model's own forward
batch, in the same rounds.

Writes benchmarks/results/onnx-batch-<machine>.json and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, write_result  # noqa: E402

SIZES = (1, 2, 4, 8, 16)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--crops", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from benchmarks.int8 import CALIBRATION_RULE, calibration_crops
    from facesearch.model import onnx_runtime, quantize
    from facesearch.model.files import builtin_model_dir, read_model_dir

    info = machine()
    sface, mnv2 = builtin_model_dir("sface"), builtin_model_dir("lfw-mobilenet")
    for d in (sface, mnv2):
        if onnx_runtime.load(d, read_model_dir(d), None) is None:
            onnx_runtime.export_dir(d)
    x, _ = calibration_crops(args.crops, read_model_dir(sface))
    threads = sorted({1, onnx_runtime.default_threads()})
    with tempfile.TemporaryDirectory(prefix="fs-onnx-batch-") as tmp:
        int8_dir = Path(tmp) / "sface-int8"
        calib, _ = calibration_crops(256, read_model_dir(sface))
        quantize.quantize_dir(sface, int8_dir, calib, calibration_source=CALIBRATION_RULE)
        encoders = {"sface fp32": onnx_runtime.load(sface, read_model_dir(sface), None),
                    "sface int8": onnx_runtime.load(int8_dir, read_model_dir(int8_dir), None),
                    "lfw-mobilenet fp32": onnx_runtime.load(mnv2, read_model_dir(mnv2), None)}
        for enc in encoders.values():
            for t in threads:
                enc.embed(x[:8], batch_size=8, threads=t)  # sessions made outside timing
        best: dict[tuple[str, int, int], float] = {}
        for _ in range(args.rounds):
            for name, enc in encoders.items():
                for t in threads:
                    for b in SIZES:
                        s = time.perf_counter()
                        enc.embed(x, batch_size=b, threads=t)
                        best[(name, t, b)] = max(best.get((name, t, b), 0.0), len(x) / (time.perf_counter() - s))
        rows = []
        for name, enc in encoders.items():
            for t in threads:
                own = best[(name, t, enc.forward_batch)]
                top = max(SIZES, key=lambda b: best[(name, t, b)])
                rows.append({"model": name, "threads": t, "forward_batch": enc.forward_batch,
                             "images_per_s": {str(b): round(best[(name, t, b)], 1) for b in SIZES},
                             "fastest_batch": top, "fastest_vs_forward_batch": round(best[(name, t, top)] / own, 3)})
    res = {"benchmark": "ONNX Runtime images/s by images per pass, built-in models", "machine": info,
           "crops": len(x), "rounds": args.rounds, "sizes": list(SIZES), "rows": rows,
           "method": "the same crops (one image each of LFW people in no View 2 pair), best of the rounds, models, "
                     "threads and sizes taking turns; baseline: each model's own forward batch (export metadata)"}
    out = write_result(res, args.out, "onnx-batch")
    print(f"\n{len(x)} crops, best of {args.rounds}; images/s by images per pass")
    print(f"{'model':20s} {'thr':>3s} " + " ".join(f"{b:>7d}" for b in SIZES) + "  fastest  vs own batch")
    for r in rows:
        print(f"{r['model']:20s} {r['threads']:3d} " + " ".join(f"{r['images_per_s'][str(b)]:7.1f}" for b in SIZES)
              + f"  {r['fastest_batch']:7d}  {r['fastest_vs_forward_batch']:.2f}x (own {r['forward_batch']})")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
