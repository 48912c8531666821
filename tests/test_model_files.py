"""Model directories from elsewhere: weights load with weights_only=True, so a file that carries code
never runs it, and every bad file is a ModelFileError that says what is wrong."""

import os
import shutil

import pytest
import torch

from facesearch import encoder
from facesearch.config import ModelConfig
from facesearch.errors import ModelFileError


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
    from facesearch.service import FaceSearch

    mine = tmp_path / "my-model"
    shutil.copytree(model_dir, mine)
    probe = next((gallery_src / "Bill_Gates").iterdir())
    with FaceSearch.open(home=tmp_path / "home", model=mine, device="cpu") as fs:
        shutil.copy(other_model_dir / "weights.pt", mine / "weights.pt")
        with pytest.raises(ModelMismatchError, match="replaced in place"):
            fs.embed([probe])
        assert fs.store.count_faces() == 0
