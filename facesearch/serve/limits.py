"""What a client may send and how often: a body size cap (an ASGI middleware, before anything is read into
memory) and a per-key token bucket."""

from __future__ import annotations

import json
import threading
import time


class TokenBuckets:
    """``rate`` requests a second per client, bursts up to ``burst``. :meth:`take` says whether one more
    request may go now and, if not, how many seconds until it may."""

    def __init__(self, rate: float, burst: int, max_clients: int = 10_000):
        if rate <= 0 or burst < 1:
            raise ValueError("the rate must be > 0 and the burst >= 1")
        self.rate, self.burst, self.max_clients = float(rate), float(burst), max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, client: str) -> tuple[bool, float]:
        now = time.monotonic()
        with self._lock:
            tokens, when = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - when) * self.rate)
            if len(self._buckets) >= self.max_clients and client not in self._buckets:
                # bounded memory under a flood of distinct clients: forget the full (idle) buckets
                self._buckets = {c: b for c, b in self._buckets.items() if b[0] < self.burst}
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                return True, 0.0
            self._buckets[client] = (tokens, now)
            return False, (1.0 - tokens) / self.rate


class BodyLimit:
    """Refuses a request body over ``max_bytes`` with 413: by its Content-Length before reading it, or as
    soon as a body sent without one (chunked) goes past the cap."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._refuse(send)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send):
        body = json.dumps({"error": f"the request body is larger than {self.max_bytes} bytes",
                           "status": 413}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
