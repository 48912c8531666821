"""`facesearch align --model M [--realign]`: crops in the model's own geometry, from LFW's original photos
and from the aligned LFW pack, checked by finding the landmarks again on what was written."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from facesearch import detect, images
from facesearch.cli import cli
from facesearch.datasets import ImageFolder
from facesearch.detect.align import warp_geometry
from tests.conftest import LFW_ZIP, ORIGINALS

pytestmark = pytest.mark.skipif(not detect.available(), reason="yuface (facesearch[detect]) is not installed")

#: SFace's template (ArcFace's five points at 112 px; facesearch/model/imported/sface.py), typed here so
#: that this test imports no torch; far from the LFW pack's TEMPLATE_112 (eyes 6 px, mouth 13 px lower)
ARCFACE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                    [70.7299, 92.2041]])
PEOPLE = ["Antonio_Banderas", "Bill_Gates", "Bob_Hope"]


@pytest.fixture(scope="module")
def templated_model(tmp_path_factory, model_dir):
    """A real model directory (the ImageNet-initialised encoder) whose model.json brings ARCFACE as its
    own alignment template, as an imported network's does."""
    d = tmp_path_factory.mktemp("templated") / "model"
    shutil.copytree(model_dir, d)
    cfg = json.loads((d / "model.json").read_text())
    cfg["alignment"] = ARCFACE.tolist()
    (d / "model.json").write_text(json.dumps(cfg))
    return d


def landmarks(crop: np.ndarray) -> np.ndarray | None:
    """The five landmarks found again on a written crop, in its pixels (found on it upscaled 2x, the face
    nearest the centre: how `realign` finds them)."""
    h, w = crop.shape[:2]
    big = np.asarray(Image.fromarray(crop).resize((2 * w, 2 * h), Image.Resampling.BICUBIC))
    faces = detect.detect(big)
    if not faces:
        return None
    centre = np.array([w, h], np.float64)
    face = min(faces, key=lambda f: np.sum((np.asarray(f.box[:2]) + np.asarray(f.box[2:]) / 2 - centre) ** 2))
    return (face.landmarks + 0.5) / 2 - 0.5


def moved_by_aligning_again(marks: np.ndarray, template: np.ndarray) -> float:
    """How far (pixels) aligning a crop whose landmarks are ``marks`` onto ``template`` again would move the
    template's points: about 0 when the crop follows the template already. (Not ``marks == template``: the
    five points the detector finds are not shaped exactly like a template made with another landmark
    detector, so the least-squares fit leaves a residual of 2-3 px per point even on an aligned crop.)"""
    m = detect.similarity_transform(marks, template)
    return float(np.abs(template @ m[:, :2].T + m[:, 2] - template).max())


def mean_landmarks(out) -> tuple[np.ndarray, int]:
    folder = ImageFolder(out)
    found = [m for m in (landmarks(images.decode(folder.read(k))) for i in folder.identities()
                         for k in folder.items[i]) if m is not None]
    return np.mean(found, 0), len(found)


def run(*args) -> tuple[int, dict | str]:
    r = CliRunner().invoke(cli, ["align", *map(str, args)], catch_exceptions=False)
    try:
        return r.exit_code, json.loads(r.stdout)
    except ValueError:
        return r.exit_code, r.output


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    for name in PEOPLE:
        src = ORIGINALS / name
        if not src.is_dir():
            pytest.skip(f"LFW original photos not found at {ORIGINALS}")
        shutil.copytree(src, root / name)
    return root


def test_align_photos_to_the_models_own_template(tmp_path, photos, templated_model):
    """Unaligned photos, --model with a template: the crops' landmarks, found again, are the model's
    template points (not the LFW pack's), and the crops are those `enroll --detect` gives that model."""
    from facesearch.gallery.embedding import align_face
    from facesearch.model.config import ModelConfig

    out = tmp_path / "crops"
    code, rep = run(photos, out, "--model", templated_model, "--json")
    assert code == 0, rep
    assert rep["written"] == 12 and rep["failed"] == 0 and rep["size"] == 112 and not rep["realign"]
    assert np.allclose(rep["template"], ARCFACE, atol=1e-3)
    mean, n = mean_landmarks(out)
    assert n == 12
    assert moved_by_aligning_again(mean, ARCFACE) < 4.0, mean
    assert moved_by_aligning_again(mean, detect.TEMPLATE_112) > 8.0  # a geometry of its own, not the pack's
    # what --detect gives the same model, pixel for pixel
    cfg = ModelConfig.load(templated_model / "model.json")
    name = f"{PEOPLE[0]}_0001"
    pixels = images.load(photos / PEOPLE[0] / f"{name}.jpg").pixels
    want = align_face(pixels, detect.detect(pixels)[0], cfg)
    assert np.array_equal(images.load(out / PEOPLE[0] / f"{name}.png").pixels, want)
    # the global option names the model too; and a model without a template gets the LFW pack's
    lfw_out = tmp_path / "lfw-geometry"
    r = CliRunner().invoke(cli, ["--model", str(templated_model), "align", str(photos), str(tmp_path / "g"),
                                 "--json"], catch_exceptions=False)
    assert np.allclose(json.loads(r.stdout)["template"], ARCFACE, atol=1e-3)
    code, rep = run(photos, lfw_out, "--json")
    assert code == 0 and np.allclose(rep["template"], detect.TEMPLATE_112, atol=1e-3)
    assert moved_by_aligning_again(mean_landmarks(lfw_out)[0], detect.TEMPLATE_112) < 4.0


