"""--detect: finding and aligning faces in photos, with the real detector on LFW's original photos."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from facesearch import detect, images
from facesearch.errors import InvalidImageError
from tests.conftest import LFW_ZIP, ORIGINALS, REPO

pytestmark = pytest.mark.skipif(not detect.available(), reason="yuface (facesearch[detect]) is not installed")

#: two people of the original-photo sample, 4 photos each
ONE, TWO = "Antonio_Banderas", "Bob_Hope"


def wall() -> np.ndarray:
    """A photo with no face in it: plaster-like texture (a uniform one is refused before detection)."""
    return np.random.default_rng(7).integers(70, 110, (150, 150, 3), np.uint8)


def photo(name: str, i: int) -> np.ndarray:
    p = ORIGINALS / name / f"{name}_{i:04d}.jpg"
    if not p.exists():
        pytest.skip(f"LFW original photos not found at {ORIGINALS}")
    return images.load(p).pixels


def paste(canvas: np.ndarray, pixels: np.ndarray, x: int, y: int, scale: float = 1.0, angle: float = 0.0):
    img = Image.fromarray(pixels)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
    img = img.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(120, 120, 120))
    out = Image.fromarray(canvas)
    out.paste(img, (x, y))
    return np.asarray(out), img.size


def group_photo() -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """ONE at natural size on the left, TWO enlarged and tilted on the right; and where each was pasted."""
    canvas = np.full((320, 560, 3), 120, np.uint8)
    canvas, s1 = paste(canvas, photo(ONE, 2), 20, 90)
    canvas, s2 = paste(canvas, photo(TWO, 1), 290, 40, scale=1.4, angle=15)
    return canvas, [(20, 90, *s1), (290, 40, *s2)]


def inside(box, region) -> bool:
    x, y, w, h = box
    rx, ry, rw, rh = region
    return rx <= x and ry <= y and x + w <= rx + rw and y + h <= ry + rh


# ---- the detector and the alignment -------------------------------------------------------------
def test_similarity_transform_recovers_a_known_transform():
    a, s, t = np.deg2rad(23.0), 1.7, np.array([12.5, -4.0])
    m = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    src = detect.TEMPLATE_112 + np.array([3.0, -2.0])
    got = detect.similarity_transform(src, src @ m.T + t)
    np.testing.assert_allclose(got[:, :2], m, atol=1e-9)
    np.testing.assert_allclose(got[:, 2], t, atol=1e-9)
    # a mirrored face: the best transform is still a rotation (a similarity never mirrors a face)
    mirrored = src * np.array([-1.0, 1.0])
    r = detect.similarity_transform(mirrored, src)[:, :2]
    assert np.linalg.det(r) > 0 and np.isclose(r[0, 0], r[1, 1]) and np.isclose(r[0, 1], -r[1, 0])
    with pytest.raises(ValueError):
        detect.similarity_transform(np.ones((5, 2)), detect.TEMPLATE_112)


def test_align_maps_the_landmarks_onto_the_template():
    """A photo enlarged 2.5x, tilted and shifted: aligning it from its own transformed template lands back
    on the 112 px original's pixels."""
    if not LFW_ZIP.exists():
        pytest.skip("LFW pack not found")
    from facesearch.datasets import ImageFolder

    folder = ImageFolder(LFW_ZIP)
    key = folder.items["Colin_Powell"][0]
    crop = images.decode(folder.read(key), key)
    a, s, t = np.deg2rad(-12.0), 2.5, np.array([90.0, 40.0])
    m = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    inv = np.linalg.inv(np.vstack([np.hstack([m, t[:, None]]), [0, 0, 1]]))[:2]
    # the big photo: pixel centre q of the big image shows the original at inv(q)
    shift = inv[:, 2] - inv[:, :2] @ np.array([0.5, 0.5]) + 0.5
    big = Image.fromarray(crop).transform((400, 400), Image.Transform.AFFINE,
                                          (inv[0, 0], inv[0, 1], shift[0], inv[1, 0], inv[1, 1], shift[1]),
                                          resample=Image.Resampling.BICUBIC)
    face = detect.Face((0, 0, 400, 400), 1.0, detect.TEMPLATE_112 @ m.T + t)
    back = detect.align(np.asarray(big), face).astype(np.float64)
    err = np.abs(back[8:-8, 8:-8] - crop[8:-8, 8:-8]).mean()  # borders: resampled from outside the photo
    assert err < 1.6, err  # measured 1.0 (two bicubic resamplings); half a pixel off gave 2.3
    # the bound can tell a miss of one pixel of the big photo (0.4 px of the crop)
    shifted = detect.align(np.asarray(big), detect.Face(face.box, 1.0, face.landmarks + 1.0)).astype(np.float64)
    assert np.abs(shifted[8:-8, 8:-8] - crop[8:-8, 8:-8]).mean() > 1.6


