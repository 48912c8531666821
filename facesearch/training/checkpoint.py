"""The resumable checkpoint (``out/checkpoint.pt``): :class:`TrainState`, where a run stands, and the
identity of a run, which a resume must share.

The file is a plain dict of tensors, numbers and strings (read with ``weights_only=True``); its keys are
those checkpoints have always had, so a checkpoint of an older facesearch resumes, or is refused, as it
was then.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facesearch.files import write_private_atomic
from facesearch.training.data import Split
from facesearch.training.optim import load_optimizer_state
from facesearch.training.options import TrainingError, TrainOptions, people_hash

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainState:
    """Where a run stands, and everything its checkpoint holds.

    The epoch loop advances the counters; :meth:`capture` adds the states of the objects the run drives
    (model, optimiser, gradient scaler, random generators); :meth:`to_checkpoint` and
    :meth:`from_checkpoint` turn all of it into the checkpoint's dict and back; :meth:`restore` gives
    the loaded states back to this session's objects.
    """

    #: what must not change between a run and its resume (:func:`identity_of_run`)
    run: dict[str, Any]
    #: epochs done (the last one possibly cut short by the time budget)
    epoch: int = 0
    step: int = 0
    #: seconds of training (the epoch loop), over every session of a resumed run
    train_s: float = 0.0
    images_seen: int = 0
    #: the running threshold at which the logged batch pair accuracy is measured
    threshold_ema: float = 0.0
    #: one record per epoch, as ``log`` received it
    history: list[dict[str, Any]] = field(default_factory=list)
    #: the epoch loop is over (every epoch run, or the time budget spent): a resume only calibrates and saves
    finished: bool = False
    stopped_by_time_budget: bool = False
    # the states of the objects the run drives, from capture() or a checkpoint (None before either)
    model: dict[str, torch.Tensor] | None = None
    optimizer: dict[str, Any] | None = None
    #: fp16's gradient scaler only
    scaler: dict[str, Any] | None = None
    numpy_rng: dict[str, Any] | None = None
    torch_rng: torch.Tensor | None = None
    #: the augmentation's generator, on the training device
    gen_rng: torch.Tensor | None = None
    #: on CUDA only
    cuda_rng: torch.Tensor | None = None
    #: under torchrun: every rank's generators, in rank order (:func:`rank_rngs`; rank 0's are also the
    #: fields above, what a single process or an older checkpoint has); None in one process
    rank_rngs: list[dict[str, Any]] | None = None

    def capture(self, model: torch.nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                rng: np.random.Generator, gen: torch.Generator, device: torch.device,
                ranks: list[dict[str, Any]] | None = None) -> TrainState:
        """A copy of this state with the current states of the run's objects (the model's on the CPU);
        ``ranks``: every rank's :func:`rank_rngs`, under torchrun."""
        return dataclasses.replace(
            self,
            rank_rngs=ranks if ranks is not None and len(ranks) > 1 else None,
            model={k: v.detach().cpu() for k, v in model.state_dict().items()},
            optimizer=opt.state_dict(),
            scaler=scaler.state_dict() if scaler.is_enabled() else None,
            numpy_rng=rng.bit_generator.state,
            torch_rng=torch.get_rng_state(),
            gen_rng=gen.get_state(),
            cuda_rng=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        )

    def restore(self, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, rng: np.random.Generator,
                gen: torch.Generator, device: torch.device, cuda_graph: bool, rank: int = 0, world: int = 1) -> None:
        """Give the loaded optimiser, scaler and generator states to this session's objects (the model's
        weights are loaded where the model is built). Rank ``rank`` of ``world`` takes its own generators
        when the checkpoint has them for as many ranks, else rank 0's (a checkpoint of one process, of an
        older facesearch or of another number of ranks: the run goes on, not exactly as it would have)."""
        load_optimizer_state(opt, self.optimizer, device, cuda_graph)
        if self.scaler is not None and scaler.is_enabled():
            scaler.load_state_dict(self.scaler)
        mine = {"numpy_rng": self.numpy_rng, "torch_rng": self.torch_rng, "gen_rng": self.gen_rng,
                "cuda_rng": self.cuda_rng}
        if self.rank_rngs is not None and len(self.rank_rngs) == world:
            mine = dict(self.rank_rngs[rank])
            mine["numpy_rng"] = json.loads(mine["numpy_rng"])
        rng.bit_generator.state = mine["numpy_rng"]
        torch.set_rng_state(mine["torch_rng"])
        gen.set_state(mine["gen_rng"])
        if device.type == "cuda" and mine.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(mine["cuda_rng"], device)

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint's dict (history and the numpy generator as JSON text; ``scaler`` and
        ``cuda_rng`` only when there are such states)."""
        d = {
            "run": self.run,
            "model": self.model,
            "optimizer": self.optimizer,
            "epoch": self.epoch,
            "step": self.step,
            "train_s": self.train_s,
            "images_seen": self.images_seen,
            "threshold_ema": self.threshold_ema,
            "history": json.dumps(self.history),
            "numpy_rng": json.dumps(self.numpy_rng),
            "torch_rng": self.torch_rng,
            "gen_rng": self.gen_rng,
            "finished": self.finished,
            "stopped_by_time_budget": self.stopped_by_time_budget,
        }
        if self.scaler is not None:
            d["scaler"] = self.scaler
        if self.cuda_rng is not None:
            d["cuda_rng"] = self.cuda_rng
        if self.rank_rngs is not None:
            d["rank_rngs"] = self.rank_rngs
        return d

    @classmethod
    def from_checkpoint(cls, d: dict[str, Any]) -> TrainState:
        return cls(
            run=d.get("run") or {},
            model=d["model"],
            optimizer=d["optimizer"],
            epoch=d["epoch"],
            step=d["step"],
            train_s=d["train_s"],
            images_seen=d["images_seen"],
            threshold_ema=d["threshold_ema"],
            history=json.loads(d["history"]),
            numpy_rng=json.loads(d["numpy_rng"]),
            torch_rng=d["torch_rng"],
            gen_rng=d["gen_rng"],
            finished=bool(d.get("finished")),
            stopped_by_time_budget=bool(d.get("stopped_by_time_budget")),
            scaler=d.get("scaler"),
            cuda_rng=d.get("cuda_rng"),
            rank_rngs=d.get("rank_rngs"),
        )


def rank_rngs(rng: np.random.Generator, gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    """This process's generators as a checkpoint keeps them (the numpy one as JSON text): under torchrun
    each rank's are gathered into :attr:`TrainState.rank_rngs`."""
    d = {"numpy_rng": json.dumps(rng.bit_generator.state), "torch_rng": torch.get_rng_state(),
         "gen_rng": gen.get_state()}
    if device.type == "cuda":
        d["cuda_rng"] = torch.cuda.get_rng_state(device)
    return d


