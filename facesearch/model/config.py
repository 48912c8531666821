"""Typed model configuration saved next to the weights (``model.json``).

Preprocessing travels with the model: enroll, query and training all rebuild
the input pipeline from this config, never from literals of their own.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facesearch import distance
from facesearch.errors import ModelFileError
from facesearch.files import write_private_atomic  # noqa: F401 - moved to facesearch.files, re-exported
from facesearch.model.records import Calibration, OperatingPoint, TrainingRecord  # noqa: F401 - re-exported

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FORMAT_VERSION = 1

#: training defaults (facesearch.training.TrainOptions, `facesearch train`, benchmarks/lfw_protocol.py): the
#: recipe measured identity-disjoint on LFW View 2 (benchmarks/results/lfw-mnv2-160-tenfold.json). The
#: 112 px crops upsampled to 160 px scored 1.6 points better than 112 px in the ablation; the 10 fold
#: trainings ran 69-71 epochs at a peak lr of 5e-4. Kept here, free of torch, so the CLI starts fast.
TRAIN_INPUT_SIZE = 160
TRAIN_EPOCHS = 70
TRAIN_LR = 5e-4


@dataclass
class ModelConfig:
    """Everything needed to rebuild an encoder and its preprocessing.

    ``threshold`` is a distance (see :mod:`facesearch.distance`): two faces
    match when their distance is ``<= threshold``. ``None`` until calibrated.
    """

    name: str = "facesearch-mobilenet_v2"
    backbone: str = "mobilenet_v2"
    embedding_dim: int = 128
    input_size: int = 112
    #: side of the centred square crop, as a fraction of the shorter image side,
    #: taken before resizing to ``input_size`` (1.0: the image is already a face crop)
    crop_fraction: float = 1.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    distance: str = distance.NAME
    #: embed each face and its mirror image and use the normalised mean of the two embeddings
    #: (applies to every embedding: enroll, query, verify, calibration, evaluation alike)
    flip_average: bool = False
    threshold: float | None = None
    #: how the threshold was chosen, on which pairs (a dict given here or assigned later becomes one)
    calibration: Calibration = field(default_factory=Calibration)
    #: training recipe and data summary (people, images, seed, ...; likewise)
    training: TrainingRecord = field(default_factory=TrainingRecord)
    format_version: int = FORMAT_VERSION
    #: the model's own alignment template: where the five landmarks (right eye, left eye as seen, nose,
    #: mouth corners) go in an ``input_size`` crop, in pixels; ``None``: the LFW pack's geometry
    #: (:data:`facesearch.detect.TEMPLATE_112`), the one facesearch's own models are trained on
    alignment: list[list[float]] | None = None
    #: where an imported network comes from (package, file hash, licence, what it was trained on)
    source: dict[str, Any] | None = None
    #: an int8 model's record (:mod:`facesearch.model.quantize`: precision, method, the SHA-256 of its
    #: activation ranges, the fp32 model it was made from); ``None``: the network runs as trained (fp32)
    quantization: dict[str, Any] | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _RECORDS:  # model.json's dicts, read or assigned, are kept as their typed records
            value = _RECORDS[name].from_dict(value)
        super().__setattr__(name, value)

    def __post_init__(self):
        if self.distance != distance.NAME:
            raise ModelFileError(f"unsupported distance {self.distance!r}; facesearch uses {distance.NAME!r}")
        if self.embedding_dim <= 0 or self.input_size < 16:
            raise ModelFileError("embedding_dim must be positive and input_size at least 16")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ModelFileError("crop_fraction must be in (0, 1]")
        self.flip_average = bool(self.flip_average)
        if self.alignment is not None:
            pts = [[float(x), float(y)] for x, y in self.alignment]
            if len(pts) != 5:
                raise ModelFileError("alignment must give the five landmarks' (x, y) in pixels")
            self.alignment = pts
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if self.quantization is not None:
            q = self.quantization
            if not isinstance(q, dict) or q.get("precision") != "int8" or not q.get("ranges_sha256"):
                raise ModelFileError("quantization must say precision int8 and the ranges' sha256")

    @property
    def int8(self) -> bool:
        """An int8 model (embeds through ONNX Runtime only)."""
        return self.quantization is not None

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["calibration"], d["training"] = self.calibration.to_dict(), self.training.to_dict()
        for optional in ("alignment", "source", "quantization"):  # written only when set: older model.json files stay as they are
            if d[optional] is None:
                del d[optional]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ModelFileError(f"unknown model config keys: {sorted(unknown)}")
        if d.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise ModelFileError("model config is from a newer facesearch; upgrade facesearch")
        return cls(**d)

    def preprocessing(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("input_size", "crop_fraction", "mean", "std")}

    def save(self, path: str | os.PathLike) -> None:
        write_private_atomic(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True).encode() + b"\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ModelConfig":
        try:
            data = json.loads(Path(path).read_text())
            if not isinstance(data, dict):
                raise TypeError(f"expected a JSON object, found a {type(data).__name__}")
            return cls.from_dict(data)
        except FileNotFoundError as e:
            raise ModelFileError(f"model config not found: {path}") from e
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
            raise ModelFileError(f"model config {path} is not valid: {e}") from e
        except ModelFileError as e:
            raise ModelFileError(f"model config {path} is not valid: {e}") from e


_RECORDS = {"calibration": Calibration, "training": TrainingRecord}

#: the model directory's layout moved to :mod:`facesearch.model.files`; importing it from here still works
_MOVED = frozenset({"CONFIG_FILE", "WEIGHTS_FILE", "BUILTIN_MODELS", "read_model_dir", "weights_sha256"})


def __getattr__(name: str):
    if name in _MOVED:
        from facesearch.model import files

        return getattr(files, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
