"""The match thresholds, chosen on held-out identities at the end of a run (:func:`calibrate`) or again
later for a trained model (:func:`recalibrate`):

* the 1:1 threshold (``verify``) and its FAR operating points, on genuine and impostor pairs;
* the 1:N curve (``query``): thresholds for FPIR targets by gallery size (:func:`identification_curve`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from facesearch import distance, metrics
from facesearch.datasets import ImageFolder
from facesearch.model import encoder
from facesearch.model.records import DEFAULT_FPIR, FPIRS
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

#: probe images taken per held-out identity for the 1:N curve (a person with hundreds of images must not
#: make most of the searches)
PROBES_PER_IDENTITY = 5
#: gallery sizes (identities) at which the 1:N curve is measured, up to the number of other held-out identities
CURVE_SIZES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
#: the impostor tail's FAR levels: four per decade below the largest FPIR target
TAIL_STEPS_PER_DECADE = 4
#: resolution of the first pass that bounds the distances the curve needs (a 1/4096 bin)
_BINS = 8192

IDENTIFICATION_METHOD = (
    "FPIR(t, N) = the share of searches by held-out images whose nearest of N other held-out identities "
    "(one random face each) is within distance t, averaged exactly over every gallery of N of them (a probe "
    "with k other identities within t is accepted by 1 - C(M-1-k, N) / C(M-1, N) of the galleries, M the "
    "held-out identities); the threshold for a target is the largest distance with FPIR <= target on these "
    "searches, stored where probes x ((M-1) // N) >= 1 / target. Larger galleries: FPIR = 1 - (1 - FAR)^N "
    "on the identity-level impostor tail (independent identities; an upper bound of the averaged FPIR, so "
    "a conservative threshold), down to the smallest FAR its comparisons measure "
    "(facesearch.gallery.thresholds.fpir_threshold)"
)


def _largest_within(d_sorted: np.ndarray, rate: np.ndarray, target: float) -> float:
    """The largest distance ``t`` of ``d_sorted`` (ascending) whose rate (``rate[j]``: the cumulative rate
    up to and including ``d_sorted[j]``; non-decreasing) is at most ``target``; just below the smallest
    distance when even that one is over. Conservative, as :func:`facesearch.metrics.tar_at_far`:
    ``is_match(d, t)`` reproduces the rate on these searches."""
    if d_sorted.size == 0:
        raise ValueError("no distances")
    last = np.r_[np.nonzero(np.diff(d_sorted))[0], d_sorted.size - 1]  # the last of each run of ties
    j = int(np.searchsorted(rate[last], target + 1e-12, side="right")) - 1
    return float(d_sorted[last[j]]) if j >= 0 else float(d_sorted[0]) - 1e-6


def miss_ratio(others: int, n: int) -> np.ndarray:
    """``R[k] = C(others - k, n) / C(others, n)`` for k = 0..others: the share of the galleries of ``n`` of
    ``others`` identities that hold none of ``k`` given ones (0 once ``k > others - n``)."""
    if not 1 <= n <= others:
        raise ValueError("need 1 <= n <= others")
    j = np.arange(others, dtype=np.float64)
    num = others - j - n
    log_terms = np.log(np.where(num > 0, num, 1.0) / (others - j))
    r = np.zeros(others + 1, np.float64)
    r[0] = 1.0
    k_max = others - n  # R[k] > 0 for k <= others - n
    r[1 : k_max + 1] = np.exp(np.cumsum(log_terms[:k_max]))
    return r


def _probes_and_gallery(labels: np.ndarray, rng: np.random.Generator, per_identity: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(gallery, probes, probe_identity)``: one random image per identity (index by identity number),
    up to ``per_identity`` random images of each identity as probes, and each probe's identity number."""
    _, inv = np.unique(labels, return_inverse=True)
    order = rng.permutation(len(labels))
    lab = inv[order]
    by_id = np.argsort(lab, kind="stable")  # order's positions grouped by identity, random within each
    starts = np.searchsorted(lab[by_id], np.arange(inv.max() + 1))
    place = np.arange(len(labels)) - starts[lab[by_id]]  # 0, 1, ... within each identity
    gallery = order[by_id[starts]]
    keep = by_id[place < per_identity]
    probes = order[np.sort(keep)]
    return gallery, probes, inv[probes]


