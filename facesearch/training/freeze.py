"""Frozen blocks, and training the rest on the frozen blocks' outputs computed once.

The network is a chain of named blocks (:meth:`facesearch.model.encoder.Encoder.blocks`: for sface
``conv_1``, ``conv_2`` ... ``conv_14``, ``embedding``; for a torchvision backbone its feature stages,
then the ``embedding`` head). ``train_last_blocks = N`` trains the last N of them; the ones before the
*cut* are frozen: their weights get no gradient and no weight decay, and their batch-norm layers stay in
eval mode (their running statistics are not updated), so the frozen part is a fixed function.

Every step then runs the frozen part without autograd (:class:`TrainForward`). When nothing random
happens before the cut (augmentation ``"off"``, or ``"flip"``: the outputs of both mirror images are
kept), the frozen part's outputs for every training image are computed once (:func:`frozen_features`)
and the steps run only the trained blocks on them: the same loss on the same embeddings with the same
gradients (``tests/unit/test_training_freeze.py`` checks it), at the cost of the trained blocks alone. The
match threshold is calibrated at the end with the whole model, on the held-out images, as always.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facesearch import distance
from facesearch.files import write_private_atomic
from facesearch.model import encoder
from facesearch.training.options import TrainingError, TrainOptions


def embed_batch_size(model: encoder.Encoder) -> int:
    """Images per forward pass when embedding without gradients: on the CPU the model's own
    (:func:`facesearch.model.inference.forward_batch`: SFace 8, MobileNetV2 16: its largest activation
    stays in cache), else 128."""
    from facesearch.model.inference import forward_batch

    return forward_batch(model) or 128


def block_names(model: encoder.Encoder) -> list[str]:
    return [name for name, _ in model.blocks()]


def cut_of(model: encoder.Encoder, train_last_blocks: int | None) -> int:
    """How many leading blocks are frozen (0: none) for ``train_last_blocks``; a :class:`TrainingError`
    naming the blocks when the network has fewer."""
    if train_last_blocks is None:
        return 0
    names = block_names(model)
    if not 1 <= train_last_blocks <= len(names):
        raise TrainingError(
            f"train_last_blocks {train_last_blocks}: a {model.config.backbone} has {len(names)} blocks "
            f"({', '.join(names)}); train between 1 and {len(names)} of them")
    return len(names) - train_last_blocks


def freeze(model: encoder.Encoder, cut: int) -> None:
    """No gradient for the parameters of the first ``cut`` blocks (they keep their weights)."""
    for _, block in model.blocks()[:cut]:
        for p in block.parameters():
            p.requires_grad_(False)


def set_train_mode(model: encoder.Encoder, cut: int) -> None:
    """Train mode, except the frozen blocks: eval (batch norm uses and keeps its running statistics,
    dropout is off), so that the frozen part is the same function at every step."""
    model.train()
    for _, block in model.blocks()[:cut]:
        block.eval()


class TrainForward(nn.Module):
    """What a training step runs with frozen blocks: ``forward(x)`` -> unit embeddings.

    ``cached=False``: ``x`` is a batch of images in [0, 1]; the frozen blocks run without autograd, the
    others with it. ``cached=True``: ``x`` is the frozen blocks' output (:func:`frozen_features`) and only
    the trained blocks run. Either way the embedding is the encoder's own (``Encoder.forward``'s chain)."""

    def __init__(self, model: encoder.Encoder, cut: int, cached: bool):
        super().__init__()
        self.model, self.cut, self.cached = model, cut, cached
        blocks = [b for _, b in model.blocks()]
        self._frozen, self._trained = blocks[:cut], blocks[cut:]  # plain lists: the modules are the model's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cached:
            with torch.no_grad():
                x = run_blocks(self._frozen, self.model.normalise_input(x))
        return distance.normalize(run_blocks(self._trained, x).float())


def run_blocks(blocks, x: torch.Tensor) -> torch.Tensor:
    for b in blocks:
        x = b(x)
    return x


@torch.no_grad()
def frozen_features(model: encoder.Encoder, cut: int, pixels: torch.Tensor, flip: bool = False,
                    batch_size: int | None = None, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """The first ``cut`` blocks' outputs (eval mode, fp32) for uint8 images N x 3 x S x S (on the training
    device): N rows, then, with ``flip``, N more for the mirror images (row ``i + N`` is image ``i``
    flipped). Not under ``inference_mode``: the trained blocks take these as inputs with autograd."""
    blocks = [b for _, b in model.blocks()[:cut]]
    for b in blocks:
        b.eval()
    out = None
    n = len(pixels)
    batch_size = batch_size or embed_batch_size(model)
    views = (False, True) if flip else (False,)
    for v, mirrored in enumerate(views):
        for i in range(0, n, batch_size):
            x = pixels[i : i + batch_size].float().div_(255.0)
            if mirrored:
                x = x.flip(3)
            h = run_blocks(blocks, model.normalise_input(x)).float()
            if out is None:
                out = torch.empty((n * len(views), *h.shape[1:]), dtype=torch.float32, device=h.device)
            out[v * n + i : v * n + i + len(h)] = h
            if progress is not None:
                progress(len(h))
    if out is None:
        raise TrainingError("no training images to compute frozen features of")
    return out


def frozen_state_sha256(model: encoder.Encoder, cut: int) -> str:
    """A hash of what the first ``cut`` blocks' outputs depend on, besides the images: the input
    normalisation (mean, std) and those blocks' weights and buffers."""
    h = hashlib.sha256()
    h.update(json.dumps([list(model.config.mean), list(model.config.std)]).encode())
    for name, block in model.blocks()[:cut]:
        h.update(name.encode())
        for key, t in block.state_dict().items():
            h.update(key.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class FeatureCache:
    """The frozen blocks' outputs for the training rows, on the device, and how they were obtained."""

    features: torch.Tensor
    #: rows per view (the training images; the mirror images follow with ``flip``)
    rows: int
    flip: bool
    seconds: float
    images_per_s: float
    #: read from the on-disk cache (``decode_cache``) rather than computed in this run
    from_disk: bool

    def record(self) -> dict:
        return {"rows": self.rows, "mirror_images_too": self.flip, "shape": list(self.features.shape[1:]),
                "megabytes": round(self.features.numel() * 4 / 2**20, 1), "seconds": round(self.seconds, 1),
                "images_per_s": round(self.images_per_s, 1), "read_from_disk_cache": self.from_disk}


def wants_cache(options: TrainOptions, cut: int) -> bool:
    """Whether the run trains on cached frozen outputs (see :data:`TrainOptions.feature_cache`)."""
    if cut == 0 or options.feature_cache == "off":
        return False
    return options.augment in ("off", "flip")


def disk_path(cache_dir: str | os.PathLike, what: str, ident: dict) -> Path:
    """Where :func:`disk_array` keeps the array of ``ident``."""
    return Path(cache_dir) / f"{what}-{hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]}.npy"


def disk_array(cache_dir: str | os.PathLike | None, what: str, ident: dict, compute: Callable[[], np.ndarray]
               ) -> tuple[np.ndarray, bool]:
    """``compute()``, or the array stored under ``cache_dir`` for the same ``ident`` by an earlier run
    (an ``.npy`` named after ``what`` and the hash of ``ident``, owner-only); stores what it computes.
    Returns the array and whether it came from the disk."""
    if cache_dir is None:
        return compute(), False
    path = disk_path(cache_dir, what, ident)
    if path.is_file():
        try:  # mapped copy-on-write: pages come from the file as rows are read, and can be dropped again
            return np.load(path, mmap_mode="c", allow_pickle=False), True
        except (OSError, ValueError):
            pass  # damaged or cut short: computed again
    arr = compute()
    if arr is None:  # asked for what is stored only
        return None, False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private_atomic(path, lambda f: np.save(f, arr, allow_pickle=False))  # a temp name per writer
    return arr, False


def build_feature_cache(model: encoder.Encoder, cut: int, pixels: torch.Tensor, flip: bool,
                        cache_dir: str | os.PathLike | None, data_ident: dict,
                        progress: Callable[[int], None] | None = None) -> FeatureCache:
    """:func:`frozen_features` of ``pixels`` (the training rows), through the on-disk cache when
    ``cache_dir`` is given (keyed by the frozen weights, the images and ``flip``; see :func:`cached_outputs`)."""
    t0 = time.time()
    if cache_dir is None:  # no round trip through numpy: keep the device tensor
        feats, hit = frozen_features(model, cut, pixels, flip, progress=progress), False
    else:
        def ident_of(c: int, mirrored: bool) -> dict:
            return {"frozen": frozen_state_sha256(model, c), "cut": c, "flip": mirrored, "images": data_ident,
                    "format": 1}

        arr, hit = cached_outputs(model, cut, pixels, flip, cache_dir, "frozen", ident_of, progress)
        feats = torch.from_numpy(np.ascontiguousarray(arr)).to(pixels.device)
    seconds = time.time() - t0
    n_views = 2 if flip else 1
    return FeatureCache(feats, len(pixels), flip, seconds, len(pixels) * n_views / max(seconds, 1e-9), hit)


def cached_outputs(model: encoder.Encoder, cut: int, pixels: torch.Tensor | Callable[[], torch.Tensor], flip: bool,
                   cache_dir: str | os.PathLike, what: str, ident_of: Callable[[int, bool], dict],
                   progress: Callable[[int], None] | None = None, n: int | None = None) -> tuple[np.ndarray, bool]:
    """The first ``cut`` blocks' outputs on ``pixels`` (with ``flip``, then on their mirror images), from
    the on-disk cache under ``cache_dir``: stored for this cut (with or without the mirror images, which
    are the rows after the first N), else made from a shallower cut stored there (the few blocks between
    run on it: the same numbers, at a fraction of the cost), else computed from the pixels; what is made
    is stored. ``ident_of(c, mirrored)`` identifies cut ``c``'s outputs (the frozen weights up to it
    included). ``pixels`` may be a function that decodes them (then ``n`` says how many), called only
    when they are needed. Returns the array and whether it came from the disk as it is."""
    n = len(pixels) if n is None else n
    for mirrored in ((flip,) if flip else (False, True)):
        path = disk_path(cache_dir, what, ident_of(cut, mirrored))
        if path.is_file():
            arr, hit = disk_array(cache_dir, what, ident_of(cut, mirrored), lambda: None)
            if arr is not None:
                return (arr if flip or not mirrored else arr[:n]), hit

    def compute() -> np.ndarray:
        for c in range(cut - 1, 0, -1):
            for mirrored in ((True,) if flip else (False, True)):
                path = disk_path(cache_dir, what, ident_of(c, mirrored))
                if path.is_file():
                    try:
                        src = np.load(path, mmap_mode="r", allow_pickle=False)
                    except (OSError, ValueError):
                        continue
                    rows = 2 * n if flip else n
                    if len(src) < rows:
                        continue
                    return continue_features(model, c, cut, src[:rows], progress)
        images = pixels() if callable(pixels) else pixels
        return frozen_features(model, cut, images, flip, progress=progress).cpu().numpy()

    return disk_array(cache_dir, what, ident_of(cut, flip), compute)


def root_ident(root) -> dict:
    """What identifies a data root's files for an on-disk cache: its path, size and modification time."""
    root = Path(root)
    st = root.stat()
    return {"root": str(root.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def keys_sha256(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def images_ident(root, keys: list[str], config) -> dict:
    """``build_feature_cache``'s ``data_ident`` for the images ``keys`` of ``root`` prepared for ``config``."""
    return {"data": root_ident(root), "keys": keys_sha256(keys), "input_size": config.input_size,
            "crop_fraction": config.crop_fraction}


@torch.no_grad()
def continue_features(model: encoder.Encoder, start: int, cut: int, outputs: np.ndarray,
                      progress: Callable[[int], None] | None = None, batch_size: int = 64) -> np.ndarray:
    """Blocks ``start`` to ``cut`` (eval mode) on the stored outputs of the first ``start`` blocks."""
    blocks = [b for _, b in model.blocks()[start:cut]]
    for b in blocks:
        b.eval()
    out = None
    for i in range(0, len(outputs), batch_size):
        h = run_blocks(blocks, torch.from_numpy(np.array(outputs[i : i + batch_size])).to(model.device))
        if out is None:
            out = np.empty((len(outputs), *h.shape[1:]), np.float32)
        out[i : i + len(h)] = h.float().cpu().numpy()
        if progress is not None:
            progress(len(h))
    return out
