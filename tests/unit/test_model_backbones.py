"""facesearch.model.backbones: the registry a backbone is added to, and what the encoder takes from it."""

import pytest
import torch

from facesearch.errors import ModelFileError
from facesearch.model import backbones, encoder
from facesearch.model.config import ModelConfig


def test_every_registered_backbone_is_listed_with_its_width():
    assert backbones.BACKBONES == {name: b.width for name, b in backbones.REGISTRY.items()}
    assert encoder.BACKBONES is backbones.BACKBONES  # what training checks its --backbone against
    assert backbones.REGISTRY["mobilenet_v2"].trunk is backbones.mobilenet_v2_features


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small", "resnet18"])
def test_a_trunk_ends_in_its_registered_width(name):
    trunk = backbones.get(name).trunk().eval()
    with torch.no_grad():
        assert trunk(torch.rand(1, 3, 64, 64)).shape[1] == backbones.REGISTRY[name].width


def test_an_unknown_backbone_names_the_known_ones():
    with pytest.raises(ModelFileError, match=r"unknown backbone 'vgg11'; choose one of \['efficientnet_b0'"):
        encoder.Encoder(ModelConfig(backbone="vgg11"))


def test_a_backbone_added_to_the_registry_is_one_an_encoder_can_be_built_and_saved_with(tmp_path, monkeypatch):
    """The next backbone (an imported network torchvision does not ship) is added in one place."""
    tiny = lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2), torch.nn.ReLU())  # noqa: E731
    monkeypatch.setitem(backbones.REGISTRY, "tiny", backbones.Backbone(8, tiny, torchvision=False))
    cfg = ModelConfig(backbone="tiny", embedding_dim=4, input_size=32, threshold=0.5)
    with pytest.raises(ModelFileError, match="has no ImageNet checkpoint"):
        encoder.build(cfg)
    encoder.save(encoder.build(cfg, pretrained=None), tmp_path / "m")
    net = encoder.load(tmp_path / "m")
    faces = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    assert encoder.embed(net, faces).shape == (3, 4)
