"""LFW verification: the pairs files (View 2's ``pairs.txt``, 10 folds; View 1's single set) and their
scores: per-fold accuracy with thresholds chosen on the other folds, ROC AUC, EER, TAR at FAR."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facesearch import distance, metrics
from facesearch.datasets import ImageFolder
from facesearch.errors import ModelFileError, PairsFileError
from facesearch.evaluation.common import ProgressFactory, far_key, progress_bar, resolve_model_dir

#: FAR values at which TAR is reported
FARS = (1e-2, 1e-3)




# --------------------------------------------------------------------------- pairs files


@dataclass
class PairList:
    """LFW pairs: image ``left[i]`` against ``right[i]``, genuine when ``same[i]``, in fold ``fold[i]``.

    ``n_folds`` is 10 for View 2 (``pairs.txt``, first line ``10<TAB>300``) and 1 for View 1
    (``pairsDevTest.txt`` / ``pairsDevTrain.txt``, first line a single count).
    """

    path: str
    n_folds: int
    per_fold: int
    left: list[tuple[str, int]]
    right: list[tuple[str, int]]
    same: np.ndarray
    fold: np.ndarray

    def __len__(self) -> int:
        return len(self.left)

    @property
    def protocol(self) -> str:
        return f"{self.n_folds}-fold" if self.n_folds > 1 else "single set"

    def images(self) -> list[tuple[str, int]]:
        """Every image the pairs use, once, in first-use order."""
        return list(dict.fromkeys(self.left + self.right))


def read_pairs(path: str | os.PathLike) -> PairList:
    """Parse an LFW pairs file: a header (``n_sets<TAB>n_per_set``, or one count for a single set),
    then per set ``n`` matched lines ``name n1 n2`` followed by ``n`` mismatched lines
    ``name1 n1 name2 n2``. Raises :class:`PairsFileError` naming the offending line."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PairsFileError(f"cannot read pairs file {path}: {e}") from e
    lines = [(i + 1, ln.split()) for i, ln in enumerate(lines) if ln.strip()]
    if not lines:
        raise PairsFileError(f"{path}: empty pairs file")
    lineno, head = lines[0]
    try:
        nums = [int(v) for v in head]
    except ValueError:
        nums = []
    if len(nums) == 2:
        n_sets, per = nums
    elif len(nums) == 1:
        n_sets, per = 1, nums[0]
    else:
        raise PairsFileError(f"{path}:{lineno}: header must be 'N_SETS<TAB>N_PER_SET' or a single count")
    if n_sets < 1 or per < 1:
        raise PairsFileError(f"{path}:{lineno}: counts in the header must be positive")
    body = lines[1:]
    if len(body) != 2 * n_sets * per:
        raise PairsFileError(
            f"{path}: header announces {n_sets} set(s) of {per} matched + {per} mismatched pairs "
            f"({2 * n_sets * per} lines) but the file has {len(body)}"
        )
    left, right, same, fold = [], [], [], []
    for j, (lineno, f) in enumerate(body):
        k, r = divmod(j, 2 * per)
        genuine = r < per
        try:
            if genuine:
                if len(f) != 3:
                    raise ValueError(f"expected a matched pair 'name n1 n2', got {len(f)} fields")
                a, b = (f[0], int(f[1])), (f[0], int(f[2]))
            else:
                if len(f) != 4:
                    raise ValueError(f"expected a mismatched pair 'name1 n1 name2 n2', got {len(f)} fields")
                a, b = (f[0], int(f[1])), (f[2], int(f[3]))
        except ValueError as e:
            raise PairsFileError(f"{path}:{lineno}: {e}") from e
        left.append(a)
        right.append(b)
        same.append(genuine)
        fold.append(k)
    return PairList(str(path), n_sets, per, left, right, np.array(same, bool), np.array(fold, np.int64))


# --------------------------------------------------------------------------- model and embedding


def model_info(model_dir: Path, model) -> dict[str, Any]:
    from facesearch.model import encoder

    cfg = model.config
    return {
        "path": str(model_dir),
        "name": cfg.name,
        "backbone": cfg.backbone,
        "embedding_dim": cfg.embedding_dim,
        "input_size": cfg.input_size,
        "threshold": cfg.threshold,
        "calibration": cfg.calibration.to_dict(),
        "training": cfg.training.to_dict(),
        "weights_sha256": encoder.weights_sha256(model_dir),
        **({"quantization": cfg.quantization} if cfg.quantization else {}),
    }


