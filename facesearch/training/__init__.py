"""Training the Siamese encoder with the contrastive loss: the library API.

``run(TrainOptions(data=..., out=...))`` trains, calibrates the match threshold
on held-out identities and writes a model directory with :func:`encoder.save`.
The CLI (:mod:`facesearch.cli.train`) only parses options and calls :func:`run`.

How it works:

* **Data**: a folder of identities (``ROOT/<name>/<image>``) or a zip of one
  (the LFW pack). Only identities with at least ``min_images`` (>= 2) images
  are used: a P x K batch needs K images of each of its P identities.
  ``include_people`` / ``exclude_people`` restrict the identities (e.g. leave out
  an LFW View 2 set so the model can be scored on its fold honestly).
* **Held-out calibration identities**: ``calibration_fraction`` of the
  identities (chosen with ``seed``) are never trained on. At the end they give
  genuine and impostor pairs, embedded by the final model, on which
  :func:`facesearch.metrics.best_threshold` picks the stored threshold.
* Every image is decoded **once** into a uint8 tensor (N x 3 x S x S) that lives
  on the training device; batches are gathered from it by index.
* **Sampler**: each epoch visits every training identity once, in a shuffled
  order, P identities per batch, K images of each (without replacement when
  the identity has K images or more).
* **Augmentation** runs on the device on whole batches: random horizontal flip,
  a small random scale / shift / rotation (one ``affine_grid`` per batch), and
  brightness / contrast jitter.
* **Optimiser**: AdamW (no weight decay on biases and norm layers), linear
  warmup then cosine decay. With ``time_budget`` the schedule runs on elapsed
  time instead of steps: it reaches its end (and training stops) when the
  budget, less an estimate of the time calibration and saving take, is spent.
* **AMP** on CUDA: bf16 autocast where supported, else fp16 with a grad scaler.
* **CUDA graph** (``cuda_graph``, opt-in): the whole step (forward, loss,
  backward, AdamW) is captured once and replayed (:class:`TrainStep`); the
  learning rate lives in device tensors so the schedule still reaches it.
  ``benchmarks/train_speed.py`` checks that it trains like the eager step.
* A checkpoint (model, optimiser, sampler and RNG state) is written to
  ``out/checkpoint.pt`` at the end of an epoch once ``checkpoint_interval_s``
  have passed since the last one, and when training ends; ``resume=True``
  continues from it.
  It is removed after a successful run unless ``keep_checkpoint``.

This module imports neither faiss nor SQLAlchemy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from facesearch import distance, metrics
from facesearch.model import encoder
from facesearch.model.config import TRAIN_EPOCHS, TRAIN_INPUT_SIZE, TRAIN_LR, ModelConfig
from facesearch.datasets import ImageFolder
from facesearch.errors import FaceSearchError
from facesearch.losses import MINING, ContrastiveLoss

CHECKPOINT_FILE = "checkpoint.pt"
#: false accept rates whose thresholds calibration stores next to the balanced one (``operating_points``)
OPERATING_FARS = (1e-2, 1e-3)
RECIPE = "contrastive-pk"


class TrainingError(FaceSearchError, ValueError):
    """Training cannot start or continue: bad options, too little data, an incompatible checkpoint."""


@dataclass
class TrainOptions:
    """Everything a training run needs. Margins and thresholds are cosine distances in [0, 2]."""

    #: folder of identities, or a zip of one (e.g. the LFW pack)
    data: str | os.PathLike
    #: model directory to write (model.json + weights.pt); the checkpoint lives here while training
    out: str | os.PathLike
    backbone: str = "mobilenet_v2"
    #: "imagenet" (torchvision's checkpoint in the torch hub cache), a checkpoint path, or None (random init)
    pretrained: str | None = "imagenet"
    #: fine-tune: a facesearch model directory (or "default", the built-in model) whose weights, embedding
    #: head included, start the training instead of ``pretrained``; backbone, embedding_dim and input_size
    #: must be its own
    init_model: str | os.PathLike | None = None
    embedding_dim: int = 128
    #: side of the square input in pixels; None: the model's to fine-tune (``init_model``), else the recipe's
    #: (the defaults of input_size, epochs and lr are the measured recipe: facesearch.config.TRAIN_*)
    input_size: int | None = None
    #: the most epochs to run (an epoch visits every training identity once); see also time_budget
    epochs: int = TRAIN_EPOCHS
    #: P: identities per batch
    identities_per_batch: int = 32
    #: K: images per identity in a batch
    images_per_identity: int = 4
    #: positive pairs are pulled within this distance
    pos_margin: float = 0.0
    #: negative pairs are pushed beyond this distance
    neg_margin: float = 0.6
    #: which negative pairs take part: "all", "hard" or "semihard" (see facesearch.losses)
    mining: str = "hard"
    #: peak learning rate of the embedding head (AdamW)
    lr: float = TRAIN_LR
    #: the backbone's learning rate is lr * backbone_lr_factor
    backbone_lr_factor: float = 1.0
    weight_decay: float = 0.05
    #: share of the schedule spent in linear warmup
    warmup_fraction: float = 0.05
    #: the cosine schedule ends at lr * min_lr_factor
    min_lr_factor: float = 0.01
    seed: int = 0
    #: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    device: str = "auto"
    #: mixed precision on CUDA: "auto" (bf16 if supported else fp16), "bf16", "fp16" or "off"; CPU runs fp32
    amp: str = "auto"
    #: on CUDA, capture the training step (forward, loss, backward, AdamW) once as a CUDA graph and replay
    #: it: the same kernels, without launching each one from Python (see TrainStep); bf16 or fp32 only
    cuda_graph: bool = False
    #: seconds for the whole run (decode, train, calibrate, save); None: run all epochs
    time_budget: float | None = None
    resume: bool = False
    #: write over a model already in ``out`` (a gallery it embedded then needs ``reindex --model``)
    overwrite: bool = False
    keep_checkpoint: bool = False
    #: identity names never used (neither for training nor calibration)
    exclude_people: frozenset[str] = frozenset()
    #: if set, only these identity names are used
    include_people: frozenset[str] | None = None
    #: share of the usable identities held out to calibrate the threshold (0: calibrate on training identities)
    calibration_fraction: float = 0.1
    #: identities need at least this many images (>= 2)
    min_images: int = 2
    #: on-device augmentation (flip, scale/shift/rotate, brightness/contrast)
    augment: bool = True
    #: decoding threads (None: up to 8)
    threads: int | None = None
    #: at most this many calibration pairs of each kind (genuine, impostor)
    calibration_pairs: int = 3000
    #: the model embeds each face and its mirror image and averages (ModelConfig.flip_average); off by
    #: default: on LFW it did not pay for its doubled embedding cost (benchmarks/results/lfw-mnv2-tenfold.json)
    flip_average: bool = False
    #: directory for a decoded-pixel cache shared by runs and processes (None: decode every run)
    decode_cache: str | os.PathLike | None = None
    #: write the resumable checkpoint after an epoch at most this often (seconds; 0: every epoch)
    checkpoint_interval_s: float = 60.0
    #: model name written to model.json
    name: str | None = None
    #: free text stored in model.json's training section (e.g. which data it must not be scored on)
    notes: str | None = None

    def __post_init__(self):
        self.exclude_people = frozenset(self.exclude_people or ())
        if self.include_people is not None:
            self.include_people = frozenset(self.include_people)
        if self.input_size is None and self.init_model is None:
            self.input_size = TRAIN_INPUT_SIZE

    def validate(self) -> None:
        if self.backbone not in encoder.BACKBONES:
            raise TrainingError(f"unknown backbone {self.backbone!r}; choose one of {sorted(encoder.BACKBONES)}")
        if self.epochs < 1:
            raise TrainingError("epochs must be at least 1")
        if self.identities_per_batch < 2:
            raise TrainingError("identities_per_batch (P) must be at least 2: a batch needs negative pairs")
        if self.images_per_identity < 2:
            raise TrainingError("images_per_identity (K) must be at least 2: a batch needs positive pairs")
        if not (distance.MIN <= self.pos_margin < self.neg_margin <= distance.MAX):
            raise TrainingError(
                f"margins are cosine distances: need 0 <= pos_margin < neg_margin <= 2, "
                f"got {self.pos_margin}, {self.neg_margin}"
            )
        if self.mining not in MINING:
            raise TrainingError(f"mining must be one of {MINING}")
        if not (self.lr > 0 and self.backbone_lr_factor >= 0 and self.weight_decay >= 0):
            raise TrainingError("lr must be positive; backbone_lr_factor and weight_decay non-negative")
        if not 0.0 <= self.warmup_fraction < 1.0 or not 0.0 <= self.min_lr_factor <= 1.0:
            raise TrainingError("warmup_fraction must be in [0, 1) and min_lr_factor in [0, 1]")
        if not 0.0 <= self.calibration_fraction < 1.0:
            raise TrainingError("calibration_fraction must be in [0, 1)")
        if self.min_images < 2:
            raise TrainingError("min_images must be at least 2")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise TrainingError("amp must be auto, bf16, fp16 or off")
        if self.time_budget is not None and self.time_budget <= 0:
            raise TrainingError("time_budget must be positive (seconds)")
        if self.checkpoint_interval_s < 0:
            raise TrainingError("checkpoint_interval_s must be >= 0")
        if self.input_size is None and self.init_model is None:
            self.input_size = TRAIN_INPUT_SIZE
        if self.init_model is not None:
            cfg = init_model_config(self.init_model)
            if self.input_size is None:
                self.input_size = cfg.input_size
            mine = (self.backbone, self.embedding_dim, self.input_size)
            theirs = (cfg.backbone, cfg.embedding_dim, cfg.input_size)
            if mine != theirs:
                raise TrainingError(
                    f"the model to fine-tune ({self.init_model}) is a {theirs[0]} with {theirs[1]}-d embeddings "
                    f"at {theirs[2]} px, not {mine[0]}, {mine[1]}-d, {mine[2]} px: use its settings")
        if self.input_size < 32:
            raise TrainingError("input_size must be at least 32")
        if self.cuda_graph and self.amp == "fp16":
            raise TrainingError("cuda_graph needs amp bf16, auto or off: fp16's gradient scaler waits on the GPU "
                                "every step, which a CUDA graph cannot")

    def to_json(self, init_record: dict | None = None) -> dict[str, Any]:
        """The recipe as plain JSON (people sets as counts and a hash, not lists); ``init_record``: what
        :func:`init_model_record` said about ``init_model`` when the run started."""
        d = dataclasses.asdict(self)
        d["data"], d["out"] = str(self.data), str(self.out)
        d["decode_cache"] = None if self.decode_cache is None else str(self.decode_cache)
        if self.pretrained == "imagenet":  # which of torchvision's checkpoints the hub cache gave
            d["pretrained"] = f"imagenet:{encoder.pretrained_checkpoint_path(self.backbone).name}"
        elif self.pretrained is not None:
            d["pretrained"] = f"file:{Path(self.pretrained).name}"
        if self.init_model is not None:  # what it was, not where it was: its name, weights and data
            d["pretrained"] = None
            d["init_model"] = init_record
        d["exclude_people"] = {"count": len(self.exclude_people), "sha256": people_hash(self.exclude_people)}
        if self.include_people is not None:
            d["include_people"] = {"count": len(self.include_people), "sha256": people_hash(self.include_people)}
        return d


def init_model_dir(init_model: str | os.PathLike) -> Path:
    """The directory of a model to fine-tune: a path, or ``default`` for the built-in model."""
    d = encoder.BUILTIN_MODELS / "default" if str(init_model) == "default" else Path(init_model).expanduser()
    if not (d / encoder.CONFIG_FILE).is_file() or not (d / encoder.WEIGHTS_FILE).is_file():
        raise TrainingError(f"{init_model}: not a facesearch model directory (needs {encoder.CONFIG_FILE} and "
                            f"{encoder.WEIGHTS_FILE}), nor 'default'")
    return d


def init_model_config(init_model: str | os.PathLike) -> ModelConfig:
    return ModelConfig.load(init_model_dir(init_model) / encoder.CONFIG_FILE)


def init_model_record(init_model: str | os.PathLike) -> dict:
    """What a fine-tuned model records of the model it started from: its name, weights hash and training
    data (nested: that model's own ``init_model`` too), so that what it has seen stays traceable."""
    cfg = init_model_config(init_model)
    return {"name": cfg.name, "weights_sha256": encoder.weights_sha256(init_model_dir(init_model)),
            "trained_on": {k: cfg.training[k] for k in ("data", "people", "images", "people_sha256", "init_model")
                           if cfg.training.get(k) is not None}}


# ----------------------------------------------------------------------------- LFW helpers


def read_lfw_people(path: str | os.PathLike) -> list[list[str]]:
    """LFW ``people.txt``: the View 2 identity sets, as lists of names (set 1 first)."""
    try:
        lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    except FileNotFoundError as e:
        raise TrainingError(f"people file not found: {path}") from e
    try:
        n_sets, i, sets = int(lines[0]), 1, []
        for _ in range(n_sets):
            count = int(lines[i])
            sets.append([ln.split("\t")[0] for ln in lines[i + 1 : i + 1 + count]])
            i += 1 + count
    except (IndexError, ValueError) as e:
        raise TrainingError(f"{path} is not an LFW people.txt file ({e})") from e
    return sets


def people_hash(names: Iterable[str]) -> str:
    """SHA-256 of the sorted names, one per line: identifies a set of people without listing it."""
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()


# ----------------------------------------------------------------------------- data


@dataclass
class Split:
    train: list[str]
    calibration: list[str]
    skipped_small: int  # identities with fewer than min_images images


def split_identities(folder: ImageFolder, options: TrainOptions) -> Split:
    names = folder.identities()
    if options.include_people is not None:
        names = [n for n in names if n in options.include_people]
    names = [n for n in names if n not in options.exclude_people]
    usable = [n for n in names if len(folder.items[n]) >= options.min_images]
    rng = np.random.default_rng(options.seed)
    order = rng.permutation(len(usable))
    n_cal = int(round(len(usable) * options.calibration_fraction))
    if options.calibration_fraction > 0:
        n_cal = max(n_cal, 2)
    cal = sorted(usable[i] for i in order[:n_cal])
    train = sorted(usable[i] for i in order[n_cal:])
    if len(train) < options.identities_per_batch:
        raise TrainingError(
            f"only {len(train)} training identities with >= {options.min_images} images in {options.data} "
            f"(after include/exclude and holding out {len(cal)} for calibration); "
            f"a batch needs P={options.identities_per_batch} (set it with --pk P K)"
        )
    return Split(train, cal, len(names) - len(usable))


class PKSampler:
    """P identities x K images per batch; every identity once per epoch. State is a numpy Generator."""

    def __init__(self, offsets: np.ndarray, counts: np.ndarray, p: int, k: int, rng: np.random.Generator):
        self.offsets, self.counts, self.p, self.k, self.rng = offsets, counts, p, k, rng

    def steps_per_epoch(self) -> int:
        return len(self.counts) // self.p  # the remainder identities come first next epoch's shuffle

    def epoch(self) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        order = self.rng.permutation(len(self.counts))
        for s in range(self.steps_per_epoch()):
            ids = order[s * self.p : (s + 1) * self.p]
            idx = np.empty((self.p, self.k), np.int64)
            for j, c in enumerate(ids):
                n = int(self.counts[c])
                pick = self.rng.choice(n, self.k, replace=n < self.k)
                idx[j] = self.offsets[c] + pick
            yield idx.reshape(-1), np.repeat(np.arange(self.p), self.k)


def augment_batch(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """uint8 N x 3 x S x S on any device -> float [0, 1], randomly flipped, scaled (0.9-1.1), shifted
    (+-6%), rotated (+-8 degrees), with brightness (x0.8-1.2) and contrast (x0.8-1.2) jitter."""
    n, dev = x.shape[0], x.device
    x = x.float().div_(255.0)

    def u(lo, hi):
        return torch.rand(n, device=dev, generator=gen) * (hi - lo) + lo

    flip = torch.where(torch.rand(n, device=dev, generator=gen) < 0.5, -1.0, 1.0)
    scale = 1.0 / u(0.9, 1.1)  # the grid samples the input: a grid scale s shows the face at 1/s
    ang = u(-8.0, 8.0) * (math.pi / 180.0)
    cos, sin = torch.cos(ang) * scale, torch.sin(ang) * scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, u(-0.06, 0.06)], 1), torch.stack([sin * flip, cos, u(-0.06, 0.06)], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    b = u(0.8, 1.2).view(n, 1, 1, 1)
    c = u(0.8, 1.2).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * c + mean).mul_(b).clamp_(0.0, 1.0)


