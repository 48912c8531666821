"""The index policy: which index "auto" builds for a gallery of a given size, when a grown (or shrunk)
gallery's index should be rebuilt as another type, how widely a built index searches (IVF lists probed,
HNSW efSearch), and which factory strings are accepted.

Pure rules, except :func:`tune_search` (which measures recall on the built index) and
:func:`check_factory` (which asks FAISS). faiss is imported only inside them.
"""

from __future__ import annotations

import math
import re

import numpy as np

from facesearch import distance
from facesearch.errors import FaceSearchError
from facesearch.index.faiss_index import IVF_NPROBE, FaissIndex, faiss_nlist, faiss_why, split_spill
from facesearch.index.torch_index import TORCH_FACTORIES

#: up to this many faces, "auto" uses exact search. Measured (benchmarks/README.md, 2-core CPU): exact
#: single-probe p50 is ~2.6 ms at 50k and ~5 ms at 100k with one thread, while IVF at 100k answers in
#: ~0.2 ms with recall@1 1.0 against exact
EXACT_MAX = 50_000
#: the recall@1 (nearest other face, against exact search) that ``tune_nprobe`` asks for
TARGET_RECALL = 0.99
NPROBE_CHOICES = (8, 16, 32, 64, 128, 256, 512)
#: above this many faces, "auto" scans compressed codes and re-ranks the best on the exact vectors
#: (``IVF<lists>,PQ<d/2>x4fs,RFlat``) instead of scanning the exact vectors (``IVF<lists>,Flat``). Measured on
#: galleries fitted to SFace (docs/speed.md): the same recall@1 as IVF-Flat at the same nprobe with the scan
#: 6-8x faster at 1M, and already faster at 60k (0.40 against 0.75 ms at recall@1 1.0 and 0.995), so it follows
#: exact search directly; ``IVF<lists>,Flat`` stays for odd dimensions and galleries that chose it
RERANK_MIN = EXACT_MAX
#: nprobe values ``tune_search`` tries on a re-ranked index (finer steps: its cost grows with the lists scanned)
RERANK_NPROBE_CHOICES = (32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024,
                         1280, 1536, 2048)
#: stored faces ``tune_search`` asks a re-ranked index about (at least): the cautious bound (hits less two standard
#: deviations of the misses) accepts an nprobe whose sample recall@1 is about 0.992 for a 0.99 target with 16,000
#: (0.993 with 4,000, 0.996 with 1,000: each step a wider search). At 1M faces the exact answers for 16,000 take
#: about half a minute of the build, the searches about as long
RERANK_TUNE_QUERIES = 16_000
#: lists each face is kept in by the index ``auto`` builds above :data:`RERANK_MIN` (``...,RFlat,spill2``): at 1M faces
#: (benchmarks/results/index-frontier-1m-cpu-2core.json) recall@1 0.99 needed 160 of 2048 lists (0.85 ms a probe)
#: against 448 (1.8 ms) with each face in one list; at 60k both answered in 0.24 ms; 32 more bytes a face. A third
#: list (64 more bytes) was no faster at 1M (scratch sweep, docs/speed.md)
AUTO_SPILL = 2
#: candidates re-ranked per query that ``tune_search`` tries (after choosing nprobe with the most of them): the
#: fast-scan keeps that many in a heap while it scans, so a deeper re-rank costs scan time (at 1M, 256 candidates
#: made the scan about 1.5x slower than 100 for no recall, docs/speed.md)
REFINE_CHOICES = (16, 32, 64, 128)
#: HNSW efSearch values ``tune_search`` tries, smallest first
EF_SEARCH_CHOICES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


#: HNSW32,Flat was measured as ``auto``'s index above EXACT_MAX and not taken (docs/speed.md): on galleries
#: fitted to SFace's distances at 1M faces it reached recall@1 0.944 at efSearch 512 (7.0 ms) and 0.972 at 1024
#: (12.6 ms), built in 479 s, where IVF2048,Flat reached 0.979 at nprobe 512 (9.3 ms), built in 24 s. It stays
#: an ``--index`` choice, with removal in place and efSearch tuned at build.
def auto_factory(n: int, dim: int = 128) -> str:
    """The FAISS factory string "auto" picks for ``n`` faces of ``dim`` dimensions: exact while that is fast,
    then (above :data:`RERANK_MIN`, which is EXACT_MAX) IVF over 4-bit fast-scan PQ codes, each face in its
    :data:`AUTO_SPILL` nearest lists (the ``,spill2`` suffix), with the best candidates re-ranked on the exact
    vectors; IVF over the exact vectors for an odd ``dim``. At 1M faces (benchmarks/results/index-lists-1m-cpu-2core.json):
    IVF1024, nprobe 112 and 128 re-ranked tuned at build, 0.81 ms a probe on one thread at recall@1 0.992, built
    and tuned in 77 s."""
    if n <= EXACT_MAX:
        return "Flat"
    if n > RERANK_MIN and dim % 2 == 0:
        # about sqrt(n) lists (a power of two), at least 128 faces a list; two dimensions per 4-bit sub-quantizer.
        # A fast-scan probe pays for each list it opens as well as for the codes it reads: at 1M faces, each in 2
        # lists (benchmarks/results/index-lists-1m-cpu-2core.json, 3,000 probes, one thread), recall@1 0.993 took
        # 112 of 1024 lists (0.84 ms), 256 of 2048 (1.20 ms) and 320 of 4096 (1.12 ms); 512 lists were no faster
        # than 1024 (64 of them, 0.81 ms)
        nlist = max(64, min(2 ** int(round(math.log2(math.sqrt(n)))), 2 ** int(math.log2(n / 128))))
        return f"IVF{nlist},PQ{dim // 2}x4fs,RFlat" + (f",spill{AUTO_SPILL}" if AUTO_SPILL > 1 else "")
    # about 2 sqrt(n) lists (a power of two): at 1M, 2048 lists trained in half the time of 4096 with
    # the same latency at equal recall (measured); IVF,Flat keeps exact distances and supports removal
    nlist = max(64, 2 ** int(round(math.log2(2 * math.sqrt(n)))))
    return f"IVF{nlist},Flat"


