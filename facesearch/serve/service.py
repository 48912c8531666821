"""What the HTTP service does, without HTTP: one :class:`~facesearch.gallery.facade.FaceSearch` handle,
its micro-batcher, the keys and the limits. :mod:`facesearch.serve.app` maps routes onto these methods.

Every answer has the shape the CLI's ``--json`` gives for the same command (the schemas in
``docs/schemas/``): ``query`` a list with one entry per probe, ``{probe, faces}`` with detection,
``{probe, error}`` for a probe that could not be searched.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath

import numpy as np

from facesearch import images
from facesearch.errors import FaceSearchError, InvalidImageError
from facesearch.gallery.embedding import face_crops
from facesearch.gallery.results import Failure, query_entries
from facesearch.names import printable
from facesearch.serve.batching import MicroBatcher
from facesearch.serve.limits import TokenBuckets
from facesearch.serve.metrics import Metrics
from facesearch.store import keys as _keys

log = logging.getLogger("facesearch.serve")

LOOPBACK = ("127.0.0.1", "::1", "localhost")
MAX_SOURCE = 200


@dataclass(frozen=True)
class ServeConfig:
    """How the service runs. ``auth`` False (``--no-auth``) is allowed on a loopback address only."""

    host: str = "127.0.0.1"
    port: int = 8000
    auth: bool = True
    #: requests a second per key (per client address without auth), and the burst allowed above it
    rate: float = 50.0
    burst: int = 100
    max_body_bytes: int = 32 * 1024 * 1024
    max_files: int = 32
    max_top_k: int = 100
    batching: bool = True
    max_batch: int = 64
    max_wait_ms: float = 4.0
    #: threads that embed batches; 0: one per core on the CPU, one on a GPU
    embed_workers: int = 0
    #: origins allowed to call the API from a browser page of theirs; none: CORS stays off
    cors_origins: tuple[str, ...] = field(default_factory=tuple)

    def check(self) -> None:
        if not self.auth and self.host not in LOOPBACK:
            raise FaceSearchError(f"--no-auth only on a loopback address (127.0.0.1, ::1), not on {self.host}: "
                                  "anyone who can reach the port could read and change the gallery. Create a key "
                                  "with `facesearch keys create` instead")
        if self.max_files < 1 or self.max_body_bytes < 1024 or self.max_top_k < 1:
            raise FaceSearchError("the limits must be positive (max files >= 1, max body >= 1 KiB)")


def upload_source(filename: str | None, n: int) -> str:
    """The ``source`` an uploaded file is enrolled under: ``upload:<its base name>``. The client's name is a
    label only: its folders are dropped (both separators), it is never a path on the server's disk."""
    name = PureWindowsPath(PurePosixPath(filename or "").name).name if filename else ""
    name = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in printable(name))[:MAX_SOURCE]
    return f"upload:{name}" if name.strip(". ") else f"upload:file-{n}"


