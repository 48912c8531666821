"""Enrolling: files in, faces stored and indexed, every bad file reported and none stopping the rest.

Each item goes through the pipeline as one :class:`Item` record: fetched (read and hashed), triaged
(content enrolled already is skipped before any pixel is decoded), prepared (decoded, detected and
aligned, cropped), embedded and stored one batch per transaction. One batch is embedded and stored
while the next is read and decoded in threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.exc import IntegrityError

from facesearch import detect as fdetect
from facesearch import images
from facesearch.datasets import ImageFolder
from facesearch.detect.folder import one_detector_thread
from facesearch.errors import FaceSearchError, InvalidIdentityError, InvalidImageError, NoFaceError
from facesearch.gallery.embedding import align_face, model_crop
from facesearch.gallery.results import EnrollReport, Failure
from facesearch.model.inference import ThreadTuner, thread_counts
from facesearch.store import nfc_name, validate_identity

if TYPE_CHECKING:
    from facesearch.gallery.facade import FaceSearch

Progress = Callable[[int], None]
#: what an enroll item's data can be: bytes, a path, or a callable returning bytes
ItemData = bytes | os.PathLike | Callable[[], bytes]


@dataclass
class Item:
    """One file on its way into the gallery."""

    identity: str
    source: str
    raw: bytes | None = None
    #: the face's key in the store: the file's SHA-256 for an aligned crop, :func:`detected_key` of it for a
    #: face found by the detector (the same file enrolled both ways is two different faces)
    sha256: str | None = None
    file_sha256: str | None = None
    error: str | None = None
    crop: np.ndarray | None = None  # the model's input, 3 x S x S uint8
    png: bytes | None = None  # the crop as kept in the store (None: crops are not kept)
    detection: dict | None = None  # with detect: the face found (box, score, landmarks, faces_in_photo)
    unlike_crop: str | None = None  # without detect: why the image does not look like an aligned face crop
    fell_back: str | None = None  # with detect and its fallback: why no face was found (taken whole)


class _Run:
    """One enroll call's bookkeeping of content seen twice: a later copy of a file is reported like its
    first copy (skipped as enrolled by that identity, or failed with the same reason), once known."""

    def __init__(self, report: EnrollReport):
        self.report = report
        self.first: dict[str, str] = {}  # content hash -> identity of its first copy in this run
        self.outcome: dict[str, tuple[str, str]] = {}  # hash -> ("enrolled", identity) | ("failed", reason)
        self.waiting: dict[str, list[tuple[str, str]]] = {}  # hash -> later copies (source, asked)

    def fail(self, item: Item) -> None:
        self.report.failed.append(Failure(item.source, item.error))

    def skip(self, source: str, asked: str, has: str) -> None:
        self.report.skipped.append((source, has))
        if nfc_name(has) != nfc_name(asked):  # the same name in another Unicode form is the same identity
            self.report.elsewhere.append((source, asked, has))

    def same_as_first(self, item: Item) -> None:
        if item.sha256 in self.outcome:
            self._report(item.sha256, item.source, item.identity)
        else:
            self.waiting.setdefault(item.sha256, []).append((item.source, item.identity))

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


def _reason(e: InvalidImageError | OSError, what: str) -> str:
    if isinstance(e, InvalidImageError):
        return e.reason
    return f"cannot {what}: {e.strerror or e}"


class Enroller:
    """Runs one enroll call on a gallery handle. Everything one call changes is its own (the handle is
    shared by threads: concurrent enroll calls each have an Enroller)."""

    def __init__(self, gallery: "FaceSearch"):
        self.g = gallery
        self.bad_identity: dict[str, str] = {}
        self._start_embedding: Callable[[], None] | None = None  # armed by _embed_threads
        self.tuner: ThreadTuner | None = None  # this call's, while enrolling on the CPU

    def fetch(self, entry: tuple[str, str, ItemData]) -> Item:
        """Read and hash one item. Cheap next to decoding, so content that is enrolled already is found
        before any pixel is decoded."""
        ident, source, data = entry
        item = Item(ident, source)
        if ident in self.bad_identity:
            item.error = self.bad_identity[ident]
            return item
        try:
            validate_identity(ident)
        except InvalidIdentityError as e:
            item.error = self.bad_identity[ident] = str(e)
            return item
        try:
            if callable(data):
                item.raw = data()
            elif isinstance(data, (bytes, bytearray)):
                item.raw = bytes(data)
            elif isinstance(data, (str, os.PathLike)):
                item.raw = images.read_bytes(data)
            else:  # pixels in memory (a numpy array, a PIL image): stored and hashed as their PNG
                item.raw = images.png_bytes(images.from_array(data, item.source))
        except (InvalidImageError, OSError) as e:
            item.error = _reason(e, "read")
            return item
        item.file_sha256 = hashlib.sha256(item.raw).hexdigest()
        item.sha256 = detected_key(item.file_sha256) if self.g.detect else item.file_sha256
        return item

    def prepare(self, item: Item) -> Item:
        """Decode (and detect and align) one new item into its crop, or its error."""
        g = self.g
        try:
            pixels = images.decode(item.raw, item.source)
            faces = None
            if g.detect:
                try:
                    with one_detector_thread(g.detector):  # one core each: the embedding runs meanwhile
                        faces = fdetect.faces_or_fail(pixels, item.source, g.detector)
                except NoFaceError as e:
                    if not g.detect_fallback:
                        raise
                    item.fell_back = e.reason  # enrolled below as the aligned crop it may be
            if faces:
                item.crop = kept = images.prepare(align_face(pixels, faces[0], g.config), g.config)
                item.detection = dict(faces[0].to_dict(), faces_in_photo=len(faces))
            else:
                # the store keeps the crop as given (the LFW pack's geometry, at the model's size), which
                # reindex moves into any model's geometry; the model embeds it in its own
                if not g.detect:
                    item.unlike_crop = images.unlike_a_crop(pixels, g.config.input_size)
                kept = images.prepare(pixels, g.config)
                moved = model_crop(pixels, g.config, g.detector)
                item.crop = kept if moved is pixels else images.prepare(moved, g.config)
            if not g.keep_crops:
                item.png = None
            elif pixels.shape[:2] == kept.shape[1:] and np.array_equal(pixels.transpose(2, 0, 1), kept):
                item.png = item.raw  # the file is the aligned crop already: its own bytes decode to it exactly
            else:
                item.png = _png(kept)  # encoded here, in the reader threads
        except (InvalidImageError, OSError) as e:
            item.error = _reason(e, "decode")
        item.raw = None
        return item

    def run(self, entries: Iterable[tuple[str, str, ItemData]], progress: Progress | None,
            batch_size: int) -> EnrollReport:
        run = _Run(EnrollReport())
        self.g.index()  # bring the index in sync first so the change below applies in place
        with ThreadPoolExecutor(max(2, min(4, os.cpu_count() or 1))) as pool, self._embed_threads():
            pending = None
            for batch in batched(entries, batch_size):
                new = self._triage(list(pool.map(self.fetch, batch)), run)
                futures = [pool.submit(self.prepare, item) for item in new]
                if pending is not None:
                    self._finish_batch(*pending, run, progress)
                pending = (len(batch), futures)
            if pending is not None:
                self._finish_batch(*pending, run, progress)
        self.g.flush()
        return run.report

    @contextlib.contextmanager
    def _embed_threads(self):
        """While enrolling on the CPU, pick torch's intra-op thread count by measurement (see
        :class:`ThreadTuner`); restored afterwards (once no other call on any handle still sets it). Set
        up when the first batch has something to embed: a rerun that finds every file enrolled already
        loads no model and imports no torch."""
        model = self.g.encoder
        with contextlib.ExitStack() as undo:

            def start() -> None:
                threads = undo.enter_context(thread_counts())[0]  # torch's count before any call changed it
                if self.g.device.type == "cpu" and threads > 1:
                    # the handle's tuner carries on from its last enroll call: a folder enrolled in parts
                    # pays for its trials once (every ThreadTuner.every passes), not once per call; a call
                    # running meanwhile has a tuner of its own
                    self.tuner = model.borrow_tuner(threads)
                    undo.callback(model.return_tuner, self.tuner)
                else:
                    self.tuner = None
                self.g.embed_crops([])  # build the inference copy now, outside the timed batches

            self._start_embedding = start
            try:
                yield
            finally:
                self._start_embedding = self.tuner = None

    def _triage(self, fetched: list[Item], run: _Run) -> list[Item]:
        """Report unreadable items, and skip content enrolled already (the store is asked once per
        batch) or seen earlier in this run (settled once that first copy is stored or has failed);
        return the items still to decode and store."""
        fresh = []
        for item in fetched:
            if item.error is not None:
                run.fail(item)
            elif item.sha256 in run.first:
                run.same_as_first(item)
            else:
                run.first[item.sha256] = item.identity
                fresh.append(item)
        known = self.g.store.known_hashes([i.sha256 for i in fresh]) if fresh else {}
        if fresh and self.g.detect:  # faces detected before they had keys of their own hold the file's hash
            legacy = self.g.store.known_hashes([i.file_sha256 for i in fresh], detected_only=True)
            known.update({i.sha256: legacy[i.file_sha256] for i in fresh if i.file_sha256 in legacy})
        for item in fresh:
            if item.sha256 in known:
                run.settle(item.sha256, ("enrolled", known[item.sha256]))
                run.skip(item.source, item.identity, known[item.sha256])
        return [i for i in fresh if i.sha256 not in known]

    def _finish_batch(self, n_items: int, futures, run: _Run, progress: Progress | None) -> None:
        todo = []
        for f in futures:
            item = f.result()
            if item.error is not None:
                run.fail(item)
                run.settle(item.sha256, ("failed", item.error))
            else:
                todo.append(item)
        if todo:
            self._store(todo, run.report)
            for item in todo:
                run.settle(item.sha256, ("enrolled", item.identity))
        if progress is not None:
            progress(n_items)

    def _embed(self, todo: list[Item]) -> np.ndarray:
        if self._start_embedding is not None:
            start, self._start_embedding = self._start_embedding, None
            start()
        g = self.g
        return g.encoder.embed_crops([i.crop for i in todo], g.model_key, tuner=self.tuner)

    def _store(self, todo: list[Item], report: EnrollReport) -> None:
        """Embed items and store them in one transaction, then index them."""
        g = self.g
        embs = self._embed(todo)
        for attempt in range(3):
            rows = [(i.identity, i.source, i.sha256, e, i.png) for i, e in zip(todo, embs)]
            try:
                ids, rev = g.store.add_faces(g.model_id, rows, [i.detection for i in todo])
                break
            except IntegrityError:
                # another process enrolled some of this content, or created one of these
                # identities, since we looked: skip what it enrolled and try again
                if attempt == 2:
                    raise
                taken = g.store.known_hashes([i.sha256 for i in todo])
                report.skipped.extend((i.source, taken[i.sha256]) for i in todo if i.sha256 in taken)
                keep = [k for k, i in enumerate(todo) if i.sha256 not in taken]
                todo, embs = [todo[k] for k in keep], embs[keep]
                if not todo:
                    return
        g.indexes.after_change(rev, lambda idx: idx.add(np.asarray(ids, np.int64), embs))
        report.added += len(ids)
        report.face_ids.extend(ids)
        report.identities.update(i.identity for i in todo)
        report.several_faces.extend((i.source, i.detection["faces_in_photo"]) for i in todo
                                    if i.detection and i.detection["faces_in_photo"] > 1)
        report.unlike_crops.extend((i.source, i.unlike_crop) for i in todo if i.unlike_crop)
        report.fell_back.extend((i.source, i.fell_back) for i in todo if i.fell_back)


# ---- enrolling in worker processes (--workers N) ---------------------------------------------
#: items per task handed to a worker: one store transaction each (enroll_items' batch) and a progress tick
WORKER_CHUNK = 64


@dataclass(frozen=True)
class WorkerSpec:
    """How a worker process opens the same gallery as the parent's handle (everything picklable)."""

    home: str
    db_url: str
    model: str
    device: str
    vectors: object  # a VectorsURL
    keep_crops: bool
    detect: bool
    detector: str
    detect_fallback: bool
    root: str | None  # enrolling a folder of identities: its path (each worker opens it itself)


