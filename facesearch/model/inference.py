"""Embedding fast on the CPU: batch norms folded into convolutions, a forward batch that suits the model,
and torch's thread count chosen by measurement while enrolling. Used by the gallery; torch is imported
inside the functions."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from facesearch.tuning import MeasuredChoice

if TYPE_CHECKING:
    from facesearch.model import encoder

log = logging.getLogger("facesearch")

#: on the CPU, a forward pass takes at most this many images...
MAX_FORWARD_BATCH = 64
#: ... and at most as many as keep its largest activation (one layer's output, all images of the batch)
#: within this many bytes, about a last-level cache (32 MiB on the 2-core EPYC measured). Images/s against
#: the forward batch, one torch thread, median of 4 runs at load 7-8 (benchmarks/README.md): MobileNetV2
#: 112 px (largest activation 1.15 MB an image: batch 16) 138 / 154 / 175 / 181 / 154 at batch 4 / 8 / 16 /
#: 32 / 64; SFace (3.06 MB, its first 64 channels at full resolution: batch 8) 24.8 / 25.1 / 21.3 / 19.3 /
#: 17.4. One batch of 64 for both, as enroll had, cost SFace 30% and MobileNetV2 12%.
ACTIVATION_BUDGET = 32 * 2**20


def fold_batch_norms(module) -> int:
    """In place, on an eval-mode module: every ``Conv2d`` directly followed by a ``BatchNorm2d`` in an
    ``nn.Sequential`` becomes one ``Conv2d`` with the normalisation folded in (the norm an ``Identity``).
    Returns how many were folded. (All of MobileNetV2's; a ResNet keeps the ones its blocks call by name.)

    Not ``torch.fx`` tracing: that patches ``nn.Module.__call__`` for the whole process while it runs, so
    another thread embedding at the same moment fails ("module is not installed as a submodule")."""
    import torch.nn as nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = nn.Identity()
                folded += 1
    return folded


def inference_copy(model: "encoder.Encoder") -> "encoder.Encoder":
    """The same encoder, faster on the CPU: batch norms folded into the convolutions and channels-last
    layout (embeddings equal to the original's within float rounding; 2.5x less CPU per image, measured in
    benchmarks/README.md). Falls back to the model itself if folding fails."""
    if model.device.type != "cpu":
        return model
    try:
        import copy

        import torch

        fast = copy.deepcopy(model).eval()
        fold_batch_norms(fast.trunk)
        return fast.to(memory_format=torch.channels_last)
    except Exception as e:  # pragma: no cover - depends on the backbone
        log.info("using the unfused encoder (%s)", e)
        return model


def largest_activation_bytes(model: "encoder.Encoder") -> int:
    """Bytes of the largest output of any one layer when ``model`` embeds one image (a forward pass of a
    blank image, outputs measured by hooks on every leaf module). Call it on a model no other thread uses."""
    import torch

    largest = [0]

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size())

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        size = model.config.input_size
        with torch.inference_mode():
            model.eval()(torch.zeros(1, 3, size, size, device=model.device))
    finally:
        for h in handles:
            h.remove()
    return largest[0]


def forward_batch(model: "encoder.Encoder", budget: int = ACTIVATION_BUDGET, most: int = MAX_FORWARD_BATCH) -> int | None:
    """Images per forward pass that suit ``model`` on the CPU: the largest power of two up to ``most`` whose
    largest activation fits in ``budget`` bytes (see :data:`ACTIVATION_BUDGET`; mirror-image averaging
    doubles what a pass holds), at least 1. None off the CPU, where larger batches only help."""
    if model.device.type != "cpu":
        return None
    per_image = largest_activation_bytes(model) * (2 if getattr(model.config, "flip_average", False) else 1)
    fits = max(1, budget // max(per_image, 1))
    n = 1
    while n * 2 <= min(fits, most):
        n *= 2
    return n


class ThreadTuner:
    """Torch intra-op threads for enrolling, chosen by measurement, one forward pass at a time: the first
    pass (a warm-up) runs on one thread, then passes alternate between all threads and one until each has
    run ``trials`` passes, then the faster (median wall time per image) is kept; the choice is measured
    again every ``every`` passes. On an idle 2-core machine all threads embed faster (measured 246-272 vs
    186-205 images/s); when other processes also want the CPU, a 2-thread parallel region waits for a busy
    second core and one thread is 3-4x faster (158 vs 36-48 images/s), up to 10x at load 8. A trial is one
    forward pass (16 images for MobileNetV2, 8 for SFace: :func:`forward_batch`), not an enroll batch of
    64, so a slow trial on a busy machine costs a quarter to an eighth of what it did. See
    benchmarks/README.md.

    Where ONNX Runtime embeds, the images per pass are chosen the same way (:meth:`offer_batches`: the
    model's forward batch and a quarter of it, each with both thread counts): it runs SFace fastest at 2-4
    images a pass, not torch's 8 (fp32 55.6 vs 44.3 images/s at 2 and 8 on one thread), and MobileNetV2 at
    8-16 (``python -m benchmarks.onnx_batch``, docs/speed.md)."""

    def __init__(self, threads: int, trials: int = 2, every: int = 400):
        self.options = (1, threads)
        #: the passes' schedule and times (the first pass of each round a warm-up on the current choice); what it
        #: chooses between: (threads, images per pass; None: the caller's own)
        self._m = MeasuredChoice([(1, None), (threads, None)], trials, every, warmup=1)
        self.current, self.current_batch, self.t0 = 1, None, 0.0

    @property
    def choices(self) -> list[tuple[int, int | None]]:
        return self._m.choices

    def offer_batches(self, sizes: Iterable[int]) -> None:
        """Let the trials also choose the images per pass among ``sizes`` (before the first pass only; a tuner
        carried on from an earlier call keeps what it has)."""
        sizes = list(dict.fromkeys(int(b) for b in sizes if b and b > 0))
        if self._m.runs or len(sizes) < 2 or any(b is not None for _, b in self.choices):
            return
        m = self._m
        self._m = MeasuredChoice([(t, b) for b in sizes for t in self.options], m.trials, m.every, m.warmup,
                                 first=m.current)

    def start(self) -> None:
        """Choose :attr:`current` (threads) and :attr:`current_batch` for the next pass, and set torch's
        threads where torch embeds (ONNX Runtime, which embeds without torch, picks its session by
        :attr:`current`)."""
        import sys
        import time

        self.current, self.current_batch = self._m.next()
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(self.current)
        self.t0 = time.perf_counter()

    def stop(self, n: int) -> None:
        import time

        self._m.record((self.current, self.current_batch), (time.perf_counter() - self.t0) / max(n, 1))


_counts_lock = threading.Lock()
_counts_users = 0
#: torch's and FAISS's thread counts as facesearch found them (read again whenever the main thread holds
#: :func:`thread_counts` first: a thread started while a count was lowered inherits it, the main thread not)
_counts_baseline: tuple[int, int] | None = None


@contextlib.contextmanager
def thread_counts() -> Iterator[tuple[int, int]]:
    """Hold while changing torch's and FAISS's thread counts for a while (a query's single thread, enroll's
    tuner); yields ``(torch, faiss)`` as they were before facesearch changed them, and sets them back to
    that on the way out. With OpenMP a count set in one thread holds for that thread and for every thread
    started after it: a thread that restored what it found when it began could find a query's single
    thread (it was started while a query ran) and leave it behind for the whole process. So the counts
    restored are the ones read when no holder had changed them, by the main thread when it can be.
    Torch is not imported for it: where ONNX Runtime embeds, torch's count is the default it would have (the
    cores this process may use) and is set back only if torch was imported meanwhile."""
    global _counts_users, _counts_baseline
    import sys

    import faiss

    with _counts_lock:
        torch = sys.modules.get("torch")
        if _counts_users == 0 and (_counts_baseline is None or threading.current_thread() is threading.main_thread()):
            import os

            torch_threads = torch.get_num_threads() if torch is not None else len(os.sched_getaffinity(0))
            _counts_baseline = (torch_threads, faiss.omp_get_max_threads())
        _counts_users += 1
        saved = _counts_baseline
    try:
        yield saved
    finally:
        with _counts_lock:
            _counts_users -= 1
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(saved[0])
        faiss.omp_set_num_threads(saved[1])
