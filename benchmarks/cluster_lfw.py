"""How well `facesearch cluster` groups people: on the 168 LFW people the built-in lfw-mobilenet never
trained on (its held-out calibration people, rebuilt from its training record and checked against the
stored hash), 785 images. Each model's faces are grouped at its own 1:1 threshold and at 0.8x and 1.2x
of it; pairwise precision / recall / F1 against the true people, beside a simple baseline in the same run
(every face alone: precision undefined, recall 0; and single linkage at the same threshold, which chains).

SFace's training data is not published and may include LFW's people: its row measures the
"unrestricted, labelled outside data" setting, not people it never saw.

    python benchmarks/cluster_lfw.py [--data ../shared/data/lfw/lfw-deepfunneled-112.zip]

Writes benchmarks/results/cluster-lfw-heldout.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facesearch import FaceSearch  # noqa: E402
from facesearch.gallery.cluster import embed_images, group, pairwise_scores  # noqa: E402
from facesearch.datasets import ImageFolder  # noqa: E402
from facesearch.model.config import ModelConfig  # noqa: E402
from facesearch.model.files import builtin_model_dir  # noqa: E402
from facesearch.training.data import images_of, split_identities  # noqa: E402
from facesearch.training.options import TrainOptions  # noqa: E402
from facesearch.training.runner import people_hash  # noqa: E402


def held_out_people(data: Path) -> tuple[ImageFolder, list[str]]:
    cfg = ModelConfig.load(builtin_model_dir("lfw-mobilenet") / "model.json")
    o = cfg.training.options
    opts = TrainOptions(data=data, out=Path(tempfile.mkdtemp()), seed=o["seed"],
                        calibration_fraction=o["calibration_fraction"], min_images=o["min_images"],
                        identities_per_batch=2, calibration_pairs=o["calibration_pairs"])
    folder = ImageFolder(data)
    split = split_identities(folder, opts)
    if people_hash(split.calibration) != cfg.training.calibration_people_sha256:
        raise SystemExit("could not rebuild lfw-mobilenet's held-out people from this data")
    return folder, split.calibration


def single_linkage(emb: np.ndarray, t: float) -> list[list[int]]:
    from sklearn.cluster import AgglomerativeClustering

    labels = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="single",
                                     distance_threshold=t).fit_predict(emb)
    out: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        out.setdefault(int(label), []).append(i)
    return list(out.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "lfw" / "lfw-deepfunneled-112.zip")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cluster-lfw-heldout.json")
    args = ap.parse_args()
    folder, people = held_out_people(args.data)
    keys, labels, _ = images_of(folder, people)
    truth = [people[i] for i in labels]
    data = [folder.read(k) for k in keys]
    rows = []
    for model in ("lfw-mobilenet", "sface"):
        with tempfile.TemporaryDirectory() as home, FaceSearch.open(home=home, model=model, device="cpu") as fs:
            t0 = time.perf_counter()
            emb, names, failed = embed_images(fs, data)
            embed_s = time.perf_counter() - t0
            assert not failed and len(names) == len(truth)
            base = fs.threshold
        for factor in (0.8, 1.0, 1.2):
            t = base * factor
            t0 = time.perf_counter()
            groups = group(emb, t)
            took = time.perf_counter() - t0
            rows.append(dict(model=model, linkage="average", threshold=t, factor=factor,
                             cluster_s=took, embed_s=embed_s, **pairwise_scores(groups, truth)))
        rows.append(dict(model=model, linkage="single (baseline)", threshold=base, factor=1.0, cluster_s=None,
                         embed_s=embed_s, **pairwise_scores(single_linkage(emb, base), truth)))
        rows.append(dict(model=model, linkage="none: every face alone (baseline)", threshold=None, factor=None,
                         cluster_s=None, embed_s=embed_s, **pairwise_scores([[i] for i in range(len(truth))], truth)))
    res = {"what": "facesearch cluster on the 168 LFW people lfw-mobilenet never trained on (its held-out "
                   "calibration people), 785 images; pairwise precision/recall against the true people",
           "sface_note": "SFace's training data is unknown and may include LFW's people",
           "people": len(people), "images": len(truth), "rows": rows,
           "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
           "command": "python benchmarks/cluster_lfw.py"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print("| model | linkage | threshold | pairwise precision | recall | F1 | groups | alone |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = "" if r["threshold"] is None else f"{r['threshold']:.3f} ({r['factor']:g}x)"
        print(f"| {r['model']} | {r['linkage']} | {t} | {r['pairwise_precision']:.3f} | {r['pairwise_recall']:.3f} | "
              f"{r['pairwise_f1']:.3f} | {r['clusters']} | {r['singletons']} |")


if __name__ == "__main__":
    main()
