"""Open-set identification: some people enrolled in a temporary gallery, probes of enrolled and of
never-enrolled people searched with the same code as ``facesearch query``; rank-1/5 identification
rates, DIR at FPIR with thresholds chosen on the run itself (the oracle curve) and with the model's own
FPIR thresholds at the gallery's size (does its calibration hold: the FPIR measured here against the
target), and what the model's 1:1 threshold and ``query``'s default rule give.

DIR (detection and identification rate): the share of enrolled people's probes whose closest identity is
the right one and is accepted. FPIR (false positive identification rate): the share of never-enrolled
people's probes that return anyone. Honest numbers need people the model was neither trained nor
calibrated on: ``people=`` restricts the run to a list (e.g. LFW View 1's peopleDevTest.txt for a model
calibrated on peopleDevTrain.txt)."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facesearch import distance, metrics
from facesearch.datasets import ImageFolder
from facesearch.errors import FaceSearchError, NoFaceError
from facesearch.evaluation.common import ProgressFactory, far_key, progress_bar, resolve_model_dir

#: FPIR values at which DIR is reported
FPIRS = (1e-1, 1e-2, 1e-3)


def read_people(path: str | os.PathLike) -> list[str]:
    """The names of a people file: LFW View 1 (``peopleDevTest.txt``: a count, then ``name<TAB>images``
    lines), LFW View 2 (``people.txt``: a set count, then per set a count and its lines; every set's names)
    or one name per line (``#`` comments and blank lines skipped)."""
    try:
        lines = [ln.strip() for ln in Path(path).read_text().splitlines()]
    except OSError as e:
        raise FaceSearchError(f"cannot read the people file {path}: {e.strerror or e}") from e
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise FaceSearchError(f"{path}: no people in it")

    def count(ln: str) -> int | None:
        return int(ln) if ln.isdigit() else None

    def name(ln: str) -> str:
        return ln.split("\t")[0].strip()

    if count(lines[0]) is None:  # a plain list
        return list(dict.fromkeys(name(ln) for ln in lines))
    names: list[str] = []
    if len(lines) > 1 and count(lines[1]) is not None:  # View 2: sets, each a count and its lines
        i = 1
        for k in range(count(lines[0])):
            n = count(lines[i]) if i < len(lines) else None
            if n is None:
                raise FaceSearchError(f"{path} is not a people file: set {k + 1} has no count line")
            names += [name(ln) for ln in lines[i + 1 : i + 1 + n]]
            i += 1 + n
    else:
        names = [name(ln) for ln in lines[1:]]
        if len(names) != count(lines[0]):
            raise FaceSearchError(f"{path} is not a people file: it announces {lines[0]} people and lists "
                                  f"{len(names)}")
    return list(dict.fromkeys(names))


def people_keys(folder: ImageFolder, names: list[str], what: str) -> tuple[list[str], list[str]]:
    """Every image of these people in ``folder``: ``(keys, the name of each)``. A name the folder does not
    have is an error (the wrong file or folder), named with ``what``."""
    missing = [n for n in names if n not in folder.items]
    if missing:
        raise FaceSearchError(f"{len(missing)} of the {len(names)} people of {what} have no images in "
                              f"{folder.root}, e.g. {missing[0]}")
    return [k for n in names for k in folder.items[n]], [n for n in names for _ in folder.items[n]]


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
    #: the oracle curve, each threshold chosen on this run's unknown probes:
    #: {"1e-02": {"fpir": 0.01, "dir": ..., "threshold": ..., "measurable": bool}, ...}
    dir_at_fpir: dict[str, dict[str, float]]
    #: the model's 1:1 threshold (``verify``; what ``query`` decided with before there were FPIR thresholds)
    model_threshold: float
    #: at the model's 1:1 threshold: share of unknown probes rejected (best distance not a match), and DIR
    unknown_rejected: float
    dir_at_model_threshold: float
    #: the same two at each stricter threshold the model's calibration stored (``query --far``):
    #: {"1e-03": {"far": 0.001, "threshold": ..., "unknown_rejected": ..., "dir": ...}}; empty if none
    at_operating_points: dict[str, dict[str, float]]
    seed: int
    seconds: dict[str, float]
    #: the model's own FPIR thresholds at this gallery's size (``query --fpir``), and what they gave here:
    #: {"1e-02": {"fpir": 0.01, "threshold": ..., "status": "interpolated", "default": bool,
    #: "measured_fpir": ..., "dir": ..., "measurable": bool}}; empty for a model without an identification curve
    at_model_fpir: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the rule ``facesearch query`` decides by in this gallery when told nothing (``Decision.to_dict()``), and
    #: what it gave: the share of unknown probes rejected, and DIR
    default_decision: dict[str, Any] = field(default_factory=dict)
    unknown_rejected_by_default: float | None = None
    dir_by_default: float | None = None
    #: the people file the run was restricted to (None: every person of the folder)
    people: str | None = None
    #: the crops were moved onto the model's own template by the gallery, as every enroll and query does for
    #: a model with a template of its own (``facesearch.gallery.embedding.model_crop``)
    realigned: bool = False
    #: the images were photos: faces found and aligned first (``--detect``)
    detect: bool = False
    #: with detect: photos left out because the detector found no face in them
    no_face: dict[str, int] = field(default_factory=lambda: {"gallery": 0, "probes": 0})
    #: people of the folder left out because the model was trained on them (its training record names them
    #: for this folder), and whether its record could say (None: unknown, the run may include them)
    trained_people_left_out: int | None = None
    #: what the reader must know about the honesty of these numbers, one sentence each
    warnings: list[str] = field(default_factory=list)
    #: DIR against FPIR over thresholds chosen on this run (41 quantiles of the strangers' best distances):
    #: [{"threshold", "fpir", "dir"}, ...]
    dir_curve: list[dict[str, float]] = field(default_factory=list)
    #: the probes of enrolled people whose closest identity was someone else, closest first (at most 8):
    #: [{"probe", "person", "matched", "matched_source", "distance"}, ...]
    hardest: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The result for ``--json`` and ``report.json``: the rates first, then how they were obtained; the
        model's training record cut to what identifies it (its full record is in its model.json)."""
        d = asdict(self)
        first = ["rank1", "rank5", "dir_at_fpir", "at_model_fpir", "default_decision", "unknown_rejected_by_default",
                 "dir_by_default", "warnings"]
        out = {k: d.pop(k) for k in first if k in d}
        model = dict(d.pop("model"))
        t = model.get("training") or {}
        model["training"] = {k: t[k] for k in ("data", "people", "images", "recipe", "people_sha256", "notes")
                             if t.get(k) is not None} or None
        return {**out, **d, "model": model}


def select_identification(
    folder: ImageFolder,
    gallery_per_identity: int = 1,
    probes_per_identity: int = 2,
    enrolled_fraction: float = 0.5,
    max_identities: int | None = None,
    seed: int = 0,
    people: list[str] | None = None,
    singletons: bool = False,
) -> tuple[dict[str, list[str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """Split the people with at least 2 images (only those of ``people``, when given) into enrolled and
    never-enrolled ones; with ``singletons``, the people with a single image are never-enrolled ones too
    (up to ``max_identities`` of them: more strangers to measure a small FPIR with).

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
    allowed = None if people is None else set(people)
    people = [p for p in folder.identities() if len(folder.items[p]) >= 2 and (allowed is None or p in allowed)]
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
    if singletons:
        alone = [p for p in folder.identities() if len(folder.items[p]) == 1 and (allowed is None or p in allowed)]
        alone = [alone[i] for i in rng.permutation(len(alone))][:max_identities]
        unknown += [(p, folder.items[p][0]) for p in alone]
    if not gallery or not unknown:
        raise FaceSearchError(
            f"{folder.root}: too few people with at least {gallery_per_identity + 1} images for an open-set "
            f"evaluation (need enrolled and never-enrolled people; found {len(people)} with 2 or more images)"
        )
    return gallery, known, unknown


def model_people(config, folder: ImageFolder) -> tuple[set[str], set[str]] | None:
    """The people of ``folder`` a trained model was trained on and calibrated on, when its training record
    can rebuild them from this folder (the same split, checked against the stored hashes of both); None
    when it cannot say (no record, another folder, an imported model)."""
    from facesearch.training.data import split_identities
    from facesearch.training.options import TrainOptions, people_hash

    t = config.training
    o = (t.options or {}) if t is not None else {}
    if not o or not t.people_sha256:
        return None
    try:
        opts = TrainOptions(data=folder.root, out=Path(tempfile.gettempdir()), seed=o["seed"],
                            calibration_fraction=o.get("calibration_fraction", 0.0), min_images=o["min_images"],
                            identities_per_batch=2, calibration_pairs=o.get("calibration_pairs", 3000),
                            exclude_people=frozenset(o.get("exclude_people") or ()),
                            include_people=frozenset(o["include_people"]) if o.get("include_people") else None)
        split = split_identities(folder, opts)
    except (KeyError, TypeError, ValueError, FaceSearchError):
        return None
    if people_hash(split.train) != t.people_sha256:
        return None
    if t.calibration_people_sha256 and people_hash(split.calibration) != t.calibration_people_sha256:
        return None
    return set(split.train), set(split.calibration)


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
    people: str | os.PathLike | None = None,
    singletons: bool = False,
) -> IdentifyResult:
    """Open-set identification through the same enrol/search code as ``facesearch query``.

    A temporary facesearch home gets a gallery of ``gallery_per_identity`` images for some people;
    probes of enrolled people and of never-enrolled people are searched. Reports rank-1 and rank-5
    identification rates (enrolled probes); DIR at FPIR 1e-1, 1e-2 and 1e-3 with thresholds chosen on
    this run (the oracle curve, where the unknown probes can measure the FPIR); for each of the model's
    stored FPIR targets, its threshold at this gallery's size and the FPIR and DIR measured with it; and
    what ``query``'s default rule and the model's 1:1 threshold give.

    ``people``: a people file (:func:`read_people`); only its people take part. ``singletons``: people with
    one image are searched as never-enrolled people too (:func:`select_identification`). Aligned crops reach
    a model with a template of its own moved onto it by the gallery, as in every enroll and query (and as
    ``evaluate lfw`` and ``facesearch model calibrate`` realign them).
    """
    from facesearch.gallery.facade import DB_FILE, FaceSearch
    from facesearch.model.files import resolve

    t0 = time.perf_counter()
    folder = ImageFolder(images)
    names = None
    if people is not None:
        names = read_people(people)
        people_keys(folder, names, str(people))  # every person listed must be there
    model_dir = None if model is None else resolve_model_dir(model)
    config = resolve(model_dir).config
    realigned = config.alignment is not None and not detect
    warnings: list[str] = []
    known_people = model_people(config, folder)
    left_out = None
    if known_people is not None:  # the model's record names its people here: keep only the others
        trained, calibrated = known_people
        candidates = names if names is not None else folder.identities()
        names = [n for n in candidates if n not in trained]
        left_out = len(candidates) - len(names)
        if not [n for n in names if len(folder.items.get(n, ())) >= 2]:
            raise FaceSearchError(
                f"this model was trained on every person of {folder.root} with 2 or more images: an "
                "identification run on people it never saw is not possible with this folder")
        if calibrated & set(names):
            warnings.append(
                f"the people kept ({len(names)}, none trained on) include the {len(calibrated & set(names))} the "
                "model's thresholds were calibrated on: the rows at the model's own FPIR thresholds and its 1:1 "
                "threshold are optimistic; the DIR at FPIR rows (thresholds chosen on this run) are not")
    else:
        src = config.source or {}
        if src:
            warnings.append(
                f"this model was imported ({src.get('package') or 'from elsewhere'}) and the people it was trained "
                "on are not published: it may have seen the people of this folder")
        elif config.training is not None and config.training.people is not None:
            warnings.append(
                "this model's training record does not say which people of this folder it was trained on "
                "(trained on other data, or the folder differs): these rates may include people it saw")
    gallery, known, unknown = select_identification(
        folder, gallery_per_identity, probes_per_identity, enrolled_fraction, max_identities, seed, names, singletons
    )
    with tempfile.TemporaryDirectory(prefix="facesearch-eval-") as home:
        # an explicit database URL: a FACESEARCH_DB in the environment must never receive this gallery
        fs = FaceSearch.open(home=home, db_url=f"sqlite:///{Path(home) / DB_FILE}", model=model_dir,
                             device=device, keep_crops=False, detect=detect)
        try:
            t1 = time.perf_counter()
            rep, no_face = _enroll_gallery(fs, folder, gallery, detect, progress)
            # a person whose every gallery image was skipped (same bytes as an image already enrolled)
            # has no face in the gallery: their probes count as probes of never-enrolled people
            enrolled = set(rep.identities)
            unknown = [pk for pk in known if pk[0] not in enrolled] + unknown
            known = [pk for pk in known if pk[0] in enrolled]
            t2 = time.perf_counter()
            results, faceless = _search_probes(fs, folder, known + unknown, batch_size, detect, progress)
            known = [pk for pk in known if pk not in faceless]
            unknown = [pk for pk in unknown if pk not in faceless]
            no_face["probes"] = len(faceless)
            t3 = time.perf_counter()
            threshold, operating_points, dev = fs.threshold, fs.operating_points(), str(fs.model.device)
            fpir_points, default = fs.identification_thresholds(), fs.decision().to_dict()
            ident = fs.config.calibration.identification
            minfo = {"path": str(model_dir) if model_dir is not None else "built-in default",
                     "key": fs.model_key, "name": fs.config.name, "backbone": fs.config.backbone,
                     "embedding_dim": fs.config.embedding_dim, "threshold": fs.config.threshold,
                     "identification_source": ident.source if ident is not None else None,
                     "training": fs.config.training.to_dict(),
                     **({"source": fs.config.source} if fs.config.source else {})}
        finally:
            fs.close()
    numbers = _identification_numbers(results, known, unknown, operating_points, fpir_points, threshold)
    t4 = time.perf_counter()
    return IdentifyResult(
        images=str(images),
        device=dev,
        model=minfo,
        gallery_per_identity=gallery_per_identity,
        n_enrolled_identities=len(enrolled),
        n_gallery_images=rep.added,
        n_unknown_identities=len({p for p, _ in unknown}),
        n_known_probes=len(known),
        n_unknown_probes=len(unknown),
        model_threshold=threshold,
        seed=seed,
        default_decision=default,
        people=str(people) if people is not None else None,
        realigned=realigned,
        detect=detect,
        no_face=no_face,
        trained_people_left_out=left_out,
        warnings=warnings,
        seconds={"setup": t1 - t0, "enroll": t2 - t1, "search": t3 - t2, "metrics": t4 - t3, "total": t4 - t0},
        **numbers,
    )


def _enroll_gallery(fs, folder: ImageFolder, gallery: dict[str, list[str]], detect: bool,
                    progress: ProgressFactory | None) -> tuple[Any, dict[str, int]]:
    """Enrol the gallery; the enrolment report and the count of photos left out without a face (with
    ``detect``: a real photo folder has some). Any other failure raises :class:`FaceSearchError`."""
    items = ((p, k, (lambda k=k: folder.read(k))) for p, ks in gallery.items() for k in ks)
    with progress_bar(progress, "enrolling", sum(len(v) for v in gallery.values())) as bar:
        rep = fs.enroll_items(items, progress=bar.update)
    faceless = [f for f in rep.failed if detect and f.reason.startswith("no face found")]
    failed = [f for f in rep.failures_sorted() if f not in faceless]
    if failed:
        f = failed[0]
        raise FaceSearchError(f"{len(failed)} gallery image(s) could not be enrolled, e.g. {f.source}: "
                              f"{f.reason}")
    return rep, {"gallery": len(faceless), "probes": 0}


def _search_probes(fs, folder: ImageFolder, probes: list[tuple[str, str]], batch_size: int, detect: bool,
                   progress: ProgressFactory | None) -> tuple[list, set[tuple[str, str]]]:
    """Search every probe, ``batch_size`` at a time: the search results in probe order, and (with
    ``detect``) the probes left out because no face was found in them."""
    results, faceless = [], set()
    with progress_bar(progress, "searching", len(probes)) as bar:
        for s in range(0, len(probes), batch_size):
            chunk = probes[s : s + batch_size]
            items = [(k, folder.read(k)) for _, k in chunk]
            chunk, emb = _embed_chunk(fs, chunk, items, detect, faceless)
            if chunk:
                results += fs.search_embeddings(emb, top_k=5, probes=[k for _, k in chunk])
            bar.update(len(items))
    return results, faceless


def _embed_chunk(fs, chunk: list[tuple[str, str]], items: list[tuple[str, bytes]], detect: bool,
                 faceless: set[tuple[str, str]]) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Embed a chunk's images in one batch. With ``detect`` a photo without a face is left out (and added
    to ``faceless``) while the others are still embedded together: one faceless photo used to send the whole
    batch back through the network one image at a time (838 s against 39 s on LFW's photos)."""
    from facesearch import images
    from facesearch.gallery.embedding import face_crops

    kept, crops = [], []
    for pk, (src, data) in zip(chunk, items):
        try:
            crops.append(face_crops(images.decode(data, src), src, fs.config, fs.detect, False, fs.detector)[0][0])
        except NoFaceError:
            if not detect:
                raise
            faceless.add(pk)
            continue
        kept.append(pk)
    return kept, fs.embed_crops(crops) if crops else np.zeros((0, fs.config.embedding_dim), np.float32)


def open_set_rates(known_top1: np.ndarray, correct: np.ndarray, unknown_top1: np.ndarray,
                   threshold: float) -> tuple[float, float]:
    """``(fpir, dir)`` at one threshold: the share of unknown probes whose closest identity is within it,
    and the share of known probes whose closest identity is right and within it."""
    return (float(np.mean(distance.is_match(unknown_top1, threshold))),
            float(np.mean(correct & distance.is_match(known_top1, threshold))))


def _identification_numbers(results: list, known: list[tuple[str, str]], unknown: list[tuple[str, str]],
                            operating_points: list, fpir_points: list | None = None,
                            model_threshold: float | None = None) -> dict[str, Any]:
    """The rates of :class:`IdentifyResult` from the search results of the known probes, then the unknown."""
    nk, nu = len(known), len(unknown)
    if nk == 0:
        raise FaceSearchError("no probes of enrolled people: nothing to identify")
    ranked = [[m.identity for m in r.matches] for r in results]
    top1 = np.array([r.matches[0].distance if r.matches else distance.MAX + 1.0 for r in results], np.float64)
    top1_id = [rk[0] if rk else None for rk in ranked]
    top1_match = np.array([bool(r.matches and r.matches[0].match) for r in results], bool)
    truth = [p for p, _ in known]
    correct = np.array([top1_id[i] == truth[i] for i in range(nk)], bool)
    kd, ud = top1[:nk], top1[nk:]
    dirs = {}
    for f in FPIRS:
        d, t = metrics.dir_at_fpir(kd, correct, ud, f)
        # an FPIR below 1 / (unknown probes) cannot be told from 0: the figure is then not a measurement
        dirs[far_key(f)] = {"fpir": f, "dir": d, "threshold": t, "measurable": nu * f >= 1}
    at_fpir = {}
    for row in fpir_points or []:
        fp, d = open_set_rates(kd, correct, ud, float(row["threshold"]))
        at_fpir[far_key(row["fpir"])] = dict(row, measured_fpir=fp, dir=d, measurable=nu * row["fpir"] >= 1)
    at_ops = {}
    for op in operating_points:
        t = float(op["threshold"])
        fp, d = open_set_rates(kd, correct, ud, t)
        at_ops[far_key(op["far"])] = {"far": op["far"], "threshold": t, "unknown_rejected": 1.0 - fp, "dir": d}
    curve = []
    if nu:
        for t in np.unique(np.quantile(ud, np.linspace(0.0, 1.0, 41))):
            fp_t, d_t = open_set_rates(kd, correct, ud, float(t))
            curve.append({"threshold": float(t), "fpir": fp_t, "dir": d_t})
    wrong = [i for i in np.argsort(kd, kind="stable") if not correct[i] and results[i].matches][:8]
    hardest = [{"probe": known[i][1], "person": truth[i], "matched": top1_id[i],
                "matched_source": results[i].matches[0].source, "distance": float(kd[i])} for i in wrong]
    if model_threshold is not None:
        fp, d_model = open_set_rates(kd, correct, ud, float(model_threshold))
    else:
        fp, d_model = float("nan"), float("nan")
    return {
        "rank1": metrics.rank_k_rate(ranked[:nk], truth, 1),
        "rank5": metrics.rank_k_rate(ranked[:nk], truth, 5),
        "dir_at_fpir": dirs,
        "at_model_fpir": at_fpir,
        "unknown_rejected": 1.0 - fp,
        "dir_at_model_threshold": d_model,
        "unknown_rejected_by_default": float(np.mean(~top1_match[nk:])),
        "dir_by_default": float(np.mean(correct & top1_match[:nk])),
        "at_operating_points": at_ops,
        "dir_curve": curve,
        "hardest": hardest,
    }
