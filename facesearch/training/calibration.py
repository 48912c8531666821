"""The match threshold: chosen on genuine and impostor pairs of held-out identities (:func:`calibrate`),
at the end of a run or again later for a trained model (:func:`recalibrate`)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from facesearch import distance, metrics
from facesearch.datasets import ImageFolder
from facesearch.model import encoder
from facesearch.training.data import images_of, split_identities
from facesearch.training.options import TrainingError, TrainOptions, people_hash

#: false accept rates whose thresholds calibration stores next to the balanced one (``operating_points``)
OPERATING_FARS = (1e-2, 1e-3)


def calibration_pairs(labels: np.ndarray, max_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Genuine pairs (every pair within an identity, at most ``max_pairs``, spread over identities) and as
    many impostor pairs (random pairs of different identities). Returns (i, j) index arrays and ``same``."""
    by_id: dict[int, np.ndarray] = {}
    for lab in np.unique(labels):
        by_id[int(lab)] = np.nonzero(labels == lab)[0]
    blocks = []  # per identity: its genuine pairs in random order
    for idx in by_id.values():
        ii, jj = np.triu_indices(len(idx), 1)
        blocks.append(np.stack([idx[ii], idx[jj]], 1)[rng.permutation(len(ii))])
    genuine = np.concatenate(blocks) if blocks else np.zeros((0, 2), np.int64)
    if len(genuine) > max_pairs:  # round-robin over identities, so no one identity dominates
        rank = np.concatenate([np.arange(len(b)) for b in blocks])
        genuine = genuine[np.lexsort((rng.random(len(genuine)), rank))[:max_pairs]]
    n_imp = len(genuine)
    imp = []
    while sum(len(x) for x in imp) < n_imp:
        a = rng.integers(0, len(labels), 2 * n_imp)
        b = rng.integers(0, len(labels), 2 * n_imp)
        keep = labels[a] != labels[b]
        imp.append(np.stack([a[keep], b[keep]], 1))
    impostor = np.concatenate(imp)[:n_imp] if n_imp else np.zeros((0, 2), np.int64)
    pairs = np.concatenate([genuine, impostor]).astype(np.int64)
    same = np.r_[np.ones(len(genuine), bool), np.zeros(len(impostor), bool)]
    return pairs, same


HELD_OUT = "held-out identities, never trained on"


