"""The Python API: :class:`FaceSearch` enrolls, queries, verifies and manages a gallery.

One object loads the model and the index once and serves many calls::

    from facesearch import FaceSearch

    fs = FaceSearch.open(home="~/faces")          # SQLite + index in ~/faces
    report = fs.enroll_folder("people/")          # people/<identity>/<image files>
    result = fs.query("probe.jpg", top_k=5)       # ranked identities, best face each
    print(result.identity, result.matches[0].distance)
    same = fs.verify("a.jpg", "b.jpg").same       # distance <= the model's threshold
    fs.query("probe.jpg", fpir=1e-3).decision     # {"rule": "fpir", "fpir": 0.001, "threshold": ...}

Images are aligned face crops by default. For ordinary photos open with ``detect=True``: faces are
found and aligned first (:mod:`facesearch.detect`); enroll and verify use the largest face of each
photo, :meth:`FaceSearch.query_faces` searches every face of one.

Distances are cosine distances in [0, 2] (:mod:`facesearch.distance`), lower is more similar;
a match is ``distance <= threshold`` with the threshold calibrated and stored with the model. A 1:N
search (``query``) accepts its closest identity with the model's identification threshold for a false
positive identification rate (FPIR, default 1e-2: one search in a hundred by a never-enrolled person
returns someone) at the gallery's number of identities (:mod:`~facesearch.gallery.thresholds`); ``verify``
(1:1) uses the model's 1:1 threshold.

Threads: one handle may be shared by any number of threads. ``query``, ``query_faces``, ``query_many``,
``verify``, ``embed*``, ``enroll_folder``/``enroll_files``/``enroll_items``, ``reindex()`` (without
``model``), ``rebuild_index``, ``flush``, ``remove_identity``, ``remove_faces``, ``rename_identity``,
``identities``, ``info`` and the threshold and decision methods may run at the same time: each raises only
what it would raise alone, a search never sees a half-rebuilt or half-changed index (searches and index
saves share the index lock, loads, rebuilds and changes hold it alone), the encoder is loaded once, and
concurrent enrolls of the same content store it once. Not with other calls on the same handle:
``reindex(model=...)`` (it switches the handle's model; other handles and processes may go on: a batch
embedded by the old model is refused, not mixed in) and ``close``. :meth:`index` returns the live index,
which another thread's change may be applied to: search through the methods above. Processes may share a
gallery as well (the store is the source of truth; each index file is written under a temp name of its
own and renamed whole). Tests: tests/integration/test_concurrency.py and test_faults.py.

The facade holds the handle's state and delegates: :mod:`~facesearch.gallery.opening` (which model),
:mod:`~facesearch.gallery.embedding` (images to embeddings), :mod:`~facesearch.gallery.index_cache`
(the index in step with the store), :mod:`~facesearch.gallery.enroll`, :mod:`~facesearch.gallery.search`
and :mod:`~facesearch.gallery.reindex`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facesearch import detect as fdetect
from facesearch import index as vindex
from facesearch.errors import FaceSearchError
from facesearch.gallery import enroll as _enroll
from facesearch.gallery import info as _info
from facesearch.gallery import opening, reindex as _reindex, search as _search
from facesearch.gallery.embedding import GalleryModel, ImageInput, ModelFiles, face_crops, input_name, read_pixels
from facesearch.gallery.index_cache import INDEX_FILE, IndexCache, SharedIndexCache
from facesearch.index import vectors as _vectors
from facesearch.gallery.results import Decision, EnrollReport, Failure, Match, QueryResult, VerifyResult
from facesearch.gallery.thresholds import decide, fpir_table, operating_points, threshold_at
from facesearch.model.config import ModelConfig
from facesearch.model.files import BUILTIN_PREFIX, DEFAULT_MODEL, builtin_model_dir, model_key  # noqa: F401
from facesearch.settings import DB_FILE, default_home
from facesearch.store import Store, validate_identity

if TYPE_CHECKING:  # the encoder module imports torch: loaded when a face is first embedded
    from facesearch.model import encoder

__all__ = ["FaceSearch", "Match", "QueryResult", "VerifyResult", "Failure", "EnrollReport", "Decision", "DB_FILE",
           "INDEX_FILE", "default_home", "builtin_model_dir", "model_key"]

Progress = Callable[[int], None]


class FaceSearch:
    """A gallery of enrolled faces: a metadata store, an index built from it, and one encoder."""

    def __init__(self, store: Store, model: "encoder.Encoder | ModelFiles", model_key: str, model_id: int,
                 home: Path, index_factory: str = "auto", index_backend: str = "auto",
                 keep_crops: bool = True, detect: bool = False, detector: "str | fdetect.Detector" = "yuface",
                 vectors: "str | _vectors.VectorsURL | None" = None):
        self.store = store
        self.encoder = GalleryModel(model)
        self.model_key = model_key
        self.model_id = model_id
        self.home = home
        if index_backend != "auto":
            vindex.resolve_backend(index_backend)  # an unknown name is refused now
        self._backend = index_backend
        self.keep_crops = keep_crops
        #: find and align faces in the images (ordinary photos) instead of taking them as aligned crops
        self.detect = detect
        #: the face detector ``detect`` uses: a name in :data:`facesearch.detect.REGISTRY`, or an object
        #: with :class:`facesearch.detect.Detector`'s methods (another detector where yuface has no wheel)
        self.detector = fdetect.get_detector(detector) if isinstance(detector, str) else detector
        if detect:
            self.detector.require()
        #: with ``detect``: a photo in which no face is found is taken whole as an aligned crop (its result's
        #: ``face`` says so) instead of failing
        self.detect_fallback = False
        #: where the vectors live (``--vectors``): the FAISS file in ``home`` (default), Milvus or pgvector
        self.vectors = vectors if isinstance(vectors, _vectors.VectorsURL) else _vectors.parse(vectors, home)
        self.indexes = SharedIndexCache(self, self.vectors) if self.vectors.shared else IndexCache(self, index_factory)

    @classmethod
    def open(cls, home: str | os.PathLike | None = None, db_url: str | None = None,
             model: str | os.PathLike | None = None, device: str | None = "auto", index: str = "auto",
             backend: str = "auto", strict: bool = True, keep_crops: bool = True,
             detect: bool = False, detector: "str | fdetect.Detector" = "yuface",
             detect_fallback: bool = False, vectors: str | None = None) -> "FaceSearch":
        """Open (creating if needed) a gallery.

        ``home``: folder for the SQLite database and the index file (default ``~/.facesearch``; the CLI
        also reads ``$FACESEARCH_HOME``, see :mod:`facesearch.settings`); ``db_url``: any SQLAlchemy URL
        instead of the SQLite file; ``model``: a model directory (default: the model that built this
        gallery, else the shipped default model); ``index``: ``auto`` or a FAISS factory string;
        ``backend``: ``auto``, ``faiss-cpu``, ``faiss-gpu`` or ``torch-cuda``; ``detect``: the images are
        photos, find and align the faces in them (needs ``facesearch[detect]``) rather than take them as
        aligned face crops; ``detector``: which detector (a registered name, or a Detector object). With
        ``strict`` (the default) a model other than the one that embedded the
        gallery is refused (:class:`ModelMismatchError`); ``reindex(model=...)`` switches. ``vectors``: where
        the vectors live (:mod:`facesearch.index.vectors`): None or ``faiss`` (the index file in ``home``),
        ``pgvector`` (the PostgreSQL database of ``db_url``), ``milvus://HOST:PORT/COLLECTION`` or
        ``milvus-lite:///PATH.db``; the store keeps the embeddings either way.
        The schema is upgraded to the newest Alembic revision on open.
        """
        if isinstance(detector, str):
            detector = fdetect.get_detector(detector)
        if detect:
            detector.require()  # before any file or database is touched
        if backend != "auto":
            vindex.resolve_backend(backend)  # one that is not there is refused before anything is recorded
        home = opening.make_home(Path(home).expanduser() if home is not None else default_home())
        spec = _vectors.parse(vectors, home)  # a bad URL is refused before the database is opened
        opening.check_device(device)
        store = Store.open(db_url or f"sqlite:///{home / DB_FILE}")
        try:
            net, key, model_id = opening.choose_model(store, model, device, strict, index)
            fs = cls(store, net, key, model_id, home, index, backend, keep_crops, detect, detector, spec)
            fs.detect_fallback = detect_fallback
            return fs
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        self.store.close()
        self.indexes.drop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- the model ------------------------------------------------------------------------
    @property
    def model(self) -> "encoder.Encoder":
        """The encoder, loaded on first use: a command that embeds nothing (``info``, ``identities``,
        ``remove``, ...) never imports torch, which takes seconds."""
        return self.encoder.get(self.model_key)

    @model.setter
    def model(self, net: "encoder.Encoder") -> None:
        self.encoder.set(net)

    def load_model(self) -> None:
        """Load the encoder now rather than at the first embedding (a service checking at start-up that
        its model and device work: damaged weights or an unusable device raise here)."""
        self.model  # noqa: B018 - the property loads

    @property
    def device(self):
        """The torch device faces are embedded on (resolving ``auto`` imports torch)."""
        return self.encoder.device(self.model_key)

    @property
    def config(self) -> ModelConfig:
        return self.encoder.config

    @property
    def threshold(self) -> float:
        """The model's calibrated distance threshold: a match when distance <= threshold."""
        return float(self.config.threshold)

    def operating_points(self) -> list[dict]:
        """Stricter thresholds stored by calibration: ``[{"far": 0.01, "threshold": t, "tar": x}, ...]``,
        each the largest threshold whose false accept rate on the held-out impostor pairs was at most
        ``far``; only those the impostor pairs could measure."""
        return operating_points(self.config)

    def threshold_at(self, far: float | None = None, threshold: float | None = None) -> float:
        """The threshold to decide with: ``threshold`` if given, else the stored operating point for ``far``,
        else the model's calibrated threshold. Raises ThresholdError (a ValueError) for a bad threshold or a
        ``far`` the model has no threshold for."""
        return threshold_at(self.config, far, threshold)

    def gallery_identities(self) -> int:
        """The number of enrolled identities, the ``N`` of the FPIR rule (an identity whose every face
        was removed still counts until it is removed itself: on the strict side)."""
        return self.store.count_identities()

    def decision(self, fpir: float | None = None, far: float | None = None,
                 threshold: float | None = None) -> Decision:
        """The rule a 1:N search decides by now: the model's identification threshold for ``fpir`` (default:
        the model's default FPIR, 1e-2) at the gallery's number of identities; or the 1:1 operating point
        for ``far``; or ``threshold``; at most one of them. A model without an identification curve (an
        older model.json) decides with its 1:1 threshold, and the decision's ``warning`` says so. Raises
        ThresholdError (a ValueError) for what the model cannot decide with."""
        return decide(self.config, self.gallery_identities, fpir, far, threshold)

    def identification_thresholds(self, identities: int | None = None) -> list[dict]:
        """The model's identification threshold for each stored FPIR target at ``identities`` (default: the
        gallery's size), with how it was obtained: ``[{"fpir", "threshold", "status", "default"}, ...]``;
        empty for a model without an identification curve."""
        return fpir_table(self.config, self.gallery_identities() if identities is None else identities)

    # ---- the index ------------------------------------------------------------------------
    @property
    def index_backend(self) -> str:
        """Where the index searches; ``auto`` is resolved at the first use of the index (it may ask torch
        about CUDA, which a command that never searches need not import)."""
        if self.vectors.shared:
            return self.vectors.kind
        if self._backend == "auto":
            self._backend = vindex.resolve_backend("auto")
        return self._backend

    @property
    def index_factory(self) -> str:
        return self.indexes.factory

    @property
    def index_path(self) -> Path | None:
        """The index file; None when the vectors live in a vector database (``vectors``)."""
        return self.indexes.path

    def check_index(self) -> dict:
        """Does the index reflect the store? For a vector database: the faces in the store and not in it
        (``missing``), the ids in it the store does not have (``extra``), sampled vectors that differ from the
        store's (``stale_in_sample``), ``in_sync``; for the index file: whether its stamp matches the store.
        Changes nothing (``facesearch reindex --check``)."""
        return self.indexes.check()

    def repair_index(self) -> dict:
        """Remove the drift :meth:`check_index` finds (``facesearch reindex --repair``): the store is the source
        of truth, so missing vectors are written from its embeddings and extra ones removed. Returns
        ``{"before", "after", ...}`` (each a :meth:`check_index` report)."""
        return self.indexes.repair()

    def index(self) -> vindex.VectorIndex:
        """The index, in sync with the store: loaded from its file, or rebuilt when stale. It is the handle's
        live index: while other threads use the handle, search with :meth:`query` and the like, which hold
        the index lock."""
        return self.indexes.get()

    def rebuild_index(self) -> vindex.VectorIndex:
        """Build the index from the embeddings in the store and save it."""
        return self.indexes.rebuild()

    def flush(self) -> None:
        """Make sure the index file reflects the store (rebuilding if needed)."""
        self.indexes.flush()

    # ---- embedding ------------------------------------------------------------------------
    def _face_crops(self, image: ImageInput, every: bool = False) -> list[tuple[np.ndarray, "fdetect.Face | None"]]:
        return face_crops(read_pixels(image)[0], input_name(image), self.config, self.detect, every, self.detector,
                          self.detect_fallback)

    def embed_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Embed model inputs (3 x S x S uint8 each, as :func:`facesearch.images.prepare` makes them)."""
        return self.encoder.embed_crops(crops, self.model_key)

    def embed(self, image_list: Sequence[ImageInput]) -> np.ndarray:
        """Embed images (paths or bytes): N x D float32 unit vectors. Raises InvalidImageError on a bad one."""
        return self.embed_crops([self._face_crops(im)[0][0] for im in image_list])

    def embed_bytes(self, items: Sequence[tuple[str, bytes]]) -> np.ndarray:
        """Embed ``(source, bytes)`` pairs; the source names the file in error messages."""
        from facesearch import images

        return self.embed_crops([face_crops(images.decode(data, src), src, self.config, self.detect, False,
                                            self.detector, self.detect_fallback)[0][0]
                                 for src, data in items])

    # ---- enrolling ------------------------------------------------------------------------
    def enroll_folder(self, root: str | os.PathLike, progress: Progress | None = None,
                      total: Callable[[int], None] | None = None, workers: int = 1) -> EnrollReport:
        """Enroll ``root/<identity>/<image files>`` (a folder, or a zip holding one). ``workers`` > 1: in that
        many processes, each reading, decoding, embedding and storing its share (see
        :func:`facesearch.gallery.enroll.enroll_in_workers`); not with other calls on this handle meanwhile."""
        if workers > 1:
            absolute, keys, left_out = _enroll.folder_keys(root)
            if total is not None:
                total(len(keys))
            report = _enroll.enroll_in_workers(self, keys, str(absolute), workers, progress)
            report.failed.extend(left_out)
            return report
        entries, left_out = _enroll.folder_entries(root, total)
        report = self.enroll_items(entries, progress)
        report.failed.extend(left_out)
        return report

    def enroll_files(self, identity: str, paths: Sequence[str | os.PathLike],
                     progress: Progress | None = None, workers: int = 1) -> EnrollReport:
        """Enroll image files as faces of one identity (``workers``: as :meth:`enroll_folder`)."""
        validate_identity(identity)
        if not paths:
            raise FaceSearchError("no files given")
        if workers > 1:
            return _enroll.enroll_in_workers(self, [(identity, str(Path(p).absolute())) for p in paths], None,
                                             workers, progress)
        return self.enroll_items(((identity, str(Path(p).absolute()), Path(p)) for p in paths), progress)

    def enroll_items(self, items: Iterable[tuple[str, str, _enroll.ItemData]],
                     progress: Progress | None = None, batch_size: int = 64) -> EnrollReport:
        """Enroll ``(identity, source, data)`` items; data is bytes, a path, or a callable returning bytes.

        Idempotent: content already enrolled is skipped. A bad file is reported in ``failed`` and
        never stops the rest; each batch is stored in one transaction (all of it or none).
        """
        return _enroll.Enroller(self).run(items, progress, batch_size)

    # ---- searching ------------------------------------------------------------------------
    def search_embeddings(self, emb: np.ndarray, top_k: int = 5, probes: Sequence[str] | None = None,
                          threshold: float | None = None, far: float | None = None,
                          fpir: float | None = None) -> list[QueryResult]:
        """Ranked identities (best face each) for each query embedding, the closest accepted by
        :meth:`decision` (``fpir``, ``far`` or ``threshold``; by default the model's FPIR threshold)."""
        return _search.search(self, emb, top_k, probes, self.decision(fpir, far, threshold))

    def query(self, image: ImageInput, top_k: int = 5, threshold: float | None = None, far: float | None = None,
              fpir: float | None = None) -> QueryResult:
        """Who is this? Ranked identities with distances; ``.identity`` is None when the closest identity is
        not accepted. By default it is accepted by the model's identification threshold for FPIR 1e-2 at the
        gallery's size; ``fpir`` another stored target, ``far`` the 1:1 operating point, ``threshold`` a
        distance (one of them). ``.decision`` says which rule decided (:meth:`decision`)."""
        return self.query_faces(image, top_k, threshold, every=False, far=far, fpir=fpir)[0]

    def query_faces(self, image: ImageInput, top_k: int = 5, threshold: float | None = None,
                    every: bool = True, far: float | None = None, fpir: float | None = None) -> list[QueryResult]:
        """Who is in this photo? With ``detect``, one result for each face found, largest first, each with
        its ``face`` (box, score, landmarks); without it, one result for the image as an aligned crop.
        Decided as :meth:`query`."""
        return _search.query_faces(self, image, top_k, self.decision(fpir, far, threshold), every)

    def query_many(self, image_list: Sequence[ImageInput], top_k: int = 5, batch_size: int = 64,
                   progress: Progress | None = None, threshold: float | None = None,
                   every: bool = False, far: float | None = None,
                   fpir: float | None = None) -> list[QueryResult | Failure]:
        """Batched query: embeds and searches in batches. A bad image gives a Failure in its place. With
        ``detect``, each image gives its largest face's result (``every``: one result per face found).
        Decided as :meth:`query`, with one rule for the whole call (the gallery's size when it starts)."""
        return _search.query_many(self, image_list, top_k, batch_size, progress,
                                  self.decision(fpir, far, threshold), every)

    def verify(self, a: ImageInput, b: ImageInput, threshold: float | None = None) -> VerifyResult:
        """Are ``a`` and ``b`` the same person? ``same`` is ``distance <= threshold`` (the model's unless
        given)."""
        return _search.verify(self, a, b, self.threshold_at(threshold=threshold))

    # ---- managing identities --------------------------------------------------------------
    def identities(self):
        return self.store.identities()

    def identity_faces(self, name: str):
        return self.store.identity_faces(name)

    def rename_identity(self, old: str, new: str) -> None:
        rev = self.store.rename_identity(old, new)  # ids and vectors unchanged; only the revision moves
        self.indexes.after_change(rev, lambda idx: None)
        self.flush()

    def merge_identities(self, source: str, into: str) -> int:
        """Move every face of ``source`` to ``into`` and remove ``source``; returns the faces moved. Face ids
        and embeddings are kept: the index only follows the store's revision."""
        moved, rev = self.store.merge_identities(source, into)
        self.indexes.after_change(rev, lambda idx: None)
        self.flush()
        return moved

    def faces(self, identity: str | None = None) -> list:
        """The enrolled faces (``FaceInfo``: face id, identity, source), of one identity or of all."""
        if identity is not None:
            return self.store.identity_faces(identity)
        return self.store.list_faces()

    def remove_identity(self, name: str) -> int:
        """Delete an identity and all its faces (store and index). Returns the number of faces removed."""
        self.index()
        ids, rev = self.store.remove_identity(name)
        self.indexes.after_change(rev, lambda idx: idx.remove(ids))
        self.flush()
        return len(ids)

    def remove_faces(self, face_ids: Sequence[int]) -> int:
        """Delete faces by id (store and index). Returns the number removed."""
        self.index()
        ids, rev = self.store.remove_faces(face_ids)
        self.indexes.after_change(rev, lambda idx: idx.remove(ids))
        self.flush()
        return len(ids)

    # ---- maintenance ----------------------------------------------------------------------
    def reindex(self, model: str | os.PathLike | None = None, progress: Progress | None = None,
                total: Progress | None = None) -> dict:
        """Rebuild the index from the store; with ``model``, first re-embed every face with that model
        (from the face crops kept in the store) and make it the gallery's model. ``progress`` is called
        with the number of faces done after each chunk, ``total`` with the number left before each pass."""
        reembedded = _reindex.switch_model(self, model, progress, total) if model is not None else 0
        if model is not None and self.vectors.shared:
            self.indexes.drop()  # connect again for the new model's embedding size
        idx = self.rebuild_index()
        return {"model": self.model_key, "reembedded": reembedded, "faces": idx.ntotal, "index": idx.factory}

    def info(self) -> dict:
        """What the gallery holds and how it is set up (``facesearch info``)."""
        return _info.describe(self)
