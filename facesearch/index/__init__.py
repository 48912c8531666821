"""The vector index: FAISS (CPU, or GPU when a FAISS GPU build is installed) or exact torch search on CUDA.

Every index here ranks by the one distance (:mod:`facesearch.distance`): it stores inner
products of unit vectors and reports ``distance.from_similarity(ip)``. FAISS ids are the
store's face ids. The index is a cache of the store: it is written atomically with a stamp
(model, store revision, size, checksum), and a stamp that does not match the store means
"rebuild from the store", never "use anyway".
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import math
import os
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facesearch import distance
from facesearch.model.config import write_private_atomic
from facesearch.errors import FaceSearchError

MAGIC = b"FACESEARCH-INDEX\n"
FORMAT = 1
#: up to this many faces, "auto" uses exact search. Measured (benchmarks/README.md, 2-core CPU): exact
#: single-probe p50 is ~2.6 ms at 50k and ~5 ms at 100k with one thread, while IVF at 100k answers in
#: ~0.2 ms with recall@1 1.0 against exact
EXACT_MAX = 50_000
#: IVF lists probed per query when nothing better is known (a new, empty IVF index). A built IVF index
#: chooses its own (``tune_nprobe``): how many lists a model's embeddings need depends on the model, e.g.
#: at 1M faces 32 gave recall@1 0.998 for one built-in model and 0.975 for the next (benchmarks/README.md)
IVF_NPROBE = 32
#: the recall@1 (nearest other face, against exact search) that ``tune_nprobe`` asks for
TARGET_RECALL = 0.99
NPROBE_CHOICES = (8, 16, 32, 64, 128, 256, 512)


class StaleIndex(Exception):
    """The index file is missing, corrupt, or does not match the store; rebuild it."""


def faiss_has_gpu() -> bool:
    try:
        import faiss

        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:
        return False


def auto_factory(n: int) -> str:
    """The FAISS factory string "auto" picks for ``n`` faces: exact while that is fast, then IVF."""
    if n <= EXACT_MAX:
        return "Flat"
    # about 2 sqrt(n) lists (a power of two): at 1M, 2048 lists trained in half the time of 4096 with
    # the same latency at equal recall (measured); IVF,Flat keeps exact distances and supports removal
    nlist = max(64, 2 ** int(round(math.log2(2 * math.sqrt(n)))))
    return f"IVF{nlist},Flat"


def resolve_backend(backend: str = "auto") -> str:
    """``auto`` -> ``faiss-gpu`` when FAISS has GPUs, else ``torch-cuda`` when torch has CUDA, else ``faiss-cpu``."""
    if backend != "auto":
        if backend not in ("faiss-cpu", "faiss-gpu", "torch-cuda"):
            raise ValueError(f"unknown index backend {backend!r}")
        if backend == "faiss-gpu" and not faiss_has_gpu():
            raise FaceSearchError("--backend faiss-gpu: the installed FAISS has no GPU support, or sees no GPU; "
                                  "use auto or faiss-cpu (or install a FAISS GPU build)")
        if backend == "torch-cuda":
            import torch

            if not torch.cuda.is_available():
                raise FaceSearchError("--backend torch-cuda: torch sees no CUDA GPU on this machine; use auto or "
                                      "faiss-cpu")
        return backend
    if faiss_has_gpu():
        return "faiss-gpu"
    if not gpu_driver_present():
        return "faiss-cpu"
    try:
        import torch

        if torch.cuda.is_available():
            return "torch-cuda"
    except Exception:
        pass
    return "faiss-cpu"


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


class VectorIndex:
    """Common interface: ``add``, ``remove``, ``search``; subclasses serialise as a stream of byte chunks
    (``write_payload(write)`` / ``read_payload(read, stamp)``), so saving and loading never hold a second
    copy of a large index in memory."""

    factory: str
    backend: str
    dim: int

    @property
    def ntotal(self) -> int:
        raise NotImplementedError

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` per query: ``(distances, face_ids)``, ascending distance; id -1 where fewer exist."""
        raise NotImplementedError