# ----------------------------------------------------------------------------- schedule


def lr_factor(progress: float, warmup: float, floor: float) -> float:
    """Multiplier of the peak lr at ``progress`` in [0, 1]: linear warmup, then cosine down to ``floor``."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return max(progress / warmup, 1e-3)
    t = (progress - warmup) / max(1.0 - warmup, 1e-9)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def _param_groups(model: encoder.Encoder, options: TrainOptions) -> list[dict]:
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        is_backbone = name.startswith("trunk.")
        no_decay = p.ndim <= 1  # biases and norm layers
        groups.setdefault((is_backbone, no_decay), []).append(p)
    out = []
    for (is_backbone, no_decay), params in sorted(groups.items()):
        scale = options.backbone_lr_factor if is_backbone else 1.0
        out.append({
            "params": params,
            "lr": options.lr * scale,
            "base_lr": options.lr * scale,
            "weight_decay": 0.0 if no_decay else options.weight_decay,
        })
    return out


def make_optimizer(model: encoder.Encoder, options: TrainOptions, device: torch.device,
                   capturable: bool = False) -> torch.optim.AdamW:
    """AdamW over the parameter groups of :func:`_param_groups`; on CUDA the fused kernel (one launch per
    group instead of several per tensor). ``capturable``: learning rates live in device tensors, so a
    captured CUDA graph sees :meth:`TrainStep.set_lr` changes."""
    groups = _param_groups(model, options)
    kw: dict[str, Any] = {"fused": True} if device.type == "cuda" else {}
    if capturable:
        for g in groups:
            g["lr"] = torch.tensor(g["lr"], dtype=torch.float32, device=device)
        kw["capturable"] = True
    return torch.optim.AdamW(groups, lr=options.lr, weight_decay=options.weight_decay, **kw)


class TrainStep:
    """One optimisation step: forward (autocast on CUDA), contrastive loss, backward, AdamW.

    ``TrainStep(...)(x, labels)`` returns ``(loss, embeddings)``, device tensors (nothing waits on the GPU).

    With ``cuda_graph`` the first :attr:`WARMUP` calls run eagerly on a side stream (real steps, as CUDA
    graph capture requires), the next one captures the whole step into a CUDA graph, and every call from
    then on copies its batch into the graph's fixed input tensors and replays it. The kernels are the same;
    what goes away is launching each of a MobileNetV2 step's several hundred kernels from Python, which
    bounds a small batch on a fast GPU. The returned tensors are then the graph's own outputs: read them
    before the next call. Needs fixed batch shapes (a P x K batch always has P*K images), a capturable
    optimiser (:func:`make_optimizer`) and no fp16 gradient scaler.
    """

    WARMUP = 3

    def __init__(self, model: torch.nn.Module, loss_fn: ContrastiveLoss, opt: torch.optim.Optimizer,
                 amp_dtype: torch.dtype | None, device: torch.device, cuda_graph: bool = False):
        if cuda_graph:
            if device.type != "cuda":
                raise TrainingError("cuda_graph needs a CUDA device")
            if amp_dtype == torch.float16:
                raise TrainingError("cuda_graph needs bf16 or fp32: fp16's gradient scaler syncs every step")
            if not all(g.get("capturable") and torch.is_tensor(g["lr"]) for g in opt.param_groups):
                raise TrainingError("cuda_graph needs make_optimizer(..., capturable=True)")
        self.model, self.loss_fn, self.opt = model, loss_fn, opt
        self.amp_dtype, self.device, self.cuda_graph = amp_dtype, device, cuda_graph
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        self.calls = 0
        self._graph = None
        self._side = None
        self._x = self._y = self._out = None

    def set_lr(self, factor: float) -> None:
        """Every group's learning rate to ``base_lr * factor`` (in place when it is a device tensor)."""
        for g in self.opt.param_groups:
            lr = g["base_lr"] * factor
            if torch.is_tensor(g["lr"]):
                g["lr"].fill_(lr)
            else:
                g["lr"] = lr

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # autocast's weight-cast cache must be off while capturing: cached casts would outlive the graph
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None, cache_enabled=not self.cuda_graph):
            emb = self.model(x)
        loss = self.loss_fn(emb.float(), y)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return loss, emb

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        if not self.cuda_graph:
            self.opt.zero_grad(set_to_none=True)
            return self._forward_backward(x, y)
        # torch.cuda.graph captures on the *current* device's stream: make it the model's (cuda:1 ...)
        with torch.cuda.device(self.device):
            return self._graph_step(x, y)

    def _graph_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._x is None:
            self._x, self._y = torch.empty_like(x), torch.empty_like(y)
        if x.shape != self._x.shape or y.shape != self._y.shape:
            raise TrainingError(f"a CUDA graph step needs one batch shape: got {tuple(x.shape)}, "
                                f"captured {tuple(self._x.shape)}")
        self._x.copy_(x)
        self._y.copy_(y)
        if self._graph is None and self.calls <= self.WARMUP:
            if self._side is None:
                self._side = torch.cuda.Stream(self.device)
            side = self._side
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self.opt.zero_grad(set_to_none=True)
                out = self._forward_backward(self._x, self._y)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return out
        if self._graph is None:
            self.opt.zero_grad(set_to_none=True)  # the graph allocates the gradients itself
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._out = self._forward_backward(self._x, self._y)
            self._graph = graph  # capture records only: this call's batch runs in the replay below
        self._graph.replay()
        return self._out