def embed_keys(
    folder: ImageFolder,
    keys: Sequence[str],
    model,
    batch_size: int = 128,
    chunk: int = 512,
    progress: ProgressFactory | None = None,
    desc: str = "embedding",
    transform=None,
) -> np.ndarray:
    """Embed each image of ``folder`` named in ``keys`` (N x D unit vectors, in order).

    Images are decoded in threads, ``chunk`` at a time, the next chunk while the model runs on this one,
    and embedded ``batch_size`` at a time on the model's device.
    """
    from facesearch.model import encoder

    keys = list(keys)
    out = np.zeros((len(keys), model.config.embedding_dim), np.float32)
    starts = list(range(0, len(keys), chunk))
    with progress_bar(progress, desc, len(keys)) as bar, ThreadPoolExecutor(1) as pre:
        nxt = pre.submit(folder.load_prepared, keys[:chunk], model.config, transform=transform) if starts else None
        for i, s in enumerate(starts):
            x = nxt.result()
            if i + 1 < len(starts):
                s2 = starts[i + 1]
                nxt = pre.submit(folder.load_prepared, keys[s2 : s2 + chunk], model.config, transform=transform)
            out[s : s + len(x)] = encoder.embed(model, x, batch_size)
            bar.update(len(x))
    return out


# --------------------------------------------------------------------------- LFW verification


@dataclass
class LfwResult:
    """Verification numbers on LFW pairs. Distances are cosine distances (lower = more similar)."""

    pairs_file: str
    images: str
    protocol: str
    n_pairs: int
    n_genuine: int
    n_impostor: int
    n_folds: int
    n_images: int
    device: str
    model: dict[str, Any]
    #: per fold: {"fold", "threshold" (chosen on the other folds), "accuracy" (on this fold)}; empty for one set
    folds: list[dict[str, float]]
    mean_accuracy: float | None
    std_accuracy: float | None
    auc: float
    eer: float
    eer_threshold: float
    #: {"1e-02": {"far": 0.01, "tar": ..., "threshold": ...}, ...}
    tar_at_far: dict[str, dict[str, float]]
    #: the single threshold best on ALL pairs (optimistic: chosen on the pairs it is scored on)
    best_threshold: float
    best_threshold_accuracy: float
    model_threshold: float | None
    model_threshold_accuracy: float | None
    seconds: dict[str, float]
    # per-pair data (not in the summary): for reports
    dist: np.ndarray = field(repr=False, default=None)
    same: np.ndarray = field(repr=False, default=None)
    fold: np.ndarray = field(repr=False, default=None)
    #: the threshold each pair was judged with (its fold's, or for one set the model's/best)
    pair_threshold: np.ndarray = field(repr=False, default=None)
    left: list[tuple[str, int]] = field(repr=False, default=None)
    right: list[tuple[str, int]] = field(repr=False, default=None)
    roc: dict[str, np.ndarray] = field(repr=False, default=None)

    #: summary keys (everything but the per-pair arrays)
    SUMMARY = (
        "pairs_file images protocol n_pairs n_genuine n_impostor n_folds n_images device model folds "
        "mean_accuracy std_accuracy auc eer eer_threshold tar_at_far best_threshold best_threshold_accuracy "
        "model_threshold model_threshold_accuracy seconds"
    ).split()

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers: what the CLI prints (``--json``)."""
        return {k: getattr(self, k) for k in self.SUMMARY}

    def errors(self, kind: str, n: int) -> list[int]:
        """Indices of the hardest errors: ``"false_match"`` (impostor pairs that matched, closest
        first) or ``"false_non_match"`` (genuine pairs that did not, farthest first), judged with
        each pair's own threshold."""
        match = distance.is_match(self.dist, self.pair_threshold)
        if kind == "false_match":
            idx = np.nonzero(match & ~self.same)[0]
            return idx[np.argsort(self.dist[idx], kind="stable")][:n].tolist()
        if kind == "false_non_match":
            idx = np.nonzero(~match & self.same)[0]
            return idx[np.argsort(-self.dist[idx], kind="stable")][:n].tolist()
        raise ValueError(kind)


