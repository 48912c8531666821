"""Evaluation on LFW: verification (the View 2 10-fold protocol, or View 1) and open-set identification.

The library is pure: it returns dataclasses and never prints. Distances come from
:mod:`facesearch.distance` (cosine distance in [0, 2], lower is more similar, a match when
``distance <= threshold``) and every number from :mod:`facesearch.metrics`.

The honest LFW protocol (``shared/docs/data.md``): for each of the 10 folds, the threshold is chosen
on the other 9 folds and accuracy is measured on the held-out fold; mean and standard deviation over
the folds are reported. The encoder itself must not have been trained on the people of a fold it is
scored on: :func:`evaluate_lfw` reports the model's own training summary next to the numbers, so
that the reader can check.
"""

from __future__ import annotations

import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import numpy as np

from facesearch import distance, metrics
from facesearch.datasets import ImageFolder
from facesearch.errors import FaceSearchError, InvalidImageError
from facesearch.model.files import builtin_model_dir, resolve

#: where the model shipped with facesearch lives (used when no model directory is given; which model a
#: spec names is decided by facesearch.model.files.resolve)
DEFAULT_MODEL_DIR = builtin_model_dir()
#: FAR values at which TAR is reported
FARS = (1e-2, 1e-3)
#: FPIR values at which DIR is reported
FPIRS = (1e-2, 1e-1)

#: ``progress(description, total)`` returns a context manager with ``update(n)`` (e.g. ``tqdm``)
ProgressFactory = Callable[[str, int], ContextManager[Any]]


class PairsFileError(FaceSearchError, ValueError):
    """A pairs file that does not follow the LFW ``pairs.txt`` format."""


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int = 1) -> None:
        pass


def _bar(progress: ProgressFactory | None, desc: str, total: int):
    return progress(desc, total) if progress is not None else _NoBar()


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


def resolve_model_dir(model: str | os.PathLike | None) -> Path:
    """The model directory to use: ``model``, or the shipped default when it is None."""
    return resolve(model).directory


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
    }


def embed_keys(
    folder: ImageFolder,
    keys: Sequence[str],
    model,
    batch_size: int = 128,
    chunk: int = 512,
    progress: ProgressFactory | None = None,
    desc: str = "embedding",
) -> np.ndarray:
    """Embed each image of ``folder`` named in ``keys`` (N x D unit vectors, in order).

    Images are decoded in threads, ``chunk`` at a time, the next chunk while the model runs on this one,
    and embedded ``batch_size`` at a time on the model's device.
    """
    from facesearch.model import encoder

    keys = list(keys)
    out = np.zeros((len(keys), model.config.embedding_dim), np.float32)
    starts = list(range(0, len(keys), chunk))
    with _bar(progress, desc, len(keys)) as bar, ThreadPoolExecutor(1) as pre:
        nxt = pre.submit(folder.load_prepared, keys[:chunk], model.config) if starts else None
        for i, s in enumerate(starts):
            x = nxt.result()
            if i + 1 < len(starts):
                s2 = starts[i + 1]
                nxt = pre.submit(folder.load_prepared, keys[s2 : s2 + chunk], model.config)
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


def far_key(far: float) -> str:
    return f"{far:.0e}"


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


