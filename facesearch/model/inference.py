"""Embedding fast on the CPU: batch norms folded into convolutions, and torch's thread count chosen by
measurement while enrolling. Used by the gallery; torch is imported inside the functions."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from facesearch.model import encoder

log = logging.getLogger("facesearch")


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


class ThreadTuner:
    """Torch intra-op threads for enrolling, chosen by measurement: after one warm-up batch, batches
    alternate between one thread and all of them until each has run ``trials`` batches, then the faster
    (median wall time per image) is kept; the choice is measured again every ``every`` batches. On an
    idle 2-core machine all threads embed faster (measured 246-272 vs 186-205 images/s); when other
    processes also want the CPU, a 2-thread parallel region waits for a busy second core and one thread
    is 3-4x faster (158 vs 36-48 images/s). See benchmarks/README.md."""

    def __init__(self, threads: int, trials: int = 2, every: int = 100):
        self.options, self.trials, self.every = (1, threads), trials, every
        self.times: dict[int, list[float]] = {1: [], threads: []}
        self.batch, self.current, self.t0 = 0, threads, 0.0

    def _exploring(self) -> bool:
        return 1 <= self.batch % self.every <= 2 * self.trials

    def start(self) -> None:
        import time

        import torch

        k = self.batch % self.every
        if self._exploring():
            self.current = self.options[k % 2]
        elif k == 2 * self.trials + 1:
            self.current = min(self.options, key=lambda t: float(np.median(self.times[t][-self.trials:])))
        torch.set_num_threads(self.current)
        self.t0 = time.perf_counter()

    def stop(self, n: int) -> None:
        import time

        if self._exploring():
            self.times[self.current].append((time.perf_counter() - self.t0) / max(n, 1))
        self.batch += 1
