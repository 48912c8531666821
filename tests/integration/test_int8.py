"""int8 models (facesearch.model.quantize, `facesearch model quantize`): the built-in SFace quantised on real
LFW crops through real ONNX Runtime. It is its own model (its key names its ranges; a gallery of the fp32
model does not take its probes and moves to it by reindex), it is made again byte for byte from its
weights and ranges, it embeds close to the fp32 network but not as it (a quantised graph), and the wrong
graph, changed ranges or torch are refused with a message, never used."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import LFW_ZIP, extract_people, needs_lfw

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from facesearch import FaceSearch, distance  # noqa: E402
from facesearch.cli import cli  # noqa: E402
from facesearch.errors import ModelFileError, ModelMismatchError  # noqa: E402
from facesearch.model import encoder, onnx_runtime, quantize  # noqa: E402
from facesearch.model.files import builtin_model_dir, read_model_dir, resolve  # noqa: E402

pytestmark = needs_lfw

#: people whose images the test galleries hold (none of them is among the calibration's people, chosen by
#: --calibration-people below)
GALLERY = {"Colin_Powell": 4, "Tony_Blair": 4, "Hugo_Chavez": 4, "Serena_Williams": 3}
CALIBRATION = ["Ariel_Sharon", "Donald_Rumsfeld", "Gerhard_Schroeder", "Jean_Chretien", "John_Ashcroft",
               "Junichiro_Koizumi", "Laura_Bush", "Lleyton_Hewitt", "Luiz_Inacio_Lula_da_Silva", "Vladimir_Putin",
               "Gloria_Macapagal_Arroyo", "Jennifer_Capriati"]


def run(*args: str) -> dict:
    res = CliRunner().invoke(cli, [*args, "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("int8")
    people = tmp / "calibration-people.txt"
    people.write_text("\n".join(CALIBRATION) + "\n")
    out = tmp / "sface-int8"
    rep = run("model", "quantize", "sface", str(out), "--calibration", str(LFW_ZIP), "--calibration-people", str(people),
              "--method", "minmax")  # the faster of the two; the default, percentile, is checked below
    assert rep["out"] == str(out) and rep["name"] == "sface-int8"
    assert rep["quantization"]["calibration_images"] == len(CALIBRATION)
    return out


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return extract_people(tmp_path_factory.mktemp("int8-faces"), GALLERY)


def test_an_int8_model_is_its_own_model_with_owner_only_files(int8_dir):
    cfg = read_model_dir(int8_dir)
    q = cfg.quantization
    assert q["precision"] == "int8" and q["method"] == "minmax"
    assert q["ranges_sha256"] == quantize.ranges_sha256(int8_dir / quantize.RANGES_FILE)
    fp32 = resolve("sface")
    assert q["fp32_model"] == fp32.key
    key = resolve(int8_dir).key
    assert key != fp32.key and key.endswith("+int8-" + q["ranges_sha256"][:8])
    assert resolve(int8_dir).sha256 == fp32.sha256  # the same weights: only the ranges and the graph differ
    for f in int8_dir.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    # no calibration pairs given: the fp32 model's thresholds, and model.json says they are not int8's own
    assert cfg.threshold == fp32.config.threshold and "not calibrated" in q["thresholds"]


def test_it_is_made_again_byte_for_byte_from_its_weights_and_ranges(int8_dir, tmp_path):
    again = quantize.rebuild_onnx(int8_dir, tmp_path / "again.onnx")
    assert again.read_bytes() == onnx_runtime.onnx_path(int8_dir).read_bytes()
    meta = onnx_runtime.read_metadata(again)
    assert meta[onnx_runtime.META_RANGES] == read_model_dir(int8_dir).quantization["ranges_sha256"]


def test_it_embeds_near_the_fp32_network_but_not_as_it(int8_dir, faces):
    from facesearch.datasets import ImageFolder
    from facesearch.evaluation.lfw import _realigner

    cfg = read_model_dir(int8_dir)
    folder = ImageFolder(faces)
    keys = [k for n in sorted(folder.items) for k in folder.items[n]]
    transform, _ = _realigner(cfg, None)
    x = folder.load_prepared(keys, cfg, transform=transform)
    q = encoder.load_for_embedding(int8_dir, "auto")
    assert isinstance(q, onnx_runtime.OnnxEncoder)
    e8 = encoder.embed(q, x, 8)
    e32 = encoder.embed(encoder.load(builtin_model_dir("sface"), "cpu"), x, 8)
    cos = np.sum(e8 * e32, axis=1)
    assert np.allclose(np.linalg.norm(e8, axis=1), 1.0, atol=1e-4)
    assert cos.min() > 0.9 and cos.mean() > 0.96, cos  # measured on LFW View 2: mean 0.98, min 0.92
    assert cos.max() < 0.9999  # a quantised graph, not the fp32 one under another name
    # the same person stays nearer than another one, as in fp32
    d = np.asarray(distance.pairwise(e8, e8))
    names = np.array([n for n in sorted(folder.items) for _ in folder.items[n]])
    same = names[:, None] == names[None, :]
    off = ~np.eye(len(keys), dtype=bool)
    assert d[same & off].mean() < d[~same].mean() - 0.3


def test_a_gallery_of_the_fp32_model_moves_to_it_by_reindex(int8_dir, faces, tmp_path):
    home = tmp_path / "g"
    run("--home", str(home), "enroll", str(faces))
    probe = sorted((faces / "Tony_Blair").iterdir())[0]
    fp32_key = run("--home", str(home), "info")["model"]["key"]
    assert run("--home", str(home), "info")["model"]["quantization"] is None
    with pytest.raises(ModelMismatchError, match="reindex"):
        FaceSearch.open(home, model=int8_dir)
    rep = run("--home", str(home), "reindex", "--model", str(int8_dir))
    assert rep["reembedded"] == sum(GALLERY.values())
    info = run("--home", str(home), "info")
    assert info["model"]["key"] == resolve(int8_dir).key
    q = info["model"]["quantization"]  # info says what it is and what it was made from
    assert q["precision"] == "int8" and q["method"] == "minmax" and q["fp32_model"] == fp32_key  # as made above
    assert q["calibration_images"] == len(CALIBRATION)
    jsonschema.validate(info, json.loads((Path(__file__).parents[2] / "docs/schemas/info.json").read_text()))
    text = CliRunner().invoke(cli, ["--home", str(home), "info"], catch_exceptions=False).output
    assert f"int8 (minmax ranges from {len(CALIBRATION)} images) of {fp32_key}" in text
    hit = run("--home", str(home), "query", str(probe))[0]
    assert hit["identity"] == "Tony_Blair" and hit["matches"][0]["distance"] < 1e-4  # its own stored face


def test_it_enrolls_and_queries_through_the_cli(int8_dir, faces, tmp_path):
    home = tmp_path / "g8"
    rep = run("--home", str(home), "--model", str(int8_dir), "enroll", str(faces))
    assert rep["added"] == sum(GALLERY.values())
    probe = sorted((faces / "Hugo_Chavez").iterdir())[-1]
    hit = run("--home", str(home), "query", str(probe))[0]
    assert hit["identity"] == "Hugo_Chavez"


def test_torch_and_the_wrong_graph_are_refused(int8_dir, tmp_path):
    with pytest.raises(ModelFileError, match="int8 model.*ONNX Runtime"):
        encoder.load(int8_dir, "cpu")
    d = tmp_path / "swapped"
    shutil.copytree(int8_dir, d)
    fp32_onnx = onnx_runtime.onnx_path(builtin_model_dir("sface"))
    if not fp32_onnx.is_file():
        onnx_runtime.export_dir(builtin_model_dir("sface"), check=False)
    shutil.copy(fp32_onnx, onnx_runtime.onnx_path(d))  # the fp32 graph of the same weights
    assert onnx_runtime.load(d, read_model_dir(d), None) is None
    with pytest.raises(ModelFileError, match="an fp32 graph"):
        FaceSearch.open(tmp_path / "g", model=d)
    # ranges changed after the model was made: it is not made again from them
    r = d / quantize.RANGES_FILE
    data = json.loads(r.read_text())
    r.write_text(json.dumps(data, indent=2))
    with pytest.raises(ModelFileError, match="not the ranges this model was made with"):
        quantize.rebuild_onnx(d)
    # and the reverse: the int8 graph in a directory of the fp32 model is never taken for its fp32 graph
    f = tmp_path / "fp32"
    f.mkdir()
    for name in ("model.json", "weights.pt"):
        shutil.copy(builtin_model_dir("sface") / name, f / name)
    shutil.copy(onnx_runtime.onnx_path(int8_dir), onnx_runtime.onnx_path(f))
    assert onnx_runtime.load(f, read_model_dir(f), None) is None
    assert "an int8 graph" in onnx_runtime.why_not(f, read_model_dir(f))


def test_the_default_method_is_the_percentile_and_other_ranges_are_another_model(int8_dir, faces, tmp_path):
    from facesearch.datasets import ImageFolder
    from facesearch.evaluation.lfw import _realigner

    cfg = read_model_dir(builtin_model_dir("sface"))
    folder = ImageFolder(LFW_ZIP)
    transform, _ = _realigner(cfg, None)
    crops = folder.load_prepared([folder.items[n][0] for n in CALIBRATION], cfg, transform=transform)
    q = quantize.quantize_dir(builtin_model_dir("sface"), tmp_path / "p", crops).quantization
    assert q["method"] == "percentile"
    assert q["ranges_sha256"] != read_model_dir(int8_dir).quantization["ranges_sha256"]
    assert resolve(tmp_path / "p").key != resolve(int8_dir).key


def test_bad_requests_leave_nothing_behind(int8_dir, tmp_path):
    res = CliRunner().invoke(cli, ["model", "quantize", str(int8_dir), str(tmp_path / "again"), "--calibration",
                                   str(LFW_ZIP), "--limit", "8"])
    assert res.exit_code != 0 and "already an int8 model" in res.output
    assert not (tmp_path / "again").exists()
    few = extract_people(tmp_path / "few", {"Colin_Powell": 2, "Tony_Blair": 2})
    res = CliRunner().invoke(cli, ["model", "quantize", "sface", str(tmp_path / "out"), "--calibration", str(few)])
    assert res.exit_code != 0 and "at least 8" in res.output and not (tmp_path / "out").exists()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    res = CliRunner().invoke(cli, ["model", "quantize", "sface", str(taken), "--calibration", str(few)])
    assert res.exit_code != 0 and "not an empty directory" in res.output
    assert (taken / "keep.txt").read_text() == "mine"