def test_detector_finds_the_face_in_original_photos_and_maps_boxes_back():
    for i in range(1, 5):
        faces = detect.detect(photo(ONE, i))
        assert faces, i
        f = faces[0]
        assert f.score >= detect.MIN_SCORE and f.area > 30 * 30
        x, y, w, h = f.box
        # all five landmarks inside the face's box, eyes above the mouth
        assert ((f.landmarks >= [x, y]) & (f.landmarks <= [x + w, y + h])).all()
        assert f.landmarks[:2, 1].max() < f.landmarks[3:, 1].min()
    # a 1,600 x 1,200 photo is shrunk for the detector: the box must come back in the photo's pixels
    big, size = paste(np.full((1200, 1600, 3), 120, np.uint8), photo(ONE, 1), 1100, 700, scale=2.0)
    faces = detect.detect(big)
    assert faces and inside(faces[0].box, (1100, 700, *size))
    # its landmarks are mapped back too: the same as the detector finds on the full-size photo, up to
    # the detector's own jitter (measured: 1.6-4.5 px mean on these ~110 px faces)
    full = detect.detect(big, max_side=max(big.shape))[0]
    assert np.abs(faces[0].landmarks - full.landmarks).mean() < 8.0
    assert detect.detect(np.full((200, 300, 3), 120, np.uint8)) == []


def test_template_is_where_the_detector_puts_landmarks_on_the_training_crops():
    if not LFW_ZIP.exists():
        pytest.skip("LFW pack not found")
    from facesearch.datasets import ImageFolder

    folder = ImageFolder(LFW_ZIP)
    marks = [detect.detect(images.decode(folder.read(k), k))[0].landmarks
             for name in ("Colin_Powell", "Tony_Blair", "Serena_Williams") for k in folder.items[name][:10]]
    assert np.abs(np.mean(marks, 0) - detect.TEMPLATE_112).max() < 4.0


# ---- the gallery with detect=True --------------------------------------------------------------
@pytest.fixture
def photos(tmp_path):
    """ORIGINALS of ONE and TWO as a folder of identities, plus a photo with no face."""
    root = tmp_path / "photos"
    for name in (ONE, TWO):
        (root / name).mkdir(parents=True)
        for i in range(1, 5):
            src = ORIGINALS / name / f"{name}_{i:04d}.jpg"
            if not src.exists():
                pytest.skip(f"LFW original photos not found at {ORIGINALS}")
            (root / name / src.name).write_bytes(src.read_bytes())
    Image.fromarray(wall()).save(root / ONE / "wall.png")
    return root


