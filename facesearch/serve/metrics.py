"""Request counts, latency histograms, batch sizes and the gallery's size, in the Prometheus text format
(version 0.0.4: what ``/metrics`` serves and any Prometheus scrapes)."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

#: seconds; the last bucket is +Inf
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Histogram:
    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, cumulative = [], 0
        sep = "," if labels else ""
        for bound, c in zip(list(self.buckets) + ["+Inf"], self.counts):
            cumulative += c
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound}"}} {cumulative}')
        lb = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{lb} {self.total:.6f}", f"{name}_count{lb} {self.n}"]
        return out


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Thread-safe counters and histograms; :meth:`render` writes them with the gauges given."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.batches = Histogram(BATCH_BUCKETS)
        self.rate_limited = 0

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, method, status)] += 1
            self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, size: int) -> None:
        with self._lock:
            self.batches.observe(size)

    def limited(self) -> None:
        with self._lock:
            self.rate_limited += 1

    def render(self, gauges: dict[str, tuple[str, float]]) -> str:
        """The text exposition; ``gauges``: name -> (help, value)."""
        lines = ["# HELP facesearch_requests_total HTTP requests by route, method and status.",
                 "# TYPE facesearch_requests_total counter"]
        with self._lock:
            for (route, method, status), n in sorted(self.requests.items()):
                lines.append(f'facesearch_requests_total{{route="{_label(route)}",method="{method}",'
                             f'status="{status}"}} {n}')
            lines += ["# HELP facesearch_request_duration_seconds Time to answer a request, by route.",
                      "# TYPE facesearch_request_duration_seconds histogram"]
            for route, h in sorted(self.latency.items()):
                lines += h.lines("facesearch_request_duration_seconds", f'route="{_label(route)}"')
            lines += ["# HELP facesearch_embed_batch_size Face crops embedded together in one forward pass.",
                      "# TYPE facesearch_embed_batch_size histogram"]
            lines += self.batches.lines("facesearch_embed_batch_size", "")
            lines += ["# HELP facesearch_rate_limited_total Requests refused by the per-key rate limit.",
                      "# TYPE facesearch_rate_limited_total counter", f"facesearch_rate_limited_total {self.rate_limited}"]
        for name, (help_, value) in gauges.items():
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(lines) + "\n"
