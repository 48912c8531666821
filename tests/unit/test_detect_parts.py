"""The detect package's parts without the real detector: the registry, faces_or_fail, a model's own
alignment template, and align_folder with a detector passed in."""

import numpy as np
import pytest
from PIL import Image

from facesearch import detect
from facesearch.errors import DetectorUnavailable, InvalidImageError, NoFaceError


class FixedDetector:
    """Finds one face, always at the same place (or none)."""

    name = "fixed"

    def __init__(self, faces):
        self.faces = faces

    def detect(self, pixels, min_score=detect.MIN_SCORE):
        return list(self.faces)

    def available(self):
        return True

    def require(self):
        pass

    def describe(self):
        return "fixed"


def face_at(scale=1.0, shift=(0.0, 0.0)):
    marks = detect.TEMPLATE_112 * scale + np.asarray(shift)
    return detect.Face((0, 0, int(112 * scale), int(112 * scale)), 0.9, marks)


def test_yuface_is_registered_and_unknown_names_are_refused():
    assert "yuface" in detect.REGISTRY and detect.get_detector().name == "yuface"
    with pytest.raises(DetectorUnavailable, match="unknown face detector 'nope'"):
        detect.get_detector("nope")


def test_faces_or_fail_names_the_photo_when_there_is_no_face():
    px = np.zeros((40, 40, 3), np.uint8)
    with pytest.raises(NoFaceError, match="photo.jpg: no face found") as e:
        detect.faces_or_fail(px, "photo.jpg", FixedDetector([]))
    assert isinstance(e.value, InvalidImageError) and e.value.source == "photo.jpg"
    one = face_at()
    assert detect.faces_or_fail(px, "p", FixedDetector([one])) == [one]


def test_align_with_the_default_template_given_explicitly_is_the_same():
    rng = np.random.default_rng(0)
    px = rng.integers(0, 255, (300, 300, 3), np.uint8)
    f = face_at(scale=2.0, shift=(20, 30))
    default = detect.align(px, f)
    assert np.array_equal(default, detect.align(px, f, template=detect.TEMPLATE_112))
    # the same template given in pixels of a 224 px crop
    assert np.array_equal(default, detect.align(px, f, template=detect.TEMPLATE_112 * 2, template_size=224))


def test_align_with_its_own_template_puts_the_landmarks_there():
    px = np.zeros((200, 200, 3), np.uint8)
    f = face_at(scale=1.5, shift=(10, 10))
    px[int(round(f.landmarks[2, 1])), int(round(f.landmarks[2, 0]))] = 255  # the nose tip, lit
    mine = detect.TEMPLATE_112 + np.array([5.0, -4.0])  # a model whose crops sit 5 px right, 4 px up
    out = detect.align(px, f, size=112, template=mine).max(axis=2)
    y, x = np.unravel_index(out.argmax(), out.shape)
    assert abs(x - mine[2, 0]) <= 1 and abs(y - mine[2, 1]) <= 1


def test_align_folder_uses_the_detector_it_is_given(tmp_path):
    src = tmp_path / "photos" / "Ada"
    src.mkdir(parents=True)
    # any texture: the detector is a fixed one (a uniform image would be refused as showing nothing)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 150, 3), np.uint8)).save(src / "a.jpg")
    report = detect.align_folder(tmp_path / "photos", tmp_path / "crops", detector=FixedDetector([face_at()]))
    assert report.written == 1 and not report.failed
    assert Image.open(tmp_path / "crops" / "Ada" / "a.png").size == (112, 112)
    report = detect.align_folder(tmp_path / "photos", tmp_path / "more", detector=FixedDetector([]))
    assert report.written == 0 and report.failed[0][1].startswith("no face found")