def is_reranked(factory: str) -> bool:
    """Whether a factory string is an IVF over compressed codes with an exact re-rank (``...,RFlat``, faces in one
    list, or ``...,RFlat,spill<N>``, in N)."""
    factory = split_spill(factory)[0]
    return factory.startswith("IVF") and factory.endswith(",RFlat")


def ivf_auto_factory(n: int, dim: int = 128) -> str:
    """The IVF index ``auto`` builds for ``n`` faces above EXACT_MAX (what :func:`auto_factory` gives there)."""
    return auto_factory(max(n, EXACT_MAX + 1), dim)


def ivf_lists(factory: str) -> int | None:
    """The number of IVF lists of a factory string (``IVF1024,Flat`` -> 1024); None when it is not IVF."""
    m = re.match(r"IVF(\d+)", factory)
    return int(m.group(1)) if m else None


def needs_rebuild(current_factory: str, ntotal: int) -> bool:
    """The re-tiering rule of ``--index auto``: whether an index of ``current_factory`` that holds ``ntotal``
    faces should be rebuilt as :func:`auto_factory` would build it now.

    Exact search gives way to IVF once the gallery grows past :data:`EXACT_MAX`, and comes back when it
    shrinks to it; an IVF index over exact vectors becomes a re-ranked one once the gallery grows past
    :data:`RERANK_MIN` (an older gallery's file too), and a re-ranked one is kept down to EXACT_MAX (no
    flapping at the boundary). An IVF index is otherwise rebuilt only when the lists ``auto`` would choose
    are more than 4 times its own (close enough otherwise: retraining costs a pass over the gallery). A
    torch index is exact on the GPU at any size and is never re-tiered."""
    if current_factory in TORCH_FACTORIES:
        return False
    want = auto_factory(ntotal)
    if want == "Flat" and current_factory == "Flat":
        return False
    if want == "Flat":
        return True
    have, wanted = ivf_lists(current_factory), ivf_lists(want)
    if have is None:
        return True
    if is_reranked(want) and not is_reranked(current_factory):
        return True
    if is_reranked(want) and split_spill(want)[1] != split_spill(current_factory)[1]:
        return True  # each face in one list (an older gallery's) or as many as auto keeps now
    if is_reranked(current_factory) and not is_reranked(want):
        return have * 4 < ivf_lists(auto_factory(max(ntotal, RERANK_MIN + 1)))
    return have * 4 < wanted


def check_factory(factory: str, dim: int) -> None:
    """Raise :class:`FaceSearchError` unless ``factory`` is ``auto``, a torch index, or a factory string
    FAISS accepts for ``dim``-d vectors (checked before any work, not when the index is first built)."""
    if factory == "auto" or factory in TORCH_FACTORIES:
        return
    if factory.upper().startswith("IDMAP"):
        raise FaceSearchError(f"--index {factory!r}: leave IDMap out, facesearch maps face ids itself "
                              "(e.g. --index Flat or HNSW32,Flat)")
    try:
        import faiss
    except ImportError:
        return  # without faiss only the torch index exists; create() says so
    base, spill = split_spill(factory)
    if spill > 1 and not is_reranked(factory):
        raise FaceSearchError(f"--index {factory!r}: ,spill<N> (each face in N lists) needs a re-ranked IVF index, "
                              "e.g. IVF1024,PQ64x4fs,RFlat,spill2")
    try:
        faiss.index_factory(dim, base, distance.faiss_metric())
    except RuntimeError as e:
        why = faiss_why(e)
        raise FaceSearchError(f"--index {factory!r} is not an index FAISS can build for {dim}-d vectors ({why}); "
                              "use auto, Flat, IVF<lists>,Flat, HNSW32,Flat, ... (a FAISS factory string)") from None


