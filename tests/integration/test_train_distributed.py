"""Distributed training: two CPU processes with gloo train like one process with the same global batch.

Real processes (torch.multiprocessing, spawn) in a real gloo group on 127.0.0.1; the real sampler
(:class:`PKSampler` with rank/world), the real :class:`TrainStep` (embeddings gathered with gradients to
the local part, gradients summed) and the real contrastive loss; a tiny network (no batch norm: on CPU
each rank normalises with its own batch, see :mod:`facesearch.training.distributed`) so it takes seconds.

Run as ``python -m tests.integration.test_train_distributed`` it prints the figures.
"""

from __future__ import annotations

import json
import socket
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

P, K, STEPS, WORLD = 4, 3, 6, 2
#: the equivalence: the same loss at every step and the same weights after STEPS AdamW steps, to within
#: float32 rounding (the global gradient is summed in another order)
LOSS_TOL, WEIGHT_TOL = 1e-5, 1e-5


def _data():
    rng = np.random.default_rng(0)
    counts = rng.integers(3, 7, 24)
    centres = rng.standard_normal((24, 20)).astype(np.float32)
    x = np.concatenate([c + 0.7 * rng.standard_normal((n, 20)).astype(np.float32) for c, n in zip(centres, counts)])
    offsets = np.r_[0, np.cumsum(counts)[:-1]]
    return torch.from_numpy(x), offsets, counts


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))

    def forward(self, x):
        from facesearch import distance

        return distance.normalize(self.net(x))


class LocalOnly:
    """A wrong distributed step for the negative control: each rank's loss on its own batch only."""

    def __init__(self, dist):
        self.dist = dist
        self.rank, self.world, self.active = dist.rank, dist.world, True

    def gather(self, emb, labels):
        return emb, labels

    def sum_gradients(self, params):
        self.dist.sum_gradients(params)


