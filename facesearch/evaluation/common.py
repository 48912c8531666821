"""What LFW verification and open-set identification share: progress bars, the model to evaluate, and
how a false accept rate names its entry in a result."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, ContextManager

from facesearch.model.files import builtin_model_dir, resolve

#: where the model shipped with facesearch lives (used when no model directory is given; which model a
#: spec names is decided by facesearch.model.files.resolve)
DEFAULT_MODEL_DIR = builtin_model_dir()

#: ``progress(description, total)`` returns a context manager with ``update(n)`` (e.g. ``tqdm``)
ProgressFactory = Callable[[str, int], ContextManager[Any]]


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int = 1) -> None:
        pass


def progress_bar(progress: ProgressFactory | None, desc: str, total: int):
    return progress(desc, total) if progress is not None else _NoBar()


def resolve_model_dir(model: str | os.PathLike | None) -> Path:
    """The model directory to use: ``model``, or the shipped default when it is None."""
    return resolve(model).directory


def far_key(far: float) -> str:
    return f"{far:.0e}"
