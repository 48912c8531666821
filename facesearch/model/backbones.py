"""The convolutional trunks an encoder is built on, chosen by name from :data:`REGISTRY`.

A trunk maps N x 3 x S x S images to an N x C x h x w feature map; the encoder pools it and puts its
embedding head on top. To add a backbone, write a function that builds its trunk (random weights; a
model's ``weights.pt`` fills them) and add a :class:`Backbone` to :data:`REGISTRY` under the name that
``model.json``'s ``backbone`` gives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn

from facesearch.errors import ModelFileError

#: width of MobileNetV2's last feature map (width multiplier 1.0)
MOBILENET_V2_WIDTH = 1280


@dataclass(frozen=True)
class Backbone:
    """One backbone. ``width``: channels of its feature map (what the head pools); ``trunk``: builds it
    with random weights; ``torchvision``: torchvision ships the network, so training can start it from
    an ImageNet checkpoint (:func:`facesearch.model.encoder.build`)."""

    width: int
    trunk: Callable[[], nn.Module]
    torchvision: bool = True
    #: the trunk gives the embedding itself (an imported face network with its own head): the encoder
    #: puts no pooling or head on top, and ``width`` is the embedding's size
    embeds: bool = False
    #: the trunk as a chain of named blocks, input to output (:func:`sequential_blocks` by default: a
    #: ``nn.Sequential`` trunk's children); what freezing and feature caching cut between
    blocks: Callable[[nn.Module], list[tuple[str, nn.Module]]] | None = None

    def split(self, trunk: nn.Module) -> list[tuple[str, nn.Module]]:
        """``trunk`` as named blocks whose composition, in order, is ``trunk.forward`` (sharing its modules)."""
        return (self.blocks or sequential_blocks)(trunk)


def sequential_blocks(trunk: nn.Module) -> list[tuple[str, nn.Module]]:
    """A ``nn.Sequential`` trunk's children, named ``features.<i>`` (torchvision's names for MobileNets'
    feature stages; ResNets' are conv1, bn1, relu, maxpool, layer1-4 in that order)."""
    if not isinstance(trunk, nn.Sequential):
        raise ModelFileError(f"a {type(trunk).__name__} trunk does not say how it splits into blocks")
    return [(f"features.{name}", m) for name, m in trunk.named_children()]


def _conv_bn_relu6(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class _InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion (unless ``expand`` is 1), 3x3 depthwise, linear 1x1 projection;
    the input is added back when the shape allows."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [_conv_bn_relu6(cin, hidden)] if expand != 1 else []
        layers += [_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


def mobilenet_v2_features() -> nn.Sequential:
    """MobileNetV2's convolutional part (width 1.0), built without torchvision: the layers of
    torchvision's ``mobilenet_v2().features`` under the same names, so a state dict of either loads
    into the other (tests/test_model_files.py checks names, shapes and outputs). Loading a model uses it
    because importing torchvision also imports ``torch._dynamo``: about 1.5 to 3 s of every CLI call
    here. Training still builds torchvision's, which brings the ImageNet weights API."""
    layers: list[nn.Module] = [_conv_bn_relu6(3, 32, 3, 2)]
    cin = 32
    # (expansion, output channels, blocks, stride of the first block): the paper's Table 2
    for expand, cout, blocks, stride in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                         (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(blocks):
            layers.append(_InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
            cin = cout
    layers.append(_conv_bn_relu6(cin, MOBILENET_V2_WIDTH))
    return nn.Sequential(*layers)


def torchvision_model(name: str) -> nn.Module:
    """torchvision's network ``name``, random weights, classifier included (what its checkpoints fit)."""
    import torchvision  # here, not at module level: see mobilenet_v2_features

    return torchvision.models.get_model(name, weights=None)


def torchvision_trunk(name: str, tv_model: nn.Module | None = None) -> nn.Module:
    """A torchvision network (``tv_model``, else a fresh one) without its classifier, ending in a
    C x h x w feature map. The trunk shares ``tv_model``'s modules (and so its weights)."""
    tv_model = torchvision_model(name) if tv_model is None else tv_model
    if name.startswith("resnet"):
        return nn.Sequential(*list(tv_model.children())[:-2])
    return tv_model.features


def _tv(name: str, width: int) -> Backbone:
    return Backbone(width, partial(torchvision_trunk, name))


def _sface() -> nn.Module:
    from facesearch.model.imported.sface import SFaceNet

    return SFaceNet()


def _sface_blocks(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """SFace as 15 blocks: conv_1, then conv_2 ... conv_14 (each its depthwise and pointwise convolution),
    then ``embedding`` (bn1, dropout, flatten, pre_fc1, fc1): the order of ``SFaceNet.forward``."""
    layers = dict(net.body.named_children())
    out: list[tuple[str, nn.Module]] = [("conv_1", layers["conv_1"])]
    for name in [n for n in layers if n != "conv_1" and not n.endswith("_dw")]:
        out.append((name, nn.Sequential(layers[f"{name}_dw"], layers[name])))
    out.append(("embedding", nn.Sequential(net.bn1, net.dropout, nn.Flatten(1), net.pre_fc1, net.fc1)))
    return out


#: backbone name (``model.json``'s ``backbone``) -> how to build it
REGISTRY: dict[str, Backbone] = {
    "sface": Backbone(128, _sface, torchvision=False, embeds=True, blocks=_sface_blocks),
    "mobilenet_v2": Backbone(MOBILENET_V2_WIDTH, mobilenet_v2_features),
    "mobilenet_v3_small": _tv("mobilenet_v3_small", 576),
    "mobilenet_v3_large": _tv("mobilenet_v3_large", 960),
    "resnet18": _tv("resnet18", 512),
    "resnet34": _tv("resnet34", 512),
    "resnet50": _tv("resnet50", 2048),
    "efficientnet_b0": _tv("efficientnet_b0", 1280),
}

#: backbone name -> width of its pooled features (what :data:`REGISTRY` says, as a plain mapping)
BACKBONES: dict[str, int] = {name: b.width for name, b in REGISTRY.items()}


def get(name: str) -> Backbone:
    """The registered backbone ``name``; a ModelFileError naming the known ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelFileError(f"unknown backbone {name!r}; choose one of {sorted(REGISTRY)}") from None
