"""SFace, OpenCV Zoo's face recognition network (``face_recognition_sface_2021dec``), written in torch so
that facesearch can embed with it, fine-tune it and distil from it.

The ONNX graph, read node by node (``tests/integration/test_imported.py`` checks the port against ONNX
Runtime on real faces), is insightface's MXNet ``fmobilenet``: MobileNet v1 (width 1.0) with PReLU
activations and the ``E`` embedding head::

    (x - 127.5) / 128                         # in the graph; here the encoder's mean/std do it
    conv_1     3x3 conv 3->32, stride 1       # 112 x 112 stays 112 x 112
    conv_k_dw  3x3 depthwise, stride s_k   }  k = 2..14, each conv followed by
    conv_k     1x1 pointwise               }  BatchNorm (eps 1e-3) and PReLU (one slope per channel)
               (stride 2 at conv_3_dw, conv_5_dw, conv_7_dw and conv_13_dw: 112 -> 7)
    bn1        BatchNorm2d(1024, eps 2e-5), dropout (identity at inference), flatten 1024 x 7 x 7
    pre_fc1    Linear(50176 -> 128); fc1: BatchNorm1d(128, eps 2e-5) -> the 128-d embedding

Input: 112 x 112 RGB, aligned to the ArcFace five-point template (:data:`TEMPLATE`). Each conv and its
BatchNorm sit in one ``nn.Sequential`` so that the CPU inference copy folds them together.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from facesearch.errors import ModelFileError

INPUT_SIZE = 112
EMBEDDING_DIM = 128
FEATURES = 1024
#: the graph normalises 0..255 pixels as (x - 127.5) * (1 / 128); the encoder takes pixels in 0..1 and
#: applies (x - mean) / std, so these are the same operation
MEAN = (0.5, 0.5, 0.5)
STD = (128.0 / 255.0,) * 3
#: the ArcFace 112 x 112 five-point template (right eye, left eye as seen, nose, mouth corners), the
#: geometry SFace was trained on: its faces must be aligned to it, not to the LFW pack's
TEMPLATE = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041))
#: (name, in channels, out channels, stride) of the 13 depthwise-separable pairs conv_k_dw + conv_k
SEPARABLE = (("conv_2", 32, 64, 1), ("conv_3", 64, 128, 2), ("conv_4", 128, 128, 1), ("conv_5", 128, 256, 2),
             ("conv_6", 256, 256, 1), ("conv_7", 256, 512, 2), ("conv_8", 512, 512, 1), ("conv_9", 512, 512, 1),
             ("conv_10", 512, 512, 1), ("conv_11", 512, 512, 1), ("conv_12", 512, 512, 1),
             ("conv_13", 512, 1024, 2), ("conv_14", 1024, 1024, 1))
BN_EPS_BODY = 1e-3
BN_EPS_HEAD = 2e-5


def _conv_bn_prelu(cin: int, cout: int, k: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout, eps=BN_EPS_BODY), nn.PReLU(cout))


class SFaceNet(nn.Module):
    """N x 3 x 112 x 112 normalised RGB -> N x 128 embeddings (not yet L2-normalised)."""

    def __init__(self):
        super().__init__()
        layers: "OrderedDict[str, nn.Module]" = OrderedDict(conv_1=_conv_bn_prelu(3, 32, 3, 1))
        for name, cin, cout, stride in SEPARABLE:
            layers[f"{name}_dw"] = _conv_bn_prelu(cin, cin, 3, stride, groups=cin)
            layers[name] = _conv_bn_prelu(cin, cout, 1, 1)
        self.body = nn.Sequential(layers)
        self.bn1 = nn.BatchNorm2d(FEATURES, eps=BN_EPS_HEAD)
        self.dropout = nn.Dropout(0.4)
        self.pre_fc1 = nn.Linear(FEATURES * 7 * 7, EMBEDDING_DIM)
        self.fc1 = nn.BatchNorm1d(EMBEDDING_DIM, eps=BN_EPS_HEAD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"SFace takes {INPUT_SIZE} x {INPUT_SIZE} inputs, not {tuple(x.shape[-2:])}")
        x = torch.flatten(self.dropout(self.bn1(self.body(x))), 1)
        return self.fc1(self.pre_fc1(x))


_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_var": "running_var"}


def torch_name(onnx_name: str) -> tuple[str, bool]:
    """The :class:`SFaceNet` parameter an ONNX initialiser fills, and whether it is a PReLU slope (C x 1 x 1
    in the graph, C in torch). Raises KeyError for a name with no place in the network."""
    if onnx_name in ("pre_fc1_weight", "pre_fc1_bias"):
        return "pre_fc1." + onnx_name.rsplit("_", 1)[1], False
    for head in ("bn1", "fc1"):
        if onnx_name.startswith(head + "_"):
            return f"{head}.{_BN[onnx_name[len(head) + 1:]]}", False
    if onnx_name.endswith("_conv2d_weight"):
        return f"body.{onnx_name.removesuffix('_conv2d_weight')}.0.weight", False
    if onnx_name.endswith("_relu_gamma"):
        return f"body.{onnx_name.removesuffix('_relu_gamma')}.2.weight", True
    if "_batchnorm_" in onnx_name:
        layer, what = onnx_name.split("_batchnorm_")
        return f"body.{layer}.1.{_BN[what]}", False
    raise KeyError(onnx_name)


#: the graph's input normalisation constants (Sub, Mul), checked and then left to the encoder's mean/std
_INPUT_CONSTANTS = {"scalar_op1": 127.5, "scalar_op2": 0.0078125}


def _check_graph(desc, net: SFaceNet) -> None:
    """Every Conv and BatchNorm of the graph agrees with the hand-written network, in the same order."""
    mods = dict(net.named_modules())
    convs = []
    for nd in desc.nodes:
        if nd.op_type == "Conv":
            layer = nd.name.removesuffix("_conv2d")
            conv, a = mods[f"body.{layer}.0"], nd.attrs
            convs.append(layer)
            same = (list(a["kernel_shape"]) == list(conv.kernel_size) and list(a["strides"]) == list(conv.stride)
                    and list(a["pads"]) == [conv.padding[0]] * 4 and a["group"] == conv.groups
                    and list(a.get("dilations", [1, 1])) == [1, 1])
            if not same:
                raise ModelFileError(f"SFace graph node {nd.name} {a} does not match the port's {conv}")
        elif nd.op_type == "BatchNormalization":
            path = nd.name if nd.name in ("bn1", "fc1") else f"body.{nd.name.removesuffix('_batchnorm')}.1"
            if abs(nd.attrs["epsilon"] - mods[path].eps) > 1e-9:
                raise ModelFileError(f"SFace graph node {nd.name}: eps {nd.attrs['epsilon']}, port {mods[path].eps}")
        elif nd.op_type == "Gemm" and nd.attrs != {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 1}:
            raise ModelFileError(f"unexpected Gemm attributes {nd.attrs}")
    if convs != list(net.body._modules):
        raise ModelFileError("the SFace graph's convolutions are not the port's")


def state_dict_from_onnx(path: str) -> "OrderedDict[str, torch.Tensor]":
    """:class:`SFaceNet`'s state dict from the ONNX file (dequantised to fp32): every graph parameter used
    once, every network entry filled, shapes and layer attributes checked."""
    from facesearch.model.imported.onnx_graph import read_onnx

    desc, weights = read_onnx(path)
    net = SFaceNet()
    _check_graph(desc, net)
    target = net.state_dict()
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for name, arr in weights.items():
        if name in _INPUT_CONSTANTS:
            if not np.allclose(arr, _INPUT_CONSTANTS[name]):
                raise ModelFileError(f"SFace input constant {name} is {arr}, not {_INPUT_CONSTANTS[name]}")
            continue
        try:
            key, slope = torch_name(name)
        except KeyError:
            raise ModelFileError(f"SFace graph parameter {name!r} has no place in the port") from None
        t = torch.from_numpy(np.ascontiguousarray(arr, np.float32))
        t = t.reshape(-1) if slope else t
        if key in out or tuple(t.shape) != tuple(target[key].shape):
            raise ModelFileError(f"SFace graph parameter {name} -> {key}: shape {tuple(t.shape)}, "
                                 f"port {tuple(target[key].shape)}")
        out[key] = t
    for key, v in target.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros_like(v)
    missing = set(target) - set(out)
    if missing:
        raise ModelFileError(f"not filled from the SFace graph: {sorted(missing)[:5]}")
    return OrderedDict((k, out[k]) for k in target)
