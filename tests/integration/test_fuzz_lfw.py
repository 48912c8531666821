"""Mutation fuzzing from real faces: LFW crops re-encoded in every format facesearch reads, mutated by
hypothesis, must decode or fail as InvalidImageError; and a folder of such files enrolls what can be
enrolled and reports the rest, one by one, with nothing else raised.

``FACESEARCH_FUZZ_EXAMPLES`` (default 300) sets the examples per property, as in tests/unit/test_decode_fuzz.py.
"""

from __future__ import annotations

import io
import random
import zipfile

import numpy as np
from hypothesis import given
from PIL import Image

from facesearch import FaceSearch
from tests.conftest import LFW_ZIP, needs_lfw
from tests.unit.test_decode_fuzz import FUZZ, _decodes_cleanly, mutated

pytestmark = needs_lfw


def _real_seeds() -> list[bytes]:
    if not LFW_ZIP.exists():
        return [b""]
    with zipfile.ZipFile(LFW_ZIP) as z:
        raw = [z.read(f"lfw-deepfunneled-112/{n}/{n}_0001.webp") for n in ("Colin_Powell", "Serena_Williams")]
    out = list(raw)
    for data in raw:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        for fmt, kw in (("PNG", {}), ("JPEG", {"quality": 90}), ("TIFF", {"compression": "tiff_deflate"}),
                        ("GIF", {}), ("BMP", {})):
            buf = io.BytesIO()
            img.save(buf, format=fmt, **kw)
            out.append(buf.getvalue())
    return out


REAL = _real_seeds()


@FUZZ
@given(mutated(REAL))
def test_mutated_lfw_faces_decode_or_fail_cleanly(data):
    _decodes_cleanly(data)


def test_a_folder_of_mutated_faces_enrolls_what_it_can_and_reports_the_rest(tmp_path):
    rng = random.Random(17)
    items = []
    for k in range(48):
        data = bytearray(rng.choice(REAL))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data))
            if rng.random() < 0.5:
                data[at] = rng.randrange(256)
            else:
                data = data[: max(at, 8)]
        items.append((f"P{k % 6}", f"m{k:02d}", bytes(data)))
    with FaceSearch.open(home=tmp_path / "home", model="lfw-mobilenet", device="cpu") as fs:
        rep = fs.enroll_items(items)
        assert rep.added + len(rep.skipped) + len(rep.failed) == len(items)
        assert all(f.reason for f in rep.failed)
        assert fs.store.count_faces() == rep.added
        ids = np.sort(np.asarray(rep.face_ids))
        assert fs.index().ntotal == rep.added and len(np.unique(ids)) == rep.added
    # at least some of both: the mutations are not all fatal, nor all harmless
    assert rep.added > 0 and rep.failed, (rep.added, len(rep.failed))