_worker: dict = {}


def _worker_start(spec: WorkerSpec, threads: int) -> None:
    # an initializer that raises makes a Pool start a new worker, forever: keep the error for the first task
    try:
        _open_worker(spec, threads)
    except BaseException as e:
        _worker["error"] = e


def _open_worker(spec: WorkerSpec, threads: int) -> None:
    import torch

    from facesearch.gallery.facade import FaceSearch

    torch.set_num_threads(threads)
    fs = FaceSearch.open(home=spec.home, db_url=spec.db_url, model=spec.model, device=spec.device,
                         keep_crops=spec.keep_crops, detect=spec.detect, detector=spec.detector,
                         detect_fallback=spec.detect_fallback, vectors=spec.vectors)
    if not fs.vectors.shared:
        # the index file is the parent's to bring in step once at the end: N workers rebuilding it after
        # one another's batches would each rebuild it for every batch
        from facesearch.gallery.index_cache import StoreOnlyIndexCache

        fs.indexes = StoreOnlyIndexCache(fs)
    _worker["fs"] = fs
    _worker["folder"] = ImageFolder(Path(spec.root)) if spec.root is not None else None


def _worker_chunk(chunk: list[tuple[str, str]]) -> tuple[int, EnrollReport]:
    if "error" in _worker:
        raise _worker["error"]
    fs, folder = _worker["fs"], _worker["folder"]
    if folder is not None:
        items = [(ident, key, (lambda k=key: folder.read(k))) for ident, key in chunk]
    else:
        items = [(ident, src, Path(src)) for ident, src in chunk]
    return len(chunk), fs.enroll_items(items, batch_size=WORKER_CHUNK)