class FaissIndex(VectorIndex):
    """A FAISS index built from a factory string, on inner product, with the store's ids."""

    def __init__(self, dim: int, factory: str = "Flat", gpu: bool = False, nprobe: int | None = None,
                 index=None):
        import faiss

        loaded = index is not None
        self.dim, self.factory = dim, factory
        self.backend = "faiss-gpu" if gpu else "faiss-cpu"
        if index is None:
            base = faiss.index_factory(dim, factory, distance.faiss_metric())
            index = base if factory.startswith("IVF") else faiss.IndexIDMap2(base)
        self.cpu_index = index
        # a new index starts at IVF_NPROBE; a loaded one keeps the nprobe it was saved with
        self.nprobe = nprobe if nprobe is not None else (IVF_NPROBE if loaded is False else None)
        self._apply_params()
        self._gpu = None
        if gpu:
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
        return int(self.cpu_index.ntotal)

    def add(self, ids: np.ndarray, x: np.ndarray) -> None:
        if len(ids) == 0:
            return
        x = np.ascontiguousarray(x, np.float32)
        ids = np.ascontiguousarray(ids, np.int64)
        self.cpu_index.add_with_ids(x, ids)
        if self._gpu is not None:
            self._gpu.add_with_ids(x, ids)

    def remove(self, ids) -> int:
        """Remove faces; raises RuntimeError for index types that cannot (then rebuild)."""
        import faiss

        n = self.cpu_index.remove_ids(faiss.IDSelectorBatch(np.asarray(list(ids), np.int64)))
        self._sync()
        return int(n)

    def search(self, queries, k):
        q = np.ascontiguousarray(queries, np.float32)
        k = max(1, min(int(k), max(self.ntotal, 1)))
        sims, ids = (self._gpu or self.cpu_index).search(q, k)
        dist = distance.clip(distance.from_similarity(sims)).astype(np.float32)
        dist[ids < 0] = np.inf
        return dist, ids

    def write_payload(self, write) -> None:
        """FAISS's serialisation, handed to ``write(chunk)`` piece by piece (at most 1 MiB each)."""
        import faiss

        faiss.write_index(self.cpu_index, faiss.PyCallbackIOWriter(write))

    @classmethod
    def read_payload(cls, read, stamp: Stamp, gpu: bool = False) -> "FaissIndex":
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


#: rows of a TorchIndex search chunk are split into blocks of this many scores for the two-stage top-k
TOPK_BLOCK = 1024


