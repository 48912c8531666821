"""What a training run is given: :class:`TrainOptions`, their checks, and the model a run fine-tunes.

Importing this module imports no torch (the CLI reads the option defaults from :class:`TrainOptions`
while it starts): :meth:`TrainOptions.validate` and :meth:`TrainOptions.to_json` import the encoder
when called.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facesearch import distance
from facesearch.errors import ModelFileError, TrainingError
from facesearch.model.config import (
    TRAIN_EPOCHS,
    TRAIN_INPUT_SIZE,
    TRAIN_LR,
    ModelConfig,
)
from facesearch.model.files import ResolvedModel, resolve

#: TrainOptions.augment's values
AUGMENT = ("full", "flip", "off")
#: TrainOptions.feature_cache's values
FEATURE_CACHE = ("auto", "on", "off")


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
    #: (the defaults of input_size, epochs and lr are the measured recipe: facesearch.model.config.TRAIN_*)
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
    #: on-device augmentation: "full" (flip, scale/shift/rotate, brightness/contrast), "flip" (random
    #: horizontal flip only: with frozen blocks, their outputs can then be cached for both mirror images)
    #: or "off"; True and False mean "full" and "off"
    augment: bool | str = "full"
    #: train only the last N blocks of the network (``Encoder.blocks()``: for sface conv_1, conv_2 ...
    #: conv_14, embedding; for a torchvision backbone its feature stages, then the embedding head); the
    #: blocks before them are frozen (weights and batch-norm statistics unchanged). None: train all
    train_last_blocks: int | None = None
    #: with frozen blocks: "auto" computes their outputs once and trains the rest on them when nothing
    #: random happens before the cut (augment "flip" or "off"); "on": the same, refused when it cannot;
    #: "off": never (every step runs the frozen blocks, without gradients)
    feature_cache: str = "auto"
    #: distillation: a frozen facesearch model (directory or built-in name) whose embeddings the student
    #: learns too; its embeddings are computed once, before training
    teacher: str | os.PathLike | None = None
    #: the same images (same identity folders and file stems) aligned for the teacher's own template, when
    #: it differs from the student's (e.g. scripts/realign_pack.py); None: ``data`` itself
    teacher_data: str | os.PathLike | None = None
    #: "embedding": 1 - <student, teacher> (the cosine distance between the two unit vectors; same size
    #: needed); "relation": the squared difference of the batch's distance matrices (any sizes)
    distill: str = "embedding"
    #: the distillation term's weight next to the contrastive loss
    distill_weight: float = 1.0
    #: the teacher's targets average each image's embedding with its mirror image's (twice the teacher's
    #: cost, once); None: as the teacher embeds (its ``flip_average``)
    teacher_flip_average: bool | None = None
    #: a folder (or zip) of photos without labels: aligned crops at any depth; with a teacher they get the
    #: distillation term only. Images in a sub-folder named after an excluded, held-out or training
    #: identity are left out (the LFW pack itself gives its one-image people)
    unlabelled: str | os.PathLike | None = None
    #: ``unlabelled`` aligned for the teacher, matched by relative path and stem; None: ``unlabelled``
    teacher_unlabelled: str | os.PathLike | None = None
    #: unlabelled images added to every P x K batch
    unlabelled_per_batch: int = 64
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
        if isinstance(self.augment, bool):
            self.augment = "full" if self.augment else "off"
        self.exclude_people = frozenset(self.exclude_people or ())
        if self.include_people is not None:
            self.include_people = frozenset(self.include_people)
        if self.input_size is None and self.init_model is None:
            self.input_size = TRAIN_INPUT_SIZE

    def validate(self) -> None:
        from facesearch.losses import DISTILL, MINING
        from facesearch.model import encoder

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
        if self.augment not in AUGMENT:
            raise TrainingError(f"augment must be one of {AUGMENT}, not {self.augment!r}")
        if self.train_last_blocks is not None and self.train_last_blocks < 1:
            raise TrainingError("train_last_blocks must be at least 1 (None trains every block)")
        if self.feature_cache not in FEATURE_CACHE:
            raise TrainingError(f"feature_cache must be one of {FEATURE_CACHE}, not {self.feature_cache!r}")
        if self.feature_cache == "on":
            if self.train_last_blocks is None:
                raise TrainingError("feature_cache 'on' needs frozen blocks: set train_last_blocks (--train-last-blocks)")
            if self.augment == "full":
                raise TrainingError("feature_cache 'on' needs augment 'flip' or 'off': full augmentation changes "
                                    "what the frozen blocks see at every step")
        if self.distill not in DISTILL:
            raise TrainingError(f"distill must be one of {DISTILL}, not {self.distill!r}")
        if not self.distill_weight > 0:
            raise TrainingError("distill_weight must be positive")
        if self.teacher is None:
            for name in ("teacher_data", "unlabelled", "teacher_unlabelled"):
                if getattr(self, name) is not None:
                    raise TrainingError(f"{name.replace('_', '-')} is for distillation: it needs a teacher (--teacher)")
        if self.teacher_unlabelled is not None and self.unlabelled is None:
            raise TrainingError("teacher_unlabelled needs unlabelled (--unlabelled): the same photos for the student")
        if self.unlabelled_per_batch < 1:
            raise TrainingError("unlabelled_per_batch must be at least 1")
        if self.cuda_graph and self.amp == "fp16":
            raise TrainingError("cuda_graph needs amp bf16, auto or off: fp16's gradient scaler waits on the GPU "
                                "every step, which a CUDA graph cannot")

    def to_json(self, init_record: dict | None = None) -> dict[str, Any]:
        """The recipe as plain JSON (people sets as counts and a hash, not lists); ``init_record``: what
        :func:`init_model_record` said about ``init_model`` when the run started."""
        from facesearch.model import encoder

        d = dataclasses.asdict(self)
        d["data"], d["out"] = str(self.data), str(self.out)
        for name in ("teacher", "teacher_data", "unlabelled", "teacher_unlabelled"):
            if d[name] is not None:
                d[name] = str(d[name])
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


def people_hash(names: Iterable[str]) -> str:
    """SHA-256 of the sorted names, one per line: identifies a set of people without listing it."""
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()



def resolve_init_model(init_model: str | os.PathLike) -> ResolvedModel:
    """The model to fine-tune: a directory, or ``default`` (also given as a path) for the built-in model."""
    try:
        return resolve(os.fspath(init_model))
    except ModelFileError as e:
        raise TrainingError(str(e)) from None


def init_model_dir(init_model: str | os.PathLike) -> Path:
    """The directory of a model to fine-tune: a path, or ``default`` for the built-in model."""
    return resolve_init_model(init_model).directory


def init_model_config(init_model: str | os.PathLike) -> ModelConfig:
    return resolve_init_model(init_model).config


def init_model_record(init_model: str | os.PathLike) -> dict:
    """What a fine-tuned model records of the model it started from: its name, weights hash and training
    data (nested: that model's own ``init_model`` too), so that what it has seen stays traceable."""
    found = resolve_init_model(init_model)
    t = found.config.training
    record = {"name": found.config.name, "weights_sha256": found.sha256,
              "trained_on": {k: getattr(t, k) for k in ("data", "people", "images", "people_sha256", "init_model")
                             if getattr(t, k) is not None}}
    if found.config.source:  # an imported network: what is known of the data it was trained on
        record["source"] = found.config.source
    return record
