"""Exact search in torch on a CUDA device: a matmul and a two-stage top-k, fp16 or fp32 storage.

torch is imported inside the functions that need it (it costs seconds to import).
"""

from __future__ import annotations

import struct

import numpy as np

from facesearch import distance
from facesearch.index.base import Read, Stamp, VectorIndex, Write, read_exactly

#: the factory strings of a TorchIndex: its storage type
TORCH_FACTORIES = ("TorchFlat-float16", "TorchFlat-float32")
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

    def write_payload(self, write: Write, chunk: int = 1 << 16) -> None:
        """The count, the ids, then the vectors as float32, in slices of ``chunk`` rows."""
        write(struct.pack("<q", self.ntotal))
        for start in range(0, self.ntotal, chunk):
            write(self.ids[start : start + chunk].cpu().numpy().astype("<i8").tobytes())
        for start in range(0, self.ntotal, chunk):
            write(self.vectors[start : start + chunk].float().cpu().numpy().astype("<f4").tobytes())

    @classmethod
    def read_payload(cls, read: Read, stamp: Stamp, gpu: bool = True) -> "TorchIndex":
        (n,) = struct.unpack("<q", read_exactly(read, 8))
        ids = np.frombuffer(read_exactly(read, 8 * n), "<i8")
        vec = np.frombuffer(read_exactly(read, 4 * n * stamp.dim), "<f4").reshape(n, stamp.dim)
        idx = cls(stamp.dim, dtype=stamp.factory.split("-", 1)[1])
        idx.add(ids, vec)
        return idx

    def memory_bytes(self) -> int:
        return self.vectors.numel() * self.vectors.element_size() + self.ids.numel() * 8
