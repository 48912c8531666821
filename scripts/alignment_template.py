"""Measure facesearch.detect.TEMPLATE_112: where yuface puts the five landmarks on the LFW pack.

    python scripts/alignment_template.py [../shared/data/lfw/lfw-deepfunneled-112.zip] [--json OUT]

Every image of the pack (the aligned 112 x 112 crops the models train on) goes through the same detector
as ``--detect``; the template is the mean of the highest-scoring face's landmarks. Also printed: how many
images had a face, the spread of each landmark, and how far each image's own landmarks sit from the
template after the best similarity transform (what alignment cannot remove).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from facesearch import detect, images  # noqa: E402
from facesearch.datasets import ImageFolder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default="../shared/data/lfw/lfw-deepfunneled-112.zip")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    folder = ImageFolder(args.data)
    keys = [k for ident in folder.identities() for k in folder.items[ident]]
    marks, missed = [], 0
    for i, key in enumerate(keys):
        faces = detect.detect(images.decode(folder.read(key), key), min_score=detect.MIN_SCORE)
        if not faces:
            missed += 1
            continue
        marks.append(max(faces, key=lambda f: f.score).landmarks)
        if (i + 1) % 2000 == 0:
            print(f"{i + 1}/{len(keys)}", file=sys.stderr)
    m = np.stack(marks)
    template = m.mean(0)
    resid = []
    for lm in m:
        t = detect.similarity_transform(lm, template)
        resid.append(np.sqrt((((lm @ t[:, :2].T + t[:, 2]) - template) ** 2).sum(1)).mean())
    out = {"images": len(keys), "with_face": len(marks), "without_face": missed,
           "template_112": template.round(2).tolist(), "std_px": m.std(0).round(2).tolist(),
           "mean_residual_after_alignment_px": round(float(np.mean(resid)), 3)}
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
