"""Embedding through ONNX Runtime (facesearch.model.onnx_runtime) against torch, the path it stands in for:
the same embeddings within onnx_runtime.TOLERANCE and the same decisions on LFW pairs (the built-in SFace,
real ONNX Runtime, real LFW images); a gallery that embeds through it imports no torch and answers what
the torch path answers; without onnxruntime (a fresh process where it cannot be imported) torch does it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import LFW_DIR, LFW_ZIP, PEOPLE, needs_lfw

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from facesearch.model import onnx_runtime  # noqa: E402
from facesearch.model.files import builtin_model_dir, model_key, read_model_dir  # noqa: E402

#: LFW View 2 pairs compared (the first N of fold 1: matched then mismatched), kept small for the CPU
PAIRS = 80


@pytest.fixture(scope="module")
def mobilenet_dir(tmp_path_factory) -> Path:
    """A copy of the built-in lfw-mobilenet (fast) with its model.onnx exported into it."""
    d = tmp_path_factory.mktemp("onnx-model") / "lfw-mobilenet"
    d.mkdir()
    for f in ("model.json", "weights.pt"):
        shutil.copy(builtin_model_dir("lfw-mobilenet") / f, d / f)
    path, diff = onnx_runtime.export_dir(d)
    assert path == d / onnx_runtime.ONNX_FILE and diff is not None and diff <= onnx_runtime.TOLERANCE
    return d


def test_export_is_deterministic_and_names_its_weights(mobilenet_dir, tmp_path):
    again, _ = onnx_runtime.export_dir(mobilenet_dir, tmp_path / "again.onnx", check=False)
    assert again.read_bytes() == (mobilenet_dir / onnx_runtime.ONNX_FILE).read_bytes()
    meta = onnx_runtime.read_metadata(again)
    from facesearch.model.files import weights_sha256

    assert meta[onnx_runtime.META_WEIGHTS] == weights_sha256(mobilenet_dir)
    assert int(meta[onnx_runtime.META_FORWARD_BATCH]) == 16  # inference.forward_batch of MobileNetV2 at 112 px


def test_an_export_of_other_weights_is_never_used(mobilenet_dir, tmp_path):
    cfg = read_model_dir(mobilenet_dir)
    from facesearch.model.files import weights_sha256

    key = model_key(cfg, weights_sha256(mobilenet_dir))
    assert onnx_runtime.load(mobilenet_dir, cfg, key) is not None
    assert onnx_runtime.load(mobilenet_dir, cfg, model_key(cfg, "0" * 64)) is None
    d = tmp_path / "m"
    d.mkdir()
    shutil.copy(mobilenet_dir / "model.json", d)
    shutil.copy(builtin_model_dir("sface") / "weights.pt", d)  # other weights, the old export beside them
    shutil.copy(mobilenet_dir / onnx_runtime.ONNX_FILE, d)
    assert onnx_runtime.load(d, cfg, model_key(cfg, weights_sha256(d))) is None


@needs_lfw
def test_sface_embeddings_and_lfw_pair_decisions_agree_with_torch(tmp_path):
    """The built-in default model, exported, against itself through torch on LFW View 2 pairs (the model
    geometry by the same fixed warp for both): every coordinate within TOLERANCE, every decision the same."""
    from facesearch import distance, images
    from facesearch.datasets import ImageFolder
    from facesearch.evaluation.lfw import read_pairs
    from facesearch.gallery.embedding import fixed_warp
    from facesearch.model import encoder

    src = builtin_model_dir("sface")
    path, _ = onnx_runtime.export_dir(src, tmp_path / "sface.onnx", check=False)
    net = encoder.load(src, "cpu")
    cfg = net.config
    onnx = onnx_runtime.OnnxEncoder(path, cfg)
    pairs = read_pairs(LFW_DIR / "pairs.txt")
    half = PAIRS // 2
    idx = list(range(half)) + list(range(300, 300 + half))  # fold 1: matched, then mismatched
    folder = ImageFolder(LFW_ZIP)
    keys = list(dict.fromkeys([pairs.left[i] for i in idx] + [pairs.right[i] for i in idx]))
    crops = np.stack([images.prepare(fixed_warp(images.decode(folder.read(folder.lfw_key(*k))), cfg), cfg)
                      for k in keys])
    a = onnx.embed(crops)
    b = encoder.embed(net, crops, batch_size=16)
    assert np.abs(a - b).max() <= onnx_runtime.TOLERANCE
    row = {k: i for i, k in enumerate(keys)}
    left, right = [row[pairs.left[i]] for i in idx], [row[pairs.right[i]] for i in idx]
    da, db = distance.paired(a[left], a[right]), distance.paired(b[left], b[right])
    assert np.abs(np.asarray(da) - np.asarray(db)).max() <= 2 * onnx_runtime.TOLERANCE
    same = pairs.same[idx]
    dec_a, dec_b = distance.is_match(da, cfg.threshold), distance.is_match(db, cfg.threshold)
    assert (dec_a == dec_b).all()
    assert (dec_a == same).mean() > 0.9  # and they are decisions of a working model, not of noise
    # one thread or two: the same embeddings (each run of a batch is independent of the thread count)
    assert np.abs(onnx.embed(crops[:8], threads=1) - onnx.embed(crops[:8], threads=2)).max() <= onnx_runtime.TOLERANCE


_GALLERY = """
import json, sys
if sys.argv[4] == "no-onnxruntime":
    sys.modules["onnxruntime"] = None  # as a machine without the package: the import fails
