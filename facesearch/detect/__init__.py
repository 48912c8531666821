"""Finding and aligning faces in ordinary photos (``--detect``).

facesearch's encoders are trained on aligned face crops: the LFW deep-funneled pack, 112 x 112. A photo
of a room, a phone snapshot or a group picture has to be turned into such a crop first. This module does
that in two steps:

1. **detect**: `yuface <https://pypi.org/project/yuface/>`_ (libfacedetection, BSD licence, its CNN's
   weights compiled into the wheel, so nothing is downloaded) gives each face a box, a score and five
   landmarks (eye centres, nose tip, mouth corners). Large photos are scaled down for the detector only.
2. **align**: a similarity transform (rotation, uniform scale, shift; least squares over the five points)
   maps the landmarks onto :data:`TEMPLATE_112`, the mean landmarks the same detector finds on the LFW
   pack the models were trained on, and the photo is resampled once into a 112 x 112 crop with the
   training crops' geometry. The encoder's own preprocessing then runs on that crop as on any aligned
   image.

yuface publishes wheels for CPython 3.11 only: ``pip install 'facesearch[detect]'``.
Without it, ``--detect`` fails with a message that says so; everything else works.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from facesearch.errors import FaceSearchError, InvalidImageError

#: side of the aligned crop, in pixels: the LFW pack's, the geometry the models were trained on
ALIGNED_SIZE = 112
#: Where the five landmarks sit in an aligned crop: (x, y) of right eye, left eye (as seen in the image:
#: the person's right eye is on the image's left), nose tip, right and left mouth corner, in pixels of a
#: 112 x 112 crop. The mean of what yuface finds on all 13,233 images of the LFW deep-funneled 112 pack
#: (the crops every facesearch model is trained on), measured by ``python scripts/alignment_template.py``.
TEMPLATE_112 = np.array([
    [39.41, 45.32],
    [71.79, 44.97],
    [55.34, 63.92],
    [42.84, 79.38],
    [70.68, 78.40],
], dtype=np.float64)
#: faces scored below this (0-1) are not faces
MIN_SCORE = 0.5
#: the detector sees photos scaled down to at most this side (libfacedetection warns above 960)
DETECT_MAX_SIDE = 640


class DetectorUnavailable(FaceSearchError):
    """``--detect`` was asked for but the face detector is not installed."""


@dataclass(frozen=True)
class Face:
    """One detected face, in the photo's pixel coordinates."""

    box: tuple[int, int, int, int]  # x, y, width, height
    score: float  # 0-1
    landmarks: np.ndarray  # 5 x 2 float: eyes, nose tip, mouth corners (see TEMPLATE_112)

    @property
    def area(self) -> int:
        return self.box[2] * self.box[3]

    def to_dict(self) -> dict:
        return {"box": [int(v) for v in self.box], "score": round(self.score, 4),
                "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks]}

    @classmethod
    def from_dict(cls, d: dict) -> "Face":
        return cls(tuple(int(v) for v in d["box"]), float(d["score"]), np.asarray(d["landmarks"], np.float64))


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


_lock = threading.Lock()
_c_detect = None


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


def faces_or_fail(pixels: np.ndarray, source: str) -> list[Face]:
    """:func:`detect`, for a photo that must hold a face: none is an InvalidImageError naming ``source``."""
    faces = detect(pixels)
    if not faces:
        raise InvalidImageError(f"{source}: no face found (detector score >= {MIN_SCORE})")
    return faces


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2 x 3 matrix of the similarity transform (rotation, uniform scale, translation) that maps the
    points ``src`` onto ``dst`` with the least squared error (Umeyama, 1991; no reflection)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    if var_s <= 0:
        raise ValueError("landmarks coincide")
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    fix = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        fix[1, 1] = -1
    rot = u @ fix @ vt
    scale = (sig * np.diag(fix)).sum() / var_s
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def align(pixels: np.ndarray, face: Face, size: int = ALIGNED_SIZE) -> np.ndarray:
    """The face as an aligned ``size`` x ``size`` x 3 uint8 crop (the LFW pack's geometry at 112)."""
    m = similarity_transform(face.landmarks, TEMPLATE_112 * (size / ALIGNED_SIZE))
    inv = np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))[:2]  # PIL maps each output pixel back to the input
    # PIL samples at pixel centres k + 0.5; the landmarks count pixel k's centre as k: shift out, map, shift in
    shift = inv[:, 2] - inv[:, :2] @ np.array([0.5, 0.5]) + 0.5
    coeffs = (inv[0, 0], inv[0, 1], shift[0], inv[1, 0], inv[1, 1], shift[1])
    out = Image.fromarray(pixels).transform((size, size), Image.Transform.AFFINE, coeffs,
                                            resample=Image.Resampling.BICUBIC, fillcolor=(0, 0, 0))
    return np.asarray(out, dtype=np.uint8)


