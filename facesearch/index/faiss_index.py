"""FAISS indexes (CPU, or GPU when a FAISS GPU build is installed and sees a GPU), from a factory string.

faiss is imported inside the functions that need it: commands that never search (``info``,
``identities``) do not pay for it.
"""

from __future__ import annotations

import io
import re
import threading
import time

import numpy as np

from facesearch import distance
from facesearch.index.base import Read, Stamp, VectorIndex, Write
from facesearch.tuning import MeasuredChoice

#: IVF lists probed per query when nothing better is known (a new, empty IVF index). A built IVF index
#: chooses its own (``tune_nprobe``): how many lists a model's embeddings need depends on the model, e.g.
#: at 1M faces 32 gave recall@1 0.998 for one built-in model and 0.975 for the next (benchmarks/README.md)
IVF_NPROBE = 32
#: HNSW's efSearch (candidates kept while walking the graph) of a new HNSW index; a built one chooses its own
#: (``policy.tune_search``), stored in its file by FAISS
HNSW_EF_SEARCH = 64
#: the ids a removed face's slot in an HNSW or re-ranked index's id map is given: never a store id (those are >= 0)
REMOVED = -1
#: candidates a new re-ranked index (``...,RFlat``: compressed codes scanned, the best re-ranked on the exact
#: vectors) re-ranks per query when nothing better is known; a built one chooses its own
#: (``policy.tune_search``), kept in the file as the refine stage's ``k_factor`` (read as candidates per query)
REFINE_CANDIDATES = 64
#: a re-ranked index keeps a removed face's codes and vector (FAISS's refine stage cannot drop them) and filters
#: it out of every search; past this share of removed faces, ``remove`` asks for a rebuild instead
REFINE_MAX_REMOVED = 0.05
#: single probes (a query of up to this many vectors) search on one OpenMP thread: on this project's 2-core
#: machine a 2-thread parallel region for one probe waits for a second, busy core (measured: docs/speed.md).
#: A re-ranked IVF's single probes are the exception: their threads are measured (:class:`ProbeThreads`)
ONE_THREAD_QUERIES = 1
#: FAISS's fast-scan IVF search that splits the (query, list) pairs of a search between its threads
#: (``IndexIVFFastScan.implem`` 14); its default splits the queries, so one probe ran on one thread however many it
#: was given, and 2 threads were no faster than 1 (at 1M faces, nprobe 128 of 1024: 1.43 against 1.20 ms in
#: benchmarks/results/scale-cpu-2core.json, 0.89 against 0.92 in scale-1m-cpu-2core.json).
#: With it, one probe on 2 threads took 0.48-0.57 ms against 0.75-0.79 on one, at the same recall
#: (docs/speed.md). A re-ranked IVF's single probes use it, on the threads :class:`ProbeThreads` measures faster
FAST_SCAN_SPLIT = 14
#: ``<a FAISS re-ranked IVF factory>,spill<N>``: facesearch's suffix for a re-ranked IVF whose faces are each kept in
#: their N nearest lists (the codes N times, the exact vector once): a face near the border of its list is then found
#: from either side, so fewer lists are scanned for the same recall (at 1M faces, recall@1 0.99 with 160 of 2048
#: lists against 448: benchmarks/results/index-frontier-1m-cpu-2core.json)
SPILL_SUFFIX = re.compile(r",spill([2-8])$")


def split_spill(factory: str) -> tuple[str, int]:
    """``IVF2048,PQ64x4fs,RFlat,spill2`` -> (``IVF2048,PQ64x4fs,RFlat``, 2): the FAISS factory string and the lists
    each face is kept in (1 without the suffix)."""
    m = SPILL_SUFFIX.search(factory)
    return (factory[: m.start()], int(m.group(1))) if m else (factory, 1)


def faiss_has_gpu() -> bool:
    try:
        import faiss

        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:
        return False


