"""The gallery's vector index, kept in step with the store (the source of truth).

The index file carries a stamp (model, store revision, face count, change id); a file whose stamp does
not match the store is rebuilt from the embeddings in the store. A change made through this handle is
applied to the loaded index in place when the index was in sync just before it.

Threads share one handle's index under one lock (:class:`IndexLock`): a load, a rebuild or a change
applied in place holds it alone; searches and saves, which only read the index, hold it together. A search
never sees an index half-rebuilt or half-changed, a save never writes one that changes under it, and
queries go on while the index is saved (1.6 s at 1M faces).
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facesearch import index as vindex
from facesearch.errors import FaceSearchError, FaceSearchWarning, ModelMismatchError
from facesearch.index.policy import tune_search
from facesearch.model.files import location_for_user

if TYPE_CHECKING:
    from facesearch.gallery.facade import FaceSearch

log = logging.getLogger("facesearch")

INDEX_FILE = "index.fsx"


def replaced_in_place(gallery_key: str, location: str, now_key: str) -> str:
    """The message for a gallery whose model directory now holds other weights."""
    where = location_for_user(location)
    return (f"this gallery was embedded by model {gallery_key}, but the model files at {where} are "
            f"now {now_key} (retrained or replaced in place?): embeddings of different models cannot be "
            f"compared. Restore that model's files, or run `facesearch reindex --model {where}` to "
            "re-embed the gallery with them.")


class IndexLock:
    """Many threads reading (searching, saving) or one changing (loading, rebuilding, applying a change).
    Re-entrant for the thread that changes, which may also read (a rebuild saves); a thread that reads may
    read again but not start changing (that would wait for itself: RuntimeError). A thread waiting to
    change goes before threads that start reading after it, so a stream of queries cannot hold off an
    enroll's change for good."""

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None
        self._depth = 0
        self._waiting = 0
        self._mine = threading.local()  # how many times this thread holds it to read

    @contextmanager
    def shared(self) -> Iterator[None]:
        me, held = threading.get_ident(), getattr(self._mine, "n", 0)
        with self._cond:
            if self._writer != me and held == 0:
                while self._writer is not None or self._waiting:
                    self._cond.wait()
            self._readers += 1
            self._mine.n = held + 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._mine.n -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                self._depth += 1
            else:
                if getattr(self._mine, "n", 0):
                    raise RuntimeError("the index lock is held to read by this thread: it cannot change the index")
                self._waiting += 1
                try:
                    while self._writer is not None or self._readers:
                        self._cond.wait()
                finally:
                    self._waiting -= 1
                self._writer, self._depth = me, 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if self._depth == 0:
                    self._writer = None
                    self._cond.notify_all()


