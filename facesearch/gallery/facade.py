"""The Python API: :class:`FaceSearch` enrolls, queries, verifies and manages a gallery.

One object loads the model and the index once and serves many calls::

    from facesearch import FaceSearch

    fs = FaceSearch.open(home="~/faces")          # SQLite + index in ~/faces
    report = fs.enroll_folder("people/")          # people/<identity>/<image files>
    result = fs.query("probe.jpg", top_k=5)       # ranked identities, best face each
    print(result.identity, result.matches[0].distance)
    same = fs.verify("a.jpg", "b.jpg").same       # distance <= the model's threshold

Images are aligned face crops by default. For ordinary photos open with ``detect=True``: faces are
found and aligned first (:mod:`facesearch.detect`); enroll and verify use the largest face of each
photo, :meth:`FaceSearch.query_faces` searches every face of one.

Distances are cosine distances in [0, 2] (:mod:`facesearch.distance`), lower is more similar;
a match is ``distance <= threshold`` with the threshold calibrated and stored with the model.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.exc import IntegrityError

from facesearch import detect as fdetect
from facesearch import distance, images
from facesearch import index as vindex
from facesearch.model.config import BUILTIN_MODELS, CONFIG_FILE, ModelConfig, read_model_dir, weights_sha256
from facesearch.model.files import model_key
from facesearch.model.inference import ThreadTuner as _ThreadTuner
from facesearch.model.inference import inference_copy as _inference_copy
from facesearch.datasets import ImageFolder
from facesearch.errors import (
    FaceSearchError,
    InvalidIdentityError,
    InvalidImageError,
    ModelFileError,
    ModelMismatchError,
    ThresholdError,
)
from facesearch.store import Store, nfc_name, validate_identity

if TYPE_CHECKING:  # the encoder module imports torch: loaded when a face is first embedded
    from facesearch.model import encoder

log = logging.getLogger("facesearch")

DB_FILE = "facesearch.db"
INDEX_FILE = "index.fsx"
BUILTIN_PREFIX = "builtin:"
DEFAULT_MODEL = "default"

Progress = Callable[[int], None]
ImageInput = str | os.PathLike | bytes


def default_home() -> Path:
    return Path(os.environ.get("FACESEARCH_HOME") or Path.home() / ".facesearch").expanduser()


def builtin_model_dir(name: str = DEFAULT_MODEL) -> Path:
    return BUILTIN_MODELS / name


# ---- results -------------------------------------------------------------------------------
@dataclass
class Match:
    """One enrolled identity: its closest face to the probe. ``match``: distance <= threshold."""

    identity: str
    distance: float
    match: bool
    face_id: int
    source: str


@dataclass
class QueryResult:
    """Ranked identities for one probe, closest first. ``identity`` is None when nobody matches."""

    matches: list[Match]
    threshold: float
    probe: str = ""
    face: dict | None = None  # with detect: where in the probe the face is (box, score, landmarks)

    @property
    def identity(self) -> str | None:
        return self.matches[0].identity if self.matches and self.matches[0].match else None

    def to_dict(self) -> dict:
        out = {"probe": self.probe, "identity": self.identity, "unknown": self.identity is None,
               "threshold": self.threshold, "matches": [asdict(m) for m in self.matches]}
        if self.face is not None:  # only with detect: without it, the JSON is as it always was
            out["face"] = self.face
        return out


@dataclass
class VerifyResult:
    """``same`` is ``distance <= threshold``."""

    distance: float
    threshold: float
    same: bool
    faces: tuple[dict | None, dict | None] = (None, None)  # with detect: the face used in A and in B

    def to_dict(self) -> dict:
        out = asdict(self)
        if out["faces"] == (None, None):  # only with detect: without it, the JSON is as it always was
            del out["faces"]
        return out


@dataclass
class Failure:
    source: str
    reason: str


@dataclass
class EnrollReport:
    identities: set[str] = field(default_factory=set)
    added: int = 0
    face_ids: list[int] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, already enrolled as identity)
    failed: list[Failure] = field(default_factory=list)
    #: with detect: photos enrolled now that held several faces, and how many; their largest face was taken
    several_faces: list[tuple[str, int]] = field(default_factory=list)
    #: skipped files whose content is enrolled as another identity than the one asked for (a mislabelled
    #: or duplicated photo): ``(source, identity asked for, identity that has it)``
    elsewhere: list[tuple[str, str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"identities": sorted(self.identities), "added": self.added, "skipped": len(self.skipped),
                "failed": len(self.failed), "face_ids": self.face_ids,
                "skipped_files": [{"source": s, "identity": i} for s, i in self.skipped],
                "failures": [asdict(f) for f in self.failures_sorted()],
                "several_faces": [{"source": s, "faces": n} for s, n in sorted(self.several_faces)],
                "enrolled_as_another_identity": [{"source": s, "asked": a, "identity": i}
                                                 for s, a, i in sorted(self.elsewhere)]}

    def failures_sorted(self) -> list[Failure]:
        return sorted(self.failed, key=lambda f: f.source)


class _EnrollRun:
    """One enroll call's bookkeeping of content seen twice: a later copy of a file is reported like its
    first copy (skipped as enrolled by that identity, or failed with the same reason), once known."""

    def __init__(self, report: EnrollReport):
        self.report = report
        self.first: dict[str, str] = {}  # content hash -> identity of its first copy in this run
        self.outcome: dict[str, tuple[str, str]] = {}  # hash -> ("enrolled", identity) | ("failed", reason)
        self.waiting: dict[str, list[tuple[str, str]]] = {}  # hash -> later copies (source, asked)

    def skip(self, source: str, asked: str, has: str) -> None:
        self.report.skipped.append((source, has))
        if nfc_name(has) != nfc_name(asked):  # the same name in another Unicode form is the same identity
            self.report.elsewhere.append((source, asked, has))

    def same_as_first(self, sha: str, source: str, asked: str) -> None:
        if sha in self.outcome:
            self._report(sha, source, asked)
        else:
            self.waiting.setdefault(sha, []).append((source, asked))

    def settle(self, sha: str, outcome: tuple[str, str]) -> None:
        self.outcome[sha] = outcome
        for source, asked in self.waiting.pop(sha, []):
            self._report(sha, source, asked)

    def _report(self, sha: str, source: str, asked: str) -> None:
        kind, value = self.outcome[sha]
        if kind == "failed":
            self.report.failed.append(Failure(source, value))
        else:
            self.skip(source, asked, value)


def _png(chw_uint8: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(chw_uint8.transpose(1, 2, 0)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@dataclass(frozen=True)
class _ModelFiles:
    """A model not loaded yet: its config (read), where its weights are, and the device asked for."""

    config: ModelConfig
    directory: Path
    device: str | None

    def load(self) -> "encoder.Encoder":
        """The encoder, with this config (a gallery keeps the config it was opened with)."""
        from facesearch.model import encoder

        return encoder.load(self.directory, encoder.resolve_device(self.device), config=self.config)


#: device names a gallery accepts (checked at open, without torch; whether it is usable, at loading)
_DEVICE = re.compile(r"auto|cpu|(cuda|mps|xpu)(:\d+)?")


class FaceSearch:
    """A gallery of enrolled faces: a metadata store, an index built from it, and one encoder."""

    def __init__(self, store: Store, model: "encoder.Encoder | _ModelFiles", model_key: str, model_id: int,
                 home: Path, index_factory: str = "auto", index_backend: str = "auto",
                 keep_crops: bool = True, detect: bool = False):
        self.store = store
        self._model = model
        self._load_lock = threading.Lock()
        self.model_key = model_key
        self.model_id = model_id
        self.home = home
        self.index_factory = index_factory
        if index_backend != "auto":
            vindex.resolve_backend(index_backend)  # an unknown name is refused now
        self._backend = index_backend
        self.keep_crops = keep_crops
        #: find and align faces in the images (ordinary photos) instead of taking them as aligned crops
        self.detect = detect
        if detect:
            fdetect.available_or_raise()
        self._index: vindex.VectorIndex | None = None
        self._index_revision = -1
        self._fast: tuple[encoder.Encoder, encoder.Encoder] | None = None  # (model, its inference copy)
        self._tuner: _ThreadTuner | None = None  # set while enrolling on the CPU
        self._start_embedding: Callable[[], None] | None = None  # armed by _embed_threads

    # ---- opening --------------------------------------------------------------------------
    @classmethod
    def open(cls, home: str | os.PathLike | None = None, db_url: str | None = None,
             model: str | os.PathLike | None = None, device: str | None = "auto", index: str = "auto",
             backend: str = "auto", strict: bool = True, keep_crops: bool = True,
             detect: bool = False) -> "FaceSearch":
        """Open (creating if needed) a gallery.

        ``home``: folder for the SQLite database and the index file (default ``$FACESEARCH_HOME`` or
        ``~/.facesearch``); ``db_url``: any SQLAlchemy URL instead of the SQLite file; ``model``: a
        model directory (default: the model that built this gallery, else the shipped default model);
        ``index``: ``auto`` or a FAISS factory string; ``backend``: ``auto``, ``faiss-cpu``,
        ``faiss-gpu`` or ``torch-cuda``; ``detect``: the images are photos, find and align the faces in
        them (needs ``facesearch[detect]``) rather than take them as aligned face crops. With ``strict``
        (the default) a model other than the one that embedded the gallery is refused
        (:class:`ModelMismatchError`); ``reindex(model=...)`` switches.
        The schema is upgraded to the newest Alembic revision on open.
        """
        if detect:
            fdetect.available_or_raise()  # before any file or database is touched
        if backend != "auto":
            vindex.resolve_backend(backend)  # one that is not there is refused before anything is recorded
        home = Path(home).expanduser() if home is not None else default_home()
        try:
            home.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise FaceSearchError(f"cannot use {home} as the facesearch home: {e.strerror or e}") from None
        if device is not None and not _DEVICE.fullmatch(str(device)):
            raise FaceSearchError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
        db_url = db_url or os.environ.get("FACESEARCH_DB") or f"sqlite:///{home / DB_FILE}"
        store = Store.open(db_url)
        try:
            active = store.active_model()
            if model is not None:
                location = str(Path(model).expanduser().resolve())
            elif active is not None:
                location = active.location
            else:
                location = BUILTIN_PREFIX + DEFAULT_MODEL
            model_dir = _model_dir(location)
            config = read_model_dir(model_dir)
            if config.threshold is None:
                raise ModelFileError(f"model {model_dir} has no calibrated threshold; train or calibrate it first")
            vindex.check_factory(index, config.embedding_dim)
            net: "encoder.Encoder | _ModelFiles" = _ModelFiles(config, model_dir, device)
            sha = weights_sha256(model_dir)
            key = model_key(config, sha256=sha)
            if active is None or (model is not None and active.key != key and not (strict and store.count_faces())):
                # a model new to the gallery is loaded now, before it is recorded or made active, so
                # damaged weights or an unusable device leave nothing behind; the gallery's own model is
                # loaded when a face is first embedded (commands that embed nothing never import torch)
                net = net.load()
                sha = net.weights_sha256  # of the bytes loaded
                key = model_key(config, sha256=sha)
            if active is not None and active.key != key and strict and store.count_faces() > 0:
                if model is None:  # the gallery's own model directory holds other weights now
                    net.load()  # damaged? then that is the error, not "replaced in place"
                    raise ModelMismatchError(_replaced_in_place(active.key, location, key))
                raise ModelMismatchError(
                    f"this gallery was embedded by model {active.key}, not {key}: embeddings of different "
                    f"models cannot be compared. Run `facesearch reindex --model {model}` to re-embed the gallery "
                    "with the new model, or leave --model out to use the gallery's model."
                )
            rec = store.register_model(key, config.to_dict(), sha, location)
            if active is None or (active.key != key and store.count_faces() == 0):
                store.set_active_model(rec.id)
            return cls(store, net, key, rec.id, home, index, backend, keep_crops, detect)
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        self.store.close()
        self._index = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- properties -----------------------------------------------------------------------
    @property
    def model(self) -> "encoder.Encoder":
        """The encoder, loaded on first use: a command that embeds nothing (``info``, ``identities``,
        ``remove``, ...) never imports torch, which takes seconds."""
        net = self._model
        if isinstance(net, _ModelFiles):
            with self._load_lock:  # threads sharing a gallery load it once
                net = self._model
                if isinstance(net, _ModelFiles):
                    files = net
                    try:
                        net = files.load()
                    except ModelFileError as e:  # other weights that do not fit: say they were replaced
                        now = model_key(files.config, files.directory)
                        if now != self.model_key:
                            raise ModelMismatchError(
                                _replaced_in_place(self.model_key, str(files.directory), now)) from e
                        raise
                    now = model_key(files.config, sha256=net.weights_sha256)  # of the bytes just loaded
                    if now != self.model_key:
                        raise ModelMismatchError(_replaced_in_place(self.model_key, str(files.directory), now))
                    self._model = net
        return net

    @model.setter
    def model(self, net: "encoder.Encoder") -> None:
        with self._load_lock:
            self._model = net

    def load_model(self) -> None:
        """Load the encoder now rather than at the first embedding (a service checking at start-up that
        its model and device work: damaged weights or an unusable device raise here)."""
        self.model  # noqa: B018 - the property loads

    @property
    def device(self):
        """The torch device faces are embedded on (resolving ``auto`` imports torch)."""
        if isinstance(self._model, _ModelFiles):
            from facesearch.model import encoder

            return encoder.resolve_device(self._model.device)
        return self._model.device

    @property
    def config(self) -> ModelConfig:
        return self._model.config

    @property
    def index_backend(self) -> str:
        """Where the index searches; ``auto`` is resolved at the first use of the index (it may ask torch
        about CUDA, which a command that never searches need not import)."""
        if self._backend == "auto":
            self._backend = vindex.resolve_backend("auto")
        return self._backend

    def _device_name(self) -> str:
        """Where faces are (or will be) embedded, without importing torch where no GPU can be there."""
        files = self._model
        if isinstance(files, _ModelFiles):
            if files.device in (None, "auto") and not vindex.gpu_driver_present():
                return "cpu"
            if files.device == "cpu":
                return "cpu"
        try:
            return str(self.device)
        except FaceSearchError as e:  # only a model not loaded yet can get here; info says so, not fails
            return f"{getattr(files, 'device', '?')} (not usable here: {e})"

    @property
    def threshold(self) -> float:
        """The model's calibrated distance threshold: a match when distance <= threshold."""
        return float(self.config.threshold)

    def operating_points(self) -> list[dict]:
        """Stricter thresholds stored by calibration: ``[{"far": 0.01, "threshold": t, "tar": x}, ...]``,
        each the largest threshold whose false accept rate on the held-out impostor pairs was at most ``far``;
        only those the impostor pairs could measure (at least 1/far of them: a model calibrated before
        facesearch checked this may have stored others)."""
        cal = self.config.calibration or {}
        n = cal.get("impostor_pairs")
        return [op for op in cal.get("operating_points") or [] if n is None or n * op["far"] >= 1.0 - 1e-9]

    def threshold_at(self, far: float | None = None, threshold: float | None = None) -> float:
        """The threshold to decide with: ``threshold`` if given, else the stored operating point for ``far``,
        else the model's calibrated threshold. Raises ThresholdError (a ValueError) for a bad threshold or a
        ``far`` the model has no threshold for."""
        if threshold is not None and far is not None:
            raise ThresholdError("give a threshold or a far, not both")
        if threshold is not None:
            if not distance.MIN <= threshold <= distance.MAX:
                raise ThresholdError(f"threshold is a {self.config.distance} distance in [{distance.MIN}, {distance.MAX}]")
            return float(threshold)
        if far is None:
            return self.threshold
        for op in self.operating_points():
            if math.isclose(op["far"], far, rel_tol=1e-9):
                return float(op["threshold"])
        n = (self.config.calibration or {}).get("impostor_pairs")
        if n is not None and n * far < 1.0 - 1e-9:
            raise ThresholdError(
                f"model {self.config.name} has no threshold for FAR {far:g}: its calibration had {n} impostor "
                f"pairs, and measuring a FAR of {far:g} needs at least {math.ceil(1.0 / far - 1e-9)}. Train with "
                "more held-out people (`facesearch train --calibration-fraction`), or pass --threshold D")
        have = ", ".join(f"{op['far']:g}" for op in self.operating_points()) or "none"
        raise ThresholdError(f"model {self.config.name} has no threshold for FAR {far:g} (it has: {have}); "
                             "`facesearch calibrate` stores FAR 1e-2 and 1e-3 where the held-out pairs can measure "
                             "them; pass --threshold D for another")

    @property
    def index_path(self) -> Path:
        return self.home / INDEX_FILE

    # ---- embedding ------------------------------------------------------------------------
    @staticmethod
    def _pixels(image: ImageInput) -> tuple[np.ndarray, str]:
        """Read one image -> (H x W x 3 uint8 RGB, sha256 of its bytes)."""
        if isinstance(image, (bytes, bytearray)):
            return images.decode(bytes(image)), hashlib.sha256(image).hexdigest()
        loaded = images.load(image)
        return loaded.pixels, loaded.sha256

    def _face_crops(self, pixels: np.ndarray, source: str, every: bool = False
                    ) -> list[tuple[np.ndarray, fdetect.Face | None]]:
        """The model's inputs (3 x S x S uint8) for an image: the image itself when it is an aligned crop;
        with ``detect``, its largest face aligned (``every``: all its faces, largest first). A photo in
        which the detector finds no face raises InvalidImageError."""
        if not self.detect:
            return [(images.prepare(pixels, self.config), None)]
        faces = fdetect.faces_or_fail(pixels, source)
        return [(images.prepare(fdetect.align(pixels, f), self.config), f) for f in (faces if every else faces[:1])]

    def _prepare(self, image: ImageInput) -> tuple[np.ndarray, fdetect.Face | None]:
        """Read one image -> (3 x S x S uint8 crop of its face, the detected face or None)."""
        return self._face_crops(self._pixels(image)[0], _name(image))[0]

    def embed(self, image_list: Sequence[ImageInput]) -> np.ndarray:
        """Embed images (paths or bytes): N x D float32 unit vectors. Raises InvalidImageError on a bad one."""
        crops = [self._prepare(im)[0] for im in image_list]
        return self._embed_crops(crops)

    def embed_bytes(self, items: Sequence[tuple[str, bytes]]) -> np.ndarray:
        """Embed ``(source, bytes)`` pairs; the source names the file in error messages."""
        crops = [self._face_crops(images.decode(data, src), src)[0][0] for src, data in items]
        return self._embed_crops(crops)

    def _embed_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if self._fast is None or self._fast[0] is not self.model:
            self._fast = (self.model, _inference_copy(self.model))
        if not len(crops):
            return np.zeros((0, self.config.embedding_dim), np.float32)
        from facesearch.model import encoder

        return encoder.embed(self._fast[1], np.stack(crops))

    # ---- index ----------------------------------------------------------------------------
    def _expected_stamp(self, revision: int, change_id: str) -> vindex.Stamp:
        n = self.store.count_faces()
        return vindex.Stamp(self.model_key, revision, n, self.config.embedding_dim, "", self.index_backend,
                            change_id)

    def _check_model_consistency(self) -> None:
        by_model = self.store.faces_by_model()
        others = [(m, n) for m, n in by_model if m.id != self.model_id]
        if others and len(by_model) == 1:
            m = others[0][0]
            mine = self.store.model_location(self.model_id)
            if mine is not None and mine == m.location:  # same directory, other weights now
                raise ModelMismatchError(_replaced_in_place(m.key, mine, self.model_key))
            raise ModelMismatchError(
                f"every enrolled face is now embedded by model {m.key} ({_where(m.location)}), not by this "
                f"handle's {self.model_key}: another process switched the gallery (`facesearch reindex "
                "--model`). Open the gallery again to use its model.")
        if others:
            total = sum(n for _, n in by_model)
            counts = ", ".join(f"{n} by {m.key} ({_where(m.location)})" for m, n in by_model)
            active = self.store.active_model()
            target = next((m for m, _ in others if active is None or m.id != active.id), others[0][0])
            raise ModelMismatchError(
                f"the {total} enrolled faces were embedded by more than one model: {counts} (an "
                f"interrupted `reindex --model` of an earlier facesearch, which wrote in place?). Run `facesearch reindex "
                f"--model {_where(target.location)}` to embed them all with one model.")

    def index(self) -> vindex.VectorIndex:
        """The index, in sync with the store: loaded from its file, or rebuilt when stale."""
        revision, change_id = self.store.state()
        if self._index is not None and revision == self._index_revision:
            return self._index
        expect = self._expected_stamp(revision, change_id)
        try:
            self._index = vindex.load(self.index_path, expect, self.index_backend)
            self._index_revision = revision
        except vindex.StaleIndex as why:
            log.info("rebuilding the index from the store: %s", why)
            self.rebuild_index()
        return self._index

    def rebuild_index(self) -> vindex.VectorIndex:
        """Build the index from the embeddings in the store and save it."""
        self._check_model_consistency()
        revision = self.store.revision()
        n = self.store.count_faces()
        if n == 0:
            factory = "Flat" if self.index_factory == "auto" else self.index_factory
            idx = vindex.create(self.config.embedding_dim, 0, factory if not factory.startswith("IVF") else "Flat",
                                self.index_backend)
        else:
            idx = vindex.build(self.config.embedding_dim, self.store.iter_embeddings(), n,
                               self.index_factory, self.index_backend)
        self._index, self._index_revision = idx, revision
        self._save_index()
        return idx

    def _save_index(self) -> None:
        idx = self._index
        revision, change_id = self.store.state()
        if revision != self._index_revision:
            change_id = ""  # the store moved on (another process): a file that no loader will take
        stamp = vindex.Stamp(self.model_key, self._index_revision, idx.ntotal, self.config.embedding_dim,
                             idx.factory, idx.backend, change_id)
        vindex.save(idx, self.index_path, stamp)

    def _after_change(self, new_revision: int, apply: Callable[[vindex.VectorIndex], None]) -> None:
        """Apply a change to the in-memory index if it was in sync just before it; else rebuild lazily."""
        idx = self._index
        if idx is not None and self._index_revision == new_revision - 1:
            try:
                apply(idx)
                self._index_revision = new_revision
                return
            except RuntimeError as e:  # e.g. an index type that cannot remove ids
                log.info("index cannot apply the change in place (%s); rebuilding", e)
        self._index = None
        self._index_revision = -1

    def _maybe_retier(self) -> None:
        """Under ``auto``, switch between exact and approximate index as the gallery grows."""
        idx = self._index
        if self.index_factory != "auto" or idx is None or idx.backend == "torch-cuda":
            return
        want = vindex.auto_factory(idx.ntotal)
        if want == "Flat" and idx.factory == "Flat":
            return
        if want.startswith("IVF") and idx.factory.startswith("IVF"):
            have = int(idx.factory[3:].split(",")[0])
            if have * 4 >= int(want[3:].split(",")[0]):
                return  # close enough; retrain only when the gallery has grown a lot
        self.rebuild_index()

    def flush(self) -> None:
        """Make sure the index file reflects the store (rebuilding if needed)."""
        idx = self.index()
        self._maybe_retier()
        if self._index is idx:
            self._save_index()

    # ---- enrolling ------------------------------------------------------------------------
    def enroll_folder(self, root: str | os.PathLike, progress: Progress | None = None,
                      total: Callable[[int], None] | None = None) -> EnrollReport:
        """Enroll ``root/<identity>/<image files>`` (a folder, or a zip holding one)."""
        root = Path(root)
        if not root.exists():
            raise FaceSearchError(f"{root}: no such file or directory")
        folder = ImageFolder(root)
        if not folder.items:
            left = (f"; {len(folder.ignored)} file(s) left out, e.g. {folder.ignored[0][0]}: {folder.ignored[0][1]}"
                    if folder.ignored else "")
            raise FaceSearchError(
                f"{root}: no identity folders with files found (expected {root}/<identity>/<image files>){left}")
        if total is not None:
            total(len(folder))
        items = ((ident, key, (lambda k=key: folder.read(k))) for ident in folder.identities()
                 for key in folder.items[ident])
        report = self.enroll_items(items, progress)
        report.failed.extend(Failure(path, why) for path, why in folder.ignored)
        return report

    def enroll_files(self, identity: str, paths: Sequence[str | os.PathLike],
                     progress: Progress | None = None) -> EnrollReport:
        """Enroll image files as faces of one identity."""
        validate_identity(identity)
        if not paths:
            raise FaceSearchError("no files given")
        return self.enroll_items(((identity, str(p), Path(p)) for p in paths), progress)

    def enroll_items(self, items: Iterable[tuple[str, str, bytes | os.PathLike | Callable[[], bytes]]],
                     progress: Progress | None = None, batch_size: int = 64) -> EnrollReport:
        """Enroll ``(identity, source, data)`` items; data is bytes, a path, or a callable returning bytes.

        Idempotent: content already enrolled is skipped. A bad file is reported in ``failed`` and
        never stops the rest; each batch is stored in one transaction (all of it or none).
        """
        report = EnrollReport()
        self.index()  # bring the index in sync first so the change below applies in place
        run = _EnrollRun(report)
        bad_identity: dict[str, str] = {}

        def fetch(item):
            """Read and hash one item: ``(identity, source, raw bytes, sha256, error)``. Cheap next to
            decoding, so content that is enrolled already is found before any pixel is decoded."""
            ident, source, data = item
            if ident in bad_identity:
                return ident, source, None, None, bad_identity[ident]
            try:
                validate_identity(ident)
            except InvalidIdentityError as e:
                bad_identity[ident] = str(e)
                return ident, source, None, None, str(e)
            try:
                if callable(data):
                    raw = data()
                elif isinstance(data, (bytes, bytearray)):
                    raw = bytes(data)
                else:
                    raw = images.read_bytes(data)
            except InvalidImageError as e:
                return ident, source, None, None, str(e).removeprefix(f"{source}: ")
            except OSError as e:
                return ident, source, None, None, f"cannot read: {e.strerror or e}"
            return ident, source, raw, hashlib.sha256(raw).hexdigest(), None

        def prepare(fetched):
            """Decode (and detect and align) one new item: ``(identity, source, sha256, (crop, png,
            detection), error)``."""
            ident, source, raw, sha, _ = fetched
            try:
                pixels = images.decode(raw, source)
                if self.detect:
                    faces = fdetect.faces_or_fail(pixels, source)
                    crop = images.prepare(fdetect.align(pixels, faces[0]), self.config)
                    found = dict(faces[0].to_dict(), faces_in_photo=len(faces))
                else:
                    crop, found = images.prepare(pixels, self.config), None
                if not self.keep_crops:
                    png = None
                elif pixels.shape[:2] == crop.shape[1:] and np.array_equal(pixels.transpose(2, 0, 1), crop):
                    png = raw  # the file is the aligned crop already: its own bytes decode to it exactly
                else:
                    png = _png(crop)  # encoded here, in the reader threads
                return ident, source, sha, (crop, png, found), None
            except InvalidImageError as e:
                return ident, source, sha, None, str(e).removeprefix(f"{source}: ")
            except OSError as e:
                return ident, source, sha, None, f"cannot decode: {e.strerror or e}"

        # one batch is embedded and stored while the next one is read, checked and decoded
        with ThreadPoolExecutor(max(2, min(4, os.cpu_count() or 1))) as pool, self._embed_threads():
            pending = None
            for batch in _batched(items, batch_size):
                new = self._triage(list(pool.map(fetch, batch)), run)
                fut = [pool.submit(prepare, f) for f in new]
                if pending is not None:
                    self._enroll_batch(*pending, run, progress)
                pending = (len(batch), fut)
            if pending is not None:
                self._enroll_batch(*pending, run, progress)
        self.flush()
        return report

    @contextlib.contextmanager
    def _embed_threads(self):
        """While enrolling on the CPU, pick torch's intra-op thread count by measurement (see
        :class:`_ThreadTuner`); restored afterwards. Set up when the first batch has something to
        embed: a rerun that finds every file enrolled already loads no model and imports no torch."""
        restore: list[Callable[[], None]] = []

        def start() -> None:
            import torch

            before = torch.get_num_threads()
            restore.append(lambda: torch.set_num_threads(before))
            self._tuner = _ThreadTuner(before) if self.device.type == "cpu" and before > 1 else None
            self._embed_crops([])  # build the inference copy now, outside the timed batches

        self._start_embedding = start
        try:
            yield
        finally:
            self._start_embedding = self._tuner = None
            for undo in restore:
                undo()

    def _triage(self, fetched, run: "_EnrollRun") -> list:
        """Report unreadable items, and skip content enrolled already (the store is asked once per
        batch) or seen earlier in this run (settled once that first copy is stored or has failed);
        return the items still to decode and store."""
        fresh = []
        for item in fetched:
            ident, source, _, sha, err = item
            if err is not None:
                run.report.failed.append(Failure(source, err))
            elif sha in run.first:
                run.same_as_first(sha, source, ident)
            else:
                run.first[sha] = ident
                fresh.append(item)
        known = self.store.known_hashes([f[3] for f in fresh]) if fresh else {}
        for ident, source, _, sha, _ in fresh:
            if sha in known:
                run.settle(sha, ("enrolled", known[sha]))
                run.skip(source, ident, known[sha])
        return [f for f in fresh if f[3] not in known]

    def _enroll_batch(self, n_items: int, futures, run: "_EnrollRun", progress: Progress | None) -> None:
        todo = []
        for f in futures:
            ident, source, sha, crop, err = f.result()
            if err is not None:
                run.report.failed.append(Failure(source, err))
                run.settle(sha, ("failed", err))
            else:
                todo.append((ident, source, sha, crop))
        if todo:
            self._store_faces(todo, run.report)
            for ident, _, sha, _ in todo:
                run.settle(sha, ("enrolled", ident))
        if progress is not None:
            progress(n_items)

    def _store_faces(self, todo, report: EnrollReport) -> None:
        """Embed ``(identity, source, sha, (crop, crop_png, detection))`` rows and store them in one
        transaction, then index them."""
        if self._start_embedding is not None:
            start, self._start_embedding = self._start_embedding, None
            start()
        tuner = self._tuner
        if tuner is not None:
            tuner.start()
        embs = self._embed_crops([t[3][0] for t in todo])
        if tuner is not None:
            tuner.stop(len(todo))
        crops = [t[3][1] for t in todo]
        found = [t[3][2] for t in todo]
        rows = [(t[0], t[1], t[2], e, c) for t, e, c in zip(todo, embs, crops)]
        for attempt in range(3):
            try:
                ids, rev = self.store.add_faces(self.model_id, rows, found)
                break
            except IntegrityError:
                # another process enrolled some of this content, or created one of these
                # identities, since we looked: skip what it enrolled and try again
                if attempt == 2:
                    raise
                taken = self.store.known_hashes([r[2] for r in rows])
                report.skipped.extend((r[1], taken[r[2]]) for r in rows if r[2] in taken)
                keep = [i for i, r in enumerate(rows) if r[2] not in taken]
                rows, embs, found = [rows[i] for i in keep], embs[keep], [found[i] for i in keep]
                if not rows:
                    return
        self._after_change(rev, lambda idx: idx.add(np.asarray(ids, np.int64), embs))
        report.added += len(ids)
        report.face_ids.extend(ids)
        report.identities.update(r[0] for r in rows)
        report.several_faces.extend((r[1], f["faces_in_photo"]) for r, f in zip(rows, found)
                                    if f and f["faces_in_photo"] > 1)

    # ---- searching ------------------------------------------------------------------------
    def search_embeddings(self, emb: np.ndarray, top_k: int = 5, probes: Sequence[str] | None = None,
                          threshold: float | None = None) -> list[QueryResult]:
        """Ranked identities (best face each) for each query embedding. ``threshold``: decide matches with
        this distance instead of the model's (see :meth:`threshold_at`)."""
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        thr = self.threshold_at(threshold=threshold)
        idx = self.index()
        emb = np.atleast_2d(np.asarray(emb, np.float32))
        n = idx.ntotal
        if n == 0:
            return [QueryResult([], thr, p) for p in (probes or [""] * len(emb))]
        k = min(n, max(top_k * 4, top_k + 16))
        while True:
            dist, ids = idx.search(emb, k)
            info = self.store.face_info([int(i) for i in np.unique(ids) if i >= 0])
            results, short = [], False
            for qi in range(len(emb)):
                best: dict[str, Match] = {}
                for d, fid in zip(dist[qi], ids[qi]):
                    if fid < 0 or int(fid) not in info:
                        continue
                    fi = info[int(fid)]
                    if fi.identity not in best:
                        best[fi.identity] = Match(fi.identity, float(d), bool(distance.is_match(d, thr)),
                                                  int(fid), fi.source)
                matches = sorted(best.values(), key=lambda m: (m.distance, m.face_id))[:top_k]
                short |= len(matches) < top_k
                results.append(QueryResult(matches, thr, probes[qi] if probes else ""))
            if not short or k >= n:
                return results
            k = min(n, k * 4)

    @contextlib.contextmanager
    def _single_thread(self):
        """One probe gains nothing from a parallel region on the CPU, and on a busy machine a 2-thread
        region waits for the second core (measured: 24 ms vs 0.24 ms for a 10k exact search, ~1.5 s vs
        ~10 ms for one embedding; benchmarks/README.md). Torch and FAISS run single-threaded inside."""
        if self.device.type != "cpu":
            yield
            return
        import faiss
        import torch

        before_torch, before_faiss = torch.get_num_threads(), faiss.omp_get_max_threads()
        torch.set_num_threads(1)
        faiss.omp_set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before_torch)
            faiss.omp_set_num_threads(before_faiss)

    def query(self, image: ImageInput, top_k: int = 5, threshold: float | None = None) -> QueryResult:
        """Who is this? Ranked identities with distances; ``.identity`` is None when nobody is within the
        threshold (the model's, or ``threshold``, e.g. ``fs.threshold_at(far=1e-3)``)."""
        return self.query_faces(image, top_k, threshold, every=False)[0]

    def query_faces(self, image: ImageInput, top_k: int = 5, threshold: float | None = None,
                    every: bool = True) -> list[QueryResult]:
        """Who is in this photo? With ``detect``, one result for each face found, largest first, each with
        its ``face`` (box, score, landmarks); without it, one result for the image as an aligned crop."""
        thr = self.threshold_at(threshold=threshold)
        name = _name(image)
        found = self._face_crops(self._pixels(image)[0], name, every=every)
        with self._single_thread():
            results = self.search_embeddings(self._embed_crops([c for c, _ in found]), top_k,
                                             [name] * len(found), thr)
        for r, (_, face) in zip(results, found):
            r.face = face.to_dict() if face is not None else None
        return results

    def query_many(self, image_list: Sequence[ImageInput], top_k: int = 5, batch_size: int = 64,
                   progress: Progress | None = None, threshold: float | None = None,
                   every: bool = False) -> list[QueryResult | Failure]:
        """Batched query: embeds and searches in batches. A bad image gives a Failure in its place. With
        ``detect``, each image gives its largest face's result (``every``: one result per face found)."""
        threshold = self.threshold_at(threshold=threshold)
        out: list[QueryResult | Failure] = []
        for batch in _batched(list(image_list), batch_size):
            crops, names, faces, slots = [], [], [], []
            for im in batch:
                name = _name(im)
                try:
                    for crop, face in self._face_crops(self._pixels(im)[0], name, every=every):
                        crops.append(crop)
                        names.append(name)
                        faces.append(face)
                        slots.append(len(out))
                        out.append(None)
                except InvalidImageError as e:
                    out.append(Failure(name, str(e).removeprefix(f"{name}: ")))
            if crops:
                found = self.search_embeddings(self._embed_crops(crops), top_k, names, threshold)
                for slot, res, face in zip(slots, found, faces):
                    res.face = face.to_dict() if face is not None else None
                    out[slot] = res
            if progress is not None:
                progress(len(batch))
        return out

    def verify(self, a: ImageInput, b: ImageInput, threshold: float | None = None) -> VerifyResult:
        """Are ``a`` and ``b`` the same person? ``same`` is ``distance <= threshold`` (the model's unless
        given)."""
        thr = self.threshold_at(threshold=threshold)
        (ca, fa), (cb, fb) = self._prepare(a), self._prepare(b)
        with self._single_thread():
            ea, eb = self._embed_crops([ca]), self._embed_crops([cb])
        d = float(distance.clip(distance.paired(ea, eb))[0])
        return VerifyResult(d, thr, bool(distance.is_match(d, thr)),
                            tuple(f.to_dict() if f is not None else None for f in (fa, fb)))

    # ---- managing identities --------------------------------------------------------------
    def identities(self):
        return self.store.identities()

    def identity_faces(self, name: str):
        return self.store.identity_faces(name)

    def rename_identity(self, old: str, new: str) -> None:
        self.store.rename_identity(old, new)  # ids and vectors unchanged; only the revision moves
        self._after_change(self.store.revision(), lambda idx: None)
        self.flush()

    def remove_identity(self, name: str) -> int:
        """Delete an identity and all its faces (store and index). Returns the number of faces removed."""
        self.index()
        ids, rev = self.store.remove_identity(name)
        self._after_change(rev, lambda idx: idx.remove(ids))
        self.flush()
        return len(ids)

    def remove_faces(self, face_ids: Sequence[int]) -> int:
        self.index()
        ids, rev = self.store.remove_faces(face_ids)
        self._after_change(rev, lambda idx: idx.remove(ids))
        self.flush()
        return len(ids)

    # ---- maintenance ----------------------------------------------------------------------
    def reindex(self, model: str | os.PathLike | None = None, progress: Progress | None = None,
                total: Progress | None = None) -> dict:
        """Rebuild the index from the store; with ``model``, first re-embed every face with that model
        (from the face crops kept in the store) and make it the gallery's model. ``progress`` is called
        with the number of faces done after each chunk, ``total`` with the number left before each pass."""
        reembedded = 0
        if model is not None:
            from facesearch.model import encoder

            model_dir = Path(model).expanduser().resolve()
            net = encoder.load(model_dir, self.device)
            if net.config.threshold is None:
                raise ModelFileError(f"model {model_dir} has no calibrated threshold")
            key = model_key(net.config, sha256=net.weights_sha256)
            rec = self.store.register_model(key, net.config.to_dict(), net.weights_sha256, str(model_dir))
            # The new embeddings are staged beside the faces: until the switch the gallery keeps its
            # model and embeddings, and other processes go on searching and enrolling. What they add
            # meanwhile is picked up by the next pass; the switch is one transaction, made only when
            # every face has a new embedding. An interrupted run leaves the gallery as it was, and
            # running it again skips the faces staged already. Asked for the gallery's own model (how a
            # change in preparing faces is picked up), every face is embedded again, by this code: what
            # an earlier interrupted run of it staged, perhaps by another version, is dropped first.
            before = self._model, self.model_key, self.model_id
            self.model, self.model_key, self.model_id = net, key, rec.id
            try:
                active = self.store.active_model()
                everything = active is not None and active.id == rec.id
                dropped = self.store.unstage_others(rec.id, own_too=everything)
                if dropped:
                    log.info("dropped %d embeddings staged by an earlier reindex", dropped)
                while True:
                    if total is not None:
                        total(self.store.count_pending(rec.id, own_too=everything))
                    reembedded += self._reembed_pass(rec.id, progress, everything)
                    everything = False
                    if self.store.switch_model(rec.id) == 0:
                        break
            except BaseException:
                with self._load_lock:
                    self._model, self.model_key, self.model_id = before
                raise
        idx = self.rebuild_index()
        return {"model": self.model_key, "reembedded": reembedded, "faces": idx.ntotal, "index": idx.factory}

    def _reembed_pass(self, model_id: int, progress: Progress | None, everything: bool = False) -> int:
        """Embed, with the current model, every face with no embedding staged for it that it did not
        embed (``everything``: even if it did), and stage the results; returns how many."""
        done, missing = 0, []
        for chunk in self.store.iter_crops(pending_for=model_id, own_too=everything):
            crops, fids, shas = [], [], {}
            for fid, source, png, found, sha in chunk:
                shas[fid] = sha
                try:
                    if png:
                        pixels = images.decode(png, source)
                    elif found:  # a face detected in a photo: align it again from the recorded landmarks
                        pixels = fdetect.align(images.load(source).pixels, fdetect.Face.from_dict(found))
                    else:
                        pixels = images.load(source).pixels
                    crops.append(images.prepare(pixels, self.config))
                    fids.append(fid)
                except InvalidImageError as e:
                    missing.append(Failure(source, str(e)))
            if missing:
                break
            self.store.stage_embeddings(model_id, list(zip(fids, self._embed_crops(crops))), shas)
            done += len(fids)
            if progress is not None:
                progress(len(chunk))
        if missing:
            raise FaceSearchError(
                f"cannot re-embed {len(missing)} face(s) (no stored crop and the source is unreadable), "
                f"e.g. {missing[0].source}: {missing[0].reason}. Remove them or restore the files.")
        return done

    def info(self) -> dict:
        try:
            idx = self.index()
        except ModelMismatchError as e:  # info still answers, and says what to do
            idx, index_error = None, str(e)
        url = self.store.engine.url.render_as_string(hide_password=True)
        return {
            "home": str(self.home),
            "database": url,
            "schema_revision": self.store.current_revision(),
            "model": {"key": self.model_key, "name": self.config.name, "backbone": self.config.backbone,
                      "embedding_dim": self.config.embedding_dim, "input_size": self.config.input_size,
                      "distance": self.config.distance, "threshold": self.threshold,
                      "operating_points": self.operating_points(),
                      "training": {k: v for k, v in self.config.training.items() if k != "people"}},
            "identities": self.store.count_identities(),
            "faces": self.store.count_faces(),
            "index": ({"type": idx.factory, "backend": idx.backend, "size": idx.ntotal,
                       "nprobe": getattr(idx, "nprobe", None), "file": str(self.index_path)} if idx is not None
                      else {"error": index_error, "file": str(self.index_path)}),
            "device": self._device_name(),
            "detector": fdetect.describe(),
        }


