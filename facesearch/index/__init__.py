"""The vector index: FAISS (CPU, or GPU when a FAISS GPU build is installed) or exact torch search on CUDA.

Every index here ranks by the one distance (:mod:`facesearch.distance`): it stores inner
products of unit vectors and reports ``distance.from_similarity(ip)``. FAISS ids are the
store's face ids. The index is a cache of the store: it is written atomically with a stamp
(model, store revision, size, checksum), and a stamp that does not match the store means
"rebuild from the store", never "use anyway".

The parts: :mod:`~facesearch.index.base` (the :class:`VectorIndex` interface, :class:`Stamp`,
:class:`StaleIndex`), :mod:`~facesearch.index.faiss_index` and :mod:`~facesearch.index.torch_index` (the
two implementations), :mod:`~facesearch.index.backends` (the :data:`REGISTRY` of backends: add one
there), :mod:`~facesearch.index.policy` (which index ``auto`` builds, when to re-tier, nprobe tuning,
factory checks) and :mod:`~facesearch.index.fileformat` (save, load, read_stamp). The policy's
numbers (``EXACT_MAX``, ...) are read from :mod:`facesearch.index.policy`: change them there.
"""

from facesearch.index import backends, policy
from facesearch.index.backends import REGISTRY, Backend, build, create, gpu_driver_present, resolve_backend
from facesearch.index.base import StaleIndex, Stamp, VectorIndex
from facesearch.index.faiss_index import IVF_NPROBE, FaissIndex, faiss_has_gpu, faiss_nlist
from facesearch.index.fileformat import FORMAT, MAGIC, load, read_stamp, save
from facesearch.index.policy import (
    EXACT_MAX,
    NPROBE_CHOICES,
    TARGET_RECALL,
    auto_factory,
    check_factory,
    needs_rebuild,
    tune_nprobe,
)
from facesearch.index.torch_index import TOPK_BLOCK, TORCH_FACTORIES, TorchIndex, topk_rows

__all__ = [
    "EXACT_MAX", "FORMAT", "IVF_NPROBE", "MAGIC", "NPROBE_CHOICES", "REGISTRY", "TARGET_RECALL", "TOPK_BLOCK",
    "TORCH_FACTORIES", "Backend", "FaissIndex", "StaleIndex", "Stamp", "TorchIndex", "VectorIndex",
    "auto_factory", "backends", "build", "check_factory", "create", "faiss_has_gpu", "faiss_nlist",
    "gpu_driver_present", "load", "needs_rebuild", "policy", "read_stamp", "resolve_backend", "save",
    "topk_rows", "tune_nprobe",
]
