"""A real ``facesearch serve`` process on 127.0.0.1 for the tests and benchmarks/serve.py: started on a free
port, waited for (bounded) until ``/readyz`` says ready, stopped with SIGTERM (then SIGKILL)."""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0
#: servers started and not stopped yet: stopped when the tests' process exits, whatever failed before
_running: list["Server"] = []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stop(self) -> None:
        if self in _running:
            _running.remove(self)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@atexit.register
def _stop_all() -> None:
    for server in list(_running):
        server.stop()


def start(home: Path, *args: str, model: str | None = None, log: Path | None = None,
          env: dict | None = None) -> Server:
    """``facesearch --home HOME [--model M] serve --port P ARGS...``, ready to answer."""
    port = free_port()
    log = log or home.parent / f"serve-{port}.log"
    argv = [sys.executable, "-m", "facesearch", "--home", str(home), "--device", "cpu"]
    argv += ["--model", model] if model else []
    argv += ["serve", "--host", HOST, "--port", str(port), *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                env=dict(os.environ, **(env or {})), start_new_session=True)
    server = Server(proc, port, log)
    _running.append(server)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"facesearch serve exited with {proc.returncode}:\n{server.output()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/readyz", timeout=2) as r:
                if json.load(r).get("ready"):
                    return server
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"facesearch serve was not ready within {START_TIMEOUT_S:.0f} s:\n{server.output()[-3000:]}")
