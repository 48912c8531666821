"""Property-based tests of what comes from outside: image bytes and identity names.

Decoding: any bytes give an H x W x 3 uint8 image or an InvalidImageError, never another exception (a
crafted TIFF once raised TypeError and aborted a whole folder enroll). The seeds are real encodings of
every format facesearch reads, mutated by hypothesis (byte flips, cuts, insertions, chunk repeats);
tests/integration/test_fuzz_lfw.py does the same from real LFW faces. The inputs that once failed are
committed in tests/data/decode-corpus and decoded on every run.

Names: any text, and any bytes as the OS hands them over (``os.fsdecode``), is either a valid identity
name that a real SQLite store keeps and finds again, or an InvalidIdentityError, never another exception.

The number of examples is fixed (deterministic, no time-dependent flakiness); set
``FACESEARCH_FUZZ_EXAMPLES`` for a longer run.
"""

from __future__ import annotations

import io
import os
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from facesearch import images
from facesearch.errors import InvalidIdentityError, InvalidImageError
from facesearch.names import MAX_IDENTITY_LENGTH, has_surrogates, nfc_name, printable, validate_identity
from facesearch.store import Store

CORPUS = Path(__file__).resolve().parents[1] / "data" / "decode-corpus"
EXAMPLES = int(os.environ.get("FACESEARCH_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _seed_images() -> list[bytes]:
    rng = np.random.default_rng(3)
    px = rng.integers(0, 255, (40, 48, 3), np.uint8)
    px[10:30, 12:36] //= 3  # some structure for the compressors
    out = []
    for fmt, mode, kw in (("PNG", "RGB", {}), ("JPEG", "RGB", {"quality": 80}), ("WEBP", "RGB", {}),
                          ("TIFF", "RGB", {}), ("TIFF", "RGB", {"compression": "tiff_lzw"}), ("GIF", "P", {}),
                          ("BMP", "RGB", {}), ("PPM", "RGB", {}), ("PNG", "LA", {}), ("PNG", "I;16", {})):
        img = Image.fromarray(px).convert("L" if mode == "I;16" else mode)
        if mode == "I;16":
            img = Image.fromarray(np.asarray(img, np.uint16) * 257)
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        out.append(buf.getvalue())
    return out


SEEDS = _seed_images()


@st.composite
def mutated(draw, seeds=SEEDS):
    """A seed image with a few random edits: byte overwrites, a cut, an insertion, a repeated chunk."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "zero-run"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            data = data[:at]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "repeat":
            n = draw(st.integers(1, 64))
            data[at:at] = data[at : at + n] * draw(st.integers(2, 20))
        elif kind == "zero-run":
            n = draw(st.integers(1, 32))
            data[at : at + n] = b"\xff" * min(n, len(data) - at) if draw(st.booleans()) else bytes(min(n, len(data) - at))
    return bytes(data)


def _decodes_cleanly(data: bytes) -> None:
    try:
        px = images.decode(data, "fuzz")
    except InvalidImageError as e:
        assert e.source == "fuzz" and e.reason
        return
    assert px.ndim == 3 and px.shape[2] == 3 and px.dtype == np.uint8
    assert min(px.shape[:2]) >= images.MIN_SIDE


def test_every_seed_decodes():
    for data in SEEDS:
        assert images.decode(data, "seed").shape == (40, 48, 3)


@FUZZ
@given(mutated())
def test_mutated_images_decode_or_fail_cleanly(data):
    _decodes_cleanly(data)


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_decode_or_fail_cleanly(data):
    _decodes_cleanly(data)


@pytest.mark.parametrize("path", sorted(p for p in CORPUS.iterdir() if p.suffix not in (".md", ".py")),
                         ids=lambda p: p.name)
def test_inputs_that_once_broke_decoding(path):
    data = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw decoder warning reaches the user either
        if path.name.startswith("ok-"):
            assert images.decode(data, path.name).ndim == 3
        else:
            with pytest.raises(InvalidImageError) as e:
                images.decode(data, path.name)
            assert e.value.source == path.name


def test_the_rational_tiff_fails_alone_in_a_folder_enroll_table():
    """The TIFF that aborted a folder: its reason names the decoder's failure, not a traceback."""
    with pytest.raises(InvalidImageError, match="decoder failed on it .*TypeError"):
        images.decode((CORPUS / "tiff-stripoffsets-rational-64.tif").read_bytes(), "t.tif")


@pytest.mark.parametrize("shape, why", [
    ((1, 1), "too small to hold a face"), ((1, 40000), "too small to hold a face"),
    ((23, 200), "too small"), ((30, 400), "more than 10 times as wide"), ((200, 200), "nearly uniform")])
def test_inputs_that_cannot_hold_a_face_are_refused(shape, why):
    px = np.zeros(shape + (3,), np.uint8)
    if why != "nearly uniform":
        px[:] = np.random.default_rng(0).integers(0, 255, px.shape, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="PNG")
    with pytest.raises(InvalidImageError, match=why):
        images.decode(buf.getvalue(), "x.png")


def test_the_smallest_textured_square_is_accepted_and_uniform_ones_are_not():
    ok = np.random.default_rng(1).integers(0, 255, (images.MIN_SIDE, images.MIN_SIDE, 3), np.uint8)
    images.check_usable(ok)
    for value in (0, 128, 255):
        with pytest.raises(InvalidImageError, match="nearly uniform"):
            images.check_usable(np.full((112, 112, 3), value, np.uint8))
    faint = np.full((112, 112, 3), 128, np.uint8)
    faint[::2] += 6  # stripes: std 3, a face-free but visible pattern is let through to the model
    images.check_usable(faint)


# ---- identity names -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from facesearch.model.config import ModelConfig

    s = Store.open(f"sqlite:///{tmp_path_factory.mktemp('names') / 'f.db'}")
    s.fuzz_model = s.register_model("m@fuzz", ModelConfig(name="fuzz", embedding_dim=4).to_dict(), "0" * 64, "fuzz").id
    yield s
    s.close()


def _valid_or_refused(name: str, store: Store) -> None:
    try:
        validate_identity(name)
    except InvalidIdentityError as e:
        str(e).encode("utf-8")  # the message itself can always be printed and stored
        return
    # accepted: it is text a database and a terminal take, short enough once stored in NFC
    assert not has_surrogates(name) and name.encode("utf-8")
    assert len(nfc_name(name)) <= MAX_IDENTITY_LENGTH and "/" not in name and "\\" not in name
    store.add_faces(store.fuzz_model, [(name, "src", os.urandom(16).hex(), np.zeros(4, np.float32), None)])
    assert any(nfc_name(name) == i.name for i in store.identities())
    store.remove_identity(name)


@FUZZ
@given(st.text(max_size=250))
def test_any_text_is_a_valid_name_or_refused(store, name):
    _valid_or_refused(name, store)


@FUZZ
@given(st.binary(min_size=1, max_size=64).filter(lambda b: b"\x00" not in b and b"/" not in b))
def test_any_file_name_bytes_are_a_valid_name_or_refused(store, raw):
    """A folder name as the OS gives it: bytes, decoded with surrogateescape where they are not UTF-8."""
    name = os.fsdecode(raw)
    _valid_or_refused(name, store)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:  # not UTF-8: always refused, with the bytes shown escaped
        with pytest.raises(InvalidIdentityError, match="not valid Unicode text"):
            validate_identity(name)
        assert "\\x" in printable(name)


def test_a_name_that_grows_past_the_limit_when_composed_is_refused_as_such():
    name = "\u0958" * 150  # each decomposes to two characters in NFC (a composition exclusion)
    assert len(unicodedata.normalize("NFC", name)) == 300
    with pytest.raises(InvalidIdentityError, match="once composed"):
        validate_identity(name)
