"""Which distance threshold decides: the model's calibrated one, a stored operating point for a false
accept rate, or one the caller gives. Pure functions of the model's config."""

from __future__ import annotations

import math

from facesearch import distance
from facesearch.errors import ThresholdError
from facesearch.model.config import ModelConfig


def operating_points(config: ModelConfig) -> list[dict]:
    """Stricter thresholds stored by calibration: ``[{"far": 0.01, "threshold": t, "tar": x}, ...]``,
    each the largest threshold whose false accept rate on the held-out impostor pairs was at most ``far``;
    only those the impostor pairs could measure (at least 1/far of them: a model calibrated before
    facesearch checked this may have stored others)."""
    return [op.to_dict() for op in config.calibration.measurable_operating_points()]


def threshold_at(config: ModelConfig, far: float | None = None, threshold: float | None = None) -> float:
    """``threshold`` if given, else the stored operating point for ``far``, else the model's calibrated
    threshold. Raises ThresholdError (a ValueError) for a bad threshold or a ``far`` the model has no
    threshold for."""
    if threshold is not None and far is not None:
        raise ThresholdError("give a threshold or a far, not both")
    if threshold is not None:
        if not distance.MIN <= threshold <= distance.MAX:
            raise ThresholdError(f"threshold is a {config.distance} distance in [{distance.MIN}, {distance.MAX}]")
        return float(threshold)
    if far is None:
        return float(config.threshold)
    points = config.calibration.measurable_operating_points()
    for op in points:
        if math.isclose(op.far, far, rel_tol=1e-9):
            return float(op.threshold)
    n = config.calibration.impostor_pairs
    if n is not None and n * far < 1.0 - 1e-9:
        raise ThresholdError(
            f"model {config.name} has no threshold for FAR {far:g}: its calibration had {n} impostor "
            f"pairs, and measuring a FAR of {far:g} needs at least {math.ceil(1.0 / far - 1e-9)}. Train with "
            "more held-out people (`facesearch train --calibration-fraction`), or pass --threshold D")
    have = ", ".join(f"{op.far:g}" for op in points) or "none"
    raise ThresholdError(f"model {config.name} has no threshold for FAR {far:g} (it has: {have}); "
                         "`facesearch calibrate` stores FAR 1e-2 and 1e-3 where the held-out pairs can measure "
                         "them; pass --threshold D for another")
