"""Writing files that hold face data or models: atomically, and readable by their owner only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable


def write_private_atomic(path: Path, data: "bytes | Callable[[BinaryIO], None]") -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename), readable by the owner only.
    ``data`` is bytes, or a function that writes into the open file (for content too big to build first);
    if it raises, the old file stays and the temp file is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
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
