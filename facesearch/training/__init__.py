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

The modules, in the order a run uses them: :mod:`~facesearch.training.options` (``TrainOptions``; no
torch), :mod:`~facesearch.training.data` (people files, the split, the sampler; no torch),
:mod:`~facesearch.training.prepare` (preparation, decoding), :mod:`~facesearch.training.batches`,
:mod:`~facesearch.training.optim`, :mod:`~facesearch.training.step` and :mod:`~facesearch.training.loop`
(the epoch loop), :mod:`~facesearch.training.checkpoint` (``TrainState``),
:mod:`~facesearch.training.calibration` and :mod:`~facesearch.training.runner` (``run``, finishing).

The names below are imported from their modules on first use, so that importing
``facesearch.training.options`` (what the CLI does as it starts) imports no torch. Training imports
neither faiss nor SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import Any

#: each public name and the module that defines it
_EXPORTS = {
    "TrainingError": "options",
    "TrainOptions": "options",
    "people_hash": "options",
    "init_model_dir": "options",
    "init_model_config": "options",
    "init_model_record": "options",
    "read_lfw_people": "data",
    "Split": "data",
    "split_identities": "data",
    "images_of": "data",
    "PKSampler": "data",
    "augment_batch": "batches",
    "to_device": "batches",
    "lr_factor": "optim",
    "make_optimizer": "optim",
    "amp_dtype": "optim",
    "TrainStep": "step",
    "CHECKPOINT_FILE": "checkpoint",
    "TrainState": "checkpoint",
    "HELD_OUT": "calibration",
    "OPERATING_FARS": "calibration",
    "calibration_pairs": "calibration",
    "calibrate": "calibration",
    "recalibrate": "calibration",
    "RECIPE": "runner",
    "run": "runner",
    "block_names": "freeze",
    "TrainForward": "freeze",
    "frozen_features": "freeze",
    "Inputs": "inputs",
    "Teacher": "teacher",
    "load_teacher": "teacher",
    "scan_images": "data",
    "unlabelled_images": "data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