def _replaced_in_place(gallery_key: str, location: str, now_key: str) -> str:
    return (f"this gallery was embedded by model {gallery_key}, but the model files at {_where(location)} are "
            f"now {now_key} (retrained or replaced in place?): embeddings of different models cannot be "
            f"compared. Restore that model's files, or run `facesearch reindex --model {_where(location)}` to "
            "re-embed the gallery with them.")


def _where(location: str) -> str:
    """A model's stored location as a user passes it to ``--model``."""
    return str(builtin_model_dir(location[len(BUILTIN_PREFIX):])) if location.startswith(BUILTIN_PREFIX) else location


def _model_dir(location: str) -> Path:
    if location.startswith(BUILTIN_PREFIX):
        d = builtin_model_dir(location[len(BUILTIN_PREFIX):])
        if not (d / CONFIG_FILE).exists():
            raise ModelFileError(
                f"the built-in model {location[len(BUILTIN_PREFIX):]!r} is not installed at {d}; "
                "pass --model DIR (a directory with model.json and weights.pt)")
        return d
    d = Path(location)
    if not d.is_dir():
        raise ModelFileError(f"model directory {d} does not exist")
    return d


def _name(image: ImageInput) -> str:
    """How an image is named in results and errors: its path, or ``<N bytes>``."""
    return f"<{len(image)} bytes>" if isinstance(image, (bytes, bytearray)) else str(image)


def _batched(iterable, n):
    batch = []
    for it in iterable:
        batch.append(it)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch
