"""What a face detector gives (:class:`Face`), what one is (:class:`Detector`), and the :data:`REGISTRY` of
those facesearch knows, by name.

To add a detector (for a platform yuface has no wheel for, say): implement :class:`Detector` in a module of
its own, importing its library only when first used, and add a factory for it to :data:`REGISTRY`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from facesearch.errors import DetectorUnavailable, NoFaceError

#: faces scored below this (0-1) are not faces
MIN_SCORE = 0.5
#: the detector :func:`get_detector` gives when none is named
DEFAULT_DETECTOR = "yuface"


@dataclass(frozen=True)
class Face:
    """One detected face, in the photo's pixel coordinates."""

    box: tuple[int, int, int, int]  # x, y, width, height
    score: float  # 0-1
    #: 5 x 2 float: right eye, left eye (as seen in the image), nose tip, right and left mouth corner; a
    #: pixel's centre is at integer coordinates (see facesearch.detect.align.TEMPLATE_112)
    landmarks: np.ndarray

    @property
    def area(self) -> int:
        return self.box[2] * self.box[3]

    def to_dict(self) -> dict:
        return {"box": [int(v) for v in self.box], "score": round(self.score, 4),
                "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks]}

    @classmethod
    def from_dict(cls, d: dict) -> "Face":
        return cls(tuple(int(v) for v in d["box"]), float(d["score"]), np.asarray(d["landmarks"], np.float64))


class Detector(Protocol):
    """A face detector: faces with five landmarks each, in the order of :class:`Face`."""

    name: str

    def detect(self, pixels: np.ndarray, min_score: float = MIN_SCORE) -> list[Face]:
        """Faces in an H x W x 3 uint8 RGB image, largest first (ties: higher score first)."""
        ...

    def available(self) -> bool:
        """Whether it can run here (its library is installed)."""
        ...

    def require(self) -> None:
        """Raise :class:`DetectorUnavailable`, saying what to install, unless it can run here."""
        ...

    def describe(self) -> str:
        """What it is, for ``facesearch info`` (and what to install when it is not)."""
        ...


def _yuface() -> Detector:
    from facesearch.detect.yuface import YuFace

    return YuFace()


#: the detectors by name: each a factory (its module is imported only when it is asked for)
REGISTRY: dict[str, Callable[[], Detector]] = {"yuface": _yuface}


def get_detector(name: str = DEFAULT_DETECTOR) -> Detector:
    """The detector registered as ``name``."""
    try:
        factory = REGISTRY[name]
    except KeyError:
        raise DetectorUnavailable(f"unknown face detector {name!r} (known: {', '.join(sorted(REGISTRY))})") from None
    return factory()


def faces_or_fail(pixels: np.ndarray, source: str, detector: Detector | None = None) -> list[Face]:
    """The faces ``detector`` (default: :func:`get_detector`'s) finds in a photo that must hold one: none is
    a :class:`NoFaceError` naming ``source``."""
    faces = (detector or get_detector()).detect(pixels)
    if not faces:
        raise NoFaceError(source, f"no face found (detector score >= {MIN_SCORE})")
    return faces


__all__ = ["DEFAULT_DETECTOR", "MIN_SCORE", "REGISTRY", "Detector", "DetectorUnavailable", "Face", "faces_or_fail",
           "get_detector"]