def identification_curve(emb: np.ndarray, labels: np.ndarray, seed: int, source: str = HELD_OUT,
                         fpirs: Iterable[float] = FPIRS, probes_per_identity: int = PROBES_PER_IDENTITY,
                         chunk: int = 1024) -> dict[str, Any]:
    """The 1:N decision curve of identity-labelled held-out images (``model.json``'s
    ``calibration.identification``, a :class:`facesearch.model.records.Identification`).

    Each held-out identity gets one random image as its gallery face; up to ``probes_per_identity`` of its
    images are searched, as a never-enrolled person's, against the gallery faces of the other identities.
    For a threshold ``t`` and a gallery of ``N`` identities the FPIR is averaged exactly over every gallery
    of ``N`` of the other identities (:func:`miss_ratio`), without drawing any; the thresholds are stored
    at :data:`CURVE_SIZES` up to the number of other identities, for each FPIR target that the searches
    can measure there. The identity-level impostor tail (the share of probe x other-identity comparisons
    within ``t``) is stored for larger galleries. See :data:`IDENTIFICATION_METHOD`.
    """
    fpirs = [float(f) for f in fpirs]
    if not fpirs or not all(0.0 < f < 1.0 for f in fpirs):
        raise ValueError("FPIR targets must be in (0, 1)")
    labels = np.asarray(labels)
    emb = np.asarray(emb, np.float32)
    n_id = len(np.unique(labels))
    if n_id < 2:
        raise TrainingError("the identification curve needs at least two identities")
    others = n_id - 1
    rng = np.random.default_rng(seed + 2)
    gallery, probes, probe_id = _probes_and_gallery(labels, rng, probes_per_identity)
    faces = emb[gallery]
    n_probes = len(probes)
    comparisons = n_probes * others

    def blocks():  # each block of probes: its distances to every gallery face, its own identity's at +inf
        for s in range(0, n_probes, chunk):
            d = distance.clip(distance.pairwise(emb[probes[s : s + chunk]], faces)).astype(np.float64)
            d[np.arange(len(d)), probe_id[s : s + chunk]] = np.inf
            yield d

    # pass 1: the distance below which the largest target's threshold lies at any gallery size (FPIR at
    # N >= 1 is at least the comparisons' FAR, the FPIR at N = 1)
    edges = np.linspace(distance.MIN, distance.MAX, _BINS + 1)
    hist = np.zeros(_BINS, np.int64)
    for d in blocks():
        hist += np.histogram(d[np.isfinite(d)], bins=edges)[0]
    over = int(np.searchsorted(np.cumsum(hist), max(fpirs) * comparisons, side="right"))
    bound = float(edges[min(over + 1, _BINS)])
    # pass 2: every comparison within the bound, with its rank among its probe's comparisons (1 = nearest)
    dists, ranks = [], []
    for d in blocks():
        d.sort(axis=1)
        rows, cols = np.nonzero(d <= bound)
        dists.append(d[rows, cols])
        ranks.append(cols + 1)
    d_all, r_all = np.concatenate(dists), np.concatenate(ranks)
    order = np.argsort(d_all, kind="stable")
    d_sorted, r_sorted = d_all[order], r_all[order]

    galleries = []
    for n in [s for s in CURVE_SIZES if s < others] + [others]:
        r = miss_ratio(others, n)
        weight = r[:-1] - r[1:]  # weight[rank - 1]: the galleries in which that comparison is the first within t
        fpir = np.cumsum(weight[r_sorted - 1]) / n_probes
        searches = n_probes * (others // n)
        galleries.append({
            "identities": n,
            "thresholds": [_largest_within(d_sorted, fpir, f) if searches * f >= 1.0 - 1e-9 else None
                           for f in fpirs],
            "searches": searches,
        })
    far = np.arange(1, d_sorted.size + 1, dtype=np.float64) / comparisons
    levels, q = [], 0
    while True:
        level = max(fpirs) * 10.0 ** (-q / TAIL_STEPS_PER_DECADE)
        if comparisons * level < 1.0 - 1e-9:
            break
        levels.append(level)
        q += 1
    if not levels or not math.isclose(levels[-1], 1.0 / comparisons):
        levels.append(1.0 / comparisons)  # the smallest FAR the comparisons measure: one of them
    levels = [v for v in levels if v <= max(fpirs) + 1e-12]
    return {
        "method": IDENTIFICATION_METHOD,
        "source": f"{n_id} {source}",
        "people": n_id,
        "images": int(len(labels)),
        "probes": int(n_probes),
        "faces_per_identity": 1,
        "default_fpir": DEFAULT_FPIR if any(math.isclose(DEFAULT_FPIR, f) for f in fpirs) else max(fpirs),
        "fpirs": fpirs,
        "galleries": galleries,
        "impostor_tail": {"far": levels, "threshold": [_largest_within(d_sorted, far, v) for v in levels],
                          "comparisons": int(comparisons)},
    }


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
        # the 1:N curve (query decides with it) on the same identities
        "identification": identification_curve(emb, labels, seed, source),
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
