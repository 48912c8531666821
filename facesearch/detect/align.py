"""Aligning a detected face: a similarity transform (rotation, uniform scale, shift; least squares over the
five landmarks) maps them onto a template, and the photo is resampled once into a square crop.

The default template, :data:`TEMPLATE_112`, is where the landmarks sit in the crops the models were trained
on (the LFW deep-funneled 112 px pack), so an aligned photo has the training crops' geometry and the
encoder's own preprocessing then runs on it as on any aligned image. A model trained on other crops can
bring its own template (``align(..., template=, template_size=)``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from facesearch.detect.base import Face

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


def align(pixels: np.ndarray, face: Face, size: int = ALIGNED_SIZE, template: np.ndarray | None = None,
          template_size: int = ALIGNED_SIZE) -> np.ndarray:
    """The face as an aligned ``size`` x ``size`` x 3 uint8 crop: its landmarks moved onto ``template`` (5 x 2,
    in pixels of a ``template_size`` crop, scaled to ``size``; default :data:`TEMPLATE_112`, the LFW pack's
    geometry at 112)."""
    template = TEMPLATE_112 if template is None else np.asarray(template, np.float64)
    m = similarity_transform(face.landmarks, template * (size / template_size))
    inv = np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))[:2]  # PIL maps each output pixel back to the input
    # PIL samples at pixel centres k + 0.5; the landmarks count pixel k's centre as k: shift out, map, shift in
    shift = inv[:, 2] - inv[:, :2] @ np.array([0.5, 0.5]) + 0.5
    coeffs = (inv[0, 0], inv[0, 1], shift[0], inv[1, 0], inv[1, 1], shift[1])
    out = Image.fromarray(pixels).transform((size, size), Image.Transform.AFFINE, coeffs,
                                            resample=Image.Resampling.BICUBIC, fillcolor=(0, 0, 0))
    return np.asarray(out, dtype=np.uint8)


def crop_geometry(alignment, input_size: int) -> tuple[np.ndarray, int]:
    """``(template, side)`` of the aligned crops a model takes: its own template (``alignment``, 5 x 2 in
    pixels of an ``input_size`` crop) at its input size, else (None) :data:`TEMPLATE_112` at
    :data:`ALIGNED_SIZE`, the LFW pack's geometry that facesearch's own models are trained on (their
    preprocessing then resizes the 112 px crop to their input size, as it does the pack's)."""
    if alignment is None:
        return TEMPLATE_112, ALIGNED_SIZE
    return np.asarray(alignment, np.float64), int(input_size)


def realign(pixels: np.ndarray, template: np.ndarray, size: int, upscale: int = 2,
            detector=None) -> np.ndarray | None:
    """An aligned face crop aligned again to another ``template`` (5 x 2, pixels of a ``size`` crop): the
    face nearest the crop's centre is found (on the crop upscaled ``upscale`` times: faces fill these
    crops, which the detector finds more reliably when larger) and the crop resampled once onto the
    template. None when no face is found (the caller decides: the crop as given, or a failure).
    ``detector``: a :class:`~facesearch.detect.base.Detector` (default: yuface)."""
    face = crop_face(pixels, upscale, detector)
    if face is None:
        return None
    return align(pixels, face, size=size, template=template, template_size=size)


def crop_face(pixels: np.ndarray, upscale: int = 2, detector=None) -> Face | None:
    """The face of an aligned crop: the one nearest its centre, found on the crop upscaled ``upscale``
    times (faces fill these crops, which the detector finds more reliably when larger), its landmarks in
    the crop's own pixels; None when no face is found. ``detector``: a Detector (default: yuface)."""
    h, w = pixels.shape[:2]
    big = np.asarray(Image.fromarray(pixels).resize((w * upscale, h * upscale), Image.Resampling.BICUBIC))
    if detector is None:
        from facesearch.detect import detect

        faces = detect(big)
    else:
        faces = detector.detect(big)
    if not faces:
        return None
    centre = np.array([w * upscale / 2.0, h * upscale / 2.0])
    face = min(faces, key=lambda f: float(np.sum((np.asarray(f.box[:2]) + np.asarray(f.box[2:]) / 2 - centre) ** 2)))
    # landmarks of the upscaled crop -> the crop's pixels (pixel centres at k + 0.5 in both)
    pts = (np.asarray(face.landmarks, np.float64) + 0.5) / upscale - 0.5
    return Face(box=face.box, score=face.score, landmarks=pts)


def warp_geometry(pixels: np.ndarray, src: np.ndarray, src_size: int, template: np.ndarray, size: int) -> np.ndarray:
    """An aligned crop moved from one geometry onto another without looking at the face: the crop is taken
    to have its landmarks at ``src`` (5 x 2, pixels of a ``src_size`` crop, scaled to the crop's sides) and
    is resampled once so that those points land on ``template`` (pixels of a ``size`` crop). What an
    average face of that geometry needs; the fallback when no face is found in a crop."""
    h, w = pixels.shape[:2]
    assumed = Face(box=(0, 0, w, h), score=0.0, landmarks=np.asarray(src, np.float64) * np.array([w / src_size, h / src_size]))
    return align(pixels, assumed, size=size, template=template, template_size=size)


def realign_or_warp(pixels: np.ndarray, template: np.ndarray, size: int, detector=None,
                    given: np.ndarray | None = None, given_size: int = ALIGNED_SIZE) -> tuple[np.ndarray, bool]:
    """:func:`realign`; when no face is found in the crop, :func:`warp_geometry` from the crop's own
    geometry ``given`` (default: the LFW pack's :data:`TEMPLATE_112` at 112): ``(pixels, found)``. The rule
    ``facesearch align --realign``, enroll and query (``gallery.embedding.model_crop``) and ``evaluate lfw
    --realign`` share (SFace on LFW View 2: 99.25% with the landmarks found again, 97.88% with every crop
    warped, 95.72% with the crops as given); the caller counts the ``found`` False ones and reports them."""
    out = realign(pixels, template, size, detector=detector)
    if out is not None:
        return out, True
    src = TEMPLATE_112 if given is None else np.asarray(given, np.float64)
    return warp_geometry(pixels, src, given_size if given is not None else ALIGNED_SIZE, template, size), False