def test_enroll_query_verify_photos_with_detect(tmp_path, photos):
    from facesearch.gallery.facade import FaceSearch

    with FaceSearch.open(home=tmp_path / "home", device="cpu", detect=True) as fs:  # the shipped model
        report = fs.enroll_folder(photos)
        assert report.added == 8 and report.identities == {ONE, TWO}
        assert [(f.source.endswith("wall.png"), "no face found" in f.reason) for f in report.failed] == [(True, True)]
        # Antonio_Banderas_0001 shows a second, cut-off face at the photo's edge; the larger one is his
        assert any(s.endswith(f"{ONE}_0001.jpg") and n == 2 for s, n in report.several_faces)
        stored = {f.source: f for f in fs.store.identity_faces(ONE)}
        assert len(stored) == 4
        again = fs.enroll_folder(photos)  # nothing new: nothing reported as enrolled from a group photo
        assert again.added == 0 and len(again.skipped) == 8 and again.several_faces == []

        group, regions = group_photo()
        buf = tmp_path / "group.png"
        Image.fromarray(group).save(buf)
        found = fs.query_faces(buf, top_k=2)
        assert len(found) == 2
        assert [r.identity for r in found] == [TWO, ONE]  # largest face first: TWO was enlarged
        assert inside(found[0].face["box"], regions[1]) and inside(found[1].face["box"], regions[0])
        assert fs.query(buf).identity == TWO and fs.query(buf).face == found[0].face
        v = fs.verify(buf, photos / ONE / f"{ONE}_0003.jpg")
        assert v.faces[0]["box"] == found[0].face["box"]
        assert not v.same  # the largest face of the group photo is TWO
        with pytest.raises(InvalidImageError, match="no face found"):
            fs.query(photos / ONE / "wall.png")
        # batched: every face of each photo in order, a photo without a face as a Failure in its place
        many = fs.query_many([buf, photos / ONE / "wall.png", photos / TWO / f"{TWO}_0004.jpg"], every=True)
        assert [getattr(r, "identity", None) for r in many] == [TWO, ONE, None, TWO]
        assert many[2].reason.startswith("no face found") and many[3].face is not None
        assert [r.identity for r in fs.query_many([buf])] == [TWO]  # default: the largest face only

        # the same photos without detect: taken as aligned crops, the group photo is nobody it knows
        fs.detect = False
        plain = fs.query(buf, top_k=2)
        assert plain.face is None and plain.matches[0].distance > found[1].matches[0].distance


def test_reindex_aligns_again_from_the_stored_landmarks(tmp_path, photos, model_dir):
    """Without stored crops, `reindex --model` re-embeds photos from their source files: faces found by
    the detector are aligned again from the landmarks kept in faces.detection, giving the same vectors."""
    from facesearch.gallery.facade import FaceSearch

    with FaceSearch.open(home=tmp_path / "home", model=model_dir, device="cpu", detect=True,
                         keep_crops=False) as fs:
        report = fs.enroll_folder(photos)
        before = fs.store.embeddings(report.face_ids)
        rows = [r for chunk in fs.store.iter_crops() for r in chunk]
        assert all(png is None and det is not None and len(det["landmarks"]) == 5 for _, _, png, det, _ in rows)
        assert fs.reindex(model=model_dir)["reembedded"] == 8
        after = fs.store.embeddings(report.face_ids)
    np.testing.assert_allclose(after, before, atol=1e-5)


