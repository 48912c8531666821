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
#: faces whose box is smaller than this on its shorter side (pixels of the photo) are too small to
#: recognise: the models see 112 x 112 crops, and a face of a few dozen pixels blown up to that holds
#: too little of the person. They are reported, not used.
MIN_FACE_SIZE = 32
#: a faceless photo is looked at again down to this score, only to say how close it came
_REPORT_SCORE = 0.2
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
    """The faces ``detector`` (default: :func:`get_detector`'s) finds in a photo that must hold one, at
    least :data:`MIN_FACE_SIZE` pixels on their shorter side and scored at least :data:`MIN_SCORE`, largest
    first. None is a :class:`NoFaceError` naming ``source`` and saying why: no face at all, faces that
    were all too small, or the best candidate's score."""
    detector = detector or get_detector()
    found = detector.detect(pixels)
    faces = [f for f in found if min(f.box[2], f.box[3]) >= MIN_FACE_SIZE]
    if faces:
        return faces
    if found:
        w, h = found[0].box[2], found[0].box[3]
        raise NoFaceError(source, f"{len(found)} face(s) found, all smaller than {MIN_FACE_SIZE} pixels (the "
                                  f"largest {w}x{h}): too small to recognise; use a photo where the face is larger")
    weak = detector.detect(pixels, min_score=_REPORT_SCORE)
    if weak:
        best = max(f.score for f in weak)
        raise NoFaceError(source, f"no face found (the best candidate scored {best:.2f}, below {MIN_SCORE})")
    raise NoFaceError(source, f"no face found (detector score >= {MIN_SCORE})")


__all__ = ["DEFAULT_DETECTOR", "MIN_FACE_SIZE", "MIN_SCORE", "REGISTRY", "Detector", "DetectorUnavailable", "Face", "faces_or_fail",
           "get_detector"]