class ProbeThreads:
    """The OpenMP threads for a re-ranked IVF's single probes, chosen by measurement
    (:class:`facesearch.tuning.MeasuredChoice` between one thread and all of the caller's): the first probes
    alternate between the two until each has run ``trials``, then the faster (median wall time) is kept, and
    measured again every ``every`` probes. On an idle 2-core machine two threads answer a probe at 1M faces in
    about 0.5 ms against 0.77 (:data:`FAST_SCAN_SPLIT`); when something else keeps the other core busy, a
    2-thread region waits for it and one thread is faster (as for enroll's ``ThreadTuner``). A probe costs a
    millisecond, so the trials cost a few."""

    def __init__(self, trials: int = 8, every: int = 2000):
        self.trials, self.every = trials, every
        self._m: MeasuredChoice | None = None  # between 1 and the caller's threads (anew if that changes)
        self._lock = threading.Lock()

    @property
    def times(self) -> dict[int, list[float]]:
        return self._m.times if self._m is not None else {}

    @property
    def chosen(self) -> int:
        return self._m.current if self._m is not None else 1

    @chosen.setter
    def chosen(self, threads: int) -> None:
        if self._m is not None:
            self._m.current = threads

    def pick(self, threads: int) -> int:
        """Threads for the next probe, at most ``threads`` (the caller's OpenMP setting)."""
        if threads <= 1:
            return 1
        with self._lock:
            if self._m is None or self._m.choices != [1, threads]:
                self._m = MeasuredChoice([1, threads], self.trials, self.every)
            m = self._m
        return min(m.next(), threads)

    def record(self, threads: int, seconds: float) -> None:
        if self._m is not None:
            self._m.record(threads, seconds)