def test_realign_lfw_crops_warps_those_without_a_face_and_resumes(tmp_path, templated_model):
    """--realign on aligned LFW crops (a zip, like the pack): each aligned again onto the model's template;
    a crop with no face is moved by the pack's mean geometry instead, and counted; a second run keeps every crop; a run for
    another geometry into the same folder is refused and writes nothing."""
    if not LFW_ZIP.exists():
        pytest.skip(f"LFW pack not found at {LFW_ZIP}")
    src = tmp_path / "pack.zip"
    blank = np.random.default_rng(0).integers(100, 156, (112, 112, 3), np.uint8)  # texture, no face
    with zipfile.ZipFile(LFW_ZIP) as z, zipfile.ZipFile(src, "w") as w:
        for name in ("Colin_Powell", "Tony_Blair", "Serena_Williams"):
            for i in range(1, 5):
                member = f"lfw-deepfunneled-112/{name}/{name}_{i:04d}.webp"
                w.writestr(member, z.read(member))
        buf = __import__("io").BytesIO()
        Image.fromarray(blank).save(buf, format="PNG")
        w.writestr("lfw-deepfunneled-112/Tony_Blair/no_face.png", buf.getvalue())
    out = tmp_path / "realigned"
    before, _ = mean_landmarks(src)
    assert moved_by_aligning_again(before, ARCFACE) > 8.0  # the pack's crops are in the pack's geometry
    code, rep = run(src, out, "--model", templated_model, "--realign", "--json")
    assert code == 0, rep
    assert rep["written"] == 13 and rep["realign"] and rep["no_face_found_warped"] == 1
    assert rep["warped"] == ["lfw-deepfunneled-112/Tony_Blair/no_face.png"]
    # no face found: moved from the pack's mean geometry onto the template, as enroll and evaluate do
    want = warp_geometry(
        blank, detect.TEMPLATE_112, 112, ARCFACE, 112)
    got = images.load(out / "Tony_Blair" / "no_face.png").pixels
    assert np.array_equal(got, want) and not np.array_equal(got, blank)
    mean, n = mean_landmarks(out)
    assert n == 12
    assert moved_by_aligning_again(mean, ARCFACE) < 4.0, mean
    # resumable: an interrupted run (two crops lost) carries on, keeping what is there
    (out / "Colin_Powell" / "Colin_Powell_0002.png").unlink()
    (out / "Serena_Williams" / "Serena_Williams_0004.png").unlink()
    kept = (out / "Tony_Blair" / "Tony_Blair_0001.png").stat().st_mtime_ns
    code, rep = run(src, out, "--model", templated_model, "--realign", "--json")
    assert code == 0 and rep["written"] == 2 and rep["existing"] == 11
    assert (out / "Tony_Blair" / "Tony_Blair_0001.png").stat().st_mtime_ns == kept
    # another geometry into the same folder: refused, nothing written
    (out / "Colin_Powell" / "Colin_Powell_0001.png").unlink()
    r = CliRunner().invoke(cli, ["align", str(src), str(out), "--realign"])
    assert r.exit_code == 1 and "another template" in r.output and "Traceback" not in r.output
    assert not (out / "Colin_Powell" / "Colin_Powell_0001.png").exists()
    # the written folder is a training folder of identities, owner-only
    assert ImageFolder(out).identities() == ["Colin_Powell", "Serena_Williams", "Tony_Blair"]
    assert all(p.stat().st_mode & 0o077 == 0 for p in out.rglob("*"))


def test_the_detector_runs_on_one_core_inside_and_torch_keeps_its_threads():
    """yuface's OpenMP team follows torch's thread count once torch is imported (its calls bind to torch's
    runtime): inside one_detector_thread both runtimes give one thread, and leaving restores them."""
    import ctypes

    import torch

    from facesearch.detect.folder import _bundled_openmp, one_detector_thread

    if not LFW_ZIP.exists():
        pytest.skip(f"LFW pack not found at {LFW_ZIP}")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runtimes = [ctypes.CDLL(None), _bundled_openmp()]
        with one_detector_thread():
            assert [rt.omp_get_max_threads() for rt in runtimes] == [1, 1]
            assert detect.detect(images.decode(ImageFolder(LFW_ZIP).read(
                "lfw-deepfunneled-112/Tony_Blair/Tony_Blair_0001.webp")))
        assert torch.get_num_threads() == 2 and runtimes[0].omp_get_max_threads() == 2
    finally:
        torch.set_num_threads(before)