def test_without_the_detector_detect_fails_clearly_and_touches_nothing(tmp_path, photos):
    """A machine without yuface (blocked from importing in a fresh process): `enroll --detect` says what to
    install and creates no database."""
    home = tmp_path / "home"
    code = ("import sys; sys.modules['yuface'] = None; sys.modules['yuface.yuface'] = None\n"
            "from facesearch import detect; print('info says:', detect.describe())\n"
            "from facesearch.cli import main; sys.argv = ['facesearch'] + sys.argv[1:]; main()")
    r = subprocess.run([sys.executable, "-c", code, "--home", str(home), "enroll", "--detect", str(photos)],
                       capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode != 0
    assert "pip install 'facesearch[detect]'" in r.stderr
    assert "info says: not installed" in r.stdout  # what `facesearch info` shows on such a machine
    assert not (home / "facesearch.db").exists()
    assert detect.describe().startswith("yuface ")  # and here, where it is installed


def test_cli_query_detect_json_lists_every_face(tmp_path, photos):
    from click.testing import CliRunner

    from facesearch.cli import cli

    home = ["--home", str(tmp_path / "home"), "--device", "cpu"]
    r = CliRunner().invoke(cli, home + ["enroll", "--detect", "--json", str(photos)], catch_exceptions=False)
    assert r.exit_code == 3 and json.loads(r.stdout)["added"] == 8  # 3: wall.png has no face, the rest is in
    group, _ = group_photo()
    Image.fromarray(group).save(tmp_path / "group.jpg", quality=92)
    r = CliRunner().invoke(cli, home + ["query", "--detect", "--json", str(tmp_path / "group.jpg")],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    [entry] = json.loads(r.stdout)  # one probe: one entry, its faces under it
    out = entry["faces"]
    assert entry["probe"] == str(tmp_path / "group.jpg")
    assert [o["identity"] for o in out] == [TWO, ONE] and all(len(o["face"]["box"]) == 4 for o in out)
    one = CliRunner().invoke(cli, home + ["query", "--detect", "--json", str(photos / TWO / f"{TWO}_0001.jpg")])
    assert [o["identity"] for o in json.loads(one.stdout)[0]["faces"]] == [TWO]  # one face: still a list
    r = CliRunner().invoke(cli, home + ["query", "--detect", str(tmp_path / "group.jpg")], catch_exceptions=False)
    assert f"face at ({out[0]['face']['box'][0]}, " in r.output and TWO in r.output


@pytest.mark.slow  # over 5 s here
def test_evaluate_identify_on_photos_with_detect(tmp_path):
    """`evaluate identify --detect` measures a model on a folder of ordinary photos, leaving out (and
    counting) photos without a face; on LFW's unaligned originals it identifies far more than taking them
    as aligned crops (the shipped model has seen these people: only the difference is the point)."""
    import shutil

    from click.testing import CliRunner

    from facesearch.cli import cli

    if not ORIGINALS.exists():
        pytest.skip(f"LFW original photos not found at {ORIGINALS}")
    src = tmp_path / "photos"
    shutil.copytree(ORIGINALS, src)
    for person in src.iterdir():  # a fifth photo of each person shows no face
        Image.fromarray(wall()).save(person / "zz_wall.png")
    args = ["evaluate", "identify", "--images", str(src), "--probes-per-identity", "3", "--device", "cpu",
            "--json", "-q"]
    runs = {}
    for flag in ([], ["--detect"]):
        r = CliRunner().invoke(cli, args + flag, catch_exceptions=False)
        assert r.exit_code == 0, r.output
        runs[bool(flag)] = json.loads(r.stdout)
    found, plain = runs[True], runs[False]
    assert found["detect"] is True and plain["detect"] is False
    left_out = found["no_face"]["gallery"] + found["no_face"]["probes"]
    assert left_out > 0 and plain["no_face"] == {"gallery": 0, "probes": 0}
    # every probe is either searched or counted as faceless
    searched = found["n_known_probes"] + found["n_unknown_probes"]
    assert searched + found["no_face"]["probes"] == plain["n_known_probes"] + plain["n_unknown_probes"]
    assert found["rank1"] > plain["rank1"] + 0.2
    text = CliRunner().invoke(cli, args[:-2] + ["-q", "--detect"], catch_exceptions=False).output
    assert f"left out, no face found: {found['no_face']['gallery']} gallery photo(s)" in text


def test_align_writes_owner_only_crops_like_the_training_pack(tmp_path, photos):
    """`facesearch align`: the largest face of each photo as a 112 px crop in a folder of identities, which
    the training code reads like the LFW pack; faceless photos and unsafe identity names are reported,
    files are owner-only, and a second run keeps what is there."""
    import stat
    import zipfile

    from click.testing import CliRunner

    from facesearch.cli import cli
    from facesearch.datasets import ImageFolder

    # a zip holding the photos plus a folder whose name could not be an identity
    src = tmp_path / "photos.zip"
    with zipfile.ZipFile(src, "w") as z:
        for f in sorted(photos.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(photos).as_posix())
        z.writestr(".sneaky/x.jpg", (photos / ONE / f"{ONE}_0001.jpg").read_bytes())
        z.writestr(f"{ONE}/older/y.jpg", (photos / ONE / f"{ONE}_0001.jpg").read_bytes())  # listed, as enroll does
    out = tmp_path / "crops"
    r = CliRunner().invoke(cli, ["align", str(src), str(out), "--json"], catch_exceptions=False)
    assert r.exit_code == 3, r.output  # wall.png failed, the rest was aligned
    rep = json.loads(r.stdout)
    assert rep["written"] == 8 and rep["existing"] == 0
    # a hidden folder is left out, as in a directory
    assert [(f["source"].split("/")[-1], f["reason"][:13]) for f in rep["failures"]] == [
        ("y.jpg", "in a sub-fold"), ("wall.png", "no face found")]
    assert not (tmp_path / ".sneaky").exists() and not (out / ".sneaky").exists()
    crops = ImageFolder(out)
    assert crops.identities() == [ONE, TWO] and len(crops) == 8
    for f in out.rglob("*"):
        mode = stat.S_IMODE(f.stat().st_mode)
        assert mode & 0o077 == 0, (f, oct(mode))
    crop = images.decode(crops.read(crops.items[ONE][0]))
    assert crop.shape == (112, 112, 3)
    # the crop is where the training crops' landmarks are
    marks = detect.detect(crop)[0].landmarks
    assert np.abs(marks - detect.TEMPLATE_112).mean() < 4.0
    again = json.loads(CliRunner().invoke(cli, ["align", str(src), str(out), "--json"]).stdout)
    assert again["written"] == 0 and again["existing"] == 8


def test_detect_fallback_takes_a_faceless_photo_whole_and_says_so(tmp_path, photos):
    """With --detect-fallback a photo the detector finds no face in is used whole as an aligned crop (a
    tight crop the detector misses, say) instead of failing; the result and the report say which."""
    from click.testing import CliRunner

    from facesearch.cli import cli

    home = ["--home", str(tmp_path / "home"), "--device", "cpu", "--model", "lfw-mobilenet"]
    r = CliRunner().invoke(cli, home + ["enroll", "--detect", "--detect-fallback", "--json", str(photos)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output  # the faceless wall.png no longer fails
    rep = json.loads(r.stdout)
    assert [f["source"].endswith("wall.png") for f in rep["detect_fallback"]] == [True] and rep["failed"] == 0
    assert "no face found" in rep["detect_fallback"][0]["why"]
    [q] = json.loads(CliRunner().invoke(cli, home + ["query", "--detect", "--detect-fallback", "--json",
                                                     str(photos / ONE / "wall.png")]).stdout)
    assert q["faces"][0]["face"]["fallback"].startswith("the whole image") and q["faces"][0]["face"]["box"][:2] == [0, 0]
    r = CliRunner().invoke(cli, home + ["query", "--detect-fallback", str(photos / ONE / "wall.png")])
    assert r.exit_code == 2 and "--detect-fallback goes with --detect" in r.output


def test_a_photo_enrolled_as_a_crop_can_be_enrolled_again_with_detect(tmp_path, photos):
    """How a face was cropped is part of its key: `enroll --detect` of a photo enrolled before without it
    enrolls its detected face (it was skipped as "enrolled already"), and a rerun skips it; a face detected
    by an earlier facesearch (stored under the photo's own hash) is still recognised as enrolled."""
    import hashlib

    from facesearch.gallery.enroll import detected_key
    from facesearch.gallery.facade import FaceSearch

    photo = photos / TWO / f"{TWO}_0001.jpg"
    with FaceSearch.open(home=tmp_path / "home", model="lfw-mobilenet", device="cpu") as fs:
        assert fs.enroll_files("As_Crop", [photo]).added == 1
    with FaceSearch.open(home=tmp_path / "home", device="cpu", detect=True) as fs:
        first = fs.enroll_files("As_Detected", [photo])
        assert first.added == 1 and not first.skipped
        again = fs.enroll_files("As_Detected", [photo])
        assert again.added == 0 and again.skipped == [(str(photo.absolute()), "As_Detected")]
        sha = hashlib.sha256(photo.read_bytes()).hexdigest()
        assert set(fs.store.known_hashes([sha, detected_key(sha)])) == {sha, detected_key(sha)}
    # an earlier facesearch stored a detected face under the photo's plain hash, with its detection
    other = photos / ONE / f"{ONE}_0001.jpg"
    plain = hashlib.sha256(other.read_bytes()).hexdigest()
    with FaceSearch.open(home=tmp_path / "old", model="lfw-mobilenet", device="cpu", detect=True) as fs:
        fs.store.add_faces(fs.model_id, [("Old", str(other), plain, np.zeros(128, np.float32), None)],
                           [{"box": [0, 0, 10, 10], "score": 0.9, "landmarks": [[0, 0]] * 5, "faces_in_photo": 1}])
        rep = fs.enroll_files("Old", [other])
        assert rep.added == 0 and rep.skipped == [(str(other.absolute()), "Old")]
