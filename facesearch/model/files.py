"""A model directory's files, where the built-in models live, and what names a model's embeddings.

A model is a directory holding ``model.json`` (a :class:`~facesearch.model.config.ModelConfig`) and
``weights.pt``. A model *spec* says which: ``default`` (the built-in default, :data:`DEFAULT_MODEL`), the
name of a built-in model (``sface``, ``lfw-mobilenet``) or ``builtin:NAME``, or a directory;
:func:`resolve` is the one place that turns a spec into the directory, its config and its weights hash.
Nothing here imports torch: the CLI reads configs and hashes weights without it.

A gallery records the concrete built-in model (``builtin:sface``), so a later change of default never
changes what an existing gallery embeds with. Galleries made before the default changed recorded
``builtin:default``; :data:`LEGACY_LOCATIONS` says which model that was.
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
#: where the models shipped inside the package live (``builtin/<name>/``)
BUILTIN_MODELS = Path(__file__).resolve().parent / "builtin"
#: a built-in model's spec and the location a gallery records for it: ``builtin:NAME`` (the package may move)
BUILTIN_PREFIX = "builtin:"
#: the spec that names the default model, whichever it is
DEFAULT_ALIAS = "default"
#: the built-in model used when none is named: the imported SFace network (README, "The built-in models")
DEFAULT_MODEL = "sface"
DEFAULT_SPEC = BUILTIN_PREFIX + DEFAULT_MODEL
#: the old LFW-only MobileNetV2, the default until SFace replaced it
LFW_MOBILENET = "lfw-mobilenet"
#: locations recorded by galleries before the default changed -> the built-in model they meant
LEGACY_LOCATIONS = {BUILTIN_PREFIX + DEFAULT_ALIAS: BUILTIN_PREFIX + LFW_MOBILENET}


def read_model_dir(directory: str | os.PathLike) -> ModelConfig:
    """The config of a model directory, after checking it has both files (no torch needed)."""
    directory = Path(directory)
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (directory / f).is_file()]
    if missing:
        raise ModelFileError(f"{directory} is not a facesearch model directory (needs {CONFIG_FILE} and "
                             f"{WEIGHTS_FILE}; {' and '.join(missing)} missing)")
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
    embedded the other), and an int8 model's activation ranges (its embeddings are another function of
    the image than the fp32 network's). Stored with every gallery: it must never change for the same model."""
    key = f"{config.name}@{sha256[:12]}"
    if config.flip_average:
        key += "+flip"
    if config.quantization is not None:
        key += "+int8-" + str(config.quantization["ranges_sha256"])[:8]
    return key


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
    """The directory of the built-in model ``name`` (``default``: the default one); not checked."""
    return BUILTIN_MODELS / (DEFAULT_MODEL if name == DEFAULT_ALIAS else name)


def builtin_names() -> list[str]:
    """The built-in models installed with the package, by name."""
    if not BUILTIN_MODELS.is_dir():
        return []
    return sorted(d.name for d in BUILTIN_MODELS.iterdir() if (d / CONFIG_FILE).is_file())


def _builtin_name(spec: str) -> str | None:
    """The built-in model a string spec names, or None when it names a directory."""
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX):]
    elif spec == DEFAULT_ALIAS or ("/" not in spec and os.sep not in spec and spec in builtin_names()):
        name = spec
    else:
        return None
    return DEFAULT_MODEL if name == DEFAULT_ALIAS else name


def location_of(spec: str | os.PathLike | None) -> str:
    """The location a spec names: ``None``, the string ``default`` or ``builtin:default`` -> the
    default model's ``builtin:NAME``; a built-in model's name (a string without a path separator, so
    ``./sface`` is the directory) or ``builtin:NAME`` -> ``builtin:NAME``; anything else (every
    ``os.PathLike``, so ``Path("default")`` too) is a directory: its absolute path, ``~`` expanded."""
    if spec is None:
        return DEFAULT_SPEC
    if isinstance(spec, str):
        name = _builtin_name(spec)
        if name is not None:
            return BUILTIN_PREFIX + name
    return str(Path(spec).expanduser().resolve())


def stored_location(location: str) -> str:
    """The location a gallery recorded, as it is named today (``builtin:default``, recorded before the
    default changed, meant the model that was the default then: see :data:`LEGACY_LOCATIONS`)."""
    return LEGACY_LOCATIONS.get(location, location)


def model_dir(location: str) -> Path:
    """The directory of a location (``builtin:NAME`` or a directory), checked to be there; not read."""
    if location.startswith(BUILTIN_PREFIX):
        name = location[len(BUILTIN_PREFIX):]
        d = builtin_model_dir(name)
        if not (d / CONFIG_FILE).is_file():
            what = "the default model" if name in (DEFAULT_MODEL, DEFAULT_ALIAS) else f"the built-in model {name!r}"
            have = ", ".join(builtin_names()) or "none"
            raise ModelFileError(f"{what} is not installed ({d} has no {CONFIG_FILE}; built-in models: {have}); "
                                 f"pass --model DIR (a directory with {CONFIG_FILE} and {WEIGHTS_FILE})")
        return d
    d = Path(location)
    if not d.is_dir():
        have = ", ".join(builtin_names()) or "none"
        raise ModelFileError(f"{d} is not a facesearch model directory: it does not exist (built-in models, "
                             f"named without a path: {have})")
    return d


def resolve(spec: str | os.PathLike | None = None) -> ResolvedModel:
    """The model a spec names (see :func:`location_of`; ``None``: the default model), with its config
    read. Raises ModelFileError saying what is missing: a built-in model not installed, a directory that
    does not exist or lacks one of the two files, a config that is not valid."""
    location = location_of(spec)
    directory = model_dir(location)
    return ResolvedModel(directory, read_model_dir(directory), location)


def location_for_user(location: str) -> str:
    """A model's stored location as a user passes it to ``--model`` (a built-in model's name)."""
    location = stored_location(location)
    if location.startswith(BUILTIN_PREFIX):
        return location[len(BUILTIN_PREFIX):]  # what --model takes
    return location
