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
