"""Grouping faces of people nobody enrolled: who appears in these photos, and which photos show the same
person, by the one distance.

The faces are embedded by the gallery's model and grouped by agglomerative clustering with average
linkage on the cosine distance (scikit-learn's, the distance facesearch uses everywhere), cut at a
distance: by default the model's 1:1 threshold, so two groups are merged only while the average distance
between their faces would still be a match. A face alone in its group is a singleton (seen once).

``facesearch cluster PHOTOS... --out FOLDER`` writes each group as ``FOLDER/cluster-NNN/`` (copies of the
files), which ``facesearch enroll --identity NAME FOLDER/cluster-NNN`` enrolls under a name.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facesearch.errors import FaceSearchError, InvalidImageError
from facesearch.gallery.embedding import face_crops, input_name, read_pixels
from facesearch.gallery.results import Failure


@dataclass
class Clusters:
    """The groups (largest first; each a list of indices into ``sources``), the faces that could not be
    embedded, and the distance the groups were cut at."""

    sources: list[str]
    groups: list[list[int]]
    threshold: float
    failed: list[Failure] = field(default_factory=list)

    @property
    def singletons(self) -> list[int]:
        return [g[0] for g in self.groups if len(g) == 1]

    def to_dict(self) -> dict:
        many = [g for g in self.groups if len(g) > 1]
        return {"threshold": self.threshold, "faces": len(self.sources), "clusters": len(many),
                "groups": [{"cluster": i + 1, "size": len(g), "sources": [self.sources[k] for k in g]}
                           for i, g in enumerate(many)],
                "singletons": [self.sources[k] for k in self.singletons],
                "failures": [{"source": f.source, "reason": f.reason} for f in self.failed]}


def group(embeddings: np.ndarray, threshold: float) -> list[list[int]]:
    """Indices of ``embeddings`` (unit vectors) grouped by average-linkage clustering on the cosine
    distance, cut at ``threshold``; largest group first, each group in input order."""
    n = len(embeddings)
    if n == 0:
        return []
    if n == 1:
        return [[0]]
    try:
        from sklearn.cluster import AgglomerativeClustering
    except ImportError:
        raise FaceSearchError("clustering needs scikit-learn: pip install 'facesearch[cluster]'") from None
    labels = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                     distance_threshold=float(threshold)).fit_predict(embeddings)
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(int(label), []).append(i)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]))


def embed_images(gallery, image_list: Sequence, batch_size: int = 32, progress=None
                 ) -> tuple[np.ndarray, list[str], list[Failure]]:
    """Embed images with a gallery handle's model and preprocessing (``detect``: the largest face of each
    photo); a bad image is a Failure, never the end of the rest."""
    crops, names, failed = [], [], []
    for image in image_list:
        name = input_name(image)
        try:
            crop, _ = face_crops(read_pixels(image)[0], name, gallery.config, gallery.detect, False,
                                 gallery.detector)[0]
        except (InvalidImageError, OSError) as e:
            failed.append(Failure(name, e.reason if isinstance(e, InvalidImageError) else str(e.strerror or e)))
        else:
            crops.append(crop)
            names.append(name)
        if progress is not None:
            progress(1)
    embs = [gallery.embed_crops(crops[i:i + batch_size]) for i in range(0, len(crops), batch_size)]
    dim = gallery.config.embedding_dim
    return (np.concatenate(embs) if embs else np.zeros((0, dim), np.float32)), names, failed


def cluster_images(gallery, image_list: Sequence, threshold: float | None = None, progress=None) -> Clusters:
    """Embed ``image_list`` and group it (:func:`group`) at ``threshold`` (default: the model's 1:1 one)."""
    t = float(gallery.threshold if threshold is None else threshold)
    if not 0.0 < t < 2.0:
        raise FaceSearchError(f"cluster threshold {t} is not a cosine distance in (0, 2)")
    emb, names, failed = embed_images(gallery, image_list, progress=progress)
    return Clusters(names, group(emb, t), t, failed)


def write_groups(clusters: Clusters, out: Path, min_size: int = 2) -> list[Path]:
    """Copy each group of at least ``min_size`` faces into ``out/cluster-NNN/`` (numbered as in
    :meth:`Clusters.to_dict`); ``out`` must not exist yet (nothing is overwritten)."""
    out = Path(out)
    if out.exists():
        raise FaceSearchError(f"{out} exists; give a new folder for the clusters")
    out.mkdir(parents=True, mode=0o700)
    made = []
    for i, g in enumerate(x for x in clusters.groups if len(x) > 1):
        if len(g) < min_size:
            continue
        d = out / f"cluster-{i + 1:03d}"
        d.mkdir(mode=0o700)
        for k, idx in enumerate(g):
            src = Path(clusters.sources[idx])
            shutil.copyfile(src, d / f"{k + 1:03d}-{src.name}")
        made.append(d)
    return made


def pairwise_scores(groups: list[list[int]], truth: Sequence[str]) -> dict:
    """Pairwise precision (pairs put together that are one person), recall (pairs of one person put
    together), their F1, and how many faces ended up in a group with someone else."""
    label = np.empty(len(truth), np.int64)
    for gi, g in enumerate(groups):
        label[g] = gi
    people = {p: i for i, p in enumerate(sorted(set(truth)))}
    t = np.array([people[p] for p in truth])
    same_pred = label[:, None] == label[None, :]
    same_true = t[:, None] == t[None, :]
    iu = np.triu_indices(len(truth), 1)
    sp, st = same_pred[iu], same_true[iu]
    tp = int(np.sum(sp & st))
    precision = tp / max(int(sp.sum()), 1)
    recall = tp / max(int(st.sum()), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {"pairwise_precision": precision, "pairwise_recall": recall, "pairwise_f1": f1,
            "clusters": sum(len(g) > 1 for g in groups), "singletons": sum(len(g) == 1 for g in groups),
            "people": len(people), "faces": len(truth)}
