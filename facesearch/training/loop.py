"""The third part of a run: the epoch loop, with its learning-rate schedule by steps or by time, its
running pair accuracy, and a checkpoint after an epoch."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np
import torch

from facesearch import distance, metrics
from facesearch.losses import (
    ContrastiveLoss,
    DistillationLoss,
    DistilledContrastiveLoss,
)
from facesearch.training.batches import to_device
from facesearch.training.checkpoint import TrainState, rank_rngs, save_checkpoint
from facesearch.training.data import PKSampler
from facesearch.training.freeze import TrainForward, set_train_mode
from facesearch.training.inputs import Inputs
from facesearch.training.optim import lr_factor, make_optimizer
from facesearch.training.options import TrainingError, TrainOptions
from facesearch.training.prepare import Decoded, Prepared, progress_bar
from facesearch.training.step import TrainStep


class Clock:
    """How far along its schedule a run is, from 0 to 1: by steps, or with a time budget by training
    time, whichever is further. The budget is what is left for training after this session's setup
    (decoding, ...), less an estimate of the tail (embedding the held-out images at about twice the
    training rate, saving); it is first estimated after a few steps, then again every 10 (the rate drifts)."""

    def __init__(self, options: TrainOptions, total_steps: int, setup_s: float, n_held_out: int, train_s: float,
                 embed_rate: float | None = None):
        self.options, self.total_steps, self.setup_s, self.n_held_out = options, total_steps, setup_s, n_held_out
        self.t0 = time.time() - train_s  # the wall clock at which train_s was 0, as seen from this session
        self.budget: float | None = None
        #: images/s of the whole network's forward, when measured (training on cached frozen outputs
        #: runs far faster than embedding the held-out images will)
        self.embed_rate = embed_rate

    def estimate(self, rate: float) -> None:
        """The training budget at ``rate`` images/s (stays None without a time budget)."""
        if self.options.time_budget is None:
            return
        embed_rate = self.embed_rate if self.embed_rate is not None else 2.0 * rate
        views = 2 if self.options.flip_average else 1
        tail = min(views * self.n_held_out / max(embed_rate, 1.0) + 20.0, 0.25 * self.options.time_budget)
        self.budget = self.options.time_budget - self.setup_s - tail

    def progress(self, state: TrainState) -> float:
        p = state.step / max(self.total_steps, 1)
        if self.budget is not None:
            p = max(p, state.train_s / max(self.budget, 1e-9))
        return p

    def lr_factor(self, state: TrainState) -> float:
        return lr_factor(self.progress(state), self.options.warmup_fraction, self.options.min_lr_factor)

    def after_step(self, state: TrainState) -> None:
        state.train_s = time.time() - self.t0
        if self.options.time_budget is not None and (self.budget is None and state.step >= 3 or state.step % 10 == 0):
            self.estimate(state.images_seen / max(state.train_s, 1e-9))
            if self.budget <= 0:
                raise TrainingError(
                    f"time_budget {self.options.time_budget:.0f}s leaves no time to train after decoding"
                )

    def spent(self, state: TrainState) -> bool:
        return self.budget is not None and state.train_s >= self.budget


def train_epochs(p: Prepared, data: Decoded, inputs: Inputs, progress: bool,
                 log: Callable[[str], None] | None) -> None:
    """Run the epochs left (none when the checkpoint's loop was over), advancing ``p.state``; write the
    checkpoint after an epoch once ``checkpoint_interval_s`` have passed, and after the last one."""
    o, device, state = p.options, p.device, p.state
    dist = p.dist
    sampler = PKSampler(data.offsets, data.counts, o.identities_per_batch, o.images_per_identity, p.rng,
                        dist.rank, dist.world)
    loss_fn = ContrastiveLoss(o.pos_margin, o.neg_margin, o.mining)
    if p.teacher is not None:
        loss_fn = DistilledContrastiveLoss(loss_fn, DistillationLoss(o.distill), o.distill_weight)
    opt = make_optimizer(p.model, o, device, capturable=o.cuda_graph)
    forward = TrainForward(p.model, p.cut, inputs.cached) if p.cut else p.model
    train_step = TrainStep(forward, loss_fn, opt, p.amp_dtype, device, cuda_graph=o.cuda_graph, dist=dist)
    if p.resumed:
        state.restore(opt, train_step.scaler, p.rng, p.gen, device, o.cuda_graph, dist.rank, dist.world)
    clock = Clock(o, sampler.steps_per_epoch() * o.epochs, time.time() - p.t_start, len(data.cal_labels),
                  state.train_s, embed_rate=inputs.embed_rate)
    log_rng = np.random.default_rng(o.seed + 2)
    set_train_mode(p.model, p.cut)
    p.out.mkdir(parents=True, exist_ok=True, mode=0o700)
    last_checkpoint = time.time()
    while state.epoch < o.epochs and not state.finished:
        loss, pair_accuracy, cut, distill = _epoch(p, inputs, sampler, train_step, clock, log_rng, progress)
        state.epoch += 1
        rate = state.images_seen / max(state.train_s, 1e-9)
        clock.estimate(rate)
        rec = {
            "epoch": state.epoch,
            "steps": state.step,
            "loss": loss,
            "pair_accuracy": pair_accuracy,
            "threshold": state.threshold_ema,
            "lr": o.lr * clock.lr_factor(state),
            "images_per_s": rate,
            "elapsed_s": time.time() - p.t_start,
            "partial": cut,
        }
        if distill is not None:
            rec["distill"] = distill
        state.history.append(rec)
        state.stopped_by_time_budget = state.stopped_by_time_budget or cut
        state.finished = cut or state.epoch >= o.epochs
        due = state.finished or time.time() - last_checkpoint >= o.checkpoint_interval_s
        if dist.active:  # rank 0's clock decides; then every rank's generators go into rank 0's checkpoint
            due = bool(dist.from_main(float(due))[0])
        ranks = dist.gather_objects(rank_rngs(p.rng, p.gen, device)) if due and dist.active else None
        if due and dist.main:
            save_checkpoint(p.checkpoint, state.capture(p.model, opt, train_step.scaler, p.rng, p.gen, device, ranks))
        if due:
            last_checkpoint = time.time()
        if log and dist.main:  # after the checkpoint: an exception raised here leaves a run resumable from the last one
            log(json.dumps(rec))


def _epoch(p: Prepared, inputs: Inputs, sampler: PKSampler, train_step: TrainStep, clock: Clock,
           log_rng: np.random.Generator, progress: bool) -> tuple[float, float, bool, float | None]:
    """One epoch, or its part until the time budget is spent. Returns the mean loss, the mean pair
    accuracy of the logged steps, whether the budget cut the epoch short, and the mean distillation
    term (None without a teacher)."""
    o, device, state = p.options, p.device, p.state
    batch_n = o.identities_per_batch * o.images_per_identity * p.dist.world  # the global batch
    if inputs.unlabelled is not None:
        batch_n += min(inputs.per_batch_unlabelled, inputs.n_unlabelled)
    distilled = isinstance(train_step.loss_fn, DistilledContrastiveLoss)
    ep_distill = torch.zeros((), device=device)
    # reading values back from a GPU waits for it: there, log every few steps only
    log_every = 1 if device.type == "cpu" else 10
    bar = progress_bar(progress, total=sampler.steps_per_epoch(), desc=f"epoch {state.epoch + 1}/{o.epochs}",
                       unit="batch")
    ep_loss = torch.zeros((), device=device)
    ep_acc, ep_n, ep_acc_n, acc, cut = 0.0, 0, 0, float("nan"), False
    for idx, lab in sampler.epoch():
        f = clock.lr_factor(state)
        if p.dist.active:  # what depends on the clock is rank 0's: every rank takes the same step
            (f,) = p.dist.from_main(f)
        train_step.set_lr(f)
        xb, tb = inputs.batch(idx, device, p.gen, p.rng)
        yb = to_device(lab, device)
        if device.type == "cuda" and xb.ndim == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        loss, emb = train_step(xb, yb, tb)
        state.step += 1
        state.images_seen += batch_n
        ep_loss += loss.detach()
        if distilled:
            ep_distill += train_step.loss_fn.last_distill
        ep_n += 1
        if state.step % log_every == 0:
            # balanced pair accuracy at the running threshold (fixed before this batch), then update it
            acc, thr = batch_pair_accuracy(emb[: len(lab)].detach().float(), yb, state.threshold_ema, log_rng)
            state.threshold_ema = 0.9 * state.threshold_ema + 0.1 * thr
            ep_acc += acc
            ep_acc_n += 1
        clock.after_step(state)
        if bar:
            if state.step % log_every == 0:
                bar.set_postfix(loss=f"{loss.detach().item():.4f}", pair_acc=f"{acc:.3f}",
                                thr=f"{state.threshold_ema:.3f}", lr=f"{o.lr * f:.2e}")
            bar.update(1)
        spent = clock.spent(state)
        if p.dist.active:
            spent = bool(p.dist.from_main(float(spent))[0])
        if spent:
            cut = True
            break
    if bar:
        bar.close()
    distill = float(ep_distill) / max(ep_n, 1) if distilled else None
    return float(ep_loss) / max(ep_n, 1), ep_acc / max(ep_acc_n, 1), cut, distill


def batch_pair_accuracy(emb: torch.Tensor, labels: torch.Tensor, threshold: float, rng: np.random.Generator):
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