def evaluate_lfw(
    pairs: str | os.PathLike,
    images: str | os.PathLike,
    model: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = 128,
    progress: ProgressFactory | None = None,
) -> LfwResult:
    """Verification on an LFW pairs file with images from ``images`` (a folder of identities or the
    LFW zip). View 2 (10 folds): per-fold accuracy with thresholds chosen on the other folds, mean and
    std; View 1 (one set): accuracy at the model's stored threshold and at the best threshold. Both:
    ROC AUC, EER, TAR at FAR 1e-2 and 1e-3, the best global threshold. Each image is embedded once.
    """
    from facesearch.model import encoder

    t0 = time.perf_counter()
    plist = read_pairs(pairs)
    folder = ImageFolder(images)
    uniq = plist.images()
    keys = [folder.lfw_key(n, i) for n, i in uniq]  # fail early on a missing image
    model_dir = resolve_model_dir(model)
    dev = encoder.resolve_device(device)
    net = encoder.load(model_dir, dev)
    t1 = time.perf_counter()
    emb = embed_keys(folder, keys, net, batch_size=batch_size, progress=progress)
    t2 = time.perf_counter()
    row = {k: i for i, k in enumerate(uniq)}
    li = np.array([row[k] for k in plist.left])
    ri = np.array([row[k] for k in plist.right])
    dist = np.asarray(distance.paired(emb[li], emb[ri]), np.float64)
    nums = verification_numbers(dist, plist.same, plist.fold, plist.n_folds, net.config.threshold)
    t3 = time.perf_counter()
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
        model=model_info(model_dir, net),
        seconds={"load": t1 - t0, "embed": t2 - t1, "metrics": t3 - t2, "total": t3 - t0},
        dist=dist,
        same=plist.same,
        fold=plist.fold,
        left=plist.left,
        right=plist.right,
        **nums,
    )


# --------------------------------------------------------------------------- open-set identification


@dataclass
class IdentifyResult:
    """Open-set identification numbers. Distances are cosine distances (lower = more similar)."""

    images: str
    device: str
    model: dict[str, Any]
    gallery_per_identity: int
    n_enrolled_identities: int
    n_gallery_images: int
    n_unknown_identities: int
    n_known_probes: int
    n_unknown_probes: int
    rank1: float
    rank5: float
    #: {"1e-02": {"fpir": 0.01, "dir": ..., "threshold": ...}, ...}
    dir_at_fpir: dict[str, dict[str, float]]
    #: the model's stored threshold (what ``facesearch query`` uses)
    model_threshold: float
    #: at the model's stored threshold: share of unknown probes rejected (best distance not a match), and DIR
    unknown_rejected: float
    dir_at_model_threshold: float
    #: the same two at each stricter threshold the model's calibration stored (``query --far``):
    #: {"1e-03": {"far": 0.001, "threshold": ..., "unknown_rejected": ..., "dir": ...}}; empty if none
    at_operating_points: dict[str, dict[str, float]]
    seed: int
    seconds: dict[str, float]
    #: the images were photos: faces found and aligned first (``--detect``)
    detect: bool = False
    #: with detect: photos left out because the detector found no face in them
    no_face: dict[str, int] = field(default_factory=lambda: {"gallery": 0, "probes": 0})

    def summary(self) -> dict[str, Any]:
        return asdict(self)


