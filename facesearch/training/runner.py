"""``run()``: train, calibrate and save a model directory, in four parts: preparation and decoding
(:mod:`facesearch.training.prepare`), the epoch loop (:mod:`facesearch.training.loop`), and finishing
here: the threshold calibrated with the final model, the training record, the model directory."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facesearch import distance
from facesearch.model import encoder
from facesearch.training.calibration import calibrate
from facesearch.training import distributed
from facesearch.training.checkpoint import TrainState
from facesearch.training.freeze import embed_batch_size
from facesearch.training.inputs import Inputs, build_inputs
from facesearch.training.loop import train_epochs
from facesearch.training.options import TrainOptions, people_hash
from facesearch.training.prepare import Decoded, Prepared, decode, prepare

RECIPE = "contrastive-pk"


def run(options: TrainOptions, progress: bool = True, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train, calibrate and save a model directory. Returns a JSON-able summary.

    ``progress`` shows tqdm bars on stderr (loss, balanced pair accuracy at the running threshold, ETA).
    ``log`` receives one line per epoch (e.g. ``print``); the library itself prints nothing.
    Raises :class:`TrainingError` (bad options, too little data, bad checkpoint) or other
    :class:`FaceSearchError` subclasses (unreadable data, missing ImageNet weights).
    """
    dist = distributed.from_env(options.device)
    try:
        if dist.active:
            options = _for_rank(options, dist)
        p = prepare(options, time.time(), dist)
        data = decode(p, progress and dist.main)
        inputs = build_inputs(p, data, progress and dist.main)
        train_epochs(p, data, inputs, progress and dist.main, log)
        if not dist.main:  # rank 0 calibrates and saves; the others wait for it, then leave
            dist.barrier()
            return {"out": str(p.out), "rank": dist.rank, "world_size": dist.world, "steps": p.state.step}
        summary = _finish(p, data, inputs)
        dist.barrier()
        return summary
    finally:
        dist.close()


def _for_rank(options: TrainOptions, dist: distributed.Dist) -> TrainOptions:
    """The options one rank of a torchrun trains with (its device), after refusing what does not run
    distributed yet."""
    from dataclasses import replace

    from facesearch.training.options import TrainingError

    for name, on in (("cuda_graph", options.cuda_graph), ("teacher (distillation)", options.teacher is not None),
                     ("unlabelled", options.unlabelled is not None)):
        if on:
            raise TrainingError(f"{name} does not run under torchrun yet: train in one process")
    return replace(options, device=distributed.rank_device(options.device, dist))


def _finish(p: Prepared, data: Decoded, inputs: Inputs) -> dict[str, Any]:
    """Calibrate the threshold with the final model, write the model directory, remove the checkpoint
    (unless ``keep_checkpoint``); the run's summary."""
    p.model.eval()
    t_cal = time.time()
    cal = _final_calibration(p, data)
    cal_s = time.time() - t_cal
    calibration = {k: v for k, v in cal.items() if k != "threshold"}
    training = _training_record(p, data, p.state, inputs)
    config = p.config
    config.threshold, config.calibration, config.training = cal["threshold"], calibration, training
    p.model.config = config
    p.model.cpu()
    encoder.save(p.model, p.out, config)
    if not p.options.keep_checkpoint:
        p.checkpoint.unlink(missing_ok=True)
    return {  # plain JSON: the values model.json was written from
        "out": str(p.out),
        "threshold": cal["threshold"],
        "calibration": calibration,
        "training": training,
        "history": p.state.history,
        "calibration_seconds": round(cal_s, 1),
        "total_seconds": round(time.time() - p.t_start, 1),
    }


def _final_calibration(p: Prepared, data: Decoded) -> dict[str, Any]:
    """:func:`calibrate` on the held-out identities; without any (``calibration_fraction`` 0), on a sample
    of the training images, the best available, and said to be optimistic."""
    o = p.options
    if len(p.split.calibration) >= 2:
        return calibrate(encoder.embed(p.model, data.cal_pixels, batch_size=embed_batch_size(p.model)),
                         data.cal_labels, o.calibration_pairs, o.seed)
    n = min(data.n_train, 4000)
    sel = np.sort(p.rng.choice(data.n_train, n, replace=False))
    lab = np.searchsorted(data.offsets, sel, side="right") - 1
    return calibrate(encoder.embed(p.model, data.pixels[sel], batch_size=embed_batch_size(p.model)), lab,
                     o.calibration_pairs, o.seed,
                     source="training identities (optimistic: no identities were held out)")


def _training_record(p: Prepared, data: Decoded, state: TrainState, inputs: Inputs) -> dict[str, Any]:
    """``model.json``'s ``training`` section: the recipe, the data (as counts and hashes), how it went."""
    o = p.options
    loss = {"name": "contrastive", "distance": distance.NAME, "pos_margin": o.pos_margin,
            "neg_margin": o.neg_margin, "mining": o.mining}
    if p.teacher is not None:
        loss["distillation"] = {"term": o.distill, "weight": o.distill_weight,
                                "what": "mean cosine distance between student and teacher embeddings"
                                if o.distill == "embedding" else
                                "mean squared difference of the batch's student and teacher distance matrices"}
    record = {
        "recipe": RECIPE,
        "loss": loss,
        "options": o.to_json(p.init_record),
        "data": Path(o.data).name,
        "people": len(p.split.train),
        "images": data.n_train,
        "people_sha256": people_hash(p.split.train),
        "calibration_people_sha256": people_hash(p.split.calibration),
        **({"init_model": p.init_record} if p.init_record is not None else {}),
        "skipped_identities_with_too_few_images": p.split.skipped_small,
        "seed": o.seed,
        "epochs": state.epoch,
        "steps": state.step,
        "images_seen": state.images_seen,
        "stopped_by_time_budget": state.stopped_by_time_budget,
        "train_seconds": round(state.train_s, 1),
        "decode_seconds": round(data.decode_s, 1),
        "images_per_s": round(state.images_seen / max(state.train_s, 1e-9), 1),
        "processes": p.dist.world,
        "global_batch": o.identities_per_batch * o.images_per_identity * p.dist.world,
        "device": _machine(p.device),
        "amp": str(p.amp_dtype).replace("torch.", "") if p.amp_dtype else "off",
        "torch": torch.__version__,
        "final_loss": state.history[-1]["loss"] if state.history else None,
    }
    if p.cut:
        names = [n for n, _ in p.model.blocks()]
        record["frozen_blocks"] = names[: p.cut]
        record["trained_blocks"] = names[p.cut:]
        record["trained_on_cached_features"] = inputs.cached
    if p.teacher is not None:
        record["teacher"] = p.teacher.record(o)
    if p.unlabelled is not None:
        u = p.unlabelled
        record["unlabelled"] = {"data": Path(u.root).name, "images": len(u.keys), "per_batch": o.unlabelled_per_batch,
                                "left_out_people_images": u.left_out_people,
                                "left_out_labelled_images": u.left_out_labelled}
    record.update(inputs.record)
    if o.notes:
        record["notes"] = o.notes
    return record


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
