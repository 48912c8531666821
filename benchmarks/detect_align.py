#!/usr/bin/env python
"""What ``--detect`` buys on photos that are not aligned crops, against the centre crop used without it.

    python -m benchmarks.detect_align [--photos ../shared/data/lfw/lfw-original-150-sample] [--model DIR]

The photos: LFW's 120 original (not deep-funnelled) photos of 30 people, 4 each, in two versions:

* ``as given``: the 150 x 150 photos (LFW's own detector centred them roughly; faces still vary in place,
  size and tilt, and 22 of them show a second person);
* ``placed``: each photo pasted at a random place, scale (0.7-1.5x) and tilt (+-20 degrees) into a
  400 x 300 grey frame (seeded), as a face in an ordinary snapshot is neither centred nor upright.

Each version is embedded twice by the same model: ``centre crop`` (facesearch without ``--detect``: the
image taken as an aligned crop) and ``detect + align`` (``--detect``). Reported: rank-1 of each photo
searched against the other 119 (leave-one-out, best face per person), AUC and accuracy at the model's
stored threshold over all 180 same-person pairs and 6,960 different-person pairs, and the time per
photo of detection + alignment next to the time of embedding it.

And the other way round, why ``--detect`` is not the default: the 7,701 aligned crops of LFW View 2's
6,000 pairs (the deep-funnelled 112 px pack), embedded as given and detected + aligned again, scored by
the 10-fold protocol (``facesearch.metrics.kfold_accuracy``: each fold's threshold chosen on the others).

The shipped model was trained on all of LFW, these people included (the aligned crops themselves):
absolute numbers are optimistic, and only the difference between the two preprocessings is the result.
Writes benchmarks/results/detect-align-<machine>.json and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, ratio, write_result  # noqa: E402
from facesearch import detect, images, metrics  # noqa: E402
from facesearch.datasets import ImageFolder  # noqa: E402
from facesearch.evaluation import read_pairs  # noqa: E402
from facesearch.gallery.facade import FaceSearch  # noqa: E402


def placed(pixels: np.ndarray, rng: np.random.Generator, size=(400, 300)) -> np.ndarray:
    """The photo scaled, tilted and pasted somewhere into a grey frame."""
    scale, angle = rng.uniform(0.7, 1.5), rng.uniform(-20, 20)
    img = Image.fromarray(pixels)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
    img = img.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(128, 128, 128))
    frame = Image.new("RGB", size, (128, 128, 128))
    x = int(rng.integers(0, max(1, size[0] - img.width)))
    y = int(rng.integers(0, max(1, size[1] - img.height)))
    frame.paste(img, (x, y))
    return np.asarray(frame)


def scores(emb: np.ndarray, people: list[str], threshold: float) -> dict:
    d = 1.0 - emb @ emb.T  # the project's cosine distance on unit vectors
    n = len(people)
    p = np.array(people)
    same = p[:, None] == p[None, :]
    iu = np.triu_indices(n, 1)
    dist, lab = d[iu], same[iu]
    np.fill_diagonal(d, np.inf)
    rank1 = float(np.mean(p[d.argmin(1)] == p))
    return {"rank1": round(rank1, 4), "auc": round(metrics.auc(dist, lab), 4),
            "accuracy_at_stored_threshold": round(metrics.accuracy(dist, lab, threshold), 4),
            "genuine_pairs": int(lab.sum()), "impostor_pairs": int((~lab).sum())}


def aligned_crops(fs, pack: str, pairs_file: str) -> list[dict]:
    """LFW View 2 on the aligned pack, as given and detected + aligned again (10-fold protocol)."""
    folder, pairs = ImageFolder(pack), read_pairs(pairs_file)
    need = pairs.images()
    pixels = [images.decode(folder.read(folder.lfw_key(name, i)), name) for name, i in need]
    found = [detect.detect(px) for px in pixels]
    crops = {"as given": [images.prepare(px, fs.config) for px in pixels],
             "detect + align": [images.prepare(detect.align(px, f[0]), fs.config) if f else
                                images.prepare(px, fs.config) for px, f in zip(pixels, found)]}
    at = {k: j for j, k in enumerate(need)}
    left, right = [at[k] for k in pairs.left], [at[k] for k in pairs.right]
    rows = []
    for method, cs in crops.items():
        emb = fs.embed_crops(cs)
        dist = 1.0 - (emb[left] * emb[right]).sum(1)
        k = metrics.kfold_accuracy(dist, pairs.same, pairs.fold)
        rows.append({"photos": "aligned crops (LFW View 2)", "method": method, "images": len(need),
                     "mean_accuracy": round(float(np.mean(k.accuracies)), 4),
                     "std_accuracy": round(float(np.std(k.accuracies)), 4),
                     "auc": round(metrics.auc(dist, pairs.same), 4),
                     **({"no_face_found": sum(not f for f in found)} if method == "detect + align" else {})})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", default="../shared/data/lfw/lfw-original-150-sample")
    ap.add_argument("--model", default=None, help="model directory (default: the shipped one)")
    ap.add_argument("--pack", default="../shared/data/lfw/lfw-deepfunneled-112.zip")
    ap.add_argument("--pairs", default="../shared/data/lfw/pairs.txt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    folder = ImageFolder(args.photos)
    people = [ident for ident in folder.identities() for _ in folder.items[ident]]
    photos = [images.decode(folder.read(k), k) for ident in folder.identities() for k in folder.items[ident]]
    rng = np.random.default_rng(args.seed)
    versions = {"as given": photos, "placed": [placed(px, rng) for px in photos]}
    info = machine()
    rows, timing = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        fs = FaceSearch.open(home=tmp, model=args.model, device="cpu", detect=True)
        thr = fs.threshold
        for version, pixels in versions.items():
            crops = {"centre crop": [images.prepare(px, fs.config) for px in pixels]}
            t0 = time.perf_counter()
            found = [detect.detect(px) for px in pixels]
            t1 = time.perf_counter()
            aligned = [images.prepare(detect.align(px, f[0]), fs.config) if f else None
                       for px, f in zip(pixels, found)]
            t2 = time.perf_counter()
            missed = sum(a is None for a in aligned)
            # a photo with no face found falls back to its centre crop, so both rows score all 120
            crops["detect + align"] = [a if a is not None else c for a, c in zip(aligned, crops["centre crop"])]
            for method, cs in crops.items():
                t3 = time.perf_counter()
                emb = fs.embed_crops(cs)
                t4 = time.perf_counter()
                r = {"photos": version, "method": method, **scores(emb, people, thr)}
                if method == "detect + align":
                    r["no_face_found"] = missed
                    r["several_faces"] = sum(len(f) > 1 for f in found)
                    timing[version] = {"detect_ms_per_photo": round(1e3 * (t1 - t0) / len(pixels), 2),
                                       "align_ms_per_photo": round(1e3 * (t2 - t1) / len(pixels), 2),
                                       "embed_ms_per_photo": round(1e3 * (t4 - t3) / len(pixels), 2)}
                rows.append(r)
        crops_rows = aligned_crops(fs, args.pack, args.pairs)
        model = {"key": fs.model_key, "threshold": thr}
        fs.close()
    for version in versions:
        base, ours = (next(r for r in rows if r["photos"] == version and r["method"] == m)
                      for m in ("centre crop", "detect + align"))
        ours["rank1_errors_vs_centre_crop"] = ratio(1 - ours["rank1"], 1 - base["rank1"])
    res = {"benchmark": "detect_align", "command": "python -m benchmarks.detect_align", "photos": args.photos,
           "people": len(set(people)), "images": len(people), "seed": args.seed, "model": model,
           "note": "the shipped model has seen these 30 people (trained on all of LFW): compare the rows, "
                   "do not read the absolute numbers as accuracy on unseen people",
           "results": rows, "aligned_crops": crops_rows, "timing": timing, "machine": info}
    out = write_result(res, args.out, "detect-align")
    print(f"{'photos':<9} {'method':<15} {'rank-1':>7} {'AUC':>7} {'acc@thr':>8} {'no face':>8}")
    for r in rows:
        print(f"{r['photos']:<9} {r['method']:<15} {r['rank1']:>7.3f} {r['auc']:>7.4f} "
              f"{r['accuracy_at_stored_threshold']:>8.4f} {r.get('no_face_found', ''):>8}")
    print(f"\n{'aligned crops':<15} {'method':<15} {'10-fold acc':>12} {'AUC':>7}")
    for r in crops_rows:
        print(f"{'LFW View 2':<15} {r['method']:<15} {100 * r['mean_accuracy']:>6.2f} +-{100 * r['std_accuracy']:.2f} "
              f"{r['auc']:>7.4f}")
    for version, t in timing.items():
        print(f"{version}: detect {t['detect_ms_per_photo']} ms + align {t['align_ms_per_photo']} ms per photo; "
              f"embedding {t['embed_ms_per_photo']} ms")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