class Service:
    """The service's state: the gallery handle (``fs``), the handles that enroll photos with detection
    (:meth:`handle`), the batcher, the rate limit and the metrics."""

    def __init__(self, fs, config: ServeConfig, open_handle: Callable[[bool, bool], object] | None = None):
        config.check()
        self.fs, self.config = fs, config
        #: ``open_handle(detect, fallback)``: another handle on the same gallery (enroll with detection)
        self._open_handle = open_handle
        self._handles: dict[bool, object] = {}
        self._lock = threading.Lock()
        self.metrics = Metrics()
        self.buckets = TokenBuckets(config.rate, config.burst)
        self.batcher = (MicroBatcher(self.embed_direct, config.max_batch, config.max_wait_ms / 1000,
                                     observe=self.metrics.batch, workers=self._embed_workers())
                        if config.batching else None)

    # ---- life ---------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Load the model and the index before the first request (``/readyz`` says when)."""
        self.fs.load_model()
        self.fs.index()

    def ready(self) -> dict:
        """``{"model": bool, "store": bool}``: the model is loaded and the store answers."""
        store_ok = True
        try:
            self.fs.store.revision()
        except Exception:  # noqa: BLE001 - reported as not ready, never raised to a client
            store_ok = False
        return {"model": self.fs.encoder.files is None, "store": store_ok}

    def close(self) -> None:
        """Stop the batcher (after what was submitted) and close the extra handles; ``fs`` is the caller's.
        Closing twice does nothing."""
        if self.batcher is not None:
            self.batcher.close()
        with self._lock:
            handles, self._handles = list(self._handles.values()), {}
        for h in handles:
            h.close()

    def handle(self, detect: bool, fallback: bool = False):
        """The gallery handle that enrolls with these options: ``fs`` for aligned crops, else one that finds
        faces in photos (the same gallery, opened on first use and kept)."""
        if not detect:
            return self.fs
        if self._open_handle is None:
            raise FaceSearchError("this service cannot detect faces")
        with self._lock:
            h = self._handles.get(fallback)
            if h is None:
                h = self._handles[fallback] = self._open_handle(True, fallback)
            return h

    def crop(self, face_id: int) -> bytes | None:
        """The aligned crop a face was enrolled from, as a PNG made from its pixels (the store keeps the
        file as uploaded: re-encoding drops whatever else it held, such as EXIF and its GPS position)."""
        from sqlalchemy import select

        from facesearch.store.schema import FaceCrop

        with self.fs.store.Session() as s:
            data = s.scalar(select(FaceCrop.crop_png).where(FaceCrop.face_id == face_id))
        return None if data is None else images.png_bytes(images.decode(data, f"face {face_id}", check=False))

    # ---- keys ---------------------------------------------------------------------------------
    def key(self, key: str):
        return _keys.lookup(self.fs.store, key)

    # ---- embedding ----------------------------------------------------------------------------
    def _embed_workers(self) -> int:
        if self.config.embed_workers:
            return self.config.embed_workers
        if getattr(self.fs.device, "type", "cpu") != "cpu":
            return 1  # one stream of growing batches
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)

    def embed_direct(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Embed as the library does a probe: single-threaded on the CPU (each batcher worker, or each
        request without batching, keeps to one core)."""
        with self.fs.encoder.single_thread(self.fs.device):
            return self.fs.embed_crops(crops)

    def prepare(self, probes: Sequence[tuple[str, bytes]], detect: bool, fallback: bool
                ) -> list[tuple[str, list | str]]:
        """Each probe's model inputs and faces ``(name, [(crop, face), ...])``, or ``(name, why)`` when it
        cannot be searched (not an image, no face...). Decoding is guarded like the CLI's (size, pixels)."""
        out: list[tuple[str, list | str]] = []
        for name, data in probes:
            try:
                pixels = images.decode(data, name)
                out.append((name, face_crops(pixels, name, self.fs.config, detect, True, self.fs.detector,
                                             fallback)))
            except InvalidImageError as e:
                out.append((name, e.reason))
        return out

    def search(self, prepared: list[tuple[str, list | str]], emb: np.ndarray, top_k: int, detect: bool,
               threshold: float | None, far: float | None, fpir: float | None) -> list[dict]:
        """The ``query --json`` list for prepared probes and their crops' embeddings (in order)."""
        names = [n for n, found in prepared if not isinstance(found, str) for _ in found]
        faces = [f for _, found in prepared if not isinstance(found, str) for _, f in found]
        results: list = [Failure(n, why) for n, why in prepared if isinstance(why, str)]
        if names:
            found = self.fs.search_embeddings(emb, top_k, names, threshold=threshold, far=far, fpir=fpir)
            for r, face in zip(found, faces):
                r.face = face.to_dict() if face is not None else None
            results += found
        return query_entries([n for n, _ in prepared], results, detect)

    def gauges(self) -> dict[str, tuple[str, float]]:
        idx = self.fs.index()
        return {"facesearch_gallery_faces": ("Faces in the gallery's index.", idx.ntotal),
                "facesearch_gallery_identities": ("Identities in the gallery.", self.fs.gallery_identities()),
                "facesearch_model_loaded": ("1 once the model is loaded.", float(self.fs.encoder.files is None))}
