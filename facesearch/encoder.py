"""The Siamese encoder: a torchvision backbone and an embedding head.

Both branches of the Siamese pair share these weights; the network maps an
aligned face crop to an L2-normalised embedding, and faces are compared with
:mod:`facesearch.distance`. There is no classifier or sigmoid head.

A model lives in a directory: ``model.json`` (a :class:`ModelConfig`) and
``weights.pt`` (a plain ``state_dict``, loaded with ``weights_only=True``).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torchvision

from facesearch import distance
from facesearch.config import ModelConfig, write_private_atomic
from facesearch.errors import ModelFileError

CONFIG_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"
#: where the models shipped inside the package live (``models/<name>/``; ``default`` is the built-in one)
BUILTIN_MODELS = Path(__file__).resolve().parent / "models"

#: backbones facesearch can cut below the classifier: torchvision name -> width of the pooled features
BACKBONES = {
    "mobilenet_v2": 1280,
    "mobilenet_v3_small": 576,
    "mobilenet_v3_large": 960,
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "efficientnet_b0": 1280,
}


def _trunk(backbone: str, tv_model: nn.Module) -> nn.Module:
    """The torchvision model without its classifier, ending in a C x h x w feature map."""
    if backbone.startswith("resnet"):
        return nn.Sequential(*list(tv_model.children())[:-2])
    return tv_model.features


class Encoder(nn.Module):
    """Image batch (N x 3 x S x S, floats in [0, 1]) -> unit-norm embeddings (N x D)."""

    def __init__(self, config: ModelConfig, tv_model: nn.Module | None = None):
        super().__init__()
        if config.backbone not in BACKBONES:
            raise ModelFileError(f"unknown backbone {config.backbone!r}; choose one of {sorted(BACKBONES)}")
        self.config = config
        if tv_model is None:
            tv_model = torchvision.models.get_model(config.backbone, weights=None)
        self.trunk = _trunk(config.backbone, tv_model)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(BACKBONES[config.backbone], config.embedding_dim)
        self.bn = nn.BatchNorm1d(config.embedding_dim)
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = self.pool(self.trunk(x)).flatten(1)
        x = self.bn(self.head(self.dropout(x)))
        return distance.normalize(x.float())

    @property
    def device(self) -> torch.device:
        return self.head.weight.device


def pretrained_checkpoint_path(backbone: str) -> Path:
    """Where torchvision keeps (and looks for) the ImageNet checkpoint of ``backbone``."""
    weights = torchvision.models.get_model_weights(backbone).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def build(config: ModelConfig, pretrained: str | os.PathLike | None = "imagenet") -> Encoder:
    """A fresh encoder. ``pretrained``: ``"imagenet"`` (torchvision's checkpoint, which must already be
    in the torch hub cache: nothing is downloaded), a path to such a checkpoint, or ``None`` (random)."""
    tv_model = torchvision.models.get_model(config.backbone, weights=None)
    if pretrained is not None:
        path = pretrained_checkpoint_path(config.backbone) if pretrained == "imagenet" else Path(pretrained)
        if not path.is_file():
            raise ModelFileError(
                f"ImageNet weights for {config.backbone} not found at {path}. facesearch does not download "
                f"them: copy the checkpoint there (see README) or pass its path with --pretrained."
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            tv_model.load_state_dict(state)
        except RuntimeError as e:
            raise ModelFileError(f"{path} is not a {config.backbone} checkpoint: {e}") from e
    return Encoder(config, tv_model)


def save(model: Encoder, directory: str | os.PathLike, config: ModelConfig | None = None) -> Path:
    """Write ``model.json`` and ``weights.pt`` into ``directory`` (owner-only, atomic)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    write_private_atomic(directory / WEIGHTS_FILE, buf.getvalue())
    (config or model.config).save(directory / CONFIG_FILE)
    return directory


def weights_sha256(directory: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(Path(directory) / WEIGHTS_FILE, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load(directory: str | os.PathLike, device: str | torch.device = "cpu") -> Encoder:
    """Load a model directory (``weights_only=True``: no pickled code runs) in eval mode."""
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise ModelFileError(f"{directory} is not a facesearch model (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    config = ModelConfig.load(directory / CONFIG_FILE)
    model = Encoder(config)
    path = directory / WEIGHTS_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # torch's own text suggests weights_only=False, which would run code from the file: not said here
        text = str(e)
        if "WeightsUnpickler error:" in text:  # the unpickler's reason follows this marker
            detail = " ".join(text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0].split())
        else:
            detail = ([ln.strip() for ln in text.splitlines() if ln.strip()] or [type(e).__name__])[0].split(". ")[0]
        raise ModelFileError(f"cannot load weights from {path}: not a weights file facesearch can load safely "
                             f"(damaged, or more than plain tensors: {detail or type(e).__name__})") from e
    try:
        model.load_state_dict(state)
    except Exception as e:
        raise ModelFileError(f"{path} does not fit the model in {directory / CONFIG_FILE}: "
                             f"{' '.join(str(e).split())[:400]}") from e
    return model.to(device).eval()


@torch.inference_mode()
def embed(model: Encoder, batch_uint8: np.ndarray | torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """Embed N x 3 x S x S uint8 images; returns N x D float32 unit vectors.

    With ``model.config.flip_average`` each image is embedded together with its mirror image and the
    result is the normalised mean of the two embeddings (every facesearch embedding goes through here,
    so enrolled faces, probes, calibration and evaluation all see the same embedding)."""
    model.eval()
    x = torch.as_tensor(batch_uint8)
    flip = bool(getattr(model.config, "flip_average", False))
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(model.device, non_blocking=True).float().div_(255.0)
        if flip:
            n = len(xb)
            e = model(torch.cat([xb, xb.flip(3)]))
            out.append(distance.normalize(e[:n] + e[n:]).cpu())
        else:
            out.append(model(xb).cpu())
    if not out:
        return np.zeros((0, model.config.embedding_dim), np.float32)
    return torch.cat(out).numpy().astype(np.float32, copy=False)


def resolve_device(device: str | None = None) -> torch.device:
    """``auto``/None -> CUDA when available, else CPU; otherwise the named device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
