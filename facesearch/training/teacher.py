"""Distillation's teacher: a frozen facesearch model, its checks against the student, and its embeddings of
the training (and unlabelled) images, computed once before training.

The teacher embeds each image as it would in use: its own preprocessing (``model.json``'s input size,
mean and std, mirror-image averaging) on the image aligned for its own template. When the teacher's
template differs from the student's (SFace's ArcFace template against the LFW pack's geometry), the
teacher reads the same images from another copy aligned for it (``teacher_data``, e.g. made by
``scripts/realign_pack.py``), matched by identity folder and file stem (``unlabelled``: by relative
path and stem). Its embeddings do not change during training: the student's augmented views are all
pulled towards the embedding of the image as given.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facesearch import distance
from facesearch.datasets import ImageFolder
from facesearch.errors import FaceSearchError
from facesearch.model import encoder
from facesearch.model.config import ModelConfig
from facesearch.model.files import resolve
from facesearch.training.data import image_stem, scan_images
from facesearch.training.freeze import (
    cached_outputs,
    embed_batch_size,
    frozen_state_sha256,
    images_ident,
)
from facesearch.training.options import TrainingError, TrainOptions

#: how a script or user makes the copy aligned for the teacher (said in the errors)
REALIGN_HINT = "python scripts/realign_pack.py {teacher} OUT.zip --images {data}"


@dataclass
class Teacher:
    spec: str
    directory: Path
    config: ModelConfig
    sha256: str

    def record(self, options: TrainOptions) -> dict:
        """What the student's ``model.json`` keeps of its teacher (what it learnt from, and so what it has
        indirectly seen: an imported teacher's training data is the student's too)."""
        t = self.config.training
        rec = {"name": self.config.name, "weights_sha256": self.sha256, "backbone": self.config.backbone,
               "embedding_dim": self.config.embedding_dim, "distill": options.distill,
               "distill_weight": options.distill_weight, "targets_flip_averaged": teacher_flip(self, options),
               "own_alignment_template": self.config.alignment is not None,
               "teacher_data": Path(options.teacher_data).name if options.teacher_data is not None else None,
               "trained_on": {k: getattr(t, k) for k in ("data", "people", "images", "people_sha256", "init_model")
                              if getattr(t, k) is not None}}
        if self.config.source:
            rec["source"] = self.config.source
        return rec


def _template(cfg: ModelConfig):
    return None if cfg.alignment is None else [[round(v, 4) for v in pt] for pt in cfg.alignment]


def load_teacher(options: TrainOptions, student: ModelConfig) -> Teacher:
    """The teacher, after the checks that need no image: it loads, its embeddings can be compared with
    the student's, and it will see images aligned for it (or the user said otherwise)."""
    try:
        found = resolve(os.fspath(options.teacher))
        sha = found.sha256
    except FaceSearchError as e:
        raise TrainingError(f"teacher {options.teacher}: {e}") from None
    cfg = found.config
    if options.distill == "embedding" and cfg.embedding_dim != student.embedding_dim:
        raise TrainingError(
            f"the teacher {cfg.name} gives {cfg.embedding_dim}-d embeddings and the student {student.embedding_dim}-d: "
            f"embedding distillation compares the two vectors, and there is no projection between them; train the "
            f"student with --embedding-dim {cfg.embedding_dim}, or use --distill relation (it compares distances "
            f"only, of any sizes)")
    if _template(cfg) != _template(student):
        theirs = "its own template" if cfg.alignment is not None else "the LFW pack's geometry"
        mine = "its own template" if student.alignment is not None else "the LFW pack's geometry"
        hint = REALIGN_HINT.format(teacher=options.teacher, data="DATA")
        if options.teacher_data is None:
            raise TrainingError(
                f"the teacher {cfg.name} takes faces aligned to {theirs}, the student's crops are aligned to {mine}: "
                f"give the same images aligned for the teacher with --teacher-data ({hint} makes them), or "
                f"--teacher-data DATA (the training data itself) to let the teacher see the crops as they are "
                f"(it then embeds them worse)")
        if options.unlabelled is not None and options.teacher_unlabelled is None:
            raise TrainingError(
                f"the teacher {cfg.name} takes faces aligned to {theirs}: give the unlabelled photos aligned for it "
                f"with --teacher-unlabelled, or --teacher-unlabelled {options.unlabelled} to use them as they are")
    return Teacher(os.fspath(options.teacher), found.directory, cfg, sha)