def calibrate(emb: np.ndarray, labels: np.ndarray, max_pairs: int, seed: int, source: str = HELD_OUT
              ) -> dict[str, Any]:
    """Pick the threshold on pairs of held-out identities; also a 2-fold (by identity) honest estimate.
    ``source`` says which identities they are (stored with the result, after their count)."""
    rng = np.random.default_rng(seed + 1)
    pairs, same = calibration_pairs(labels, max_pairs, rng)
    if same.sum() == 0 or (~same).sum() == 0:
        raise TrainingError("calibration needs at least two identities with two images each")
    dist = distance.paired(emb[pairs[:, 0]], emb[pairs[:, 1]]).astype(np.float64)
    thr, acc = metrics.best_threshold(dist, same)
    # honest check: choose on the pairs of half the identities, score on pairs within the other half
    ids = np.unique(labels)
    half = set(rng.permutation(ids)[: len(ids) // 2].tolist())
    in_a = np.array([labels[i] in half and labels[j] in half for i, j in pairs])
    in_b = np.array([labels[i] not in half and labels[j] not in half for i, j in pairs])
    cv = []
    for fit, score in ((in_a, in_b), (in_b, in_a)):
        if same[fit].any() and (~same[fit]).any() and score.any():
            t, _ = metrics.best_threshold(dist[fit], same[fit])
            cv.append(metrics.accuracy(dist[score], same[score], t))
    operating_points, not_measurable = [], []
    impostors = int((~same).sum())
    for far in OPERATING_FARS:
        if impostors * far < 1.0 - 1e-9:  # fewer than 1/far impostor pairs: that FAR cannot be told from 0
            not_measurable.append({"far": far, "needs_impostor_pairs": int(math.ceil(1.0 / far - 1e-9))})
            continue
        tar, t = metrics.tar_at_far(dist, same, far)
        operating_points.append({"far": far, "threshold": t, "tar": tar})
    return {
        "threshold": thr,
        "accuracy": acc,
        "cross_validated_accuracy": float(np.mean(cv)) if cv else None,
        # stricter thresholds on the same pairs, for 1:N search and high-security 1:1 (query/verify --far,
        # FaceSearch.threshold_at); with n impostor pairs a FAR below 1/n cannot be measured: none is
        # stored for it (at 1/n exactly it rests on one false accept)
        "operating_points": operating_points,
        "operating_points_not_measurable": not_measurable,
        "pairs": int(len(same)),
        "genuine_pairs": int(same.sum()),
        "impostor_pairs": int((~same).sum()),
        "genuine_distance_mean": float(dist[same].mean()),
        "impostor_distance_mean": float(dist[~same].mean()),
        "source": f"{len(ids)} {source}",
        "people": int(len(ids)),
        "images": int(len(labels)),
        "method": "facesearch.metrics.best_threshold (maximum accuracy on genuine + impostor pairs)",
    }


def recalibrate(model_dir: str | os.PathLike, data: str | os.PathLike | None = None,
                flip_average: bool | None = None, exclude_people: Iterable[str] = (),
                include_people: Iterable[str] | None = None, device: str = "auto",
                threads: int | None = None) -> dict[str, Any]:
    """Choose a trained model's threshold again on its own held-out identities and rewrite ``model.json``.

    The held-out identities are rebuilt from the training record in ``model.json`` (data, seed,
    calibration share, ...) plus ``exclude_people`` / ``include_people`` as given to training (only
    their hashes are stored), and must match the stored ``calibration_people_sha256``. Use it after
    changing how the model embeds (``flip_average``). The weights are not touched.
    """
    model_dir = Path(model_dir)
    model = encoder.load(model_dir, encoder.resolve_device(device))
    cfg = model.config
    o = cfg.training.options
    want = cfg.training.calibration_people_sha256
    if not o or not want:
        raise TrainingError(f"{model_dir} has no training record: its held-out identities are unknown")
    if not o.get("calibration_fraction"):
        raise TrainingError(f"{model_dir} was trained with no held-out identities: nothing to calibrate on")
    opts = TrainOptions(
        data=data if data is not None else o["data"], out=model_dir, seed=o["seed"],
        calibration_fraction=o["calibration_fraction"], min_images=o["min_images"],
        identities_per_batch=2, exclude_people=frozenset(exclude_people),
        include_people=None if include_people is None else frozenset(include_people),
        calibration_pairs=o["calibration_pairs"],
    )
    folder = ImageFolder(opts.data)
    split = split_identities(folder, opts)
    if people_hash(split.calibration) != want:
        raise TrainingError(
            f"the held-out identities of {model_dir} could not be rebuilt from {opts.data}: pass the data and "
            f"the --exclude/--include options the model was trained with"
        )
    keys, labels, _ = images_of(folder, split.calibration)
    if flip_average is not None:
        cfg.flip_average = bool(flip_average)
    before = cfg.threshold
    cal = calibrate(encoder.embed(model, folder.load_prepared(keys, cfg, threads=threads)), np.asarray(labels),
                    opts.calibration_pairs, opts.seed)
    cal["recalibrated"] = {"previous_threshold": before, "flip_average": cfg.flip_average}
    cfg.threshold = cal.pop("threshold")
    cfg.calibration = cal
    cfg.save(model_dir / encoder.CONFIG_FILE)
    return {"model": str(model_dir), "threshold": cfg.threshold, "previous_threshold": before,
            "flip_average": cfg.flip_average, "calibration": cal}