def train(rank: int, world: int, local_only: bool = False):
    """STEPS steps of rank ``rank`` of ``world``; ``(losses, flat weights)``."""
    from facesearch.losses import ContrastiveLoss
    from facesearch.training.data import PKSampler
    from facesearch.training.distributed import Dist
    from facesearch.training.step import TrainStep

    torch.manual_seed(0)
    x, offsets, counts = _data()
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    dist = Dist(rank, world, backend="gloo") if world > 1 else Dist()
    step = TrainStep(model, ContrastiveLoss(0.0, 0.6, "hard"), opt, None, torch.device("cpu"),
                     dist=LocalOnly(dist) if local_only else dist)
    sampler = PKSampler(offsets, counts, P * WORLD // world, K, np.random.default_rng(1), rank, world)
    losses = []
    while len(losses) < STEPS:
        for idx, lab in sampler.epoch():
            loss, _ = step(x[idx], torch.from_numpy(lab))
            losses.append(float(loss.detach()))
            if len(losses) == STEPS:
                break
    return np.array(losses), torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()


def _rank(rank: int, port: int, out: str):
    import torch.distributed as tdist

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        for local_only in (False, True):
            losses, weights = train(rank, WORLD, local_only)
            np.savez(f"{out}-{int(local_only)}-{rank}.npz", losses=losses, weights=weights)
    finally:
        tdist.destroy_process_group()


def run_two(tmp: str):
    """The two ranks, trained right and (the negative control) with a per-rank loss."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(port, tmp), nprocs=WORLD, join=True, start_method="spawn")
    return [[np.load(f"{tmp}-{w}-{r}.npz") for r in range(WORLD)] for w in (0, 1)]


def figures(tmp: str) -> dict:
    torch.set_num_threads(1)
    one_losses, one_weights = train(0, 1)
    ranks, wrong = run_two(tmp)
    return {
        "loss_diff": float(np.abs(ranks[0]["losses"] - one_losses).max()),
        "weight_diff": float(np.abs(ranks[0]["weights"] - one_weights).max()),
        "ranks_weight_diff": float(np.abs(ranks[0]["weights"] - ranks[1]["weights"]).max()),
        "local_only_weight_diff": float(np.abs(wrong[0]["weights"] - one_weights).max()),
        "weight_change": float(np.abs(one_weights - train_init_weights()).max()),
        "losses_one": one_losses.round(6).tolist(), "losses_rank0": ranks[0]["losses"].round(6).tolist(),
    }


def train_init_weights():
    torch.manual_seed(0)
    return torch.cat([p.detach().reshape(-1) for p in Tiny().parameters()]).numpy()


def test_two_gloo_ranks_train_like_one_process_of_the_global_batch(tmp_path):
    f = figures(str(tmp_path / "r"))
    assert f["weight_change"] > 1e-2  # it trained: the comparison below is not between untouched weights
    assert f["loss_diff"] <= LOSS_TOL and f["weight_diff"] <= WEIGHT_TOL, f
    assert f["ranks_weight_diff"] == 0.0  # every rank took the same step (the same summed gradient)
    # the negative control: a per-rank loss (no gather) trains differently, far beyond the tolerance
    assert f["local_only_weight_diff"] > 100 * WEIGHT_TOL, f


def test_the_sampler_splits_one_global_batch_across_ranks():
    from facesearch.training.data import PKSampler

    _, offsets, counts = _data()
    one = list(PKSampler(offsets, counts, 2 * P, K, np.random.default_rng(3)).epoch())
    parts = [list(PKSampler(offsets, counts, P, K, np.random.default_rng(3), r, 2).epoch()) for r in range(2)]
    assert len(one) == len(parts[0]) == len(parts[1]) == len(counts) // (2 * P)
    for s, (idx, lab) in enumerate(one):
        assert (np.concatenate([parts[0][s][0], parts[1][s][0]]) == idx).all()
        assert (np.concatenate([parts[0][s][1], parts[1][s][1]]) == lab).all()
        ident = np.searchsorted(offsets, idx, side="right") - 1
        assert not set(ident[: P * K]) & set(ident[P * K:])  # the ranks' identities never overlap


@pytest.fixture
def lfw_people(tmp_path):
    """The set-up both torchrun tests share: skip without the shared LFW pack and the ImageNet MobileNetV2
    checkpoint, else ``people(n)`` -> ``(lfw zip, weights, people file)`` with the first ``n`` LFW people
    (name order) who have 4 to 10 images, written to ``tmp_path / "people.txt"`` for ``--include-people``."""
    from pathlib import Path

    from facesearch.datasets import ImageFolder

    shared = Path(__file__).resolve().parents[2].parent / "shared"
    lfw, weights = shared / "data" / "lfw" / "lfw-deepfunneled-112.zip", shared / "weights" / "mobilenet_v2-b0353104.pth"
    if not (lfw.is_file() and weights.is_file()):
        pytest.skip("needs the shared LFW pack and the ImageNet MobileNetV2 checkpoint")
    folder = ImageFolder(lfw)

    def people(n: int):
        path = tmp_path / "people.txt"
        path.write_text("\n".join([p for p in folder.identities() if 4 <= len(folder.items[p]) <= 10][:n]) + "\n")
        return lfw, weights, path

    return people


def _torchrun(entry: list[str], train_args: list[str], timeout: float = 120):
    """``torchrun --nproc-per-node 2 ENTRY train TRAIN_ARGS`` on a free local port, one OpenMP thread a rank."""
    import os
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(port), *entry, "train", *train_args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_facesearch_train_under_torchrun_on_two_cpu_processes(tmp_path, lfw_people):
    """The command itself: two gloo ranks train, rank 0 alone calibrates, writes the model (one summary on
    stdout) and the checkpoint, which records two processes and the global batch."""
    lfw, weights, people = lfw_people(48)
    out = tmp_path / "model"
    r = _torchrun(["-m", "facesearch"], [
        str(lfw), "--out", str(out), "--backbone", "mobilenet_v2", "--pretrained", str(weights), "--input-size", "48",
        "--epochs", "1", "--pk", "4", "4", "--include-people", str(people), "--calibration-fraction", "0.25",
        "--device", "cpu", "--checkpoint-every", "0", "--keep-checkpoint", "--json"], timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)  # one JSON document: rank 1 printed nothing
    t = summary["training"]
    extra = t.get("extra", t)
    assert extra["processes"] == 2 and extra["global_batch"] == 2 * 4 * 4
    assert t["steps"] == 36 // 8 and t["images_seen"] == t["steps"] * 32  # 36 training people, 8 per global step
    assert 0 < summary["threshold"] < 2
    assert json.loads((out / "model.json").read_text())["threshold"] == summary["threshold"]
    assert (out / "checkpoint.pt").is_file()


#: resume under torchrun: the resumed run's weights against the uninterrupted run's. Both are two gloo ranks
#: on one thread each doing the same float operations in the same order, so they should agree exactly;
#: the tolerance leaves room for float32 rounding only
RESUME_TOL = 1e-6


def test_a_run_stopped_after_its_checkpoint_resumes_under_torchrun_to_the_same_weights(tmp_path, lfw_people):
    """Two gloo ranks train 2 epochs (4 steps each, full augmentation: each rank draws its own flips and
    warps); another run of the same options is stopped right after epoch 1's checkpoint (rank 0 raises,
    rank 1 fails at its next collective, torchrun stops both) and resumed under torchrun with two ranks.
    The resumed model must have the uninterrupted one's weights: every rank must continue its own random
    streams, not rank 0's (the checkpoint keeps each rank's)."""
    from pathlib import Path

    lfw, weights, people = lfw_people(40)
    common = [str(lfw), "--backbone", "mobilenet_v2", "--pretrained", str(weights), "--input-size", "32",
              "--epochs", "2", "--pk", "4", "2", "--include-people", str(people), "--calibration-fraction", "0.2",
              "--device", "cpu", "--checkpoint-every", "0", "--keep-checkpoint", "--json", "--quiet"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    r = _torchrun(["-m", "facesearch"], ["--out", str(whole), *common])
    assert r.returncode == 0, r.stderr[-3000:]
    stop = Path(__file__).with_name("train_stop_after_epoch.py")
    r = _torchrun([str(stop)], ["--out", str(part), *common])
    assert r.returncode != 0 and "stopped after the checkpoint of epoch 1" in r.stderr, r.stderr[-3000:]
    assert not (part / "model.json").exists()
    stopped = torch.load(part / "checkpoint.pt", weights_only=True)
    assert stopped["epoch"] == 1 and stopped["step"] == 4 and not stopped["finished"]
    r = _torchrun(["-m", "facesearch"], ["--out", str(part), *common, "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    a = torch.load(whole / "weights.pt", weights_only=True)
    b = torch.load(part / "weights.pt", weights_only=True)
    a, b = a.get("state_dict", a), b.get("state_dict", b)
    assert a.keys() == b.keys()
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    print(f"resumed vs uninterrupted: max |weight diff| {diff:.3g}")
    assert diff <= RESUME_TOL, f"resumed weights differ from the uninterrupted run's by {diff:.3g}"
    # the comparison is not between weights that epoch 2 left alone: it moved them well beyond the tolerance
    mid = stopped["model"]
    moved = max(float((a[k].double() - mid[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    assert moved > 1e3 * RESUME_TOL, moved
    steps = [json.loads((d / "model.json").read_text())["training"]["steps"] for d in (whole, part)]
    assert steps == [8, 8]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(figures(d + "/r"), indent=1))
    sys.exit(0)
