"""A model directory's files and what names its embeddings (no torch needed)."""

from __future__ import annotations

from pathlib import Path

from facesearch.model.config import ModelConfig, weights_sha256


def model_key(config: ModelConfig, model_dir: Path | None = None, sha256: str | None = None) -> str:
    """What identifies a model's embeddings: its name, its weights (their hash: ``sha256``, else that of
    ``model_dir``'s weights file) and, when on, mirror-image averaging (a gallery embedded one way cannot
    be searched with probes embedded the other)."""
    key = f"{config.name}@{(sha256 or weights_sha256(model_dir))[:12]}"
    return key + "+flip" if config.flip_average else key
