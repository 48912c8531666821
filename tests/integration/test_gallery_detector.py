"""FaceSearch.open(detector=...): a detector object other than yuface is used for --detect, and a model
with its own alignment template gets its faces aligned to it."""

import numpy as np

from facesearch import detect
from facesearch.gallery import FaceSearch
from facesearch.gallery.embedding import align_face
from facesearch.model.config import ModelConfig
from tests.unit.test_detect_parts import FixedDetector, face_at


def _photo(seed: int) -> bytes:
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_an_injected_detector_finds_the_faces(tmp_path, model_dir):
    fixed = FixedDetector([face_at(2.0, (0, 0))])  # one face, the photo's whole upper left 224 px
    with FaceSearch.open(home=tmp_path / "h", model=model_dir, device="cpu", detect=True, detector=fixed) as fs:
        assert fs.detector is fixed and fs.info()["detector"] == "fixed"
        rep = fs.enroll_items([("ann", "a.png", _photo(0)), ("bob", "b.png", _photo(1))])
        assert rep.added == 2 and not rep.failed
        r = fs.query(_photo(0))
        assert r.identity == "ann" and r.face["box"] == [0, 0, 224, 224]
        fixed.faces = []  # now it finds nothing: a per-file failure naming the reason
        rep = fs.enroll_items([("cy", "c.png", _photo(2))])
        assert rep.added == 0 and rep.failed[0].reason.startswith("no face found")


def test_a_model_template_is_where_the_landmarks_go():
    face = face_at(2.0, (10, 5))
    pixels = np.random.default_rng(3).integers(0, 255, (260, 260, 3), dtype=np.uint8)
    own = [[38.29, 51.70], [73.53, 51.50], [56.03, 71.74], [41.55, 92.37], [70.73, 92.20]]
    default = align_face(pixels, face, ModelConfig())
    mine = align_face(pixels, face, ModelConfig(alignment=own))
    assert default.shape == mine.shape == (112, 112, 3)
    np.testing.assert_array_equal(default, detect.align(pixels, face))
    np.testing.assert_array_equal(mine, detect.align(pixels, face, template=np.asarray(own)))
    assert not np.array_equal(default, mine)
