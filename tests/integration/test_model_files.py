"""Model directories from elsewhere: weights load with weights_only=True, so a file that carries code
never runs it, and every bad file is a ModelFileError that says what is wrong."""

import os
import shutil

import pytest
import torch

from facesearch.model import encoder
from facesearch.model.config import ModelConfig
from facesearch.errors import FaceSearchError, ModelFileError


class _Payload:
    """Unpickling this runs os.system: what a malicious weights.pt would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_weights_that_carry_code_are_refused_without_running_it(tmp_path, model_dir):
    bad = tmp_path / "bad-model"
    shutil.copytree(model_dir, bad)
    marker = tmp_path / "code-ran"
    state = torch.load(model_dir / "weights.pt", weights_only=True)
    state["extra"] = _Payload(marker)
    torch.save(state, bad / "weights.pt")
    with pytest.raises(ModelFileError, match="not a weights file facesearch can load safely"):
        encoder.load(bad)
    assert not marker.exists()


def test_damaged_and_mismatched_weights_say_so(tmp_path, model_dir):
    bad = tmp_path / "bad-model"
    shutil.copytree(model_dir, bad)
    (bad / "weights.pt").write_bytes(os.urandom(4096))
    with pytest.raises(ModelFileError, match="not a weights file facesearch can load safely"):
        encoder.load(bad)
    shutil.copy(model_dir / "weights.pt", bad / "weights.pt")
    cfg = ModelConfig.load(bad / "model.json")
    cfg.embedding_dim = 64
    cfg.save(bad / "model.json")
    with pytest.raises(ModelFileError, match="does not fit the model in .*size mismatch for head.weight"):
        encoder.load(bad)


def test_mobilenet_v2_built_without_torchvision_is_torchvision_s(model_dir):
    """Loading a model builds MobileNetV2 without importing torchvision; it must be torchvision's network:
    the same parameter names and shapes, and the same outputs from the same weights."""
    import numpy as np
    import torchvision

    torch.manual_seed(3)
    theirs = torchvision.models.mobilenet_v2(weights=None).features.eval()
    ours = encoder.mobilenet_v2_features().eval()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    ours.load_state_dict(theirs.state_dict())
    x = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))

    loaded = encoder.load(model_dir)  # the path every gallery takes
    assert not any(type(m).__module__.startswith("torchvision") for m in loaded.modules())
    reference = encoder.Encoder(loaded.config, torchvision.models.mobilenet_v2(weights=None))
    reference.load_state_dict(loaded.state_dict())
    faces = np.random.default_rng(0).integers(0, 256, (4, 3, 112, 112), dtype=np.uint8)
    np.testing.assert_array_equal(encoder.embed(loaded, faces), encoder.embed(reference.eval(), faces))


def test_weights_replaced_between_open_and_first_use_are_refused(tmp_path, model_dir, other_model_dir, gallery_src):
    """The weights are read when a face is first embedded, not at open: if the files changed in between,
    the gallery's model key no longer names them, and nothing is embedded with them."""
    from facesearch.errors import ModelMismatchError
    from facesearch.gallery.facade import FaceSearch

    mine = tmp_path / "my-model"
    shutil.copytree(model_dir, mine)
    probe = next((gallery_src / "Bill_Gates").iterdir())
    with FaceSearch.open(home=tmp_path / "home", model=mine, device="cpu") as fs:
        n = fs.enroll_files("Bill_Gates", [probe]).added
    with FaceSearch.open(home=tmp_path / "home", device="cpu") as fs:  # the gallery's model: not loaded yet
        shutil.copy(other_model_dir / "weights.pt", mine / "weights.pt")
        with pytest.raises(ModelMismatchError, match="replaced in place"):
            fs.query(probe)
        assert fs.store.count_faces() == n == 1
    small = tmp_path / "small"  # other weights that do not even fit model.json
    encoder.save(encoder.build(ModelConfig(embedding_dim=64, threshold=0.3), pretrained=None), small)
    shutil.copy(model_dir / "weights.pt", mine / "weights.pt")
    with FaceSearch.open(home=tmp_path / "home", device="cpu") as fs:
        shutil.copy(small / "weights.pt", mine / "weights.pt")
        with pytest.raises(ModelMismatchError, match="replaced in place"):
            fs.query(probe)


