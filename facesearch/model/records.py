"""What ``model.json`` says about how a model was calibrated and trained, as typed records.

:class:`Calibration` and :class:`TrainingRecord` read and write exactly the JSON that training and
``facesearch calibrate`` have always written: ``from_dict(d).to_dict() == d`` for every file, old or new.
A key a record does not know is kept in its ``extra`` dict; a field is written when the file had it or
when it holds a value (a field read as ``null`` is written as ``null`` again).

Transition: the records also answer the mapping reads the code used on the dicts they replace
(``cal.get("impostor_pairs")``, ``training["options"]``, ``"notes" in training``, ``dict(training)``).
Such a read sees the value in its JSON form: a nested record (an :class:`OperatingPoint`) comes back as
a plain dict, a copy; other values are the record's own. New code reads the attributes.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

#: the default of a field a record cannot be without (always written; never deleted)
_REQUIRED = object()


class _Record(MutableMapping):
    """from_dict/to_dict and the mapping reads for a dataclass whose last field is ``extra``."""

    #: field name -> record type of its value (or of each item of its list value)
    _nested: ClassVar[dict[str, type["_Record"]]] = {}
    #: the keys the record was read from, in their order (set by from_dict)
    _keys: tuple[str, ...] = ()
    extra: dict[str, Any]

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "extra")

    @classmethod
    def _load(cls, name: str, value: Any) -> Any:
        kind = cls._nested.get(name)
        if kind is None:
            return value
        if isinstance(value, list):
            return [kind.from_dict(v) if isinstance(v, Mapping) else v for v in value]
        return kind.from_dict(value) if isinstance(value, Mapping) else value

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None):
        """The record of a JSON object (a record is returned as it is; None is an empty record)."""
        if isinstance(d, cls):
            return d
        d = dict(d or {})
        names = cls._names()
        rec = cls(**{k: cls._load(k, v) for k, v in d.items() if k in names},
                  extra={k: v for k, v in d.items() if k not in names})
        rec._keys = tuple(d)
        return rec

    def _default(self, name: str) -> Any:
        f = next(f for f in dataclasses.fields(self) if f.name == name)
        if f.default is not dataclasses.MISSING:
            return f.default
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else _REQUIRED

    def _written(self, name: str) -> bool:
        return name in self._keys or getattr(self, name) != self._default(name)

    def __iter__(self) -> Iterator[str]:
        names = self._names()
        known = [k for k in self._keys if k in names] + [k for k in names if k not in self._keys]
        yield from (k for k in known if self._written(k))
        yield from self.extra

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __getitem__(self, key: str) -> Any:
        if key in self.extra:
            return self.extra[key]
        if key in self._names() and self._written(key):
            return _json_form(getattr(self, key))
        raise KeyError(key)

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self._names():
            setattr(self, key, self._load(key, value))
            self._keys = self._keys if key in self._keys else self._keys + (key,)
        else:
            self.extra[key] = value

    def __delitem__(self, key: str) -> None:
        if key in self.extra:
            del self.extra[key]
        elif key in self._names() and self._written(key) and self._default(key) is not _REQUIRED:
            setattr(self, key, self._default(key))
            self._keys = tuple(k for k in self._keys if k != key)
        else:
            raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, as read (a deep copy: changing it leaves the record as it is)."""
        return {k: copy.deepcopy(self[k]) for k in self}


def _json_form(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, list) and any(isinstance(v, _Record) for v in value):
        return [v.to_dict() if isinstance(v, _Record) else v for v in value]
    return value


@dataclass(eq=True)
class OperatingPoint(_Record):
    """A stricter threshold: the largest distance whose false accept rate on the calibration's impostor
    pairs was at most ``far``, and the true accept rate there."""

    far: float
    threshold: float
    tar: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=True)
class NotMeasurable(_Record):
    """A false accept rate calibration stored no threshold for: it needs this many impostor pairs."""

    far: float
    needs_impostor_pairs: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=True)
class Recalibrated(_Record):
    """Set by ``facesearch calibrate``: the threshold before, and whether mirror images were averaged."""

    previous_threshold: float | None = None
    flip_average: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


#: the FPIR targets whose identification thresholds calibration stores (``Identification.fpirs``)
FPIRS = (1e-1, 1e-2, 1e-3)
#: the FPIR a 1:N search decides at when none is asked for: one search in a hundred by someone never
#: enrolled returns an identity. It is the strictest of the stored targets that a modest held-out set can
#: measure (100 probes of never-enrolled people), where 1e-3 needs 1,000 and is extrapolated or not
#: measurable for small calibration sets; and the usual open-set operating point (NIST FRVT reports
#: FNIR at FPIR 1e-2 and 3e-3)
DEFAULT_FPIR = 1e-2


