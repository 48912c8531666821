#!/usr/bin/env python
"""LFW View 2 for the built-in SFace with every crop moved onto its template by the fixed warp only
(the LFW pack's mean geometry -> the model's template, no detection): what enroll falls back to when
the detector finds no face in a crop. Writes benchmarks/results/lfw-sface-fixed-warp.json.

    .venv/bin/python scripts/lfw_fixed_warp.py [--shared ../shared]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facesearch import distance  # noqa: E402
from facesearch.datasets import ImageFolder  # noqa: E402
from facesearch.evaluation.lfw import embed_keys, read_pairs, verification_numbers  # noqa: E402
from facesearch.gallery.embedding import model_crop  # noqa: E402
from facesearch.model import encoder  # noqa: E402
from facesearch.model.files import resolve  # noqa: E402


class NoLandmarks:
    """A detector that finds nothing, so that model_crop takes its fixed-warp fallback for every crop."""

    def detect(self, pixels, min_score=0.0):
        return []

    def available(self):
        return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--model", default="default")
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "lfw-sface-fixed-warp.json")
    args = ap.parse_args()
    lfw = args.shared / "data" / "lfw"
    plist = read_pairs(lfw / "pairs.txt")
    folder = ImageFolder(lfw / "lfw-deepfunneled-112.zip")
    uniq = plist.images()
    keys = [folder.lfw_key(n, i) for n, i in uniq]
    net = encoder.load(resolve(args.model).directory, encoder.resolve_device("cpu"))
    t = time.time()
    emb = embed_keys(folder, keys, net, batch_size=8,
                     transform=lambda px: model_crop(px, net.config, detector=NoLandmarks()))
    row = {k: i for i, k in enumerate(uniq)}
    li = np.array([row[k] for k in plist.left])
    ri = np.array([row[k] for k in plist.right])
    d = np.asarray(distance.paired(emb[li], emb[ri]), np.float64)
    nums = verification_numbers(d, plist.same, plist.fold, plist.n_folds, net.config.threshold)
    nums = nums if isinstance(nums, dict) else vars(nums)
    out = {
        "protocol": plist.protocol + "; crops moved by the fixed warp (pack mean geometry -> template)",
        "model": net.config.name,
        "mean_accuracy": nums["mean_accuracy"], "std_accuracy": nums["std_accuracy"], "auc": nums["auc"],
        "tar_at_far": nums["tar_at_far"], "fold_accuracy": nums.get("fold_accuracy", nums.get("folds")),
        "seconds": round(time.time() - t, 1),
        "machine": {"platform": platform.platform(), "cpus": __import__("os").cpu_count()},
        "command": "python scripts/lfw_fixed_warp.py",
    }
    args.output.write_text(json.dumps(out, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)) + "\n")
    print(json.dumps({k: out[k] for k in ("mean_accuracy", "std_accuracy", "auc")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