def merge_reports(into: EnrollReport, part: EnrollReport) -> None:
    into.identities |= part.identities
    into.added += part.added
    into.face_ids.extend(part.face_ids)
    for name in ("skipped", "failed", "several_faces", "elsewhere", "unlike_crops", "fell_back"):
        getattr(into, name).extend(getattr(part, name))


def enroll_in_workers(g: "FaceSearch", items: list[tuple[str, str]], root: str | None, workers: int,
                      progress: Progress | None = None) -> EnrollReport:
    """Enroll ``(identity, source)`` items (a folder's keys under ``root``, or file paths) in ``workers``
    processes: each opens the gallery itself, then reads, decodes, embeds and stores chunks of
    :data:`WORKER_CHUNK` items, one transaction each, and writes them to the vector database when the
    gallery has one. The content-hash rule holds across processes (the store's unique key; a batch that
    meets content another process stored meanwhile skips it), so processes on several machines may
    enroll into one PostgreSQL gallery at once. The parent brings an index file in step at the end."""
    import multiprocessing as mp

    if workers < 1:
        raise ValueError("workers must be at least 1")
    url = g.store.engine.url.render_as_string(hide_password=False)
    files = g.encoder.files
    device = (files.device or "auto") if files is not None else str(g.device)
    spec = WorkerSpec(str(g.home), url, g.store.model_location(g.model_id) or "", device,
                      g.vectors, g.keep_crops, g.detect, g.detector.name, g.detect_fallback, root)
    chunks = [items[i:i + WORKER_CHUNK] for i in range(0, len(items), WORKER_CHUNK)]
    report = EnrollReport()
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = mp.get_context("spawn")  # never fork a process holding torch threads and database connections
    with ctx.Pool(workers, initializer=_worker_start, initargs=(spec, threads)) as pool:
        for n, part in pool.imap_unordered(_worker_chunk, chunks):
            merge_reports(report, part)
            if progress is not None:
                progress(n)
    g.flush()  # the index file (FAISS) from the store, once; a vector database has every face already
    return report


