import io

import numpy as np
import pytest
from PIL import Image

from facesearch import images
from facesearch.model.config import ModelConfig
from facesearch.errors import InvalidImageError


def face_like(w=120, h=100):
    """A non-symmetric RGB image so orientation errors show."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 3] = (255, 0, 0)
    a[h // 2 :, w // 3 :] = (0, 200, 50)
    return a


def save(img: Image.Image, path, fmt="PNG", **kw):
    img.save(path, format=fmt, **kw)
    return path


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "LA", "CMYK"])
def test_modes_decode_to_rgb(tmp_path, mode):
    base = Image.fromarray(face_like())
    if mode == "I;16":
        arr = (np.asarray(base.convert("L"), np.uint16) * 257)
        img = Image.fromarray(arr)  # uint16 -> mode I;16
        assert img.mode == "I;16"
    else:
        img = base.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    p = save(img, tmp_path / f"x.{fmt.lower()}", fmt)
    out = images.load(p)
    assert out.pixels.shape == (100, 120, 3) and out.pixels.dtype == np.uint8
    if mode in ("L", "I;16"):
        gray = np.asarray(base.convert("L"))
        assert np.abs(out.pixels[..., 0].astype(int) - gray).max() <= 1


def test_exif_rotation_is_applied(tmp_path):
    img = Image.fromarray(face_like(120, 100))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    p = tmp_path / "rot.jpg"
    img.save(p, format="JPEG", exif=exif.tobytes(), quality=95)
    out = images.load(p)
    assert out.pixels.shape == (120, 100, 3)  # width and height swapped


def test_hash_is_of_content(tmp_path):
    p1 = save(Image.fromarray(face_like()), tmp_path / "a.png")
    p2 = tmp_path / "b.png"
    p2.write_bytes(p1.read_bytes())
    assert images.load(p1).sha256 == images.load(p2).sha256


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "text", "truncated"])
def test_bad_files_raise_clear_errors(tmp_path, case):
    p = tmp_path / "bad.jpg"
    if case == "directory":
        p.mkdir()
    elif case == "empty":
        p.write_bytes(b"")
    elif case == "text":
        p.write_text("this is not an image\n")
    elif case == "truncated":
        buf = io.BytesIO()
        Image.fromarray(face_like(300, 300)).save(buf, format="JPEG")
        p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    expected = {"missing": "no such file", "directory": "not a regular file", "empty": "empty file",
                "text": "not an image", "truncated": "truncated"}[case]
    with pytest.raises(InvalidImageError, match=expected):
        images.load(p)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(p)  # 400 MP in a tiny file
    assert p.stat().st_size < 1_000_000
    with pytest.raises(InvalidImageError, match="decompression bomb"):
        images.load(p)


def test_prepare_crops_centre_and_resizes():
    cfg = ModelConfig(input_size=64, crop_fraction=0.5)
    a = np.zeros((200, 300, 3), np.uint8)
    a[50:150, 100:200] = 255  # the centre 100x100 square, which is exactly the crop
    out = images.prepare(a, cfg)
    assert out.shape == (3, 64, 64) and out.dtype == np.uint8
    assert out.min() >= 250
