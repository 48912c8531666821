"""Finding and aligning faces in ordinary photos (``--detect``).

facesearch's encoders are trained on aligned face crops: the LFW deep-funneled pack, 112 x 112. A photo
of a room, a phone snapshot or a group picture has to be turned into such a crop first. This package does
that in two steps:

1. **detect** (:mod:`~facesearch.detect.yuface`): yuface (libfacedetection, BSD licence, its CNN's weights
   compiled into the wheel, so nothing is downloaded) gives each face a box, a score and five landmarks
   (eye centres, nose tip, mouth corners). Large photos are scaled down for the detector only.
2. **align** (:mod:`~facesearch.detect.align`): a similarity transform (rotation, uniform scale, shift;
   least squares over the five points) maps the landmarks onto :data:`TEMPLATE_112`, the mean landmarks the
   same detector finds on the LFW pack the models were trained on, and the photo is resampled once into a
   112 x 112 crop with the training crops' geometry. The encoder's own preprocessing then runs on that crop
   as on any aligned image.

:mod:`~facesearch.detect.base` holds :class:`Face`, the :class:`Detector` protocol and the
:data:`REGISTRY` of detectors (yuface; add another there); :mod:`~facesearch.detect.folder` is
``facesearch align``. The functions here (:func:`detect`, :func:`available`, :func:`describe`, ...) are
yuface's, as before.

yuface publishes wheels for CPython 3.11 only: ``pip install 'facesearch[detect]'``.
Without it, ``--detect`` fails with a message that says so; everything else works.
"""

from facesearch.detect.align import ALIGNED_SIZE, TEMPLATE_112, align, similarity_transform
from facesearch.detect.base import (
    DEFAULT_DETECTOR,
    MIN_FACE_SIZE,
    MIN_SCORE,
    REGISTRY,
    Detector,
    DetectorUnavailable,
    Face,
    faces_or_fail,
    get_detector,
)
from facesearch.detect.folder import AlignReport, align_folder
from facesearch.detect.yuface import DETECT_MAX_SIDE, available, available_or_raise, describe, detect

__all__ = [
    "ALIGNED_SIZE", "DEFAULT_DETECTOR", "MIN_FACE_SIZE", "DETECT_MAX_SIDE", "MIN_SCORE", "REGISTRY", "TEMPLATE_112", "AlignReport",
    "Detector", "DetectorUnavailable", "Face", "align", "align_folder", "available", "available_or_raise",
    "describe", "detect", "faces_or_fail", "get_detector", "similarity_transform",
]
