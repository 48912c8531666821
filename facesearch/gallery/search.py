"""1:N search: the index's nearest faces turned into ranked identities.

:func:`rank` is the whole ranking rule, a pure function over arrays (no store, no index): the best face
of each identity, closest first, ``top_k`` of them, each with its match decision on the one distance.
:func:`search` asks the index for enough faces that ``top_k`` distinct identities come back, and decides
with a :class:`~facesearch.gallery.results.Decision` (by default the model's FPIR threshold at the
gallery's size: :func:`facesearch.gallery.thresholds.decide`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from facesearch import distance
from facesearch.errors import InvalidImageError
from facesearch.gallery.embedding import input_name
from facesearch.gallery.enroll import batched
from facesearch.gallery.results import Decision, Failure, Match, QueryResult, VerifyResult

if TYPE_CHECKING:
    from facesearch.gallery.facade import FaceSearch


class FaceRef(Protocol):
    """What ranking needs to know of an enrolled face (the store's ``FaceInfo`` is one)."""

    identity: str
    source: str


def rank(dist: np.ndarray, ids: np.ndarray, faces: Mapping[int, FaceRef], top_k: int,
         threshold: float) -> list[list[Match]]:
    """Ranked identities for each query row.

    ``dist`` and ``ids`` are Q x K: each query's nearest faces (distances on the one distance, face ids;
    an id < 0 or one missing from ``faces`` is a padding slot or a face removed meanwhile, and is
    skipped). Each identity is represented by its closest face; identities are sorted by that distance
    (ties: lower face id first) and cut to ``top_k``.

    ``match`` means "accepted as this person": true for the closest identity when its distance is
    ``<= threshold``, false for every other one (a 1:N search answers with one identity or none; the
    runners-up are candidates, not further answers).
    """
    if top_k < 1:
        raise ValueError("top_k must be at least 1")
    dist, ids = np.atleast_2d(dist), np.atleast_2d(ids)
    out = []
    for row_d, row_i in zip(dist, ids):
        best: dict[str, tuple[float, int]] = {}
        for d, fid in zip(row_d.tolist(), row_i.tolist()):
            fid = int(fid)
            if fid < 0 or fid not in faces:
                continue
            who = faces[fid].identity
            if who not in best or (d, fid) < best[who]:
                best[who] = (d, fid)
        ranked = sorted(best.items(), key=lambda kv: kv[1])[:top_k]
        out.append([Match(who, float(d), i == 0 and bool(distance.is_match(d, threshold)), fid, faces[fid].source)
                    for i, (who, (d, fid)) in enumerate(ranked)])
    return out


def search(gallery: "FaceSearch", emb: np.ndarray, top_k: int, probes: Sequence[str] | None,
           decision: Decision) -> list[QueryResult]:
    """Search the gallery's index with query embeddings (Q x D), widening the number of faces asked for
    until each query has ``top_k`` identities or the whole gallery was seen; the closest identity is
    accepted by ``decision``'s threshold, which each result names."""
    threshold, how = decision.threshold, decision.to_dict()
    if top_k < 1:
        raise ValueError("top_k must be at least 1")
    emb = np.atleast_2d(np.asarray(emb, np.float32))
    names = list(probes) if probes else [""] * len(emb)
    k = max(top_k * 4, top_k + 16)
    while True:
        # under the index's lock: another thread of this handle may be changing or rebuilding it
        dist, ids, n = gallery.indexes.search(emb, k)
        if n == 0:
            return [QueryResult([], threshold, p, decision=how) for p in names]
        k = min(n, k)
        faces = gallery.store.face_info([int(i) for i in np.unique(ids) if i >= 0])
        ranked = rank(dist, ids, faces, top_k, threshold)
        if all(len(m) >= top_k for m in ranked) or k >= n:
            return [QueryResult(m, threshold, p, decision=how) for m, p in zip(ranked, names)]
        k = min(n, k * 4)


def query_faces(g: "FaceSearch", image, top_k: int, decision: Decision, every: bool) -> list[QueryResult]:
    """One result per face of one image (see :meth:`FaceSearch.query_faces`)."""
    name = input_name(image)
    with g.encoder.loading_meanwhile(g.model_key):
        found = g._face_crops(image, every=every)
    with g.encoder.single_thread(g.device):
        results = search(g, g.embed_crops([c for c, _ in found]), top_k, [name] * len(found), decision)
    for r, (_, face) in zip(results, found):
        r.face = face.to_dict() if face is not None else None
    return results


def query_many(g: "FaceSearch", image_list, top_k: int, batch_size: int, progress, decision: Decision,
               every: bool) -> list[QueryResult | Failure]:
    """Batched query (see :meth:`FaceSearch.query_many`): a bad image gives a Failure in its place."""
    out: list[QueryResult | Failure | None] = []
    for batch in batched(list(image_list), batch_size):
        crops, slots = [], []  # slots: (place in out, probe name, face)
        with g.encoder.loading_meanwhile(g.model_key):  # the first batch's only
            for im in batch:
                name = input_name(im)
                try:
                    for crop, face in g._face_crops(im, every=every):
                        crops.append(crop)
                        slots.append((len(out), name, face))
                        out.append(None)
                except InvalidImageError as e:
                    out.append(Failure(name, e.reason))
        if crops:
            found = search(g, g.embed_crops(crops), top_k, [s[1] for s in slots], decision)
            for (slot, _, face), res in zip(slots, found):
                res.face = face.to_dict() if face is not None else None
                out[slot] = res
        if progress is not None:
            progress(len(batch))
    return out


def verify(g: "FaceSearch", a, b, threshold: float) -> VerifyResult:
    """1:1 (see :meth:`FaceSearch.verify`): ``same`` is ``distance <= threshold``."""
    with g.encoder.loading_meanwhile(g.model_key):
        (ca, fa), (cb, fb) = g._face_crops(a)[0], g._face_crops(b)[0]
    with g.encoder.single_thread(g.device):
        ea, eb = g.embed_crops([ca]), g.embed_crops([cb])
    d = float(distance.clip(distance.paired(ea, eb))[0])
    return VerifyResult(d, threshold, bool(distance.is_match(d, threshold)),
                        tuple(f.to_dict() if f is not None else None for f in (fa, fb)))
