"""A model directory's files, where the built-in models live, and what names a model's embeddings.

A model is a directory holding ``model.json`` (a :class:`~facesearch.model.config.ModelConfig`) and
``weights.pt``. A model *spec* says which: ``default`` or ``builtin:NAME`` (a model shipped in the
package), or a directory; :func:`resolve` is the one place that turns a spec into the directory, its
config and its weights hash. Nothing here imports torch: the CLI reads configs and hashes weights
without it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from facesearch.errors import ModelFileError
from facesearch.model.config import ModelConfig

#: a model directory holds these two files
CONFIG_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"
#: where the models shipped inside the package live (``builtin/<name>/``; ``default`` is the built-in one)
BUILTIN_MODELS = Path(__file__).resolve().parent / "builtin"
#: a built-in model's spec and the location a gallery records for it: ``builtin:NAME`` (the package may move)
BUILTIN_PREFIX = "builtin:"
#: the built-in model used when none is named
DEFAULT_MODEL = "default"
DEFAULT_SPEC = BUILTIN_PREFIX + DEFAULT_MODEL


def read_model_dir(directory: str | os.PathLike) -> ModelConfig:
    """The config of a model directory, after checking it has both files (no torch needed)."""
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise ModelFileError(f"{directory} is not a facesearch model directory "
                             f"(needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    return ModelConfig.load(directory / CONFIG_FILE)


def weights_sha256(directory: str | os.PathLike) -> str:
    """SHA-256 of a model directory's weights file (what names a model's embeddings; no torch needed)."""
    h = hashlib.sha256()
    with open(Path(directory) / WEIGHTS_FILE, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_key(config: ModelConfig, sha256: str) -> str:
    """What identifies a model's embeddings: its name, its weights (``sha256``: the hash of its weights
    file) and, when on, mirror-image averaging (a gallery embedded one way cannot be searched with probes
    embedded the other). Stored with every gallery: it must never change for the same model."""
    key = f"{config.name}@{sha256[:12]}"
    return key + "+flip" if config.flip_average else key


@dataclass(frozen=True)
class ResolvedModel:
    """A model spec, resolved: its ``directory``, its ``config`` (read and checked) and its ``location``,
    what a gallery records (``builtin:NAME``, or the absolute directory). The weights are hashed when
    first asked for (``sha256``), once."""

    directory: Path
    config: ModelConfig
    location: str

    @cached_property
    def sha256(self) -> str:
        return weights_sha256(self.directory)

    @property
    def key(self) -> str:
        """:func:`model_key` of this model (hashes the weights file on first use)."""
        return model_key(self.config, self.sha256)

    @property
    def builtin(self) -> bool:
        return self.location.startswith(BUILTIN_PREFIX)


def builtin_model_dir(name: str = DEFAULT_MODEL) -> Path:
    return BUILTIN_MODELS / name


def location_of(spec: str | os.PathLike | None) -> str:
    """The location a spec names: ``None`` or the string ``default`` -> ``builtin:default``;
    ``builtin:NAME`` as it is; anything else (every ``os.PathLike``, so ``Path("default")`` too) is a
    directory: its absolute path, ``~`` expanded."""
    if spec is None or (isinstance(spec, str) and spec == DEFAULT_MODEL):
        return DEFAULT_SPEC
    if isinstance(spec, str) and spec.startswith(BUILTIN_PREFIX):
        return spec
    return str(Path(spec).expanduser().resolve())


def model_dir(location: str) -> Path:
    """The directory of a location (``builtin:NAME`` or a directory), checked to be there; not read."""
    if location.startswith(BUILTIN_PREFIX):
        name = location[len(BUILTIN_PREFIX):]
        d = builtin_model_dir(name)
        if not (d / CONFIG_FILE).is_file():
            what = "the default model" if name == DEFAULT_MODEL else f"the built-in model {name!r}"
            raise ModelFileError(f"{what} is not installed ({d} has no {CONFIG_FILE}); pass --model DIR "
                                 f"(a directory with {CONFIG_FILE} and {WEIGHTS_FILE})")
        return d
    d = Path(location)
    if not d.is_dir():
        raise ModelFileError(f"{d} is not a facesearch model directory: it does not exist")
    return d


def resolve(spec: str | os.PathLike | None = None) -> ResolvedModel:
    """The model a spec names (see :func:`location_of`; ``None``: the default model), with its config
    read. Raises ModelFileError saying what is missing: a built-in model not installed, a directory that
    does not exist or lacks one of the two files, a config that is not valid."""
    location = location_of(spec)
    directory = model_dir(location)
    return ResolvedModel(directory, read_model_dir(directory), location)


def location_for_user(location: str) -> str:
    """A model's stored location as a user passes it to ``--model`` (a built-in model's directory)."""
    if location.startswith(BUILTIN_PREFIX):
        return str(builtin_model_dir(location[len(BUILTIN_PREFIX):]))
    return location
