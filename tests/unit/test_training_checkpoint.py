"""TrainState and the checkpoint file: the keys checkpoints have always had, and a faithful round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facesearch.training import TrainingError, TrainOptions, TrainStep, make_optimizer
from facesearch.training.checkpoint import TrainState, load_checkpoint, save_checkpoint
from facesearch.losses import ContrastiveLoss

#: the keys of a checkpoint written before TrainState (the scaler's and CUDA's only where they exist)
KEYS = {"run", "model", "optimizer", "epoch", "step", "train_s", "images_seen", "threshold_ema", "history",
        "numpy_rng", "torch_rng", "gen_rng", "finished", "stopped_by_time_budget"}
CPU = torch.device("cpu")
RUN = {"backbone": "tiny", "p": 2, "k": 2, "schedule": {"lr": 1e-3, "epochs": 4, "time_budget": None}}


def _objects():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    opt = make_optimizer(model, TrainOptions(data=".", out="."), torch.device("cpu"))
    step = TrainStep(model, ContrastiveLoss(), opt, None, torch.device("cpu"))
    step(torch.rand(4, 3, 2, 2), torch.tensor([0, 0, 1, 1]))  # an optimiser state with step counters
    return model, opt, step.scaler, np.random.default_rng(3), torch.Generator().manual_seed(4)


def test_the_checkpoint_keeps_its_keys_and_round_trips(tmp_path):
    model, opt, scaler, rng, gen = _objects()
    state = TrainState(run=RUN, epoch=2, step=10, train_s=3.5, images_seen=40, threshold_ema=0.4,
                       history=[{"epoch": 1, "loss": 0.5}], stopped_by_time_budget=True)
    snap = state.capture(model, opt, scaler, rng, gen, torch.device("cpu"))
    d = snap.to_checkpoint()
    assert set(d) == KEYS  # no fp16 scaler, no CUDA: as before, those keys are left out
    assert json.loads(d["history"]) == state.history and json.loads(d["numpy_rng"]) == rng.bit_generator.state
    save_checkpoint(tmp_path / "checkpoint.pt", snap)
    back = load_checkpoint(tmp_path / "checkpoint.pt", RUN)
    assert (back.epoch, back.step, back.train_s, back.images_seen, back.threshold_ema, back.history,
            back.finished, back.stopped_by_time_budget) == (2, 10, 3.5, 40, 0.4, state.history, False, True)
    assert all(torch.equal(back.model[k], v) for k, v in model.state_dict().items())

    # restoring gives the generators back where they were when captured
    expect = (rng.random(), float(torch.rand(1)), float(torch.rand(1, generator=gen)))
    back.restore(opt, scaler, rng, gen, torch.device("cpu"), cuda_graph=False)
    assert (rng.random(), float(torch.rand(1)), float(torch.rand(1, generator=gen))) == expect


def test_a_checkpoint_of_another_run_is_refused_naming_what_differs(tmp_path):
    model, opt, scaler, rng, gen = _objects()
    save_checkpoint(tmp_path / "c.pt", TrainState(run=RUN).capture(model, opt, scaler, rng, gen, CPU))
    other = dict(RUN, p=4, schedule=dict(RUN["schedule"], lr=5e-4))
    differ = r"other data or options \(p 2 \(checkpoint\) vs 4; lr 0.001 \(checkpoint\) vs 0.0005\)"
    with pytest.raises(TrainingError, match=differ):
        load_checkpoint(tmp_path / "c.pt", other)
    with pytest.raises(TrainingError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt", RUN)


def test_a_checkpoint_from_before_the_schedule_was_recorded_still_resumes(tmp_path):
    model, opt, scaler, rng, gen = _objects()
    old = TrainState(run={k: v for k, v in RUN.items() if k != "schedule"}, epoch=1)
    d = old.capture(model, opt, scaler, rng, gen, torch.device("cpu")).to_checkpoint()
    del d["finished"], d["stopped_by_time_budget"]  # read with defaults, as they always were
    torch.save(d, tmp_path / "c.pt")
    back = load_checkpoint(tmp_path / "c.pt", RUN)
    assert back.epoch == 1 and back.finished is False and back.stopped_by_time_budget is False
