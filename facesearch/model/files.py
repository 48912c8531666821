"""A model directory's files, where the built-in models live, and what names a model's embeddings.

A model is a directory holding ``model.json`` (a :class:`~facesearch.model.config.ModelConfig`) and
``weights.pt``. Nothing here imports torch: the CLI reads configs and hashes weights without it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from facesearch.errors import ModelFileError
from facesearch.model.config import ModelConfig

#: a model directory holds these two files
CONFIG_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"
#: where the models shipped inside the package live (``builtin/<name>/``; ``default`` is the built-in one)
BUILTIN_MODELS = Path(__file__).resolve().parent / "builtin"


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