def tune_search(index: FaissIndex, chunks, queries: int = 1000, target: float = TARGET_RECALL,
                seed: int = 0) -> dict:
    """Give an IVF index the smallest nprobe (at least IVF_NPROBE), an HNSW index the smallest efSearch, whose
    recall@1 is at least ``target`` against exact search; a re-ranked IVF, after its nprobe (found with the
    deepest re-rank), the fewest re-ranked candidates that still reach it.

    The queries are stored faces, and the answer sought is each one's nearest *other* face (as a new
    photo of an enrolled person would find one of that person's faces). Exact answers come from a
    chunked matmul over the whole gallery. The measured recall is a sample, so an nprobe is taken only
    when a cautious lower bound (hits less two standard deviations of the misses) reaches ``target``.
    Returns what was measured (also kept as ``index.tuning``).
    """
    refine = getattr(index, "refine_candidates", None)  # a FAISS index with a refine stage
    if refine is not None:  # its queries are cheap: more of them let the cautious bound accept a narrower search
        queries = max(queries, RERANK_TUNE_QUERIES)
    ids_all = np.concatenate([c[0] for c in chunks])
    n = len(ids_all)
    rng = np.random.default_rng(seed + 1)
    pick = np.sort(rng.choice(n, min(queries, n), replace=False))
    q_ids = ids_all[pick]
    pos, q_parts = 0, []
    for cids, x in chunks:  # gather the query vectors without concatenating the gallery
        sel = pick[(pick >= pos) & (pick < pos + len(cids))] - pos
        q_parts.append(np.asarray(x, np.float32)[sel])
        pos += len(cids)
    q = np.ascontiguousarray(np.concatenate(q_parts))
    best_s = np.full(len(q), -np.inf, np.float32)
    best_i = np.full(len(q), -1, np.int64)
    step = max(512, 8192 * 1000 // len(q))  # rows of the gallery per matmul: about 32 MB of scores
    pos = 0
    for cids_all, x_all in chunks:  # exact nearest other face
        for a in range(0, len(cids_all), step):
            cids, x = np.asarray(cids_all[a : a + step]), np.asarray(x_all[a : a + step], np.float32)
            s = q @ x.T
            own = (pick >= pos + a) & (pick < pos + a + len(cids))  # queries whose own face is in this block
            s[np.flatnonzero(own), pick[own] - (pos + a)] = -np.inf
            j = s.argmax(1)
            sj = s[np.arange(len(q)), j]
            better = sj > best_s
            best_s[better], best_i[better] = sj[better], cids[j[better]]
        pos += len(cids_all)

    def recall(search_k: int = 2):
        sims, found = index.search(q, search_k)
        sims = distance.to_similarity(sims)
        other = np.where(found[:, 0] == q_ids, found[:, 1], found[:, 0])
        other_s = np.where(found[:, 0] == q_ids, sims[:, 1], sims[:, 0])
        ok = (other == best_i) | (other_s >= best_s - 1e-6)  # ties count as found
        misses = int((~ok).sum())
        low = float((ok.sum() - 2.0 * np.sqrt(max(misses, 1))) / len(q)) if misses else 1.0
        return float(ok.mean()), low

    if index.ef_search is not None:  # HNSW: the candidates kept while walking the graph
        name, choices, setter = "efSearch", list(EF_SEARCH_CHOICES), index.set_ef_search
    else:
        nlist = faiss_nlist(index)
        # never fewer than IVF_NPROBE lists: recall@1 is what is tuned, and the extra lists keep the rest of
        # the top 10 close to exact too
        steps = RERANK_NPROBE_CHOICES if refine is not None else NPROBE_CHOICES
        name, choices, setter = "nprobe", [p for p in steps if IVF_NPROBE <= p < nlist] + [nlist], index.set_nprobe
    if refine is not None:  # nprobe first with the deepest re-rank tried, then the shallowest as good
        index.set_refine_candidates(max(REFINE_CHOICES))
    tried, lower = {}, {}
    chosen = None
    for nprobe in choices:
        setter(nprobe)
        tried[nprobe], lower[nprobe] = recall()
        if lower[nprobe] >= target:
            chosen = nprobe
            break
    if chosen is None:  # not reached even at the widest search: keep the best tried
        chosen = max(tried, key=lambda p: (tried[p], -p))
        setter(chosen)
    index.tuning = {name: chosen, "target_recall_at_1": target, "queries": int(len(q)),
                    f"recall_at_1_by_{name}": tried, f"lower_bound_by_{name}": lower}
    if refine is not None:  # the shallowest re-rank that still meets the target at the chosen nprobe
        by_r, low_r = {}, {}
        pick = max(REFINE_CHOICES)
        for r in sorted(REFINE_CHOICES)[:-1]:
            index.set_refine_candidates(r)
            by_r[r], low_r[r] = recall()
            if low_r[r] >= min(target, lower[chosen]):
                pick = r
                break
        by_r[max(REFINE_CHOICES)], low_r[max(REFINE_CHOICES)] = tried[chosen], lower[chosen]
        index.set_refine_candidates(pick)
        index.tuning.update({"refine_candidates": pick, "recall_at_1_by_refine_candidates": by_r,
                             "lower_bound_by_refine_candidates": low_r})
    return index.tuning


#: the name it had when only IVF was tuned
tune_nprobe = tune_search
