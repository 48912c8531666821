"""The Python API takes an image as a path, bytes, a numpy array (a video frame) or a PIL.Image, and
gives the same answer for the same pixels; anything else is an InvalidImageError saying what is taken."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from facesearch import FaceSearch
from facesearch.errors import InvalidImageError
from tests.conftest import PEOPLE


def test_paths_bytes_arrays_and_pil_images_give_the_same_embedding(tmp_path, model_dir, gallery_src):
    path = gallery_src / PEOPLE[0] / f"{PEOPLE[0]}_0001.webp"
    img = Image.open(path)
    arr = np.asarray(img.convert("RGB"))
    with FaceSearch.open(home=tmp_path / "h", model=model_dir, device="cpu") as fs:
        embs = fs.embed([path, path.read_bytes(), arr, img, np.asarray(img.convert("L"))])
        assert np.allclose(embs[0], embs[1:4], atol=1e-6)  # the same pixels: the same embedding
        assert float(embs[0] @ embs[4]) > 0.5  # grayscale: the same face, other pixels
        rep = fs.enroll_items([(PEOPLE[0], "frame-0001", arr), (PEOPLE[0], "frame-0001-again", Image.fromarray(arr))])
        assert rep.added == 1 and len(rep.skipped) == 1  # one content, hashed as its PNG
        r = fs.query(arr, top_k=1)
        assert r.identity == PEOPLE[0] and r.probe == "<array 112x112>"
        many = fs.query_many([arr, np.zeros((112, 112, 3), np.float32), img])
        assert [type(x).__name__ for x in many] == ["QueryResult", "Failure", "QueryResult"]
        assert "H x W x 3 uint8 RGB" in many[1].reason
        assert fs.verify(arr, img).distance == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("bad, says", [
    (42, "not an image input: int"), ([1, 2, 3], "not an image input: list"),
    (np.zeros((112, 112, 3), np.float32), "uint8"), (np.zeros((112, 112, 4), np.uint8), "H x W x 3"),
    (np.zeros((112, 112, 3), np.uint8), "nearly uniform"), (np.zeros((4, 4, 3), np.uint8), "too small"),
])
def test_what_is_not_an_image_is_refused_with_what_is_taken(tmp_path, model_dir, bad, says):
    with FaceSearch.open(home=tmp_path / "h", model=model_dir, device="cpu") as fs:
        with pytest.raises(InvalidImageError, match=says):
            fs.query(bad)