class IndexCache:
    """One gallery handle's index: loaded lazily, applied changes in place, saved atomically."""

    def __init__(self, gallery: "FaceSearch", factory: str = "auto"):
        self.gallery = gallery
        self.factory = factory
        self.loaded: vindex.VectorIndex | None = None
        #: the store revision the loaded index reflects; -1: none, or not known (rebuilt while the store changed)
        self.revision = -1
        #: held around everything that reads or changes ``loaded``/``revision``
        self.lock = IndexLock()

    @property
    def path(self) -> Path:
        return self.gallery.home / INDEX_FILE

    def _stamp(self, revision: int, change_id: str) -> vindex.Stamp:
        g = self.gallery
        return vindex.Stamp(g.model_key, revision, g.store.count_faces(), g.config.embedding_dim, "",
                            g.index_backend, change_id)

    def get(self) -> vindex.VectorIndex:
        """The index, in sync with the store: loaded from its file, or rebuilt when stale. The object is the
        handle's live index: another thread's change may be applied to it, so search it with
        :meth:`search` (under the lock)."""
        with self.lock.exclusive():
            revision, change_id = self.gallery.store.state()
            if self.loaded is not None and revision == self.revision:
                return self.loaded
            try:
                self.loaded = vindex.load(self.path, self._stamp(revision, change_id), self.gallery.index_backend)
                self.revision = revision
            except vindex.StaleIndex as why:
                log.info("rebuilding the index from the store: %s", why)
                self.rebuild()
            return self.loaded

    def search(self, queries, k: int):
        """``(distances, ids, ntotal)``: the ``k`` nearest faces of each query in the index in sync with
        the store, searched under the lock (no change is applied to it meanwhile; other searches and saves
        go on)."""
        revision = self.gallery.store.revision()
        for _ in range(2):
            with self.lock.shared():
                idx = self.loaded
                if idx is not None and self.revision == revision:
                    return self._search(idx, queries, k)
            with self.lock.exclusive():  # rarely: load or rebuild it first
                idx = self.get()
                if self.loaded is idx and self.revision >= revision:  # no later change got in first
                    return self._search(idx, queries, k)
            revision = self.gallery.store.revision()
        with self.lock.exclusive():  # the store keeps changing: search what is there now, alone
            return self._search(self.get(), queries, k)

    @staticmethod
    def _search(idx: vindex.VectorIndex, queries, k: int):
        n = idx.ntotal
        if n == 0:
            return None, None, 0
        dist, ids = idx.search(queries, min(k, n))
        return dist, ids, n

    def rebuild(self) -> vindex.VectorIndex:
        """Build the index from the embeddings in the store and save it."""
        g = self.gallery
        with self.lock.exclusive():
            check_one_model(g)
            for _ in range(3):
                revision = g.store.revision()
                n = g.store.count_faces()
                dim = g.config.embedding_dim
                if n == 0:
                    factory = "Flat" if self.factory == "auto" or self.factory.startswith("IVF") else self.factory
                    idx = vindex.create(dim, 0, factory, g.index_backend)
                else:
                    idx = vindex.build(dim, g.store.iter_embeddings(), n, self.factory, g.index_backend)
                if g.store.revision() == revision:
                    break
                # the store changed while it was read (another thread or process): the index may hold some
                # of that change, so it must not be taken for `revision` (a change applied on top of it
                # would add faces twice); read it again
                revision = -1
            self.loaded, self.revision = idx, revision
            self.save()
            return idx

    def save(self) -> None:
        """Write the loaded index to its file (searches go on meanwhile; changes wait)."""
        g = self.gallery
        with self.lock.shared():
            idx = self.loaded
            if idx is None or self.revision < 0:
                return  # nothing known to be in sync to save: the next get() rebuilds
            revision, change_id = g.store.state()
            if revision != self.revision:
                change_id = ""  # the store moved on (another process): a file that no loader will take
            stamp = vindex.Stamp(g.model_key, self.revision, idx.ntotal, g.config.embedding_dim, idx.factory,
                                 idx.backend, change_id)
            vindex.save(idx, self.path, stamp)

    def after_change(self, new_revision: int, apply: Callable[[vindex.VectorIndex], None]) -> None:
        """Apply a change to the loaded index if it was in sync just before it; else rebuild lazily."""
        with self.lock.exclusive():
            idx = self.loaded
            if idx is not None and self.revision == new_revision:
                return  # loaded (by another thread) from the store as it was after this change
            if idx is not None and self.revision >= 0 and self.revision == new_revision - 1:
                try:
                    apply(idx)
                    self.revision = new_revision
                    return
                except RuntimeError as e:  # e.g. an index type that cannot remove ids
                    log.info("index cannot apply the change in place (%s); rebuilding", e)
            self.loaded, self.revision = None, -1

    def drop(self) -> None:
        """Forget the loaded index (the handle is closed)."""
        with self.lock.exclusive():
            self.loaded, self.revision = None, -1

    def check(self) -> dict:
        """Whether the index file reflects the store, without loading or rebuilding it (``reindex --check``).
        A stale file is harmless (the next search rebuilds it); ``in_sync`` says whether one would."""
        g = self.gallery
        revision, change_id = g.store.state()
        n = g.store.count_faces()
        out = {"vectors": "faiss", "file": str(self.path), "store_faces": n, "backend_faces": None,
               "in_sync": False, "reason": None}
        try:
            stamp, header = vindex.read_stamp(self.path)
        except FileNotFoundError:
            out["reason"] = "no index file"
            return out
        except vindex.StaleIndex as e:
            out["reason"] = str(e)
            return out
        out["backend_faces"] = stamp.ntotal
        expect = {"model_key": g.model_key, "change_id": change_id, "revision": revision, "ntotal": n,
                  "dim": g.config.embedding_dim}
        for field, want in expect.items():
            if getattr(stamp, field) != want:
                out["reason"] = f"index file {field} is {getattr(stamp, field)!r}, store has {want!r}"
                return out
        out["in_sync"] = True
        return out

    def repair(self) -> dict:
        """Make the index reflect the store (``reindex --repair``): for the index file, a rebuild if stale."""
        before = self.check()
        if not before["in_sync"]:
            self.rebuild()
        return {"before": before, "rebuilt": not before["in_sync"], "after": self.check()}

    def _retier(self) -> None:
        """Under ``auto``, switch between exact and approximate index as the gallery grows."""
        with self.lock.exclusive():
            idx = self.loaded
            if self.factory != "auto" or idx is None or idx.backend == "torch-cuda":
                return
            if vindex.needs_rebuild(idx.factory, idx.ntotal):
                self.rebuild()

    def flush(self) -> None:
        """Make sure the index file reflects the store (rebuilding if needed)."""
        with self.lock.exclusive():
            idx = self.get()
            self._retier()
            saved = self.loaded is not idx  # a re-tier rebuilt and saved it
        if not saved:
            self.save()  # of whatever is loaded by then (searches go on meanwhile)


