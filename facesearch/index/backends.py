"""The vector search backends, in one registry: ``--backend`` names one of :data:`REGISTRY`, and ``auto``
takes the first that can run here.

To add a backend (a vector database, pgvector, ...): implement :class:`~facesearch.index.base.VectorIndex`
in a module of its own and add a :class:`Backend` to :data:`REGISTRY` below; :func:`resolve_backend`,
:func:`create`, :func:`build` and :func:`facesearch.index.load` find it there.
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np

from facesearch.errors import FaceSearchError
from facesearch.index.base import Read, Stamp, StaleIndex, VectorIndex
from facesearch.index.faiss_index import FaissIndex, faiss_has_gpu, faiss_why
from facesearch.index.policy import auto_factory, tune_nprobe
from facesearch.index.torch_index import TORCH_FACTORIES, TorchIndex


@dataclass(frozen=True)
class Backend:
    """One way to search vectors."""

    name: str
    #: under ``--backend auto``: whether it can run here (cheap checks first; never raises)
    usable: Callable[[], bool]
    #: asked for by name: raise :class:`FaceSearchError` saying why it cannot run here, else return
    require: Callable[[], None]
    #: ``new(dim, factory)``: an empty index for a resolved factory string, or None where this backend does
    #: not build that factory (then faiss-cpu builds it)
    new: Callable[[int, str], VectorIndex | None]
    #: ``read(read, stamp, backend)``: the index in a file this backend wrote, used by ``backend``
    read: Callable[[Read, Stamp, str], VectorIndex]
    #: ``loads_on(backend)``: whether a file this backend wrote can be used by ``backend``
    loads_on: Callable[[str], bool]


def gpu_driver_present() -> bool:
    """False only where torch cannot have a GPU: Linux without the CUDA driver library or a ROCm device.
    Asking torch costs seconds of import; commands that never embed (``info``, ``identities``) skip it."""
    if sys.platform != "linux" or os.path.exists("/dev/kfd"):
        return True
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def _no_requirement() -> None:
    pass


def _require_faiss_gpu() -> None:
    if not faiss_has_gpu():
        raise FaceSearchError("--backend faiss-gpu: the installed FAISS has no GPU support, or sees no GPU; "
                              "use auto or faiss-cpu (or install a FAISS GPU build)")


def _torch_cuda_usable() -> bool:
    if not gpu_driver_present():  # without asking torch (seconds of import)
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def _require_torch_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise FaceSearchError("--backend torch-cuda: torch sees no CUDA GPU on this machine; use auto or "
                              "faiss-cpu")


def _new_faiss(gpu: bool) -> Callable[[int, str], VectorIndex]:
    def new(dim: int, factory: str) -> VectorIndex:
        return FaissIndex(dim, "Flat" if factory.startswith("TorchFlat") else factory, gpu=gpu)

    return new


def _read_faiss(read: Read, stamp: Stamp, backend: str) -> VectorIndex:
    return FaissIndex.read_payload(read, stamp, gpu=backend == "faiss-gpu")


def _new_torch(dim: int, factory: str) -> VectorIndex | None:
    if factory != "Flat" and factory not in TORCH_FACTORIES:
        return None  # approximate indexes are FAISS's; the torch path is exact only
    return TorchIndex(dim, dtype="float32" if factory.endswith("float32") else "float16")


def _read_torch(read: Read, stamp: Stamp, backend: str) -> VectorIndex:
    return TorchIndex.read_payload(read, stamp)


#: the backends by name, in the order ``auto`` tries them
REGISTRY: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("faiss-gpu", faiss_has_gpu, _require_faiss_gpu, _new_faiss(gpu=True), _read_faiss,
                loads_on=lambda backend: True),
        Backend("torch-cuda", _torch_cuda_usable, _require_torch_cuda, _new_torch, _read_torch,
                loads_on=lambda backend: backend == "torch-cuda"),
        Backend("faiss-cpu", lambda: True, _no_requirement, _new_faiss(gpu=False), _read_faiss,
                loads_on=lambda backend: True),
    )
}


def resolve_backend(backend: str = "auto") -> str:
    """``auto`` -> ``faiss-gpu`` when FAISS has GPUs, else ``torch-cuda`` when torch has CUDA, else ``faiss-cpu``
    (the first of :data:`REGISTRY` that can run here); a name is checked to be able to run here."""
    if backend != "auto":
        if backend not in REGISTRY:
            raise ValueError(f"unknown index backend {backend!r}")
        REGISTRY[backend].require()
        return backend
    return next(name for name, b in REGISTRY.items() if b.usable())


def create(dim: int, n_expected: int = 0, factory: str = "auto", backend: str = "auto") -> VectorIndex:
    """A new, empty index. ``factory``: ``auto``, or a FAISS factory string (``Flat``, ``IVF1024,Flat``,
    ``HNSW32,Flat``, ``SQfp16`` ...); ``backend``: ``auto`` or a name in :data:`REGISTRY`."""
    backend = resolve_backend(backend)
    if factory == "auto":
        factory = auto_factory(n_expected, dim)
    index = REGISTRY[backend].new(dim, factory)
    return index if index is not None else REGISTRY["faiss-cpu"].new(dim, factory)


def build(dim: int, chunks, n: int, factory: str = "auto", backend: str = "auto",
          train_sample: int = 200_000, seed: int = 0) -> VectorIndex:
    """Build an index from ``(ids, vectors)`` chunks (e.g. :meth:`Store.iter_embeddings`)."""
    chunks = list(chunks)
    index = create(dim, n, factory, backend)
    if isinstance(index, FaissIndex) and not index.is_trained:
        allx = np.concatenate([c[1] for c in chunks]) if chunks else np.zeros((0, dim), np.float32)
        if len(allx) == 0:
            raise StaleIndex("cannot train an approximate index on an empty gallery")
        rng = np.random.default_rng(seed)
        sample = allx[rng.choice(len(allx), min(train_sample, len(allx)), replace=False)]
        try:
            index.train(sample)
        except RuntimeError as e:  # e.g. fewer faces than the IVF has lists
            why = faiss_why(e)
            raise FaceSearchError(f"cannot train index {factory!r} on {len(allx)} faces: {why}. Use --index auto "
                                  "(exact search until the gallery is large) or fewer lists") from None
    for ids, x in chunks:
        index.add(ids, x)
    if isinstance(index, FaissIndex) and index.tunable and chunks:
        tune_nprobe(index, chunks, seed=seed)
    return index
