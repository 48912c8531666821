"""Writing files that hold face data or models: atomically, and readable by their owner only.

Each write goes to a temp file of its own beside the target, ``.<name>.<pid>-<thread>-<random>.tmp``, which
its writer holds an exclusive ``flock`` on until it has been renamed onto the target: two threads or
processes writing one target never touch each other's temp file, and the last rename wins whole.

A writer killed half-way (``kill -9``, a power cut) leaves its temp file (at 1M faces an index's is
hundreds of MB). Every write removes the ones of its target that no writer holds any more: no process
holds the lock (the OS drops it when the holder dies), and the pid in the name is not a live process, or
the file is older than :data:`STALE_AFTER_S` (the pid was reused). A new, unlocked file under a live pid is
kept: its writer may be between creating and locking it.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from pathlib import Path
from typing import BinaryIO, Callable

try:
    import fcntl
except ImportError:  # Windows: no flock; an orphan there is removed once it is STALE_AFTER_S old
    fcntl = None

#: an unlocked temp file this old is an orphan even if the pid in its name is alive (pid reuse): a writer
#: touches its file all the time it writes, and holds the lock until the rename
STALE_AFTER_S = 600.0


def temp_path(path: Path) -> Path:
    """A temp file name for one write of ``path``: unique to this process, thread and call."""
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}-{secrets.token_hex(4)}.tmp")


def write_private_atomic(path: Path, data: "bytes | Callable[[BinaryIO], None]") -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename), readable by the owner only.
    ``data`` is bytes, or a function that writes into the open file (for content too big to build first);
    if it raises, the old file stays and the temp file is removed. Safe from many threads and processes at
    once (the last rename wins); first removes temp files of this target left by writers that died."""
    path = Path(path)
    remove_orphans(path)
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # a new file: never waits; held until closed
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)  # still locked: nobody takes it for an orphan before it is renamed
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _writer_pid(path: Path, name: str) -> int | None:
    """The writer's pid in a temp file name of ``path`` (``.<name>.<pid>-<thread>-<random>.tmp``, or
    ``.<name>.<pid>.tmp`` as earlier versions named them); None for any other name."""
    prefix = f".{path.name}."
    if not (name.startswith(prefix) and name.endswith(".tmp")):
        return None
    middle = name[len(prefix):-len(".tmp")]
    pid = middle.split("-", 1)[0]
    return int(pid) if pid.isdigit() and (middle == pid or middle.count("-") == 2) else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs (a zombie, killed but not reaped yet, does not)."""
    if pid <= 0:
        return False
    if os.name != "posix":  # os.kill would terminate it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _unlocked(tmp: Path) -> bool:
    """True if no writer holds ``tmp``'s lock (then taken and dropped again)."""
    if fcntl is None:
        return True
    try:
        fd = os.open(tmp, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # drops the lock if it was taken


def remove_orphans(path: Path, now: float | None = None) -> list[Path]:
    """Remove the temp files of ``path`` whose writers are gone (see the module's docstring); returns them.
    Never raises: a file that cannot be looked at or removed is left for a later write."""
    path = Path(path)
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        pid = _writer_pid(path, entry.name)
        if pid is None:
            continue
        tmp = Path(entry.path)
        try:
            old = now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
            if not entry.is_file(follow_symlinks=False):
                continue
            gone = not pid_alive(pid) if fcntl is not None else False
            if (gone or old) and _unlocked(tmp):
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            continue
    return removed