class FaissIndex(VectorIndex):
    """A FAISS index built from a factory string, on inner product, with the store's ids."""

    def __init__(self, dim: int, factory: str = "Flat", gpu: bool = False, nprobe: int | None = None,
                 index=None):
        import faiss

        loaded = index is not None
        self.dim, self.factory = dim, factory
        faiss_factory, self.spill = split_spill(factory)
        self.backend = "faiss-gpu" if gpu else "faiss-cpu"
        if index is None:
            base = faiss.index_factory(dim, faiss_factory, distance.faiss_metric())
            # a plain IVF index keeps the store's ids in its lists (and removes them in place); anything else
            # (exact, HNSW, an IVF behind a refine stage) gets an id map
            index = base if isinstance(base, faiss.IndexIVF) else faiss.IndexIDMap2(base)
            if isinstance(base, faiss.IndexRefine):
                base.k_factor = float(REFINE_CANDIDATES)
                faiss.extract_index_ivf(base).cp.niter = 10  # k-means iterations: bounds the build (measured)
        self.cpu_index = index
        # a new index starts at IVF_NPROBE; a loaded one keeps the nprobe it was saved with
        self.nprobe = nprobe if nprobe is not None else (IVF_NPROBE if loaded is False else None)
        self._apply_params()
        #: an HNSW graph cannot drop a node: a removed face keeps its node (the graph still routes through it)
        #: and its slot in the id map becomes REMOVED, which every search filters out (an IDSelector inside
        #: the graph walk, so the k answers are k live faces). Kept in FAISS's own file with the id map.
        self._hnsw = faiss_hnsw(self)
        if self._hnsw is not None and not loaded:
            self._hnsw.efSearch = HNSW_EF_SEARCH
        #: a re-ranked index (``IVF<lists>,PQ<m>x4fs,RFlat``): the IVF scans 4-bit fast-scan codes, the refine stage
        #: re-ranks the best ``refine_candidates`` on the exact vectors it keeps. A removed face keeps its codes and
        #: vector (the refine stage cannot drop them): its id-map slot becomes REMOVED and the IVF scan skips it
        #: (an IDSelector over the id map, so the k answers are k live faces), as for HNSW
        self._refine = faiss_refine(self)
        ivf = faiss.try_extract_index_ivf(self._refine.base_index) if self._refine is not None else None
        if self.spill > 1 and ivf is None:
            raise ValueError(f"{factory!r}: only a re-ranked IVF index (...,RFlat) keeps a face in several lists")
        marks = self._hnsw is not None or self._refine is not None
        self.removed = int((self._id_map() == REMOVED).sum()) if marks and loaded else 0
        self._live = faiss.IDSelectorRange(0, 2**62)
        self._live_slots = (faiss.IDSelectorTranslated(self.cpu_index.id_map, self._live)
                            if self._refine is not None else None)
        #: a re-ranked IVF over fast-scan codes: its single probes split the lists between threads
        #: (:data:`FAST_SCAN_SPLIT`) on the threads :attr:`probe_threads` chooses
        ivf = faiss.downcast_index(ivf) if ivf is not None else None
        self._fast_scan = ivf if isinstance(ivf, faiss.IndexIVFFastScan) else None
        self.probe_threads = ProbeThreads()
        self._gpu = None
        if gpu and self._refine is None:  # the refine stage has no GPU version: a re-ranked index searches on the CPU
            self._res = faiss.StandardGpuResources()
            self._gpu = faiss.index_cpu_to_gpu(self._res, 0, self.cpu_index)

    def _apply_params(self):
        import faiss

        ivf = faiss.try_extract_index_ivf(self.cpu_index)
        if ivf is not None:
            if self.nprobe is not None:
                ivf.nprobe = int(self.nprobe)
            self.nprobe = int(ivf.nprobe)
        else:
            self.nprobe = None

    def set_nprobe(self, nprobe: int) -> None:
        self.nprobe = nprobe
        self._apply_params()
        self._sync()

    @property
    def ef_search(self) -> int | None:
        """HNSW's efSearch (None for other indexes)."""
        return int(self._hnsw.efSearch) if self._hnsw is not None else None

    def set_ef_search(self, ef: int) -> None:
        self._hnsw.efSearch = int(ef)

    @property
    def refine_candidates(self) -> int | None:
        """Candidates per query re-ranked on the exact vectors (None when the index has no refine stage)."""
        return int(self._refine.k_factor) if self._refine is not None else None

    def set_refine_candidates(self, r: int) -> None:
        self._refine.k_factor = float(max(1, int(r)))

    @property
    def tunable(self) -> bool:
        """Whether the index has a search breadth to choose at build (IVF's nprobe, HNSW's efSearch)."""
        return self.nprobe is not None or self._hnsw is not None

    def _id_map(self) -> np.ndarray:
        import faiss

        return faiss.vector_to_array(self.cpu_index.id_map)

    @property
    def is_trained(self) -> bool:
        return self.cpu_index.is_trained

    def train(self, x: np.ndarray) -> None:
        if not self.cpu_index.is_trained:
            self.cpu_index.train(np.ascontiguousarray(x, np.float32))
            self._sync()

    def _sync(self):
        if self._gpu is not None:
            import faiss

            self._gpu = faiss.index_cpu_to_gpu(self._res, 0, self.cpu_index)

    @property
    def ntotal(self) -> int:
        """Faces in the index (removed ones of an HNSW index not counted)."""
        return int(self.cpu_index.ntotal) - self.removed

    def add(self, ids: np.ndarray, x: np.ndarray) -> None:
        if len(ids) == 0:
            return
        x = np.ascontiguousarray(x, np.float32)
        ids = np.ascontiguousarray(ids, np.int64)
        if self.spill > 1:
            import faiss

            add_spilled(self._refine, x, self.spill)  # the refine stage's positions, then the id map, as IDMap2 would
            id_map = np.concatenate([self._id_map(), ids])
            faiss.copy_array_to_vector(id_map, self.cpu_index.id_map)
            self.cpu_index.ntotal = len(id_map)
            self.cpu_index.construct_rev_map()
            return
        self.cpu_index.add_with_ids(x, ids)
        if self._gpu is not None:
            self._gpu.add_with_ids(x, ids)

    def remove(self, ids) -> int:
        """Remove faces; raises RuntimeError for index types that cannot (then rebuild). An HNSW index marks
        them removed in its id map (in place, about 10 ms per call at 1M faces: see ``__init__``)."""
        import faiss

        ids = np.asarray(list(ids), np.int64)
        if self._hnsw is not None or self._refine is not None:
            id_map = self._id_map()
            hit = np.isin(id_map, ids[ids >= 0])
            n = int(hit.sum())
            if n and self._refine is not None and self.removed + n > REFINE_MAX_REMOVED * len(id_map):
                raise RuntimeError(f"{self.removed + n} of {len(id_map)} faces removed from a re-ranked index: "
                                   "rebuild it")
            if n:
                id_map[hit] = REMOVED
                faiss.copy_array_to_vector(id_map, self.cpu_index.id_map)
                self.cpu_index.construct_rev_map()
                self.removed += n
            return n
        n = self.cpu_index.remove_ids(faiss.IDSelectorBatch(ids))
        self._sync()
        return int(n)

    def search(self, queries, k):
        q = np.ascontiguousarray(queries, np.float32)
        k = max(1, min(int(k), max(self.ntotal, 1)))
        if len(q) <= ONE_THREAD_QUERIES:
            import faiss

            threads = faiss.omp_get_max_threads()  # this thread's setting (OpenMP keeps one per thread)
            split = self._fast_scan is not None
            use = self.probe_threads.pick(threads) if split else 1
            faiss.omp_set_num_threads(use)
            t0 = time.perf_counter()
            try:
                return self._search(q, k, FAST_SCAN_SPLIT if split else 0)
            finally:
                if split and threads > 1:
                    self.probe_threads.record(use, time.perf_counter() - t0)
                faiss.omp_set_num_threads(threads)
        return self._search(q, k)

    def _search(self, q, k, implem: int = 0):
        if self._refine is not None:
            import faiss

            if self._fast_scan is not None:
                # FAISS reads it at each search; another thread's search may set it meanwhile, which changes
                # how the work is split between threads (and so, with several, which candidates reach the
                # re-rank at the tail), not how close the answers are to exact search
                self._fast_scan.implem = implem

            # the refine stage re-ranks k * k_factor candidates: at least refine_candidates whatever k is. A spilled
            # index finds a face once per list it is in: k * spill answers, the copies dropped
            r, kk = self.refine_candidates, k * self.spill
            ivf = faiss.SearchParametersIVF(nprobe=int(self.nprobe), sel=self._live_slots if self.removed else None)
            params = faiss.IndexRefineSearchParameters(k_factor=float(max(1.0, -(-r // kk))), base_index_params=ivf)
            sims, ids = self.cpu_index.search(q, kk, params=params)
            if self.spill > 1:
                sims, ids = first_copies(sims, ids, k)
        elif self._hnsw is not None and self.removed:
            import faiss

            params = faiss.SearchParametersHNSW(sel=self._live, efSearch=int(self._hnsw.efSearch))
            sims, ids = self.cpu_index.search(q, k, params=params)
        else:
            sims, ids = (self._gpu or self.cpu_index).search(q, k)
        dist = distance.clip(distance.from_similarity(sims)).astype(np.float32)
        dist[ids < 0] = np.inf
        return dist, ids

    def write_payload(self, write: Write) -> None:
        """FAISS's serialisation, handed to ``write(chunk)`` piece by piece (at most 1 MiB each)."""
        import faiss

        faiss.write_index(self.cpu_index, faiss.PyCallbackIOWriter(write))

    @classmethod
    def read_payload(cls, read: Read, stamp: Stamp, gpu: bool = False) -> "FaissIndex":
        """From ``read(n) -> bytes`` (e.g. an open file's ``read``), consuming exactly the index's bytes."""
        import faiss

        index = faiss.read_index(faiss.PyCallbackIOReader(read))
        return cls(stamp.dim, stamp.factory, gpu=gpu, index=index)

    def to_bytes(self) -> bytes:
        chunks: list[bytes] = []
        self.write_payload(lambda b: chunks.append(bytes(b)))
        return b"".join(chunks)

    @classmethod
    def from_bytes(cls, data: bytes, stamp: Stamp, gpu: bool = False) -> "FaissIndex":
        return cls.read_payload(io.BytesIO(data).read, stamp, gpu=gpu)

    def memory_bytes(self) -> int:
        """Size of the serialised index (counted as it streams; nothing is kept)."""
        n = 0

        def count(b):
            nonlocal n
            n += len(b)

        self.write_payload(count)
        return n


def first_copies(sims: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` answers of each row (ranked best first) with each id once (a spilled index finds a face in each
    of its lists); rows short of ``k`` distinct faces end in id -1."""
    order = np.argsort(ids, axis=1, kind="stable")  # equal ids side by side, the better (earlier) one first
    s_ids = np.take_along_axis(ids, order, 1)
    again = np.zeros_like(ids, bool)
    again[:, 1:] = (s_ids[:, 1:] == s_ids[:, :-1]) & (s_ids[:, 1:] >= 0)
    dup = np.empty_like(again)
    np.put_along_axis(dup, order, again, 1)
    keep = np.argsort(dup, axis=1, kind="stable")[:, :k]  # the first copies, in rank order
    sims, ids = np.take_along_axis(sims, keep, 1), np.take_along_axis(ids, keep, 1)
    gone = np.take_along_axis(dup, keep, 1)
    return np.where(gone, -np.inf, sims).astype(np.float32), np.where(gone, -1, ids)


def add_spilled(refine, x: np.ndarray, spill: int) -> None:
    """Add ``x`` to a re-ranked IVF (``faiss.IndexRefine`` over an IVF), each vector into its ``spill`` nearest lists,
    labelled with its position in the refine stage (which keeps the exact vector once).

    FAISS's fast-scan IVF gives wrong codes through ``add_core`` with precomputed lists (measured: recall fell from
    0.21 to 0.015 on a test where a plain add gave 0.21), so each further copy goes through ``add_with_ids`` with a
    one-centroid quantizer that sends a group of vectors to their list (the codes are then those of that list's
    residual, as FAISS computes them)."""
    import faiss

    ivf = faiss.extract_index_ivf(refine.base_index)
    ref = refine.refine_index
    pos = np.arange(ref.ntotal, ref.ntotal + len(x), dtype=np.int64)
    _, assign = ivf.quantizer.search(x, spill)
    ivf.add_with_ids(x, pos)  # the nearest list, as FAISS assigns it
    if spill > 1:
        own = ivf.quantizer
        lists, rows = assign[:, 1:].ravel(), np.repeat(np.arange(len(x)), spill - 1)
        keep = lists >= 0
        lists, rows = lists[keep], rows[keep]
        order = np.argsort(lists, kind="stable")
        lists, rows = lists[order], rows[order]
        try:
            for grp in np.split(np.arange(len(lists)), np.flatnonzero(np.diff(lists)) + 1):
                if len(grp) == 0:
                    continue
                lst = int(lists[grp[0]])
                one = faiss.IndexIDMap2(faiss.IndexFlat(x.shape[1], own.metric_type))
                one.add_with_ids(own.reconstruct(lst)[None, :], np.array([lst], np.int64))
                ivf.quantizer = one
                ivf.add_with_ids(np.ascontiguousarray(x[rows[grp]]), pos[rows[grp]])
        finally:
            ivf.quantizer = own
    ref.add(x)
    refine.ntotal = ref.ntotal


def faiss_why(e: Exception) -> str:
    """FAISS's error text without its C++ location: ``Error in <function> at <file>:<line>: ...``."""
    text = (str(e).strip().splitlines() or ["rejected"])[-1]
    return re.sub(r"^Error in .*? at \S+:\d+: (Error: )?", "", text)


def faiss_hnsw(index: FaissIndex):
    """The HNSW structure of ``index`` (``faiss.HNSW``) when it is an HNSW index, else None."""
    import faiss

    inner = index.cpu_index.index if isinstance(index.cpu_index, faiss.IndexIDMap2) else None
    if inner is None:
        return None
    inner = faiss.downcast_index(inner)
    return inner.hnsw if isinstance(inner, faiss.IndexHNSW) else None


def faiss_refine(index: FaissIndex):
    """The refine stage (``faiss.IndexRefine``) of ``index`` when it re-ranks candidates (``...,RFlat``), else None."""
    import faiss

    if not isinstance(index.cpu_index, faiss.IndexIDMap2):
        return None
    inner = faiss.downcast_index(index.cpu_index.index)
    return inner if isinstance(inner, faiss.IndexRefine) else None


def faiss_nlist(index: FaissIndex) -> int:
    """The IVF lists of ``index``; 0 when it is not an IVF index."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index.cpu_index)
    return int(ivf.nlist) if ivf is not None else 0