from facesearch.gallery.facade import FaceSearch
if sys.argv[3] != "-":
    with FaceSearch.open(home=sys.argv[1], model=sys.argv[2], device="cpu") as fs:
        print(json.dumps({"added": fs.enroll_folder(sys.argv[3]).added, "torch": "torch" in sys.modules}))
        sys.exit(0)
with FaceSearch.open(home=sys.argv[1], device="cpu") as fs:  # a later process: the gallery's own model
    r = fs.query(sys.argv[5])
    device = str(fs.device)
    emb = fs.embed([sys.argv[5]])[0].tolist()
print(json.dumps({"torch": "torch" in sys.modules, "device": device,
                  "top": [(m.identity, m.distance) for m in r.matches[:3]], "emb": emb}))
"""


def _gallery_run(home: Path, model: Path, src: Path | str, probe: Path, mode: str) -> dict:
    """Enroll ``src`` into a new gallery (``src`` "-": query ``probe`` instead), in a fresh process."""
    out = subprocess.run([sys.executable, "-c", _GALLERY, str(home), str(model), str(src), mode, str(probe)],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@needs_lfw
def test_a_gallery_embeds_through_onnx_runtime_without_torch_and_answers_as_torch_does(
        mobilenet_dir, gallery_src, tmp_path):
    """Enroll and query in fresh processes: with onnxruntime the query process imports no torch (a new
    gallery's first process loads the model through torch once, to check it); without it, torch embeds.
    Both answer the same identities at the same distances, within the stated tolerance."""
    probe = next(p for p in sorted((gallery_src / PEOPLE[0]).iterdir()))
    src = tmp_path / "src"
    for p in PEOPLE:
        (src / p).mkdir(parents=True)
        for f in sorted((gallery_src / p).iterdir())[1:]:
            shutil.copy(f, src / p / f.name)
    enrolled = {m: _gallery_run(tmp_path / m, mobilenet_dir, src, probe, m) for m in ("onnx", "no-onnxruntime")}
    assert enrolled["onnx"]["added"] == enrolled["no-onnxruntime"]["added"] == 3 * len(PEOPLE)
    assert enrolled["onnx"]["torch"]  # the check at a new gallery's first open loads the model through torch
    onnx, torch_ = (_gallery_run(tmp_path / m, mobilenet_dir, "-", probe, m) for m in ("onnx", "no-onnxruntime"))
    assert onnx["torch"] is False and onnx["device"] == "cpu"
    assert torch_["torch"] is True
    assert [m[0] for m in onnx["top"]] == [m[0] for m in torch_["top"]] and onnx["top"][0][0] == PEOPLE[0]
    np.testing.assert_allclose([m[1] for m in onnx["top"]], [m[1] for m in torch_["top"]], atol=2 * onnx_runtime.TOLERANCE)
    np.testing.assert_allclose(onnx["emb"], torch_["emb"], atol=onnx_runtime.TOLERANCE)


def test_runtime_onnx_without_a_file_is_an_error_and_torch_never_uses_one(mobilenet_dir, tmp_path):
    from facesearch.errors import ModelFileError
    from facesearch.gallery.embedding import GalleryModel, ModelFiles

    cfg = read_model_dir(mobilenet_dir)
    from facesearch.model.files import weights_sha256

    key = model_key(cfg, weights_sha256(mobilenet_dir))
    d = tmp_path / "bare"
    d.mkdir()
    for f in ("model.json", "weights.pt"):
        shutil.copy(mobilenet_dir / f, d / f)
    with pytest.raises(ModelFileError, match="model.onnx is missing"):
        GalleryModel(ModelFiles(cfg, d, "cpu", "onnx")).embed_crops([], key)
    assert GalleryModel(ModelFiles(cfg, mobilenet_dir, "cpu", "torch")).onnx(key) is None
    g = GalleryModel(ModelFiles(cfg, mobilenet_dir, "cpu", "onnx"))
    crops = [np.full((3, 112, 112), v, np.uint8) for v in (0, 90, 200)]
    with g.single_thread(g.device(key)):
        a = g.embed_crops(crops, key)
    b = GalleryModel(ModelFiles(cfg, mobilenet_dir, "cpu", "torch")).embed_crops(crops, key)
    assert isinstance(g.runner(key), onnx_runtime.OnnxEncoder)
    assert np.abs(a - b).max() <= onnx_runtime.TOLERANCE


def test_the_session_is_made_in_a_thread_while_crops_are_read_and_its_errors_reach_the_caller(
        mobilenet_dir, tmp_path):
    """GalleryModel.loading_meanwhile: the session is built beside the caller's work, the thread is joined
    on exit, the caller then embeds through ONNX Runtime as before; where the session cannot be made
    (runtime onnx, no file) the caller's own call still raises the error."""
    import threading

    from facesearch.errors import ModelFileError
    from facesearch.gallery.embedding import GalleryModel, ModelFiles
    from facesearch.model.files import weights_sha256

    cfg = read_model_dir(mobilenet_dir)
    key = model_key(cfg, weights_sha256(mobilenet_dir))
    g = GalleryModel(ModelFiles(cfg, mobilenet_dir, "cpu", "onnx"))
    with g.loading_meanwhile(key):
        crops = [np.full((3, 112, 112), v, np.uint8) for v in (0, 90, 200)]
    assert "facesearch-onnx-load" not in {t.name for t in threading.enumerate()}  # joined
    assert isinstance(g._onnx, onnx_runtime.OnnxEncoder)  # made by the thread: nothing here embedded
    a = g.embed_crops(crops, key)
    b = GalleryModel(ModelFiles(cfg, mobilenet_dir, "cpu", "torch")).embed_crops(crops, key)
    assert np.abs(a - b).max() <= onnx_runtime.TOLERANCE
    with g.loading_meanwhile(key):  # already made: no second thread
        assert "facesearch-onnx-load" not in {t.name for t in threading.enumerate()}

    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("model.json", "weights.pt"):
        shutil.copy(mobilenet_dir / f, bare / f)
    g = GalleryModel(ModelFiles(cfg, bare, "cpu", "onnx"))
    with g.loading_meanwhile(key):
        pass
    with pytest.raises(ModelFileError, match="model.onnx is missing"):
        g.embed_crops(crops, key)


def test_model_export_command(tmp_path):
    from click.testing import CliRunner

    from facesearch.cli import cli

    d = tmp_path / "m"
    d.mkdir()
    for f in ("model.json", "weights.pt"):
        shutil.copy(builtin_model_dir("lfw-mobilenet") / f, d / f)
    r = CliRunner().invoke(cli, ["model", "export", "--onnx", str(d), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["out"] == str(d / onnx_runtime.ONNX_FILE) and out["bytes"] == (d / onnx_runtime.ONNX_FILE).stat().st_size
    assert 0 <= out["max_abs_difference_vs_torch"] <= onnx_runtime.TOLERANCE
    r = CliRunner().invoke(cli, ["model", "export", str(d)])
    assert r.exit_code == 2 and "--onnx" in r.output
