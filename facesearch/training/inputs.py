"""What each training step is given: the batch's inputs (images, or the frozen blocks' cached outputs),
with the unlabelled images after the labelled ones, and the teacher's embeddings of the same rows.

:func:`build_inputs` runs after decoding and before the epoch loop (its time counts as set-up: a time
budget's schedule starts after it): it computes the frozen blocks' outputs once
(:mod:`facesearch.training.freeze`) and the teacher's embeddings once (:mod:`facesearch.training.teacher`).
:meth:`Inputs.batch` gathers a step's rows on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from facesearch.training.batches import augment_batch, to_device
from facesearch.training.data import images_of
from facesearch.training.freeze import (
    FeatureCache,
    build_feature_cache,
    images_ident,
    wants_cache,
)
from facesearch.training.prepare import Decoded, Prepared, progress_bar
from facesearch.training.teacher import labelled_stems, teacher_embeddings


@dataclass
class Inputs:
    """The step inputs of a run, on the device."""

    #: labelled training rows: uint8 images, or (``cached``) the frozen blocks' outputs, the mirror
    #: images' after them when ``views`` is 2
    labelled: torch.Tensor
    n_labelled: int
    #: unlabelled rows, the same way (None without unlabelled images)
    unlabelled: torch.Tensor | None
    n_unlabelled: int
    per_batch_unlabelled: int
    cached: bool
    views: int
    augment: str
    #: the teacher's embeddings of the labelled rows, then the unlabelled ones' (None without a teacher)
    teacher_labelled: torch.Tensor | None = None
    teacher_unlabelled: torch.Tensor | None = None
    #: how the full network's forward ran while caching (images/s): what calibration will cost at the end
    embed_rate: float | None = None
    record: dict[str, Any] = field(default_factory=dict)

    def batch(self, idx: np.ndarray, device: torch.device, gen: torch.Generator, rng: np.random.Generator
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The step's input rows for the labelled indices ``idx`` (then ``per_batch_unlabelled`` random
        unlabelled ones), augmented as the run says, and the teacher's embeddings of the same rows."""
        parts = [(self.labelled, self.n_labelled, self.teacher_labelled, to_device(idx, device))]
        if self.unlabelled is not None:
            u = rng.choice(self.n_unlabelled, min(self.per_batch_unlabelled, self.n_unlabelled), replace=False)
            parts.append((self.unlabelled, self.n_unlabelled, self.teacher_unlabelled, to_device(u, device)))
        xs, ts = [], []
        for rows, n, teacher, ix in parts:
            if self.cached and self.views == 2:  # a random half of the rows: the mirror image's output
                flip = torch.rand(len(ix), device=device, generator=gen) < 0.5
                xs.append(rows[ix + flip.long() * n])
            else:
                xs.append(rows[ix])
            if teacher is not None:
                ts.append(teacher[ix])
        x = xs[0] if len(xs) == 1 else torch.cat(xs)
        t = None if not ts else ts[0] if len(ts) == 1 else torch.cat(ts)
        if not self.cached:
            if self.augment == "full":
                x = augment_batch(x, gen)
            else:
                x = x.float().div_(255.0)
                if self.augment == "flip":
                    flip = torch.rand(len(x), device=device, generator=gen) < 0.5
                    x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x, t


def build_inputs(p: Prepared, data: Decoded, progress: bool) -> Inputs:
    """The frozen blocks' outputs (when the run caches them) and the teacher's embeddings, once."""
    o, _device = p.options, p.device
    cached = wants_cache(o, p.cut)
    views = 2 if cached and o.augment == "flip" else 1
    labelled, unlabelled = data.train, data.unlabelled
    record: dict[str, Any] = {}
    embed_rate = None
    if cached:
        caches: list[FeatureCache] = []
        sources = (("labelled", data.train, p.folder.root, data.train_keys),
                   ("unlabelled", data.unlabelled, p.unlabelled.root if p.unlabelled else None,
                    p.unlabelled.keys if p.unlabelled else None))
        for name, pixels, root, keys in sources:
            if pixels is None:
                continue
            ident = images_ident(root, keys, p.config)
            bar = progress_bar(progress, total=len(pixels) * views, desc=f"frozen blocks ({name})", unit="img")
            fc = build_feature_cache(p.model, p.cut, pixels, views == 2, o.decode_cache, ident,
                                     progress=bar.update if bar else None)
            if bar:
                bar.close()
            caches.append(fc)
        embed_rate = _embed_rate(p.model, data.train[:32])
        labelled = caches[0].features
        unlabelled = caches[1].features if len(caches) > 1 else None
        data.train = None  # the images are not needed on the device any more: the frozen outputs stand for them
        data.unlabelled = None
        record["feature_cache"] = {"labelled": caches[0].record()} | (
            {"unlabelled": caches[1].record()} if len(caches) > 1 else {})
    inputs = Inputs(labelled=labelled, n_labelled=data.n_train, unlabelled=unlabelled,
                    n_unlabelled=0 if p.unlabelled is None else len(p.unlabelled.keys),
                    per_batch_unlabelled=o.unlabelled_per_batch, cached=cached, views=views, augment=o.augment,
                    embed_rate=embed_rate, record=record)
    if p.teacher is not None:
        _teacher_rows(p, data, inputs, progress)
    return inputs


def _teacher_rows(p: Prepared, data: Decoded, inputs: Inputs, progress: bool) -> None:
    o = p.options
    names = p.split.train
    keys, _, counts = images_of(p.folder, names)
    total = len(keys) + inputs.n_unlabelled
    bar = progress_bar(progress, total=total, desc="teacher embeddings", unit="img")
    update = bar.update if bar else None
    emb, secs, hit = teacher_embeddings(p.teacher, o, p.device, p.folder.root, keys,
                                        labelled_stems(names, keys, counts), o.teacher_data, "training",
                                        progress=update)
    inputs.teacher_labelled = torch.from_numpy(emb).to(p.device)
    rec = {"labelled_images": len(keys), "seconds": round(secs, 1), "read_from_disk_cache": hit}
    if p.unlabelled is not None:
        u = p.unlabelled
        emb_u, secs_u, hit_u = teacher_embeddings(p.teacher, o, p.device, u.root, u.keys, u.stems,
                                                  o.teacher_unlabelled, "unlabelled", progress=update)
        inputs.teacher_unlabelled = torch.from_numpy(emb_u).to(p.device)
        rec |= {"unlabelled_images": len(u.keys), "unlabelled_seconds": round(secs_u, 1),
                "unlabelled_read_from_disk_cache": hit_u}
    if bar:
        bar.close()
    inputs.record["teacher_embeddings"] = rec


@torch.no_grad()
def _embed_rate(model, pixels: torch.Tensor) -> float:
    """Images/s of the whole network's forward (eval mode) on a few images: what embedding the held-out
    identities will cost at the end (training on cached outputs runs far faster than that)."""
    import time

    was = model.training
    model.eval()
    x = pixels.float().div(255.0)
    model(x[:2])  # the first call allocates
    t0 = time.time()
    model(x)
    rate = len(x) / max(time.time() - t0, 1e-9)
    model.train(was)
    return rate