def save_checkpoint(path: Path, state: TrainState) -> None:
    # atomic and owner-only (weights trained on faces), a temp name per writer, orphans of killed runs removed
    write_private_atomic(path, lambda f: torch.save(state.to_checkpoint(), f))


def load_checkpoint(path: Path, run_id: dict[str, Any]) -> TrainState:
    """The checkpoint at ``path``, refused (:class:`TrainingError`, naming the differences) unless it was
    made by the run ``run_id`` identifies."""
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise TrainingError(f"cannot resume: no checkpoint at {path}") from e
    except Exception as e:
        raise TrainingError(f"cannot resume: {path} is not a readable checkpoint ({e})") from e
    differ = run_differences(d.get("run") or {}, run_id)
    if differ:
        raise TrainingError(
            f"cannot resume from {path}: it was made with other data or options ({differ}); "
            f"resume with the options the run was started with"
        )
    try:
        return TrainState.from_checkpoint(d)
    except KeyError as e:
        raise TrainingError(f"cannot resume: {path} is not a readable checkpoint (no {e})") from e


def identity_of_run(options: TrainOptions, split: Split, init_record: dict | None, teacher_sha256: str | None = None,
                    unlabelled_images: int | None = None) -> dict:
    """What must not change between a run and its resume (where the weights started included: a resume
    must not record another lineage than the run it continues). Frozen blocks, a teacher and unlabelled
    images are part of it only when the run has them, so a checkpoint of a run without them (or of an
    older facesearch) resumes as before."""
    run = {
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
    if options.train_last_blocks is not None:
        run["train_last_blocks"] = options.train_last_blocks
    if teacher_sha256 is not None:
        run["teacher"] = {"weights_sha256": teacher_sha256, "distill": options.distill,
                          "weight": options.distill_weight, "unlabelled_images": unlabelled_images,
                          "unlabelled_per_batch": options.unlabelled_per_batch if unlabelled_images else None}
    return run


def run_differences(saved: dict, now: dict) -> str:
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
