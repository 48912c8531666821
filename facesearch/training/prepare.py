"""The first two parts of a run: preparation (checks, identities, the model, a checkpoint to resume) and
decoding every image once."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from facesearch.datasets import ImageFolder
from facesearch.model import encoder
from facesearch.model.config import ModelConfig
from facesearch.training.checkpoint import (
    CHECKPOINT_FILE,
    TrainState,
    identity_of_run,
    load_checkpoint,
)
from facesearch.training.distributed import Dist
from facesearch.training.data import (
    Split,
    Unlabelled,
    images_of,
    split_identities,
    unlabelled_images,
)
from facesearch.training.freeze import block_names, cut_of, freeze
from facesearch.training.optim import amp_dtype
from facesearch.training.options import (
    TrainingError,
    TrainOptions,
    init_model_config,
    init_model_dir,
    init_model_record,
)
from facesearch.training.teacher import Teacher, load_teacher


@dataclass
class Prepared:
    """What preparation sets up for the rest of the run."""

    options: TrainOptions
    out: Path
    device: torch.device
    #: autocast's dtype on CUDA, None for fp32
    amp_dtype: torch.dtype | None
    #: the sampler's (and the calibration sample's) generator; checkpointed
    rng: np.random.Generator
    #: the augmentation's generator, on the device; checkpointed
    gen: torch.Generator
    folder: ImageFolder
    split: Split
    #: what the model to fine-tune was (:func:`init_model_record`), read once at the start; None otherwise
    init_record: dict | None
    config: ModelConfig
    #: on the device, with the checkpoint's weights when resuming
    model: encoder.Encoder
    #: a fresh state, or the checkpoint's when resuming
    state: TrainState
    resumed: bool
    checkpoint: Path
    #: when the run started (time.time())
    t_start: float
    #: how many leading blocks of the network are frozen (0: none; ``train_last_blocks``)
    cut: int = 0
    #: distillation's teacher (None without one)
    teacher: Teacher | None = None
    #: the unlabelled images (None without any)
    unlabelled: Unlabelled | None = None
    #: this process's place among the ranks of a ``torchrun`` (a single process by default)
    dist: Dist = field(default_factory=Dist)

    @property
    def frozen_blocks(self) -> list[str]:
        return block_names(self.model)[: self.cut]


@dataclass
class Decoded:
    """Every image of the run decoded once: the training images on the device, the held-out ones on the
    host (embedded at the end)."""

    #: uint8 N x 3 x S x S on the host: the training identities' images, then the held-out identities'
    pixels: np.ndarray
    #: the first ``n_train`` of them, on the training device (None once cached frozen outputs replace them)
    train: torch.Tensor | None
    n_train: int
    #: per training identity: its first row in ``pixels`` and its image count
    offsets: np.ndarray
    counts: np.ndarray
    #: the identity number of each held-out image
    cal_labels: np.ndarray
    decode_s: float
    #: the training images' keys (in the order of ``train``)
    train_keys: list[str] | None = None
    #: the unlabelled images, uint8 on the training device (None without any, or once cached)
    unlabelled: torch.Tensor | None = None

    @property
    def cal_pixels(self) -> np.ndarray:
        return self.pixels[self.n_train:]


def _checked_device(options: TrainOptions, out: Path) -> tuple[torch.device, torch.dtype | None]:
    """The training device and autocast dtype, after refusing what cannot run or would overwrite a model."""
    device = encoder.resolve_device(options.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device cuda requested but CUDA is not available")
    if options.cuda_graph and device.type != "cuda":
        raise TrainingError(f"cuda_graph needs a CUDA device, not {device}")
    if (out / encoder.CONFIG_FILE).exists() and not (options.resume or options.overwrite):
        raise TrainingError(
            f"{out} holds a model already; choose another --out, or pass --overwrite to replace it (a gallery "
            f"it embedded then needs `facesearch reindex --model {out}`)")
    amp = amp_dtype(options, device)
    if options.cuda_graph and amp == torch.float16:
        raise TrainingError(f"cuda_graph needs bf16 or fp32, and amp={options.amp} means fp16 on {device} "
                            "(no bf16): use --amp off")
    return device, amp


def _initial_model(options: TrainOptions, config: ModelConfig, state: TrainState | None) -> encoder.Encoder:
    """The model training starts from: the checkpoint's, the model to fine-tune (every weight, head
    included), or a new one from ``pretrained``."""
    if state is not None:
        model = encoder.Encoder(config)
        model.load_state_dict(state.model)
    elif options.init_model is not None:
        model = encoder.Encoder(config)
        model.load_state_dict(encoder.load(init_model_dir(options.init_model)).state_dict())
    else:
        model = encoder.build(config, pretrained=options.pretrained)
    return model


def prepare(options: TrainOptions, t_start: float, dist: Dist | None = None) -> Prepared:
    """Check the options, seed the generators, split the identities, build the model (and load the
    checkpoint when resuming). Raises :class:`TrainingError` before any long work. With ``dist`` (a rank of
    a torchrun), every rank starts from rank 0's weights; the augmentation's generator is seeded per rank."""
    dist = dist if dist is not None else Dist()
    options.validate()
    out = Path(options.out)
    device, amp = _checked_device(options, out)
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    gen = torch.Generator(device=device)
    gen.manual_seed(options.seed + dist.rank)

    folder = ImageFolder(options.data)
    split = split_identities(folder, options)
    init_record = init_model_record(options.init_model) if options.init_model is not None else None
    config = _config(options)
    teacher = load_teacher(options, config) if options.teacher is not None else None
    unlabelled = unlabelled_images(options.unlabelled, split, options) if options.unlabelled is not None else None
    run_id = identity_of_run(options, split, init_record, teacher.sha256 if teacher else None,
                             len(unlabelled.keys) if unlabelled else None)
    checkpoint = out / CHECKPOINT_FILE
    loaded = load_checkpoint(checkpoint, run_id) if options.resume else None
    model = _initial_model(options, config, loaded)
    cut = cut_of(model, options.train_last_blocks)
    freeze(model, cut)
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    state = loaded or TrainState(run=run_id, threshold_ema=(options.pos_margin + options.neg_margin) / 2.0)
    if dist.active:
        if device.type == "cuda":  # batch statistics over the global batch (torch has no CPU SyncBatchNorm)
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        dist.broadcast_module(model)
    return Prepared(options, out, device, amp, rng, gen, folder, split, init_record, config, model, state,
                    resumed=loaded is not None, checkpoint=checkpoint, t_start=t_start, cut=cut, teacher=teacher,
                    unlabelled=unlabelled, dist=dist)


def _config(options: TrainOptions) -> ModelConfig:
    """The new model's config. Fine-tuning keeps the started-from model's preprocessing (input size, crop,
    mean and std), its alignment template and its source (an imported network's licence and what it was
    trained on still apply to what is trained from it)."""
    config = ModelConfig(
        name=options.name or f"facesearch-{options.backbone}",
        backbone=options.backbone,
        embedding_dim=options.embedding_dim,
        input_size=options.input_size,
        flip_average=options.flip_average,
    )
    if options.init_model is not None:
        start = init_model_config(options.init_model)
        config.crop_fraction, config.mean, config.std = start.crop_fraction, start.mean, start.std
        config.alignment = start.alignment
        if start.source:
            config.source = dict(start.source) | {
                "fine_tuned_from": start.name,
                "fine_tuned_note": "weights changed by `facesearch train --init-model`: see training.init_model",
            }
        if options.name is None:
            config.name = f"{start.name}-finetuned"
    return config


def decode(p: Prepared, progress: bool) -> Decoded:
    """Decode the training and held-out images once (through the decode cache when there is one)."""
    t0 = time.time()
    keys, _, counts = images_of(p.folder, p.split.train)
    cal_keys, cal_labels, _ = images_of(p.folder, p.split.calibration)
    bar = progress_bar(progress, total=len(keys) + len(cal_keys), desc="decoding", unit="img")
    pixels = p.folder.load_prepared(keys + cal_keys, p.config, threads=p.options.threads,
                                    progress=bar.update if bar else None, cache=p.options.decode_cache)
    if bar:
        bar.close()
    unlabelled = None
    if p.unlabelled is not None:
        bar = progress_bar(progress, total=len(p.unlabelled.keys), desc="decoding unlabelled", unit="img")
        u = ImageFolder(p.unlabelled.root).load_prepared(p.unlabelled.keys, p.config, threads=p.options.threads,
                                                         progress=bar.update if bar else None)
        if bar:
            bar.close()
        unlabelled = torch.from_numpy(u).to(p.device)
    decode_s = time.time() - t0
    n_train = len(keys)
    counts_a = np.asarray(counts, np.int64)
    return Decoded(
        pixels=pixels,
        train=torch.from_numpy(pixels[:n_train]).to(p.device),
        n_train=n_train,
        offsets=np.r_[0, np.cumsum(counts_a)[:-1]],
        counts=counts_a,
        cal_labels=np.asarray(cal_labels),
        decode_s=decode_s,
        train_keys=keys,
        unlabelled=unlabelled,
    )


def progress_bar(progress: bool, **kw):
    """A tqdm bar on stderr, or None when ``progress`` is off."""
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(leave=False, dynamic_ncols=True, **kw)
