#!/usr/bin/env python
"""Table of a recipe ablation (scripts/gpu_ablation.sh): one lfw_protocol unit file per recipe.

    python benchmarks/ablation_table.py DIR [--output results.json]

For each ``DIR/NAME.json`` (a unit that trained without the people of some View 2 sets and scored
their folds): the standard protocol over the folds it scored (threshold for fold k chosen on the other
scored folds), AUC and TAR at FAR = 1e-3 on those pairs, and the same without mirror-image averaging.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.lfw_protocol import protocol_metrics  # noqa: E402


def summarise(unit: dict) -> dict:
    same = {int(k): np.asarray(v["same"], bool) for k, v in unit["scores"].items()}
    dist = {int(k): np.asarray(v["dist"]) for k, v in unit["scores"].items()}
    m = protocol_metrics(dist, same)
    row = {"folds": sorted(dist), "mean_accuracy": m["mean_accuracy"], "std_accuracy": m["std_accuracy"],
           "auc": m["auc"], "tar_at_far_1e-3": m["tar_at_far_1e-3"], "steps": unit.get("steps"),
           "images_per_s": unit.get("images_per_s"), "calibration_accuracy": unit["calibration"]["accuracy"],
           "options": {k: unit["model_config"]["training"]["options"][k] for k in (
               "input_size", "lr", "backbone_lr_factor", "identities_per_batch", "images_per_identity",
               "calibration_fraction", "neg_margin", "mining")}}
    if all("dist_plain" in v for v in unit["scores"].values()):
        plain = {int(k): np.asarray(v["dist_plain"]) for k, v in unit["scores"].items()}
        row["mean_accuracy_without_flip_average"] = protocol_metrics(plain, same)["mean_accuracy"]
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--output", type=Path, default=None)
    a = ap.parse_args(argv)
    rows = {}
    for p in sorted(a.dir.glob("*.json")):
        try:
            rows[p.stem] = summarise(json.loads(p.read_text()))
        except (KeyError, ValueError) as e:
            print(f"{p.name}: skipped ({e})", file=sys.stderr)
    print(f"{'recipe':8s} {'accuracy':>15s} {'no flip':>8s} {'AUC':>7s} {'TAR@1e-3':>9s} {'steps':>6s} "
          f"{'img/s':>6s} {'held-out':>8s}")
    for name, r in rows.items():
        nf = r.get("mean_accuracy_without_flip_average")
        print(f"{name:8s} {100 * r['mean_accuracy']:8.2f} +- {100 * r['std_accuracy']:4.2f} "
              f"{'' if nf is None else f'{100 * nf:8.2f}':>8s} {r['auc']:7.4f} {r['tar_at_far_1e-3']:9.3f} "
              f"{r['steps'] or 0:6d} {r['images_per_s'] or 0:6.0f} {100 * r['calibration_accuracy']:8.2f}")
    if a.output:
        a.output.write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