def test_a_model_that_cannot_be_loaded_is_never_recorded(tmp_path, model_dir, gallery_src):
    """A new gallery's model is loaded at open, before it is recorded: damaged weights or an unusable
    device leave the gallery as if the command had not run, and the next command uses the built-in model."""
    from facesearch.gallery.facade import FaceSearch

    bad = tmp_path / "damaged"
    shutil.copytree(model_dir, bad)
    (bad / "weights.pt").write_bytes((model_dir / "weights.pt").read_bytes()[:100_000])
    home = tmp_path / "home"
    with pytest.raises(ModelFileError, match="cannot load weights"):
        FaceSearch.open(home=home, model=bad)
    if not torch.cuda.is_available():
        with pytest.raises(FaceSearchError, match="no CUDA GPU"):
            FaceSearch.open(home=home, model=model_dir, device="cuda")
    with pytest.raises(FaceSearchError, match="unknown device 'bogus'"):
        FaceSearch.open(home=home, device="bogus")
    with FaceSearch.open(home=home) as fs:
        assert fs.store.active_model().location == "builtin:sface" and not fs.index_path.exists()


def test_damaged_weights_of_the_gallery_s_model_are_called_damaged(tmp_path, model_dir, other_model_dir,
                                                                    gallery_src):
    """Not "replaced in place" with a reindex to run, which would fail on the same file; a reindex to
    another model still rescues the gallery."""
    from click.testing import CliRunner

    from facesearch.cli import cli
    from facesearch.gallery.facade import FaceSearch

    mine = tmp_path / "my-model"
    shutil.copytree(model_dir, mine)
    with FaceSearch.open(home=tmp_path / "home", model=mine) as fs:
        fs.enroll_files("Bill_Gates", [next((gallery_src / "Bill_Gates").iterdir())])
    (mine / "weights.pt").write_bytes((model_dir / "weights.pt").read_bytes()[:100_000])
    with pytest.raises(ModelFileError, match="cannot load weights"):
        FaceSearch.open(home=tmp_path / "home")
    r = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "reindex", "--model", str(other_model_dir)])
    assert r.exit_code == 0 and "(1 re-embedded)" in r.output, r.output


def test_an_open_gallery_keeps_the_config_it_was_opened_with(tmp_path, model_dir, gallery_src):
    """The weights are loaded at the first embedding; model.json rewritten meanwhile (`calibrate` does)
    does not change the threshold or preprocessing of a gallery already open: one handle, one answer."""
    from facesearch.model.config import ModelConfig
    from facesearch.gallery.facade import FaceSearch

    mine = tmp_path / "my-model"
    shutil.copytree(model_dir, mine)
    probe = next((gallery_src / "Bill_Gates").iterdir())
    with FaceSearch.open(home=tmp_path / "home", model=mine) as fs:
        fs.enroll_files("Bill_Gates", [probe])
    with FaceSearch.open(home=tmp_path / "home") as fs:
        threshold = fs.threshold
        cfg = ModelConfig.load(mine / "model.json")
        cfg.threshold, cfg.mean, cfg.std = 0.01, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        cfg.save(mine / "model.json")
        first, second = fs.query(probe), fs.query(probe)
        assert first.threshold == second.threshold == threshold == fs.config.threshold
        assert first.matches[0].distance == pytest.approx(0, abs=1e-5)  # the same preprocessing as enrolled


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_load_model_reports_at_once_what_the_first_embedding_would(tmp_path, model_dir, gallery_src):
    """The gallery's own model is loaded lazily; load_model() is the start-up check that fails now."""
    from facesearch.gallery.facade import FaceSearch

    with FaceSearch.open(home=tmp_path / "home", model=model_dir) as fs:
        fs.enroll_files("Bill_Gates", [next((gallery_src / "Bill_Gates").iterdir())])
    with pytest.raises(FaceSearchError, match="unknown device 'gpu'"):  # a name torch has not: at open
        FaceSearch.open(home=tmp_path / "home", device="gpu")
    with FaceSearch.open(home=tmp_path / "home", device="cuda") as fs:  # opens: nothing loaded yet
        with pytest.raises(FaceSearchError, match="no CUDA GPU"):
            fs.load_model()
    with FaceSearch.open(home=tmp_path / "home", device="cpu") as fs:
        fs.load_model()
        assert str(fs.info()["device"]) == "cpu" and fs.model.weights_sha256.startswith(fs.model_key.split("@")[1])
