"""Evaluation on LFW: verification (the View 2 10-fold protocol, or View 1) and open-set identification.

The library is pure: it returns dataclasses and never prints. Distances come from
:mod:`facesearch.distance` (cosine distance in [0, 2], lower is more similar, a match when
``distance <= threshold``) and every number from :mod:`facesearch.metrics`.

The honest LFW protocol (``shared/docs/data.md``): for each of the 10 folds, the threshold is chosen
on the other 9 folds and accuracy is measured on the held-out fold; mean and standard deviation over
the folds are reported. The encoder itself must not have been trained on the people of a fold it is
scored on: :func:`evaluate_lfw` reports the model's own training summary next to the numbers, so
that the reader can check.

The modules: :mod:`~facesearch.evaluation.lfw` (pairs files, verification),
:mod:`~facesearch.evaluation.identify` (open-set identification through a temporary gallery),
:mod:`~facesearch.evaluation.common` (what both use: progress bars, the model to evaluate) and
:mod:`~facesearch.evaluation.report` (report files). Their names are re-exported here.
"""

from facesearch.evaluation.common import DEFAULT_MODEL_DIR, ProgressFactory, far_key, resolve_model_dir
from facesearch.evaluation.identify import (
    FPIRS,
    IdentifyResult,
    evaluate_identify,
    people_keys,
    read_people,
    select_identification,
)
from facesearch.evaluation.lfw import (
    FARS,
    LfwResult,
    PairList,
    PairsFileError,
    embed_keys,
    evaluate_lfw,
    model_info,
    read_pairs,
    verification_numbers,
)

__all__ = [
    "DEFAULT_MODEL_DIR",
    "FARS",
    "FPIRS",
    "IdentifyResult",
    "LfwResult",
    "PairList",
    "PairsFileError",
    "ProgressFactory",
    "embed_keys",
    "evaluate_identify",
    "evaluate_lfw",
    "far_key",
    "model_info",
    "people_keys",
    "read_pairs",
    "read_people",
    "resolve_model_dir",
    "select_identification",
    "verification_numbers",
]