@dataclass
class AlignReport:
    """What :func:`align_folder` did: crops written, photos already done, photos it could not use."""

    written: int = 0
    existing: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    several_faces: list[tuple[str, int]] = field(default_factory=list)  # (source, faces found): largest kept

    def to_dict(self) -> dict:
        return {"written": self.written, "existing": self.existing, "failed": len(self.failed),
                "failures": [{"source": s, "reason": r} for s, r in sorted(self.failed)],
                "several_faces": [{"source": s, "faces": n} for s, n in sorted(self.several_faces)]}


def align_folder(src, out, progress=None, total=None) -> AlignReport:
    """Write the aligned crop (112 px PNG, the LFW pack's geometry) of the largest face of every photo in
    ``src/<identity>/`` (a folder or a zip of one) to ``out/<identity>/<photo name>.png``: a folder of
    identities that ``facesearch train``, ``calibrate`` and ``evaluate`` read as they read the LFW pack.
    Identity names are checked as enroll checks them (no path separators, no leading dot); folders and
    files are created owner-only; a crop already there is kept, so a second run only adds new photos.
    ``progress(n)`` is called as photos are done, ``total(n)`` once with their number."""
    from pathlib import Path

    from facesearch import images
    from facesearch.model.config import write_private_atomic
    from facesearch.datasets import ImageFolder
    from facesearch.errors import InvalidIdentityError
    from facesearch.store import validate_identity

    available_or_raise()
    folder, out, report = ImageFolder(src), Path(out), AlignReport()
    # sub-folders, files outside identity folders: listed, as enroll does
    report.failed.extend((k, why.replace("not enrolled", "left out")) for k, why in folder.ignored)
    if total is not None:
        total(len(folder))
    for ident in folder.identities():
        try:
            validate_identity(ident)
        except InvalidIdentityError as e:
            report.failed.extend((k, str(e)) for k in folder.items[ident])
            if progress:
                progress(len(folder.items[ident]))
            continue
        taken: set[str] = set()
        for key in folder.items[ident]:
            name = f"{Path(key).stem}.png"
            dest = out / ident / name
            try:
                if name in taken:
                    raise InvalidImageError(f"another photo of {ident} is named {Path(key).stem} too")
                taken.add(name)
                if dest.exists():
                    report.existing += 1
                    continue
                pixels = images.decode(folder.read(key), key)
                faces = faces_or_fail(pixels, key)
                if len(faces) > 1:
                    report.several_faces.append((key, len(faces)))
                buf = io.BytesIO()
                Image.fromarray(align(pixels, faces[0])).save(buf, format="PNG")
                out.mkdir(parents=True, exist_ok=True, mode=0o700)  # mode applies to the last part only
                dest.parent.mkdir(exist_ok=True, mode=0o700)
                write_private_atomic(dest, buf.getvalue())
                report.written += 1
            except (InvalidImageError, OSError) as e:
                report.failed.append((key, str(e).removeprefix(f"{key}: ")))
            finally:
                if progress:
                    progress(1)
    return report
