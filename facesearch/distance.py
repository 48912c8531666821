"""The one distance of facesearch.

Every embedding is L2-normalised, and the distance between two faces is the
*cosine distance*::

    distance(a, b) = 1 - <a, b>        in [0, 2], lower is more similar

Two faces match when ``distance <= threshold``. The contrastive loss trains
this distance, :meth:`FaceSearch.verify` thresholds it, and the FAISS index
ranks by it: the index stores inner products (``METRIC_INNER_PRODUCT``) and
:func:`from_similarity` turns them into distances in this one place. The
Euclidean distance between unit vectors is a monotone function of it
(``||a - b||^2 = 2 * distance``), see :func:`to_euclidean`.
"""

from __future__ import annotations

import numpy as np

NAME = "cosine"
#: distances lie in [MIN, MAX]
MIN, MAX = 0.0, 2.0


def normalize(x, eps: float = 1e-12):
    """L2-normalise rows of a numpy array or torch tensor (same type out)."""
    if isinstance(x, np.ndarray):
        x = np.asarray(x, dtype=np.float32)
        n = np.linalg.norm(x, axis=-1, keepdims=True)
        return x / np.maximum(n, eps)
    import torch.nn.functional as F

    return F.normalize(x, p=2, dim=-1, eps=eps)


def from_similarity(sim):
    """Cosine similarity (inner product of unit vectors) -> distance. Works on floats, numpy and torch."""
    return 1.0 - sim


def clip(dist):
    """Clamp distances into [MIN, MAX] (float rounding can give -1e-7 for identical images)."""
    if isinstance(dist, np.ndarray):
        return np.clip(dist, MIN, MAX)
    if isinstance(dist, float):
        return min(max(dist, MIN), MAX)
    return dist.clamp(MIN, MAX)


def to_similarity(dist):
    """Distance -> cosine similarity (what an inner-product index stores)."""
    return 1.0 - dist


def to_euclidean(dist):
    """Distance -> Euclidean distance between the unit vectors, sqrt(2 * distance)."""
    return (2.0 * np.clip(dist, 0.0, None)) ** 0.5


def pairwise(a, b):
    """All distances between rows of ``a`` (n x d) and ``b`` (m x d), both unit-norm. numpy or torch."""
    if isinstance(a, np.ndarray):
        return from_similarity(np.asarray(a, np.float32) @ np.asarray(b, np.float32).T)
    return from_similarity(a @ b.T)


def paired(a, b):
    """Distances between matching rows of ``a`` and ``b`` (n x d each), both unit-norm. numpy or torch."""
    if isinstance(a, np.ndarray):
        return from_similarity(np.sum(np.asarray(a, np.float32) * np.asarray(b, np.float32), axis=-1))
    return from_similarity((a * b).sum(dim=-1))


def is_match(dist, threshold: float):
    """The one match rule: a match when distance <= threshold."""
    return dist <= threshold


def faiss_metric():
    """The FAISS metric that ranks by this distance (largest inner product = smallest distance)."""
    import faiss

    return faiss.METRIC_INNER_PRODUCT