def verification_numbers(
    dist: np.ndarray, same: np.ndarray, fold: np.ndarray, n_folds: int, model_threshold: float | None
) -> dict[str, Any]:
    """Every verification number from per-pair distances, labels and fold ids."""
    out: dict[str, Any] = {}
    if n_folds > 1:
        kf = metrics.kfold_accuracy(dist, same, fold)
        out["folds"] = [
            {"fold": int(k) + 1, "threshold": t, "accuracy": a}
            for k, t, a in zip(kf.folds, kf.thresholds, kf.accuracies)
        ]
        out["mean_accuracy"], out["std_accuracy"] = kf.mean, kf.std
        by_fold = dict(zip(kf.folds, kf.thresholds))
        pair_thr = np.array([by_fold[k] for k in fold.tolist()], np.float64)
    else:
        out["folds"], out["mean_accuracy"], out["std_accuracy"] = [], None, None
        pair_thr = None
    out["auc"] = metrics.auc(dist, same)
    out["eer"], out["eer_threshold"] = metrics.eer(dist, same)
    out["tar_at_far"] = {}
    for far in FARS:
        tar, thr = metrics.tar_at_far(dist, same, far)
        out["tar_at_far"][far_key(far)] = {"far": far, "tar": tar, "threshold": thr}
    out["best_threshold"], out["best_threshold_accuracy"] = metrics.best_threshold(dist, same)
    out["model_threshold"] = model_threshold
    out["model_threshold_accuracy"] = (
        metrics.accuracy(dist, same, model_threshold) if model_threshold is not None else None
    )
    if pair_thr is None:
        t = model_threshold if model_threshold is not None else out["best_threshold"]
        pair_thr = np.full(dist.shape, t, np.float64)
    out["pair_threshold"] = pair_thr
    thr, far_c, tar_c = metrics.roc_curve(dist, same)
    out["roc"] = {"threshold": thr, "far": far_c, "tar": tar_c}
    return out


def _realigner(config, realign: bool | None):
    """The transform that aligns a crop to ``config``'s own template, and the list its fallbacks go to."""
    if realign is None:
        realign = config.alignment is not None
    if not realign:
        return None, None
    if config.alignment is None:
        raise ModelFileError(f"model {config.name} has no alignment template of its own to realign to")
    from facesearch.detect.align import realign_or_warp

    template, fallbacks = np.asarray(config.alignment), []

    def transform(pixels: np.ndarray) -> np.ndarray:  # what enroll and query do (gallery.embedding.model_crop)
        out, found = realign_or_warp(pixels, template, config.input_size)
        if not found:
            fallbacks.append(1)
        return out

    return transform, fallbacks


def evaluate_lfw(
    pairs: str | os.PathLike,
    images: str | os.PathLike,
    model: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = 128,
    progress: ProgressFactory | None = None,
    realign: bool | None = None,
) -> LfwResult:
    """Verification on an LFW pairs file with images from ``images`` (a folder of identities or the
    LFW zip). View 2 (10 folds): per-fold accuracy with thresholds chosen on the other folds, mean and
    std; View 1 (one set): accuracy at the model's stored threshold and at the best threshold. Both:
    ROC AUC, EER, TAR at FAR 1e-2 and 1e-3, the best global threshold. Each image is embedded once.

    ``realign`` (default: when the model has its own alignment template): each aligned crop is aligned
    again to the model's template (:func:`facesearch.detect.align.realign`; a crop in which no face is
    found is moved by the pack's mean geometry (:func:`facesearch.detect.align.realign_or_warp`), as
    enroll does, and counted in ``realigned``).
    """
    from facesearch.model import encoder

    t0 = time.perf_counter()
    plist = read_pairs(pairs)
    folder = ImageFolder(images)
    uniq = plist.images()
    keys = [folder.lfw_key(n, i) for n, i in uniq]  # fail early on a missing image
    model_dir = resolve_model_dir(model)
    net = encoder.load_for_embedding(model_dir, device)  # an int8 model: its ONNX Runtime encoder, on the CPU
    dev = net.device
    t1 = time.perf_counter()
    transform, fallbacks = _realigner(net.config, realign)
    emb = embed_keys(folder, keys, net, batch_size=batch_size, progress=progress, transform=transform)
    t2 = time.perf_counter()
    row = {k: i for i, k in enumerate(uniq)}
    li = np.array([row[k] for k in plist.left])
    ri = np.array([row[k] for k in plist.right])
    dist = np.asarray(distance.paired(emb[li], emb[ri]), np.float64)
    nums = verification_numbers(dist, plist.same, plist.fold, plist.n_folds, net.config.threshold)
    t3 = time.perf_counter()
    info = model_info(model_dir, net)
    if transform is not None:
        info["realigned"] = {"template": net.config.alignment, "images": len(uniq),
                             "no_face_found_mean_warp": len(fallbacks)}
    return LfwResult(
        pairs_file=plist.path,
        images=str(images),
        protocol=plist.protocol,
        n_pairs=len(plist),
        n_genuine=int(plist.same.sum()),
        n_impostor=int((~plist.same).sum()),
        n_folds=plist.n_folds,
        n_images=len(uniq),
        device=str(dev),
        model=info,
        seconds={"load": t1 - t0, "embed": t2 - t1, "metrics": t3 - t2, "total": t3 - t0},
        dist=dist,
        same=plist.same,
        fold=plist.fold,
        left=plist.left,
        right=plist.right,
        **nums,
    )
