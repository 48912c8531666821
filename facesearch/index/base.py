"""What every vector index is: the :class:`VectorIndex` interface, the :class:`Stamp` an index file carries,
and :class:`StaleIndex`, which means "rebuild from the store"."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import numpy as np

#: ``write(chunk)``: where an index streams its serialised bytes; ``read(n) -> bytes``: where it reads them
Write = Callable[[bytes], object]
Read = Callable[[int], bytes]


class StaleIndex(Exception):
    """The index file is missing, corrupt, or does not match the store; rebuild it."""


@dataclass
class Stamp:
    model_key: str
    revision: int
    ntotal: int
    dim: int
    factory: str
    backend: str
    #: random id of the store's last change (``index_state.change_id``): revisions are small counters
    #: that two databases (or a database and a copy of it that went its own way) can share, so a file
    #: written for one is never taken for the other
    change_id: str = ""


class VectorIndex(ABC):
    """Common interface: ``add``, ``remove``, ``search``; subclasses serialise as a stream of byte chunks
    (``write_payload(write)`` / ``read_payload(read, stamp)``), so saving and loading never hold a second
    copy of a large index in memory. Every index ranks by the one distance (:mod:`facesearch.distance`)
    and keys vectors by the store's face ids. A new backend implements this and is registered in
    :data:`facesearch.index.backends.REGISTRY`."""

    factory: str
    backend: str
    dim: int
    #: True for an index that lives outside the process (a vector database: :class:`SharedIndex`)
    shared = False

    @property
    @abstractmethod
    def ntotal(self) -> int:
        """How many vectors the index holds."""

    @abstractmethod
    def add(self, ids: np.ndarray, x: np.ndarray) -> None:
        """Add vectors ``x`` (n x dim float32, unit length) under face ids ``ids``."""

    @abstractmethod
    def remove(self, ids) -> int:
        """Remove these face ids; returns how many were there. RuntimeError: this index cannot (rebuild)."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` per query: ``(distances, face_ids)``, ascending distance; id -1 where fewer exist."""

    @abstractmethod
    def write_payload(self, write: Write) -> None:
        """Serialise into ``write(chunk)``, piece by piece (what :func:`facesearch.index.save` stores)."""

    @abstractmethod
    def memory_bytes(self) -> int:
        """About how many bytes the index takes."""


class SharedIndex(VectorIndex):
    """An index kept by a vector database outside the process (Milvus, pgvector): persistent and shared by
    every process that opens the gallery, so it is never written to an index file. The store stays the
    source of truth: a change is written to the store first, then here; :meth:`ids` is what finds drift
    between the two (a crash between the writes) and :meth:`reset` + :meth:`add` what rebuilds it.

    ``add`` overwrites a face id that is there already (an upsert), so repairing or retrying is idempotent.
    """

    shared = True
    #: where the vectors are, for people (no password): ``milvus://host:19530/faces``, ``pgvector``...
    location: str
    #: HNSW's search breadth (candidates kept while walking the graph; a search uses at least ``k``): chosen
    #: by measured recall when the index is rebuilt (:func:`facesearch.index.policy.tune_search`, as for
    #: FAISS) and kept in the database, so every process searches with it
    ef_search: int

    @abstractmethod
    def set_ef_search(self, ef: int, keep: bool = False) -> None:
        """Search with ``ef`` from now on; ``keep``: record it in the database for every process."""

    @abstractmethod
    def ids(self) -> np.ndarray:
        """Every face id held, sorted (int64)."""

    @abstractmethod
    def vectors(self, ids) -> dict[int, np.ndarray]:
        """The stored vectors of these face ids (those held)."""

    @abstractmethod
    def reset(self) -> None:
        """Remove every vector (a rebuild starts here)."""

    def finish(self) -> None:
        """Called after a rebuild's adds (an engine may build its graph index then)."""

    def replace_all(self, chunks) -> None:
        """Hold exactly the ``(ids, vectors)`` chunks given (a rebuild from the store). Here: :meth:`reset`,
        :meth:`add` each, :meth:`finish`; an engine that can swap the whole set atomically does so."""
        self.reset()
        for ids, x in chunks:
            self.add(ids, x)
        self.finish()

    def close(self) -> None:
        """Let go of connections."""

    def write_payload(self, write: Write) -> None:
        raise TypeError(f"a {self.backend} index lives in its database and is not saved to a file")


def read_exactly(read: Read, n: int) -> bytes:
    """``n`` bytes from ``read``; fewer is a truncated payload."""
    data = read(n)
    if len(data) != n:
        raise StaleIndex(f"index payload ends early ({len(data)} of {n} bytes)")
    return data