def select_identification(
    folder: ImageFolder,
    gallery_per_identity: int = 1,
    probes_per_identity: int = 2,
    enrolled_fraction: float = 0.5,
    max_identities: int | None = None,
    seed: int = 0,
) -> tuple[dict[str, list[str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """Split the people with at least 2 images into enrolled and never-enrolled ones.

    Returns ``(gallery, known_probes, unknown_probes)``: ``gallery[identity]`` lists the keys
    enrolled for that identity (``gallery_per_identity`` each); probes are ``(identity, key)``,
    up to ``probes_per_identity`` per person, never an image of the gallery. Only people with at least
    ``gallery_per_identity + 1`` images can be enrolled (they need a probe). Deterministic in ``seed``.
    """
    if gallery_per_identity < 1 or probes_per_identity < 1:
        raise ValueError("gallery_per_identity and probes_per_identity must be at least 1")
    if not 0.0 < enrolled_fraction < 1.0:
        raise ValueError("enrolled_fraction must be in (0, 1)")
    rng = np.random.default_rng(seed)
    people = [p for p in folder.identities() if len(folder.items[p]) >= 2]
    people = [people[i] for i in rng.permutation(len(people))]
    if max_identities is not None:
        people = people[:max_identities]
    can_enrol = [p for p in people if len(folder.items[p]) > gallery_per_identity]
    n_enrol = min(len(can_enrol), int(round(enrolled_fraction * len(people))))
    enrolled = set(can_enrol[:n_enrol])
    gallery: dict[str, list[str]] = {}
    known, unknown = [], []
    for p in people:
        keys = [folder.items[p][i] for i in rng.permutation(len(folder.items[p]))]
        if p in enrolled:
            gallery[p] = keys[:gallery_per_identity]
            known += [(p, k) for k in keys[gallery_per_identity : gallery_per_identity + probes_per_identity]]
        else:
            unknown += [(p, k) for k in keys[:probes_per_identity]]
    if not gallery or not unknown:
        raise FaceSearchError(
            f"{folder.root}: too few people with at least {gallery_per_identity + 1} images for an open-set "
            f"evaluation (need enrolled and never-enrolled people; found {len(people)} with 2 or more images)"
        )
    return gallery, known, unknown


def evaluate_identify(
    images: str | os.PathLike,
    model: str | os.PathLike | None = None,
    device: str = "auto",
    gallery_per_identity: int = 1,
    probes_per_identity: int = 2,
    enrolled_fraction: float = 0.5,
    max_identities: int | None = None,
    seed: int = 0,
    batch_size: int = 128,
    progress: ProgressFactory | None = None,
    detect: bool = False,
) -> IdentifyResult:
    """Open-set identification through the same enrol/search code as ``facesearch query``.

    A temporary facesearch home gets a gallery of ``gallery_per_identity`` images for some people;
    probes of enrolled people and of never-enrolled people are searched. Reports rank-1 and rank-5
    identification rates (enrolled probes), DIR at FPIR 1% and 10%, and at the model's stored
    threshold the share of unknown probes rejected (their best distance is not a match).
    """
    from facesearch.gallery.facade import DB_FILE, FaceSearch

    t0 = time.perf_counter()
    folder = ImageFolder(images)
    gallery, known, unknown = select_identification(
        folder, gallery_per_identity, probes_per_identity, enrolled_fraction, max_identities, seed
    )
    model_dir = None if model is None else resolve_model_dir(model)
    n_gallery = sum(len(v) for v in gallery.values())
    with tempfile.TemporaryDirectory(prefix="facesearch-eval-") as home:
        # an explicit database URL: a FACESEARCH_DB in the environment must never receive this gallery
        fs = FaceSearch.open(home=home, db_url=f"sqlite:///{Path(home) / DB_FILE}", model=model_dir,
                             device=device, keep_crops=False, detect=detect)
        try:
            t1 = time.perf_counter()
            items = ((p, k, (lambda k=k: folder.read(k))) for p, ks in gallery.items() for k in ks)
            with _bar(progress, "enrolling", n_gallery) as bar:
                rep = fs.enroll_items(items, progress=bar.update)
            # with detect, a photo without a face is left out and counted, as a real photo folder has some
            faceless = [f for f in rep.failed if detect and f.reason.startswith("no face found")]
            no_face = {"gallery": len(faceless), "probes": 0}
            failed = [f for f in rep.failures_sorted() if f not in faceless]
            if failed:
                f = failed[0]
                raise FaceSearchError(f"{len(failed)} gallery image(s) could not be enrolled, e.g. {f.source}: "
                                      f"{f.reason}")
            # a person whose every gallery image was skipped (same bytes as an image already enrolled)
            # has no face in the gallery: their probes count as probes of never-enrolled people
            enrolled = set(rep.identities)
            unknown = [pk for pk in known if pk[0] not in enrolled] + unknown
            known = [pk for pk in known if pk[0] in enrolled]
            probes = known + unknown
            t2 = time.perf_counter()
            results, faceless_probes = [], set()
            with _bar(progress, "searching", len(probes)) as bar:
                for s in range(0, len(probes), batch_size):
                    chunk = probes[s : s + batch_size]
                    items = [(k, folder.read(k)) for _, k in chunk]
                    try:
                        emb = fs.embed_bytes(items)
                    except InvalidImageError:
                        if not detect:
                            raise
                        kept, embs = [], []  # one by one, to leave out the photos without a face
                        for pk, item in zip(chunk, items):
                            try:
                                embs.append(fs.embed_bytes([item]))
                                kept.append(pk)
                            except InvalidImageError as e:
                                if not str(e).removeprefix(f"{item[0]}: ").startswith("no face found"):
                                    raise
                                faceless_probes.add(pk)
                        chunk = kept
                        emb = np.concatenate(embs) if embs else np.zeros((0, 1), np.float32)
                    if chunk:
                        results += fs.search_embeddings(emb, top_k=5, probes=[k for _, k in chunk])
                    bar.update(len(items))
            known = [pk for pk in known if pk not in faceless_probes]
            unknown = [pk for pk in unknown if pk not in faceless_probes]
            no_face["probes"] = len(faceless_probes)
            t3 = time.perf_counter()
            threshold = fs.threshold
            operating_points = fs.operating_points()
            dev = str(fs.model.device)
            minfo = {"path": str(model_dir) if model_dir is not None else "built-in default",
                     "key": fs.model_key, "name": fs.config.name, "backbone": fs.config.backbone,
                     "embedding_dim": fs.config.embedding_dim, "threshold": fs.config.threshold,
                     "training": fs.config.training.to_dict()}
        finally:
            fs.close()
    nk = len(known)
    if nk == 0:
        raise FaceSearchError("no probes of enrolled people: nothing to identify")
    ranked = [[m.identity for m in r.matches] for r in results]
    top1 = np.array([r.matches[0].distance if r.matches else distance.MAX + 1.0 for r in results], np.float64)
    top1_id = [rk[0] if rk else None for rk in ranked]
    top1_match = np.array([bool(r.matches and r.matches[0].match) for r in results], bool)
    truth = [p for p, _ in known]
    correct = np.array([top1_id[i] == truth[i] for i in range(nk)], bool)
    dirs = {}
    for f in FPIRS:
        d, t = metrics.dir_at_fpir(top1[:nk], correct, top1[nk:], f)
        # an FPIR below 1 / (unknown probes) cannot be told from 0: the figure is then not a measurement
        dirs[far_key(f)] = {"fpir": f, "dir": d, "threshold": t, "measurable": len(unknown) * f >= 1}
    at_ops = {}
    for op in operating_points:
        t = float(op["threshold"])
        at_ops[far_key(op["far"])] = {
            "far": op["far"], "threshold": t,
            "unknown_rejected": float(np.mean(~distance.is_match(top1[nk:], t))),
            "dir": float(np.mean(correct & distance.is_match(top1[:nk], t))),
        }
    t4 = time.perf_counter()
    return IdentifyResult(
        images=str(images),
        device=dev,
        model=minfo,
        gallery_per_identity=gallery_per_identity,
        n_enrolled_identities=len(enrolled),
        n_gallery_images=rep.added,
        n_unknown_identities=len({p for p, _ in unknown}),
        n_known_probes=nk,
        n_unknown_probes=len(unknown),
        rank1=metrics.rank_k_rate(ranked[:nk], truth, 1),
        rank5=metrics.rank_k_rate(ranked[:nk], truth, 5),
        dir_at_fpir=dirs,
        model_threshold=threshold,
        unknown_rejected=float(np.mean(~top1_match[nk:])),
        dir_at_model_threshold=float(np.mean(correct & top1_match[:nk])),
        at_operating_points=at_ops,
        seed=seed,
        detect=detect,
        no_face=no_face,
        seconds={"setup": t1 - t0, "enroll": t2 - t1, "search": t3 - t2, "metrics": t4 - t3, "total": t4 - t0},
    )


__all__ = [
    "DEFAULT_MODEL_DIR",
    "FARS",
    "FPIRS",
    "IdentifyResult",
    "LfwResult",
    "PairList",
    "PairsFileError",
    "embed_keys",
    "evaluate_identify",
    "evaluate_lfw",
    "read_pairs",
    "resolve_model_dir",
    "select_identification",
    "verification_numbers",
]
