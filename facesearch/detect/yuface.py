"""The yuface detector: `yuface <https://pypi.org/project/yuface/>`_ (libfacedetection, BSD licence, its
CNN's weights compiled into the wheel, so nothing is downloaded) gives each face a box, a score and five
landmarks (eye centres, nose tip, mouth corners). Large photos are scaled down for the detector only.

yuface publishes wheels for CPython 3.11 only: ``pip install 'facesearch[detect]'``. It is imported on
first use; without it, detection fails with :class:`DetectorUnavailable` saying so.
"""

from __future__ import annotations

import threading

import numpy as np
from PIL import Image

from facesearch.detect.base import MIN_SCORE, DetectorUnavailable, Face

#: the detector sees photos scaled down to at most this side (libfacedetection warns above 960)
DETECT_MAX_SIDE = 640

_lock = threading.Lock()
_c_detect = None


def available() -> bool:
    try:
        available_or_raise()
    except DetectorUnavailable:
        return False
    return True


def available_or_raise() -> None:
    _detector()


def describe() -> str:
    """What ``--detect`` would use, for ``facesearch info``."""
    if not available():
        return "not installed (pip install 'facesearch[detect]'); --detect unavailable"
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"yuface {version('yuface')} (libfacedetection), for --detect"
    except PackageNotFoundError:
        return "yuface (libfacedetection), for --detect"


def _detector():
    """yuface's raw call (signed int16 rows: no uint16 wrap-around for boxes that leave the photo), made
    ready once. Its first call initialises the network and pybind11's numpy bindings, and two threads
    making it at once deadlocked (seen with enroll's reader threads), so the first call runs under a lock
    on a blank image; :func:`detect` keeps every call under the same lock."""
    global _c_detect
    with _lock:
        if _c_detect is None:
            try:
                from yuface.yuface import detect as c_detect
            except ImportError as e:
                raise DetectorUnavailable(
                    "face detection needs the yuface package (libfacedetection): pip install "
                    "'facesearch[detect]' (it has wheels for Python 3.11 only). Without it, give "
                    "aligned face crops and leave --detect out."
                ) from e
            c_detect(np.zeros((32, 32, 3), np.uint8))
            _c_detect = c_detect
    return _c_detect


def detect(pixels: np.ndarray, min_score: float = MIN_SCORE, max_side: int = DETECT_MAX_SIDE) -> list[Face]:
    """Faces in an H x W x 3 uint8 RGB image, largest first (ties: higher score first)."""
    c_detect = _detector()
    h, w = pixels.shape[:2]
    small = pixels
    sxy = np.array([1.0, 1.0])  # the detector's pixels per photo pixel, along x and y
    if max(h, w) > max_side:
        f = max_side / max(h, w)
        size = (max(1, round(w * f)), max(1, round(h * f)))
        sxy = np.array([size[0] / w, size[1] / h])
        # reducing_gap: box-reduce first, then filter (12 MP -> 640 px: 49 ms instead of 76)
        small = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))
    bgr = np.ascontiguousarray(small[:, :, ::-1])  # the detector wants BGR
    with _lock:
        rows = np.asarray(c_detect(bgr))  # one row per face, N x 16 (0 x 16 when there is none)
    faces = []
    for r in rows:
        score = float(r[0]) / 100.0
        if score < min_score:
            continue
        # libfacedetection's rows: score x 100, box x y w h, 5 landmarks x y, and one spare column. Box
        # edges scale as they are; a landmark k is the centre of pixel k, and resizing keeps pixel centres
        # at (k + 0.5) / s - 0.5
        x, y = r[1:3] / sxy
        x1, y1 = (r[1:3] + r[3:5]) / sxy
        x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
        x1, y1 = min(w, int(round(x1))), min(h, int(round(y1)))
        if x1 <= x0 or y1 <= y0:
            continue
        marks = (r[5:15].astype(np.float64).reshape(5, 2) + 0.5) / sxy - 0.5
        faces.append(Face((x0, y0, x1 - x0, y1 - y0), score, marks))
    faces.sort(key=lambda f: (-f.area, -f.score))
    return faces


class YuFace:
    """yuface as a :class:`~facesearch.detect.base.Detector` (registered as ``yuface``)."""

    name = "yuface"
    detect = staticmethod(detect)
    available = staticmethod(available)
    require = staticmethod(available_or_raise)
    describe = staticmethod(describe)