def topk_rows(sims, k: int, block: int = TOPK_BLOCK):
    """``torch.topk(sims, k, dim=1)`` (values and column indices, largest first) for a Q x N score matrix,
    in two stages when rows are long: the maximum of each block of ``block`` columns, the ``k`` best blocks
    per row, then the top ``k`` among their ``k * block`` scores. Exact: each of a row's ``k`` best scores
    lies in a block whose maximum is at least that score, so in one of the ``k`` best blocks (ties may pick
    another column of equal score). On a GPU a full-row top-k over millions of columns costs far more than
    the one pass of block maxima (benchmarks/README.md)."""
    import torch

    q, n = sims.shape
    k = min(k, n)
    nb = -(-n // block)
    if k == 0 or n < 64 * block or k * block * 4 > n:
        return torch.topk(sims, k, dim=1)
    if nb * block != n:
        sims = torch.nn.functional.pad(sims, (0, nb * block - n), value=float("-inf"))
    blocks = sims.view(q, nb, block)
    _, best_blocks = torch.topk(blocks.amax(dim=2), k, dim=1)  # Q x k
    cand = torch.gather(blocks, 1, best_blocks[:, :, None].expand(q, k, block)).reshape(q, k * block)
    vals, j = torch.topk(cand, k, dim=1)
    return vals, torch.gather(best_blocks, 1, torch.div(j, block, rounding_mode="floor")) * block + j % block


class TorchIndex(VectorIndex):
    """Exact search in torch on a CUDA device (matmul + top-k), fp16 or fp32 storage."""

    def __init__(self, dim: int, device: str = "cuda", dtype: str = "float16"):
        import torch

        self.dim, self.factory, self.backend = dim, f"TorchFlat-{dtype}", "torch-cuda"
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        self.vectors = torch.zeros((0, dim), dtype=self.dtype, device=self.device)
        self.ids = torch.zeros((0,), dtype=torch.int64, device=self.device)

    @property
    def ntotal(self) -> int:
        return int(self.ids.numel())

    def add(self, ids, x) -> None:
        import torch

        self.vectors = torch.cat([self.vectors, torch.as_tensor(np.asarray(x, np.float32)).to(self.device, self.dtype)])
        self.ids = torch.cat([self.ids, torch.as_tensor(np.asarray(ids, np.int64)).to(self.device)])

    def remove(self, ids) -> int:
        import torch

        drop = torch.as_tensor(np.asarray(list(ids), np.int64), device=self.device)
        keep = ~torch.isin(self.ids, drop)
        n = int((~keep).sum())
        self.vectors, self.ids = self.vectors[keep], self.ids[keep]
        return n

    def search(self, queries, k, chunk: int = 1 << 20):
        import torch

        k = max(1, min(int(k), max(self.ntotal, 1)))
        q = torch.as_tensor(np.asarray(queries, np.float32)).to(self.device, self.dtype)
        best_s = best_i = None
        for start in range(0, max(self.ntotal, 1), chunk):  # bounded memory for huge galleries
            sims = q @ self.vectors[start : start + chunk].T
            kk = min(k, sims.shape[1])
            if kk == 0:
                break
            s, i = topk_rows(sims, kk)
            i = self.ids[start : start + chunk][i]
            if best_s is not None:
                s, j = torch.topk(torch.cat([best_s, s], 1), min(k, best_s.shape[1] + kk), dim=1)
                i = torch.gather(torch.cat([best_i, i], 1), 1, j)
            best_s, best_i = s, i
        if best_s is None:
            return np.full((len(q), k), np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        dist = distance.clip(distance.from_similarity(best_s.float())).cpu().numpy()
        ids = best_i.cpu().numpy()
        if ids.shape[1] < k:
            pad = k - ids.shape[1]
            dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return dist.astype(np.float32), ids

    def write_payload(self, write, chunk: int = 1 << 16) -> None:
        """The count, the ids, then the vectors as float32, in slices of ``chunk`` rows."""
        write(struct.pack("<q", self.ntotal))
        for start in range(0, self.ntotal, chunk):
            write(self.ids[start : start + chunk].cpu().numpy().astype("<i8").tobytes())
        for start in range(0, self.ntotal, chunk):
            write(self.vectors[start : start + chunk].float().cpu().numpy().astype("<f4").tobytes())

    @classmethod
    def read_payload(cls, read, stamp: Stamp, gpu: bool = True) -> "TorchIndex":
        (n,) = struct.unpack("<q", _read_exactly(read, 8))
        ids = np.frombuffer(_read_exactly(read, 8 * n), "<i8")
        vec = np.frombuffer(_read_exactly(read, 4 * n * stamp.dim), "<f4").reshape(n, stamp.dim)
        idx = cls(stamp.dim, dtype=stamp.factory.split("-", 1)[1])
        idx.add(ids, vec)
        return idx

    def memory_bytes(self) -> int:
        return self.vectors.numel() * self.vectors.element_size() + self.ids.numel() * 8


def _faiss_why(e: Exception) -> str:
    """FAISS's error text without its C++ location: ``Error in <function> at <file>:<line>: ...``."""
    text = (str(e).strip().splitlines() or ["rejected"])[-1]
    return re.sub(r"^Error in .*? at \S+:\d+: (Error: )?", "", text)


def check_factory(factory: str, dim: int) -> None:
    """Raise :class:`FaceSearchError` unless ``factory`` is ``auto``, a torch index, or a factory string
    FAISS accepts for ``dim``-d vectors (checked before any work, not when the index is first built)."""
    if factory == "auto" or factory in ("TorchFlat-float16", "TorchFlat-float32"):
        return
    if factory.upper().startswith("IDMAP"):
        raise FaceSearchError(f"--index {factory!r}: leave IDMap out, facesearch maps face ids itself "
                              "(e.g. --index Flat or HNSW32,Flat)")
    try:
        import faiss
    except ImportError:
        return  # without faiss only the torch index exists; create() says so
    try:
        faiss.index_factory(dim, factory, distance.faiss_metric())
    except RuntimeError as e:
        why = _faiss_why(e)
        raise FaceSearchError(f"--index {factory!r} is not an index FAISS can build for {dim}-d vectors ({why}); "
                              "use auto, Flat, IVF<lists>,Flat, HNSW32,Flat, ... (a FAISS factory string)") from None


def create(dim: int, n_expected: int = 0, factory: str = "auto", backend: str = "auto") -> VectorIndex:
    """A new, empty index. ``factory``: ``auto``, or a FAISS factory string (``Flat``, ``IVF1024,Flat``,
    ``HNSW32,Flat``, ``SQfp16`` ...); ``backend``: ``auto``, ``faiss-cpu``, ``faiss-gpu``, ``torch-cuda``."""
    backend = resolve_backend(backend)
    if factory == "auto":
        factory = auto_factory(n_expected)
    if backend == "torch-cuda":
        if factory not in ("Flat", "TorchFlat-float16", "TorchFlat-float32"):
            backend = "faiss-cpu"  # approximate indexes are FAISS's; the torch path is exact only
        else:
            return TorchIndex(dim, dtype="float32" if factory.endswith("float32") else "float16")
    if factory.startswith("TorchFlat"):
        factory = "Flat"
    return FaissIndex(dim, factory, gpu=backend == "faiss-gpu")


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
            why = _faiss_why(e)
            raise FaceSearchError(f"cannot train index {factory!r} on {len(allx)} faces: {why}. Use --index auto "
                                  "(exact search until the gallery is large) or fewer lists") from None
    for ids, x in chunks:
        index.add(ids, x)
    if isinstance(index, FaissIndex) and index.nprobe is not None and chunks:
        tune_nprobe(index, chunks, seed=seed)
    return index


def tune_nprobe(index: "FaissIndex", chunks, queries: int = 1000, target: float = TARGET_RECALL,
                seed: int = 0) -> dict:
    """Give an IVF index the smallest nprobe (at least IVF_NPROBE) whose recall@1 is at least ``target``
    against exact search.

    The queries are stored faces, and the answer sought is each one's nearest *other* face (as a new
    photo of an enrolled person would find one of that person's faces). Exact answers come from a
    chunked matmul over the whole gallery. The measured recall is a sample, so an nprobe is taken only
    when a cautious lower bound (hits less two standard deviations of the misses) reaches ``target``.
    Returns what was measured (also kept as ``index.tuning``).
    """
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
    step = 8192  # rows of the gallery per matmul: about 32 MB of scores for 1,000 queries
    for cids_all, x_all in chunks:  # exact nearest other face
        for a in range(0, len(cids_all), step):
            cids, x = np.asarray(cids_all[a : a + step]), np.asarray(x_all[a : a + step], np.float32)
            s = q @ x.T
            s[q_ids[:, None] == cids[None, :]] = -np.inf
            j = s.argmax(1)
            sj = s[np.arange(len(q)), j]
            better = sj > best_s
            best_s[better], best_i[better] = sj[better], cids[j[better]]
    nlist = faiss_nlist(index)
    tried, lower = {}, {}
    chosen = None
    # never fewer than IVF_NPROBE lists: recall@1 is what is tuned, and the extra lists keep the rest of
    # the top 10 close to exact too
    for nprobe in [p for p in NPROBE_CHOICES if IVF_NPROBE <= p < nlist] + [nlist]:
        index.set_nprobe(nprobe)
        sims, found = index.cpu_index.search(q, 2)
        other = np.where(found[:, 0] == q_ids, found[:, 1], found[:, 0])
        other_s = np.where(found[:, 0] == q_ids, sims[:, 1], sims[:, 0])
        ok = (other == best_i) | (other_s >= best_s - 1e-6)  # ties count as found
        tried[nprobe] = float(ok.mean())
        misses = int((~ok).sum())
        lower[nprobe] = float((ok.sum() - 2.0 * np.sqrt(max(misses, 1))) / len(q)) if misses else 1.0
        if lower[nprobe] >= target:
            chosen = nprobe
            break
    if chosen is None:  # not reached even probing every list: keep the best tried
        chosen = max(tried, key=lambda p: (tried[p], -p))
        index.set_nprobe(chosen)
    index.tuning = {"nprobe": chosen, "target_recall_at_1": target, "queries": int(len(q)),
                    "recall_at_1_by_nprobe": tried, "lower_bound_by_nprobe": lower}
    return index.tuning


def faiss_nlist(index: "FaissIndex") -> int:
    import faiss

    ivf = faiss.try_extract_index_ivf(index.cpu_index)
    return int(ivf.nlist) if ivf is not None else 0


def _read_exactly(read, n: int) -> bytes:
    data = read(n)
    if len(data) != n:
        raise StaleIndex(f"index payload ends early ({len(data)} of {n} bytes)")
    return data


def save(index: VectorIndex, path: str | os.PathLike, stamp: Stamp) -> None:
    """Write index + stamp atomically, owner-only; a checksum guards the payload.

    The payload is streamed twice (once to hash it for the header, once into the file) rather than
    held in memory: at 1M faces a serialised copy would be as big as the index itself."""
    digest, size = hashlib.sha256(), 0

    def hash_chunk(b):
        nonlocal size
        digest.update(b)
        size += len(b)

    index.write_payload(hash_chunk)
    header = dict(stamp.__dict__, format=FORMAT, sha256=digest.hexdigest(), size=size)
    hb = json.dumps(header, sort_keys=True).encode()
    written = hashlib.sha256()

    def body(f):
        f.write(MAGIC + struct.pack("<I", len(hb)) + hb)

        def write(b):
            written.update(b)
            f.write(b)

        index.write_payload(write)
        if written.hexdigest() != header["sha256"]:  # the index changed between the two passes
            raise RuntimeError("index changed while it was being saved")

    write_private_atomic(Path(path), body)


def _read_header(f, path) -> tuple[Stamp, dict]:
    """The stamp and header at the start of open file ``f``; leaves ``f`` at the payload."""
    head = f.read(len(MAGIC) + 4)
    if len(head) < len(MAGIC) + 4 or not head.startswith(MAGIC):
        raise StaleIndex(f"{path} is not a facesearch index file")
    (hl,) = struct.unpack("<I", head[len(MAGIC):])
    try:
        header = json.loads(f.read(hl))
        stamp = Stamp(**{k: header[k] for k in Stamp.__dataclass_fields__})
    except KeyError as e:
        raise StaleIndex(f"{path} has no {e.args[0]} in its header (an older facesearch wrote it)") from e
    except (ValueError, TypeError) as e:
        raise StaleIndex(f"{path} has a damaged header") from e
    return stamp, header


def read_stamp(path: str | os.PathLike) -> tuple[Stamp, dict]:
    with open(path, "rb") as f:
        return _read_header(f, path)


def load(path: str | os.PathLike, expect: Stamp, backend: str) -> VectorIndex:
    """Load an index file whose stamp must equal ``expect`` (model, revision, size...); else StaleIndex."""
    path = Path(path)
    # one open file for the header and both passes over the payload: a writer replaces the file by
    # rename, so all three read the same bytes. First the checksum, in 1 MiB pieces, then (only if it
    # matches) the index straight from the file: no copy of the payload is held besides the index.
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise StaleIndex("no index file") from None
    with f:
        stamp, header = _read_header(f, path)
        if header.get("format") != FORMAT:
            raise StaleIndex("index file format differs")
        for field in ("model_key", "change_id", "revision", "ntotal", "dim"):
            if getattr(stamp, field) != getattr(expect, field):
                raise StaleIndex(f"index {field} is {getattr(stamp, field)!r}, store has {getattr(expect, field)!r}")
        if stamp.backend == "torch-cuda" and backend != "torch-cuda":
            raise StaleIndex("index was built for torch-cuda")
        off = f.tell()
        digest, size = hashlib.sha256(), 0
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        if size != header.get("size") or digest.hexdigest() != header.get("sha256"):
            raise StaleIndex("index file is truncated or corrupt (checksum mismatch)")
        f.seek(off)
        try:
            if stamp.backend == "torch-cuda":
                index = TorchIndex.read_payload(f.read, stamp)
            else:
                index = FaissIndex.read_payload(f.read, stamp, gpu=backend == "faiss-gpu")
        except StaleIndex:
            raise
        except Exception as e:
            raise StaleIndex(f"index file cannot be read: {e}") from e
    if index.ntotal != expect.ntotal:
        raise StaleIndex("index size differs from its stamp")
    return index