@dataclass(eq=True)
class GalleryThresholds(_Record):
    """Identification thresholds measured at one gallery size: ``thresholds[i]`` is the largest distance
    whose FPIR, averaged over every gallery of ``identities`` held-out identities, was at most
    ``Identification.fpirs[i]`` (None: not measurable at this size, too few searches)."""

    identities: int
    thresholds: list[float | None] = field(default_factory=list)
    #: the independent searches behind these numbers: probes x (other identities // identities)
    searches: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=True)
class ImpostorTail(_Record):
    """The identity-level impostor tail: ``threshold[i]`` is the largest distance whose share of
    (probe, other identity's face) comparisons within it was at most ``far[i]``; ``comparisons`` of them
    were made, so no FAR below ``1 / comparisons`` is measured."""

    far: list[float] = field(default_factory=list)
    threshold: list[float] = field(default_factory=list)
    comparisons: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=True)
class Identification(_Record):
    """The 1:N decision curve: thresholds for false positive identification rates (FPIR: the share of
    searches by never-enrolled people that return anyone) at measured gallery sizes, and the impostor tail
    that extends them to larger galleries (``facesearch.gallery.thresholds.fpir_threshold`` is the rule).
    Made by ``facesearch.training.calibration.identification_curve``; ``method`` says how."""

    method: str | None = None
    #: which identities (``"168 held-out identities, never trained on"``)
    source: str | None = None
    people: int | None = None
    images: int | None = None
    #: searches by "strangers": held-out images, each searched against the other identities' faces
    probes: int | None = None
    #: faces enrolled per identity in the measured galleries
    faces_per_identity: int | None = None
    default_fpir: float | None = None
    fpirs: list[float] = field(default_factory=list)
    galleries: list[GalleryThresholds] = field(default_factory=list)
    impostor_tail: ImpostorTail | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _nested: ClassVar[dict[str, type[_Record]]] = {"galleries": GalleryThresholds, "impostor_tail": ImpostorTail}


@dataclass(eq=True)
class Calibration(_Record):
    """How the threshold (``ModelConfig.threshold``) was chosen, on which pairs, and how well it did."""

    #: which identities the pairs come from (``"168 held-out identities, never trained on"``)
    source: str | None = None
    method: str | None = None
    people: int | None = None
    images: int | None = None
    pairs: int | None = None
    genuine_pairs: int | None = None
    impostor_pairs: int | None = None
    #: balanced accuracy at the threshold on those pairs, and the 2-fold (by identity) honest estimate
    accuracy: float | None = None
    cross_validated_accuracy: float | None = None
    genuine_distance_mean: float | None = None
    impostor_distance_mean: float | None = None
    operating_points: list[OperatingPoint] = field(default_factory=list)
    operating_points_not_measurable: list[NotMeasurable] = field(default_factory=list)
    recalibrated: Recalibrated | None = None
    #: the 1:N thresholds for FPIR targets by gallery size (absent from a model.json made before them)
    identification: Identification | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _nested: ClassVar[dict[str, type[_Record]]] = {
        "operating_points": OperatingPoint, "operating_points_not_measurable": NotMeasurable,
        "recalibrated": Recalibrated, "identification": Identification}

    def measurable_operating_points(self) -> list[OperatingPoint]:
        """The operating points the impostor pairs could measure (at least 1/far of them: a model
        calibrated before facesearch checked this may have stored others)."""
        n = self.impostor_pairs
        return [op for op in self.operating_points if n is None or n * op.far >= 1.0 - 1e-9]


@dataclass(eq=True)
class TrainingRecord(_Record):
    """The training recipe and a summary of the data and the run (``model.json``'s ``training``)."""

    recipe: str | None = None
    #: the loss: name, distance, margins, mining
    loss: dict[str, Any] | None = None
    #: the TrainOptions as run (``TrainOptions.to_json``)
    options: dict[str, Any] | None = None
    #: the data's file or folder name, and the training identities and images
    data: str | None = None
    people: int | None = None
    images: int | None = None
    people_sha256: str | None = None
    calibration_people_sha256: str | None = None
    #: fine-tuned: what the model it started from was (name, weights_sha256, trained_on)
    init_model: dict[str, Any] | None = None
    skipped_identities_with_too_few_images: int | None = None
    seed: int | None = None
    epochs: int | None = None
    steps: int | None = None
    images_seen: int | None = None
    stopped_by_time_budget: bool | None = None
    train_seconds: float | None = None
    decode_seconds: float | None = None
    images_per_s: float | None = None
    device: str | None = None
    amp: str | None = None
    torch: str | None = None
    final_loss: float | None = None
    notes: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