def detected_key(file_sha256: str) -> str:
    """The store key of a face the detector found in a photo whose bytes hash to ``file_sha256``: not the
    file's hash itself, which is the key of the same file enrolled as an aligned crop (``enroll`` without
    ``--detect``), so that enrolling it again with ``--detect`` is not skipped as "enrolled already"."""
    return hashlib.sha256(b"facesearch-detected-face:" + file_sha256.encode()).hexdigest()


def folder_keys(root: str | os.PathLike) -> tuple[Path, list[tuple[str, str]], list[Failure]]:
    """``(absolute root, [(identity, key)], files left out)`` of a folder of identities (what worker
    processes are handed: each reads the keys from its own copy of the folder)."""
    root = Path(root)
    if not root.exists():
        raise FaceSearchError(f"{root}: no such file or directory")
    folder = ImageFolder(root.absolute())
    if not folder.items:
        raise FaceSearchError(f"{root}: no identity folders with files found (expected {root}/<identity>/<image files>)")
    return (root.absolute(), [(ident, key) for ident in folder.identities() for key in folder.items[ident]],
            [Failure(path, why) for path, why in folder.ignored])


def folder_entries(root: str | os.PathLike, total: Callable[[int], None] | None
                   ) -> tuple[Iterable[tuple[str, str, ItemData]], list[Failure]]:
    """The items of ``root/<identity>/<image files>`` (a folder, or a zip holding one), and the files
    left out of it."""
    root = Path(root)
    if not root.exists():
        raise FaceSearchError(f"{root}: no such file or directory")
    # sources are stored as absolute paths (a zip's as its members' names): a path relative to the
    # directory enroll ran in would mean nothing from any other
    folder = ImageFolder(root.absolute())
    if not folder.items:
        left = (f"; {len(folder.ignored)} file(s) left out, e.g. {folder.ignored[0][0]}: {folder.ignored[0][1]}"
                if folder.ignored else "")
        raise FaceSearchError(
            f"{root}: no identity folders with files found (expected {root}/<identity>/<image files>){left}")
    if total is not None:
        total(len(folder))
    entries = ((ident, key, (lambda k=key: folder.read(k))) for ident in folder.identities()
               for key in folder.items[ident])
    return entries, [Failure(path, why) for path, why in folder.ignored]


def batched(iterable, n):
    batch = []
    for it in iterable:
        batch.append(it)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch
