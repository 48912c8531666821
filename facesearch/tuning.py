"""Choosing how to run a repeated step by measuring real runs of it: enroll's threads and images per pass
(``model.inference.ThreadTuner``) and a single probe's threads (``index.faiss_index.ProbeThreads``)."""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable

import numpy as np


class MeasuredChoice:
    """Which of a few ways to run a step is the fastest, by measuring real runs: after ``warmup`` runs on
    :attr:`current`, runs go through the choices in turn (run ``k`` of a round takes ``choices[k % n]``) until
    each has run ``trials`` times; the one with the smallest median cost over its last ``trials`` is then
    :attr:`current`, and a new round starts every ``every`` runs (the machine's load changes). The caller
    takes :meth:`next` before a run and gives its cost to :meth:`record` after it; only trial runs count.
    Safe to share between threads (a cost recorded while another thread's run began is counted all the same:
    an estimate, never an error)."""

    def __init__(self, choices: Iterable[Hashable], trials: int, every: int, warmup: int = 0, first=None):
        self.choices = list(choices)
        self.trials, self.every, self.warmup = trials, every, warmup
        self.current = self.choices[0] if first is None else first
        self.runs = 0
        #: the costs recorded for each choice (only those tried)
        self.times: dict = {}
        self._lock = threading.Lock()

    def _trial(self, k: int) -> bool:
        return self.warmup <= k < self.warmup + len(self.choices) * self.trials

    def next(self):
        """The choice for the next run."""
        with self._lock:
            k = self.runs % self.every
            self.runs += 1
            if self._trial(k):
                return self.choices[k % len(self.choices)]
            if k == self.warmup + len(self.choices) * self.trials:  # the round's trials are done
                tried = [c for c in self.choices if self.times.get(c)]
                if len(tried) > 1:
                    self.current = min(tried, key=lambda c: float(np.median(self.times[c][-self.trials:])))
            return self.current

    def record(self, choice, cost: float) -> None:
        """The cost of a run of ``choice`` (kept when the last run begun was a trial)."""
        with self._lock:
            if self.runs and self._trial((self.runs - 1) % self.every):
                self.times.setdefault(choice, []).append(cost)