def _amp_dtype(options: TrainOptions, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or options.amp == "off":
        return None
    if options.amp == "fp16":
        return torch.float16
    if options.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


# ----------------------------------------------------------------------------- calibration


def calibration_pairs(labels: np.ndarray, max_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Genuine pairs (every pair within an identity, at most ``max_pairs``, spread over identities) and as
    many impostor pairs (random pairs of different identities). Returns (i, j) index arrays and ``same``."""
    by_id: dict[int, np.ndarray] = {}
    for lab in np.unique(labels):
        by_id[int(lab)] = np.nonzero(labels == lab)[0]
    blocks = []  # per identity: its genuine pairs in random order
    for idx in by_id.values():
        ii, jj = np.triu_indices(len(idx), 1)
        blocks.append(np.stack([idx[ii], idx[jj]], 1)[rng.permutation(len(ii))])
    genuine = np.concatenate(blocks) if blocks else np.zeros((0, 2), np.int64)
    if len(genuine) > max_pairs:  # round-robin over identities, so no one identity dominates
        rank = np.concatenate([np.arange(len(b)) for b in blocks])
        genuine = genuine[np.lexsort((rng.random(len(genuine)), rank))[:max_pairs]]
    n_imp = len(genuine)
    imp = []
    while sum(len(x) for x in imp) < n_imp:
        a = rng.integers(0, len(labels), 2 * n_imp)
        b = rng.integers(0, len(labels), 2 * n_imp)
        keep = labels[a] != labels[b]
        imp.append(np.stack([a[keep], b[keep]], 1))
    impostor = np.concatenate(imp)[:n_imp] if n_imp else np.zeros((0, 2), np.int64)
    pairs = np.concatenate([genuine, impostor]).astype(np.int64)
    same = np.r_[np.ones(len(genuine), bool), np.zeros(len(impostor), bool)]
    return pairs, same


HELD_OUT = "held-out identities, never trained on"


def calibrate(emb: np.ndarray, labels: np.ndarray, max_pairs: int, seed: int, source: str = HELD_OUT
              ) -> dict[str, Any]:
    """Pick the threshold on pairs of held-out identities; also a 2-fold (by identity) honest estimate.
    ``source`` says which identities they are (stored with the result, after their count)."""
    rng = np.random.default_rng(seed + 1)
    pairs, same = calibration_pairs(labels, max_pairs, rng)
    if same.sum() == 0 or (~same).sum() == 0:
        raise TrainingError("calibration needs at least two identities with two images each")
    dist = distance.paired(emb[pairs[:, 0]], emb[pairs[:, 1]]).astype(np.float64)
    thr, acc = metrics.best_threshold(dist, same)
    # honest check: choose on the pairs of half the identities, score on pairs within the other half
    ids = np.unique(labels)
    half = set(rng.permutation(ids)[: len(ids) // 2].tolist())
    in_a = np.array([labels[i] in half and labels[j] in half for i, j in pairs])
    in_b = np.array([labels[i] not in half and labels[j] not in half for i, j in pairs])
    cv = []
    for fit, score in ((in_a, in_b), (in_b, in_a)):
        if same[fit].any() and (~same[fit]).any() and score.any():
            t, _ = metrics.best_threshold(dist[fit], same[fit])
            cv.append(metrics.accuracy(dist[score], same[score], t))
    operating_points, not_measurable = [], []
    impostors = int((~same).sum())
    for far in OPERATING_FARS:
        if impostors * far < 1.0 - 1e-9:  # fewer than 1/far impostor pairs: that FAR cannot be told from 0
            not_measurable.append({"far": far, "needs_impostor_pairs": int(math.ceil(1.0 / far - 1e-9))})
            continue
        tar, t = metrics.tar_at_far(dist, same, far)
        operating_points.append({"far": far, "threshold": t, "tar": tar})
    return {
        "threshold": thr,
        "accuracy": acc,
        "cross_validated_accuracy": float(np.mean(cv)) if cv else None,
        # stricter thresholds on the same pairs, for 1:N search and high-security 1:1 (query/verify --far,
        # FaceSearch.threshold_at); with n impostor pairs a FAR below 1/n cannot be measured: none is
        # stored for it (at 1/n exactly it rests on one false accept)
        "operating_points": operating_points,
        "operating_points_not_measurable": not_measurable,
        "pairs": int(len(same)),
        "genuine_pairs": int(same.sum()),
        "impostor_pairs": int((~same).sum()),
        "genuine_distance_mean": float(dist[same].mean()),
        "impostor_distance_mean": float(dist[~same].mean()),
        "source": f"{len(ids)} {source}",
        "people": int(len(ids)),
        "images": int(len(labels)),
        "method": "facesearch.metrics.best_threshold (maximum accuracy on genuine + impostor pairs)",
    }


# ----------------------------------------------------------------------------- checkpoint


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise TrainingError(f"cannot resume: no checkpoint at {path}") from e
    except Exception as e:
        raise TrainingError(f"cannot resume: {path} is not a readable checkpoint ({e})") from e


def _identity_of_run(options: TrainOptions, split: Split, init_record: dict | None) -> dict:
    """What must not change between a run and its resume (where the weights started included: a resume
    must not record another lineage than the run it continues)."""
    return {
        "start": init_record["weights_sha256"] if init_record else f"pretrained:{options.to_json()['pretrained']}",
        "backbone": options.backbone,
        "embedding_dim": options.embedding_dim,
        "input_size": options.input_size,
        "train_people_sha256": people_hash(split.train),
        "calibration_people_sha256": people_hash(split.calibration),
        "p": options.identities_per_batch,
        "k": options.images_per_identity,
        # the schedule: a resume under other values would jump along another learning-rate curve (the
        # defaults changed once: a run started under the old ones must not continue under the new ones)
        "schedule": {"lr": options.lr, "epochs": options.epochs, "time_budget": options.time_budget},
    }


def _run_differences(saved: dict, now: dict) -> str:
    """The options a checkpoint was made with that differ from this run's, readably."""
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if key == "schedule" and a is None:
            continue  # a checkpoint from before the schedule was recorded: as before, not compared
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{k} {a.get(k)} (checkpoint) vs {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            out.append(f"{key} {a} (checkpoint) vs {b}")
    return "; ".join(out)


# ----------------------------------------------------------------------------- the run


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run(options: TrainOptions, progress: bool = True, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train, calibrate and save a model directory. Returns a JSON-able summary.

    ``progress`` shows tqdm bars on stderr (loss, balanced pair accuracy at the running threshold, ETA).
    ``log`` receives one line per epoch (e.g. ``print``); the library itself prints nothing.
    Raises :class:`TrainingError` (bad options, too little data, bad checkpoint) or other
    :class:`FaceSearchError` subclasses (unreadable data, missing ImageNet weights).
    """
    t_start = time.time()
    options.validate()
    out = Path(options.out)
    device = encoder.resolve_device(options.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device cuda requested but CUDA is not available")
    if options.cuda_graph and device.type != "cuda":
        raise TrainingError(f"cuda_graph needs a CUDA device, not {device}")
    if (out / encoder.CONFIG_FILE).exists() and not (options.resume or options.overwrite):
        raise TrainingError(
            f"{out} holds a model already; choose another --out, or pass --overwrite to replace it (a gallery "
            f"it embedded then needs `facesearch reindex --model {out}`)")
    amp_dtype = _amp_dtype(options, device)
    if options.cuda_graph and amp_dtype == torch.float16:
        raise TrainingError(f"cuda_graph needs bf16 or fp32, and amp={options.amp} means fp16 on {device} "
                            "(no bf16): use --amp off")
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    gen = torch.Generator(device=device)
    gen.manual_seed(options.seed)

    folder = ImageFolder(options.data)
    split = split_identities(folder, options)
    # read once, at the start: the record describes the weights this run starts from
    init_record = init_model_record(options.init_model) if options.init_model is not None else None
    run_id = _identity_of_run(options, split, init_record)

    config = ModelConfig(
        name=options.name or f"facesearch-{options.backbone}",
        backbone=options.backbone,
        embedding_dim=options.embedding_dim,
        input_size=options.input_size,
        flip_average=options.flip_average,
    )
    ckpt_path = out / CHECKPOINT_FILE
    ckpt = None
    if options.resume:
        ckpt = _load_checkpoint(ckpt_path)
        differ = _run_differences(ckpt.get("run") or {}, run_id)
        if differ:
            raise TrainingError(
                f"cannot resume from {ckpt_path}: it was made with other data or options ({differ}); "
                f"resume with the options the run was started with"
            )
        model = encoder.Encoder(config)
        model.load_state_dict(ckpt["model"])
    elif options.init_model is not None:  # fine-tuning: every weight from the given model, head included
        model = encoder.Encoder(config)
        model.load_state_dict(encoder.load(init_model_dir(options.init_model)).state_dict())
    else:
        model = encoder.build(config, pretrained=options.pretrained)
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)

    # ---- decode once
    t0 = time.time()
    keys, counts = [], []
    for name in split.train:
        keys.extend(folder.items[name])
        counts.append(len(folder.items[name]))
    n_train_images = len(keys)
    cal_labels = []
    for j, name in enumerate(split.calibration):
        keys.extend(folder.items[name])
        cal_labels.extend([j] * len(folder.items[name]))
    bar = _bar(progress, total=len(keys), desc="decoding", unit="img")
    pixels = folder.load_prepared(keys, config, threads=options.threads, progress=bar.update if bar else None,
                                  cache=options.decode_cache)
    if bar:
        bar.close()
    decode_s = time.time() - t0
    data = torch.from_numpy(pixels[:n_train_images]).to(device)
    cal_pixels = pixels[n_train_images:]
    counts_a = np.asarray(counts, np.int64)
    offsets = np.r_[0, np.cumsum(counts_a)[:-1]]
    sampler = PKSampler(offsets, counts_a, options.identities_per_batch, options.images_per_identity, rng)
    steps_per_epoch = sampler.steps_per_epoch()
    total_steps = steps_per_epoch * options.epochs
    batch_n = options.identities_per_batch * options.images_per_identity

    # ---- optimiser
    loss_fn = ContrastiveLoss(options.pos_margin, options.neg_margin, options.mining)
    opt = make_optimizer(model, options, device, capturable=options.cuda_graph)
    train_step = TrainStep(model, loss_fn, opt, amp_dtype, device, cuda_graph=options.cuda_graph)
    scaler = train_step.scaler

    epoch, step, train_s, images_seen = 0, 0, 0.0, 0
    threshold_ema = (options.pos_margin + options.neg_margin) / 2.0
    history: list[dict] = []
    if ckpt is not None:
        opt.load_state_dict(ckpt["optimizer"])
        # the saved groups carry the saving run's flags and lr type, and its step counters sit where that
        # run kept them: make all of it this run's (a CPU checkpoint resumed on CUDA, eager <-> graph)
        on_device = options.cuda_graph or device.type == "cuda"
        for g in opt.param_groups:
            g["capturable"] = options.cuda_graph
            g["fused"] = True if device.type == "cuda" else None
            lr = float(g["lr"])
            g["lr"] = torch.tensor(lr, dtype=torch.float32, device=device) if options.cuda_graph else lr
        for st in opt.state.values():
            if "step" in st:
                st["step"] = torch.as_tensor(st["step"], dtype=torch.float32).to(device if on_device else "cpu")
        if "scaler" in ckpt and scaler.is_enabled():
            scaler.load_state_dict(ckpt["scaler"])
        epoch, step, train_s, images_seen = ckpt["epoch"], ckpt["step"], ckpt["train_s"], ckpt["images_seen"]
        threshold_ema, history = ckpt["threshold_ema"], json.loads(ckpt["history"])
        rng.bit_generator.state = json.loads(ckpt["numpy_rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        gen.set_state(ckpt["gen_rng"])
        if device.type == "cuda" and "cuda_rng" in ckpt:
            torch.cuda.set_rng_state(ckpt["cuda_rng"], device)

    # time budget: training gets what is left after this session's setup (decoding, ...), less an
    # estimate of the tail (embedding the calibration images at about twice the training rate, saving)
    setup_s = time.time() - t_start
    run_t0 = time.time() - train_s  # the wall clock at which train_s was 0, as seen from this session
    log_rng = np.random.default_rng(options.seed + 2)
    budget: float | None = None

    def train_budget(rate: float) -> float | None:
        if options.time_budget is None:
            return None
        tail = min(len(cal_labels) / max(2.0 * rate, 1.0) + 20.0, 0.25 * options.time_budget)
        return options.time_budget - setup_s - tail

    def progress_now() -> float:
        p = step / max(total_steps, 1)
        if budget is not None:
            p = max(p, train_s / max(budget, 1e-9))
        return p

    model.train()
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    stop = bool(ckpt is not None and ckpt.get("finished"))  # a finished run: only calibrate and save
    stopped_by_budget = bool(ckpt is not None and ckpt.get("stopped_by_time_budget"))
    # reading values back from a GPU waits for it: there, log every few steps only
    log_every = 1 if device.type == "cpu" else 10
    acc = float("nan")
    last_ckpt = time.time()
    while epoch < options.epochs and not stop:
        bar = _bar(progress, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{options.epochs}", unit="batch")
        ep_loss = torch.zeros((), device=device)
        ep_acc, ep_n, ep_acc_n = 0.0, 0, 0
        for idx, lab in sampler.epoch():
            f = lr_factor(progress_now(), options.warmup_fraction, options.min_lr_factor)
            train_step.set_lr(f)
            xb = data[_to_device(idx, device)]
            yb = _to_device(lab, device)
            xb = augment_batch(xb, gen) if options.augment else xb.float().div_(255.0)
            if device.type == "cuda":
                xb = xb.contiguous(memory_format=torch.channels_last)
            loss, emb = train_step(xb, yb)
            step += 1
            images_seen += batch_n
            ep_loss += loss.detach()
            ep_n += 1
            if step % log_every == 0:
                # balanced pair accuracy at the running threshold (fixed before this batch), then update it
                acc, thr = _batch_pair_accuracy(emb.detach().float(), yb, threshold_ema, log_rng)
                threshold_ema = 0.9 * threshold_ema + 0.1 * thr
                ep_acc += acc
                ep_acc_n += 1
            train_s = time.time() - run_t0
            if options.time_budget is not None and (budget is None and step >= 3 or step % 10 == 0):
                # first estimate after a few warm-up steps, then every 10 steps (the rate drifts)
                budget = train_budget(images_seen / max(train_s, 1e-9))
                if budget is not None and budget <= 0:
                    raise TrainingError(
                        f"time_budget {options.time_budget:.0f}s leaves no time to train after decoding"
                    )
            if bar:
                if step % log_every == 0:
                    bar.set_postfix(loss=f"{loss.detach().item():.4f}", pair_acc=f"{acc:.3f}", thr=f"{threshold_ema:.3f}",
                                    lr=f"{options.lr * f:.2e}")
                bar.update(1)
            if budget is not None and train_s >= budget:
                stop = stopped_by_budget = True
                break
        if bar:
            bar.close()
        epoch += 1
        rate = images_seen / max(train_s, 1e-9)
        if options.time_budget is not None:
            budget = train_budget(rate)
        rec = {
            "epoch": epoch,
            "steps": step,
            "loss": float(ep_loss) / max(ep_n, 1),
            "pair_accuracy": ep_acc / max(ep_acc_n, 1),
            "threshold": threshold_ema,
            "lr": options.lr * lr_factor(progress_now(), options.warmup_fraction, options.min_lr_factor),
            "images_per_s": rate,
            "elapsed_s": time.time() - t_start,
            "partial": stop,
        }
        history.append(rec)
        finished = stop or epoch >= options.epochs
        if finished or time.time() - last_ckpt >= options.checkpoint_interval_s:
            state = {
                "run": run_id,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": opt.state_dict(),
                "epoch": epoch,
                "step": step,
                "train_s": train_s,
                "images_seen": images_seen,
                "threshold_ema": threshold_ema,
                "history": json.dumps(history),
                "numpy_rng": json.dumps(rng.bit_generator.state),
                "torch_rng": torch.get_rng_state(),
                "gen_rng": gen.get_state(),
                "finished": finished,
                "stopped_by_time_budget": stopped_by_budget,
            }
            if scaler.is_enabled():
                state["scaler"] = scaler.state_dict()
            if device.type == "cuda":
                state["cuda_rng"] = torch.cuda.get_rng_state(device)
            _save_checkpoint(ckpt_path, state)
            last_ckpt = time.time()
        if log:  # after the checkpoint: an exception raised here leaves a run resumable from the last one
            log(json.dumps(rec))

    # ---- calibrate on held-out identities with the final model
    model.eval()
    t_cal = time.time()
    if len(split.calibration) >= 2:
        cal_emb = encoder.embed(model, cal_pixels)
        cal = calibrate(cal_emb, np.asarray(cal_labels), options.calibration_pairs, options.seed)
    else:  # calibration_fraction == 0: the best available, and said to be optimistic
        n = min(n_train_images, 4000)
        sel = np.sort(rng.choice(n_train_images, n, replace=False))
        lab = np.searchsorted(offsets, sel, side="right") - 1
        cal = calibrate(encoder.embed(model, pixels[sel]), lab, options.calibration_pairs, options.seed,
                        source="training identities (optimistic: no identities were held out)")
    cal_s = time.time() - t_cal

    final_rate = images_seen / max(train_s, 1e-9)
    config.threshold = cal["threshold"]
    config.calibration = {k: v for k, v in cal.items() if k != "threshold"}
    options_json = options.to_json(init_record)
    config.training = {
        "recipe": RECIPE,
        "loss": {"name": "contrastive", "distance": distance.NAME, "pos_margin": options.pos_margin,
                 "neg_margin": options.neg_margin, "mining": options.mining},
        "options": options_json,
        "data": Path(options.data).name,
        "people": len(split.train),
        "images": n_train_images,
        "people_sha256": people_hash(split.train),
        "calibration_people_sha256": people_hash(split.calibration),
        **({"init_model": init_record} if init_record is not None else {}),
        "skipped_identities_with_too_few_images": split.skipped_small,
        "seed": options.seed,
        "epochs": epoch,
        "steps": step,
        "images_seen": images_seen,
        "stopped_by_time_budget": stopped_by_budget,
        "train_seconds": round(train_s, 1),
        "decode_seconds": round(decode_s, 1),
        "images_per_s": round(final_rate, 1),
        "device": _machine(device),
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off",
        "torch": torch.__version__,
        "final_loss": history[-1]["loss"] if history else None,
    }
    if options.notes:
        config.training["notes"] = options.notes
    model.config = config
    model.cpu()
    encoder.save(model, out, config)
    if not options.keep_checkpoint:
        ckpt_path.unlink(missing_ok=True)
    return {
        "out": str(out),
        "threshold": config.threshold,
        "calibration": config.calibration,
        "training": config.training,
        "history": history,
        "calibration_seconds": round(cal_s, 1),
        "total_seconds": round(time.time() - t_start, 1),
    }


def _to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A small host array on the device. On CUDA through pinned memory without waiting: a plain copy from
    pageable memory would make every step wait for the previous one to finish on the GPU."""
    t = torch.from_numpy(a)
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def recalibrate(model_dir: str | os.PathLike, data: str | os.PathLike | None = None,
                flip_average: bool | None = None, exclude_people: Iterable[str] = (),
                include_people: Iterable[str] | None = None, device: str = "auto",
                threads: int | None = None) -> dict[str, Any]:
    """Choose a trained model's threshold again on its own held-out identities and rewrite ``model.json``.

    The held-out identities are rebuilt from the training record in ``model.json`` (data, seed,
    calibration share, ...) plus ``exclude_people`` / ``include_people`` as given to training (only
    their hashes are stored), and must match the stored ``calibration_people_sha256``. Use it after
    changing how the model embeds (``flip_average``). The weights are not touched.
    """
    model_dir = Path(model_dir)
    model = encoder.load(model_dir, encoder.resolve_device(device))
    cfg = model.config
    o = cfg.training.get("options")
    want = cfg.training.get("calibration_people_sha256")
    if not o or not want:
        raise TrainingError(f"{model_dir} has no training record: its held-out identities are unknown")
    if not o.get("calibration_fraction"):
        raise TrainingError(f"{model_dir} was trained with no held-out identities: nothing to calibrate on")
    opts = TrainOptions(
        data=data if data is not None else o["data"], out=model_dir, seed=o["seed"],
        calibration_fraction=o["calibration_fraction"], min_images=o["min_images"],
        identities_per_batch=2, exclude_people=frozenset(exclude_people),
        include_people=None if include_people is None else frozenset(include_people),
        calibration_pairs=o["calibration_pairs"],
    )
    folder = ImageFolder(opts.data)
    split = split_identities(folder, opts)
    if people_hash(split.calibration) != want:
        raise TrainingError(
            f"the held-out identities of {model_dir} could not be rebuilt from {opts.data}: pass the data and "
            f"the --exclude/--include options the model was trained with"
        )
    keys, labels = [], []
    for j, name in enumerate(split.calibration):
        keys.extend(folder.items[name])
        labels.extend([j] * len(folder.items[name]))
    if flip_average is not None:
        cfg.flip_average = bool(flip_average)
    before = cfg.threshold
    cal = calibrate(encoder.embed(model, folder.load_prepared(keys, cfg, threads=threads)), np.asarray(labels),
                    opts.calibration_pairs, opts.seed)
    cal["recalibrated"] = {"previous_threshold": before, "flip_average": cfg.flip_average}
    cfg.threshold = cal.pop("threshold")
    cfg.calibration = cal
    cfg.save(model_dir / encoder.CONFIG_FILE)
    return {"model": str(model_dir), "threshold": cfg.threshold, "previous_threshold": before,
            "flip_average": cfg.flip_average, "calibration": cal}


def _batch_pair_accuracy(emb: torch.Tensor, labels: torch.Tensor, threshold: float, rng: np.random.Generator):
    """Balanced pair accuracy of this batch at ``threshold`` (chosen before seeing it), and the threshold
    best on this batch's pairs (all genuine pairs + as many random impostor pairs)."""
    d = distance.pairwise(emb, emb).cpu().numpy()
    lab = labels.cpu().numpy()
    iu, ju = np.triu_indices(len(lab), 1)
    same = lab[iu] == lab[ju]
    dd = d[iu, ju]
    g, imp = np.nonzero(same)[0], np.nonzero(~same)[0]
    imp = rng.choice(imp, min(len(imp), len(g)), replace=False) if len(g) else imp
    sel = np.r_[g, imp]
    match = distance.is_match(dd, threshold)
    acc = 0.5 * (float(np.mean(match[g])) + float(np.mean(~match[imp])))
    thr, _ = metrics.best_threshold(dd[sel], same[sel])
    return acc, thr


def _bar(progress: bool, **kw):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(leave=False, dynamic_ncols=True, **kw)