class StoreOnlyIndexCache(IndexCache):
    """An enroll worker process's (``enroll --workers``): its changes go to the store only; the process that
    started the workers brings the index file in step with the store once, at the end."""

    def get(self) -> None:  # type: ignore[override]
        return None

    def search(self, queries, k: int):
        raise RuntimeError("an enroll worker's handle does not search")

    def rebuild(self):
        raise RuntimeError("an enroll worker's handle does not build the index")

    def after_change(self, new_revision: int, apply) -> None:
        pass

    def save(self) -> None:
        pass

    def flush(self) -> None:
        pass


class SharedIndexCache(IndexCache):
    """The index when the vectors live in a vector database (``--vectors``: Milvus, pgvector): persistent and
    shared by every process of the gallery, so nothing is loaded, stamped or saved. Every change is written to
    the store first (committed), then here; a crash between the two leaves drift that :meth:`check` finds
    and :meth:`repair` removes (``facesearch reindex --check`` / ``--repair``), and a handle warns on
    connecting when the counts differ.

    The handle's lock still orders its own threads: searches share it, a change or rebuild holds it alone
    (another process's rebuild is seen as its engine shows it: pgvector swaps the whole set in one
    transaction; Milvus drops and refills its collection).
    """

    #: how many vectors :meth:`check` compares with the store's embeddings (a model switch interrupted
    #: between the store and the backend leaves vectors of the old model under the right ids)
    SAMPLE = 256
    #: stored faces searched at a rebuild to choose ef_search (each a round trip to the database)
    TUNE_QUERIES = 500

    def __init__(self, gallery: "FaceSearch", spec):
        super().__init__(gallery, "auto")
        self.spec = spec

    @property
    def path(self) -> None:  # type: ignore[override]
        return None

    def _connect(self) -> vindex.VectorIndex:
        """The backend, connected on first use (under the exclusive lock)."""
        if self.loaded is None:
            g = self.gallery
            check_one_model(g)
            from facesearch.index.vectors import open_shared

            idx = open_shared(self.spec, g.config.embedding_dim, g.store.engine)
            n_store, n_held = g.store.count_faces(), idx.ntotal
            if n_store != n_held:
                warnings.warn(f"the vectors in {self.spec.show()} do not match the store ({n_held} vectors, "
                              f"{n_store} faces): run `facesearch reindex --check`, then `--repair`",
                              FaceSearchWarning, stacklevel=4)
            self.loaded, self.revision = idx, 0
        return self.loaded

    def get(self) -> vindex.VectorIndex:
        with self.lock.exclusive():
            return self._connect()

    def search(self, queries, k: int):
        with self.lock.shared():
            idx = self.loaded
            if idx is not None:
                return self._search(idx, queries, k)
        with self.lock.exclusive():
            return self._search(self._connect(), queries, k)

    def rebuild(self) -> vindex.VectorIndex:
        """Replace every vector with the store's embeddings; then repair what other processes changed
        while it ran (their writes to the backend may have fallen before the replacement)."""
        g = self.gallery
        with self.lock.exclusive():
            idx = self._connect()
            check_one_model(g)
            idx.replace_all(g.store.iter_embeddings())
            self._repair_ids(idx)
            if g.store.count_faces() >= 2:  # ef by measured recall, as FAISS's efSearch; kept in the database
                tuning = tune_search(idx, _Embeddings(g.store), queries=self.TUNE_QUERIES)
                idx.set_ef_search(tuning["efSearch"], keep=True)
                log.info("%s: ef_search %d (recall@1 %s on %d stored faces)", self.spec.show(),
                         tuning["efSearch"], tuning["recall_at_1_by_efSearch"], tuning["queries"])
            return idx

    def save(self) -> None:
        pass  # the database keeps it

    def flush(self) -> None:
        pass

    def _retier(self) -> None:
        pass

    def after_change(self, new_revision: int, apply: Callable[[vindex.VectorIndex], None]) -> None:
        """Write a change the store has committed to the backend; a failure leaves drift and says so."""
        with self.lock.exclusive():
            idx = self._connect()
            try:
                apply(idx)
            except Exception as e:
                raise FaceSearchError(
                    f"the change is in the store, but writing it to the vectors in {self.spec.show()} failed "
                    f"({type(e).__name__}: {e}): searches miss it until `facesearch reindex --repair`") from e

    def drop(self) -> None:
        with self.lock.exclusive():
            if self.loaded is not None:
                self.loaded.close()
            self.loaded, self.revision = None, -1

    def _diff(self, idx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(missing, extra, stale)``. The backend's ids are read before the store's: a face enrolled
        meanwhile may show as missing (repairing writes it again, the same vector), never as extra, since
        the store is written first; an extra id is one the store no longer has, and face ids are never
        given twice."""
        held = idx.ids()
        stored = self.gallery.store.face_ids()
        missing, extra = np.setdiff1d(stored, held), np.setdiff1d(held, stored)
        both = np.intersect1d(stored, held)
        if len(both) > self.SAMPLE:
            both = np.random.default_rng(0).choice(both, self.SAMPLE, replace=False)
        ids, embs = self.gallery.store.embeddings_found(both)
        got = idx.vectors(ids)
        stale = [int(i) for i, e in zip(ids, embs) if i in got and not np.allclose(got[int(i)], e, atol=1e-4)]
        return missing, extra, np.asarray(stale, np.int64)

    def check(self) -> dict:
        """Drift between the store and the backend (``reindex --check``, ``info``): faces in the store and not
        in the backend (``missing``), ids in the backend the store does not have (``extra``), and of a sample
        of the faces in both, those whose vectors differ from the store's embeddings (``stale``)."""
        idx = self.get()
        with self.lock.shared():
            missing, extra, stale = self._diff(idx)
            return {"vectors": self.spec.show(), "backend": idx.backend, "store_faces": self.gallery.store.count_faces(),
                    "backend_faces": idx.ntotal, "missing": len(missing), "extra": len(extra),
                    "stale_in_sample": len(stale), "sample": self.SAMPLE,
                    "in_sync": not (len(missing) or len(extra) or len(stale)),
                    "examples": {"missing": missing[:5].tolist(), "extra": extra[:5].tolist(),
                                 "stale": stale[:5].tolist()}}

    def _repair_ids(self, idx) -> tuple[int, int]:
        missing, extra, _ = self._diff(idx)
        added = 0
        for i in range(0, len(missing), 10_000):
            ids, embs = self.gallery.store.embeddings_found(missing[i:i + 10_000])
            if len(ids):
                idx.add(ids, embs)
                added += len(ids)
        removed = idx.remove(extra) if len(extra) else 0
        return added, removed

    def repair(self) -> dict:
        """Remove the drift :meth:`check` finds: add the missing faces from the store's embeddings, remove
        the extra ids; stale vectors mean every vector is rewritten (a rebuild)."""
        before = self.check()
        with self.lock.exclusive():
            idx = self._connect()
            if before["stale_in_sample"]:
                self.rebuild()
                added, removed, rebuilt = 0, 0, True
            else:
                (added, removed), rebuilt = self._repair_ids(idx), False
        return {"before": before, "added": added, "removed": removed, "rebuilt": rebuilt, "after": self.check()}


class _Embeddings:
    """The store's ``(ids, embeddings)`` chunks, read again on each pass (the tuner makes three)."""

    def __init__(self, store):
        self.store = store

    def __iter__(self):
        return iter(self.store.iter_embeddings())


def check_one_model(g: "FaceSearch") -> None:
    """Every enrolled face must be embedded by this handle's model; say what to do when not."""
    by_model = g.store.faces_by_model()
    others = [(m, n) for m, n in by_model if m.id != g.model_id]
    if others and len(by_model) == 1:
        m = others[0][0]
        mine = g.store.model_location(g.model_id)
        if mine is not None and mine == m.location:  # same directory, other weights now
            raise ModelMismatchError(replaced_in_place(m.key, mine, g.model_key))
        raise ModelMismatchError(
            f"every enrolled face is now embedded by model {m.key} ({location_for_user(m.location)}), not by "
            f"this handle's {g.model_key}: another process switched the gallery (`facesearch reindex "
            "--model`). Open the gallery again to use its model.")
    if others:
        total = sum(n for _, n in by_model)
        counts = ", ".join(f"{n} by {m.key} ({location_for_user(m.location)})" for m, n in by_model)
        active = g.store.active_model()
        target = next((m for m, _ in others if active is None or m.id != active.id), others[0][0])
        raise ModelMismatchError(
            f"the {total} enrolled faces were embedded by more than one model: {counts} (an "
            f"interrupted `reindex --model` of an earlier facesearch, which wrote in place?). Run `facesearch "
            f"reindex --model {location_for_user(target.location)}` to embed them all with one model.")
