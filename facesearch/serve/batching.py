"""Micro-batching: the face crops of requests that arrive together are embedded in one forward pass.

A request's handler hands its crops to :meth:`MicroBatcher.submit` and waits on the future it gets. A
worker thread takes the first waiting request, then gathers whatever else arrives within ``max_wait_s``
(or until ``max_batch`` crops), embeds them all at once and hands each request its rows. One client
alone waits at most ``max_wait_s`` more than before; many clients share forward passes
(``benchmarks/serve.py`` measures both). ``workers`` threads do this side by side: on a CPU one per core,
each embedding single-threaded (a parallel region on a busy machine waits for the other cores), so every
core runs forward passes; on a GPU one, whose batches grow instead.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

Embed = Callable[[Sequence[np.ndarray]], np.ndarray]


@dataclass
class _Job:
    crops: Sequence[np.ndarray]
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """Embeds crops for many threads, batching those that wait together. ``observe(n)`` (optional) is told
    the size of each batch (the service's metrics)."""

    def __init__(self, embed: Embed, max_batch: int = 64, max_wait_s: float = 0.004,
                 observe: Callable[[int], None] | None = None, workers: int = 1):
        if max_batch < 1 or max_wait_s < 0 or workers < 1:
            raise ValueError("max_batch and workers must be >= 1 and max_wait_s >= 0")
        self.embed, self.max_batch, self.max_wait_s, self.observe = embed, max_batch, max_wait_s, observe
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._threads = [threading.Thread(target=self._run, name=f"facesearch-embed-{i}", daemon=True)
                         for i in range(workers)]
        self._closed = False
        for t in self._threads:
            t.start()

    def submit(self, crops: Sequence[np.ndarray]) -> Future:
        """A future of the crops' embeddings (len(crops) x D), or of the error embedding them raised."""
        job = _Job(list(crops))
        if self._closed:
            job.future.set_exception(RuntimeError("the service is shutting down"))
        elif not job.crops:
            job.future.set_result(np.zeros((0, 0), np.float32))
        else:
            self._jobs.put(job)
        return job.future

    def close(self, timeout: float = 10.0) -> None:
        """Finish what was submitted, then stop the workers (closing twice does nothing)."""
        if self._closed:
            return
        self._closed = True
        self._jobs.put(None)  # each worker that takes the marker puts it back for the next
        for t in self._threads:
            t.join(timeout)

    def _gather(self, first: _Job) -> list[_Job]:
        jobs, n = [first], len(first.crops)
        deadline = time.monotonic() + self.max_wait_s
        while n < self.max_batch:
            left = deadline - time.monotonic()
            try:
                job = self._jobs.get(timeout=left) if left > 0 else self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:  # closing: put the marker back for the loop, embed what was gathered
                self._jobs.put(None)
                break
            jobs.append(job)
            n += len(job.crops)
        return jobs

    def _run(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                self._jobs.put(None)
                return
            jobs = self._gather(first)
            crops = [c for j in jobs for c in j.crops]
            try:
                emb = self.embed(crops)
            except BaseException as e:  # noqa: BLE001 - every waiting request gets the error, the worker lives
                if len(jobs) == 1:
                    jobs[0].future.set_exception(e)
                    continue
                for j in jobs:  # one bad batch member must not fail the others: each alone
                    try:
                        j.future.set_result(self.embed(j.crops))
                    except BaseException as e1:  # noqa: BLE001
                        j.future.set_exception(e1)
                continue
            if self.observe is not None:
                self.observe(len(crops))
            start = 0
            for j in jobs:
                j.future.set_result(emb[start:start + len(j.crops)])
                start += len(j.crops)