def _view_keys(view: Path, same_as_student: bool, student_keys: list[str], stems: list[str], what: str) -> list[str]:
    """The keys under ``view`` of the student's images (themselves when the view is the student's data)."""
    if same_as_student:
        return list(student_keys)
    found = scan_images(view)
    missing = [s for s in stems if s not in found]
    if missing:
        raise TrainingError(f"{len(missing)} of the {what} images are not in {view} (matched by folder and file "
                            f"stem), e.g. {', '.join(missing[:3])}: it must be a copy of the same images")
    return [found[s] for s in stems]


def teacher_embeddings(teacher: Teacher, options: TrainOptions, device: torch.device, student_root: Path,
                       student_keys: list[str], stems: list[str], view: str | os.PathLike | None, what: str,
                       progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, float, bool]:
    """The teacher's embeddings (N x D unit vectors) of the student's images ``student_keys`` (under
    ``student_root``, named ``stems`` across copies), read from ``view`` (None: the student's own files).
    Through the on-disk cache when ``options.decode_cache`` is set. Returns them, the seconds taken and
    whether they came from the disk."""
    t0 = time.time()
    view_root = Path(view) if view is not None else student_root
    same = view is None or Path(view).resolve() == Path(student_root).resolve()
    keys = _view_keys(view_root, same, student_keys, stems, what)
    flip = teacher_flip(teacher, options)
    model = encoder.load(teacher.directory, device)
    folder = ImageFolder(view_root)
    if options.decode_cache is None:
        model.config.flip_average = flip
        out = []
        for i in range(0, len(keys), 1024):  # decoded a chunk at a time: the teacher's pixels are not kept
            pixels = folder.load_prepared(keys[i : i + 1024], teacher.config, threads=options.threads)
            out.append(encoder.embed(model, pixels, batch_size=embed_batch_size(model)))
            if progress is not None:
                progress(len(pixels))
        emb = np.concatenate(out) if out else np.zeros((0, teacher.config.embedding_dim), np.float32)
        return emb, time.time() - t0, False
    # through the on-disk cache, as the teacher's whole chain of blocks: what a fine-tuning run of the same
    # network on the same images stored of its first blocks is reused (only the blocks after them run)
    data = images_ident(view_root, keys, teacher.config)
    n_blocks = len(model.blocks())

    def ident_of(c: int, mirrored: bool) -> dict:
        return {"frozen": frozen_state_sha256(model, c), "cut": c, "flip": mirrored, "images": data, "format": 1}

    def pixels() -> torch.Tensor:
        return torch.from_numpy(folder.load_prepared(keys, teacher.config, threads=options.threads)).to(device)

    raw, hit = cached_outputs(model, n_blocks, pixels, flip, options.decode_cache, "frozen", ident_of,
                              progress=progress, n=len(keys))
    views = distance.normalize(np.asarray(raw, np.float32))
    n = len(keys)
    emb = distance.normalize(views[:n] + views[n:]) if flip else views[:n]
    return emb.astype(np.float32, copy=False), time.time() - t0, hit


def teacher_flip(teacher: Teacher, options: TrainOptions) -> bool:
    """Whether the teacher's targets average each image with its mirror image (``teacher_flip_average``;
    default: as the teacher embeds, its ``model.json``'s ``flip_average``)."""
    return teacher.config.flip_average if options.teacher_flip_average is None else options.teacher_flip_average


def labelled_stems(names: list[str], keys: list[str], counts: list[int]) -> list[str]:
    """:func:`image_stem` of each labelled key (``keys`` are the images of ``names`` in order, ``counts`` each)."""
    owners = np.repeat(np.arange(len(names)), counts)
    return [image_stem(names[j], k) for j, k in zip(owners, keys)]
