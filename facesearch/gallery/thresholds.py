"""Which distance threshold decides: the model's identification threshold for an FPIR at the gallery's
size (1:N, the default of ``query``), a stored 1:1 operating point for a false accept rate, the model's
calibrated 1:1 threshold (``verify``), or one the caller gives. Pure functions of the model's config.

The FPIR rule (:func:`fpir_threshold`): calibration (``facesearch.training.calibration``) stores, for each
FPIR target, the threshold measured at gallery sizes 1, 2, 5, 10, ... up to the number of held-out
identities it had, and the identity-level impostor tail. For a gallery of ``N`` identities:

* ``N`` a measured size: that threshold (``measured``);
* between two measured sizes: linear in ``log N`` between theirs (``interpolated``);
* beyond the largest measured size: the independence rule, the tail's threshold at the per-identity
  false accept rate ``FAR = 1 - (1 - FPIR)^(1/N)``, never above the largest measured size's
  (``extrapolated``). Identities are not independent strangers (a probe that looks like many people is
  close to many), and that makes this rule an upper bound of the FPIR: its thresholds err on the strict side;
* when that FAR is below ``1 / comparisons`` the tail cannot measure it: the threshold at the smallest FAR
  it measures is used, and the FPIR at this size may exceed the target (``not measurable``).

The measured galleries have one face per identity; a gallery with several faces per person accepts
strangers somewhat more often at the same threshold (each identity's nearest face is nearer).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from facesearch import distance
from facesearch.errors import ThresholdError
from facesearch.gallery.results import Decision
from facesearch.model.config import ModelConfig
from facesearch.model.records import DEFAULT_FPIR, Identification


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


def identification(config: ModelConfig) -> Identification | None:
    """The model's identification curve, or None (a model.json from before there were any)."""
    ident = config.calibration.identification
    return ident if ident is not None and ident.fpirs and (ident.galleries or ident.impostor_tail) else None


def default_fpir(ident: Identification) -> float:
    """The FPIR ``query`` decides at when none is asked for: the curve's own default, else
    :data:`~facesearch.model.records.DEFAULT_FPIR` where stored, else the curve's largest target."""
    for f in (ident.default_fpir, DEFAULT_FPIR):
        if f is not None and any(math.isclose(f, g, rel_tol=1e-9) for g in ident.fpirs):
            return float(f)
    return float(max(ident.fpirs))


def fpir_threshold(ident: Identification, fpir: float, identities: int) -> tuple[float, str]:
    """``(threshold, status)`` for FPIR ``fpir`` in a gallery of ``identities`` identities, by the rule
    in this module's docstring; ``status`` is one of :data:`facesearch.gallery.results.STATUSES`.
    Raises ThresholdError for an FPIR the curve has no thresholds for."""
    if not 0.0 < fpir < 1.0:
        raise ThresholdError("an FPIR is a rate in (0, 1)")
    i = next((j for j, f in enumerate(ident.fpirs) if math.isclose(f, fpir, rel_tol=1e-9)), None)
    if i is None:
        have = ", ".join(f"{f:g}" for f in ident.fpirs)
        raise ThresholdError(f"the identification calibration has thresholds for FPIR {have}, not {fpir:g}")
    n = max(int(identities), 1)
    measured = sorted((g.identities, float(g.thresholds[i])) for g in ident.galleries
                      if len(g.thresholds) > i and g.thresholds[i] is not None)
    if measured and measured[0][0] <= n <= measured[-1][0]:
        for (a, ta), (b, tb) in zip(measured, measured[1:] + [measured[-1]]):
            if n == a:
                return ta, "measured"
            if a < n < b:
                w = (math.log(n) - math.log(a)) / (math.log(b) - math.log(a))
                return ta + w * (tb - ta), "interpolated"
    tail = ident.impostor_tail
    if tail is None or not tail.far:
        raise ThresholdError(f"the identification calibration measured FPIR {fpir:g} only up to "
                             f"{measured[-1][0] if measured else 0} identities and has no impostor tail to go on")
    far = -math.expm1(math.log1p(-fpir) / n)  # 1 - (1 - fpir)^(1/n): per identity, for independent ones
    order = np.argsort(tail.far)
    fars, thrs = np.asarray(tail.far, np.float64)[order], np.asarray(tail.threshold, np.float64)[order]
    if far >= fars[0]:
        t, status = float(np.interp(math.log(far), np.log(fars), thrs)), "extrapolated"
    else:
        t, status = float(thrs[0]), "not measurable"
    if measured and n > measured[-1][0]:
        t = min(t, measured[-1][1])  # a larger gallery never gets a looser threshold
    elif measured and n < measured[0][0]:
        t = max(t, measured[0][1])
    return t, status


def fpir_table(config: ModelConfig, identities: int) -> list[dict]:
    """Every stored FPIR target's threshold at a gallery of ``identities`` (``facesearch info``):
    ``[{"fpir": 0.01, "threshold": t, "status": "interpolated", "default": True}, ...]``; empty without a
    curve."""
    ident = identification(config)
    if ident is None:
        return []
    d = default_fpir(ident)
    out = []
    for f in ident.fpirs:
        t, status = fpir_threshold(ident, f, identities)
        out.append({"fpir": f, "threshold": t, "status": status, "default": math.isclose(f, d, rel_tol=1e-9)})
    return out


def no_curve_warning(config: ModelConfig) -> str:
    return (f"model {config.name} has no identification calibration (its model.json predates FPIR "
            f"thresholds): 1:N decisions use its 1:1 threshold {config.threshold:.4f}, which accepts more "
            "strangers the larger the gallery; `facesearch model calibrate` (an imported model) or `facesearch "
            "calibrate` (a trained one) stores them")


def decide(config: ModelConfig, count_identities: Callable[[], int], fpir: float | None = None,
           far: float | None = None, threshold: float | None = None) -> Decision:
    """The rule a 1:N search decides by: ``threshold`` (a distance), ``far`` (the stored 1:1 operating
    point) or ``fpir`` (the identification threshold at the gallery's size, ``count_identities()``) when
    given (at most one of them); else the model's default FPIR, or, for a model without an identification
    curve, its 1:1 threshold with a ``warning``. Raises ThresholdError for what the model cannot decide with."""
    if sum(x is not None for x in (fpir, far, threshold)) > 1:
        raise ThresholdError("give one of an FPIR, a FAR or a threshold, not several")
    if threshold is not None:
        return Decision("threshold", threshold_at(config, threshold=threshold))
    if far is not None:
        return Decision("far", threshold_at(config, far=far), far=float(far))
    ident = identification(config)
    if ident is None:
        if fpir is not None:
            raise ThresholdError(
                f"model {config.name} has no identification thresholds (FPIR): its calibration predates them. "
                "`facesearch model calibrate` (an imported model) or `facesearch calibrate` (a trained one) "
                "stores them; or decide with --far or --threshold")
        return Decision("verification", float(config.threshold), warning=no_curve_warning(config))
    f = float(fpir) if fpir is not None else default_fpir(ident)
    n = int(count_identities())
    t, status = fpir_threshold(ident, f, n)
    warning = None
    if status == "not measurable":
        warning = (f"FPIR {f:g} at {n} identities is beyond what the identification calibration measures "
                   f"({ident.impostor_tail.comparisons} impostor comparisons): the strictest threshold it "
                   "measures is used, and strangers may be accepted more often than that")
    return Decision("fpir", t, fpir=f, gallery_identities=n, status=status, warning=warning)
