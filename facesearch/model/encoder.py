"""The Siamese encoder: a backbone (:mod:`facesearch.model.backbones`) and an embedding head.

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
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from facesearch import distance
from facesearch.errors import FaceSearchError, ModelFileError
from facesearch.model import backbones
from facesearch.model.backbones import BACKBONES, mobilenet_v2_features  # noqa: F401 - re-exported
from facesearch.model.config import ModelConfig, write_private_atomic
from facesearch.model.files import (  # noqa: F401 - the model directory's layout, re-exported
    BUILTIN_MODELS,
    CONFIG_FILE,
    WEIGHTS_FILE,
    read_model_dir,
    weights_sha256,
)


class Encoder(nn.Module):
    """Image batch (N x 3 x S x S, floats in [0, 1]) -> unit-norm embeddings (N x D)."""

    def __init__(self, config: ModelConfig, tv_model: nn.Module | None = None):
        super().__init__()
        spec = backbones.get(config.backbone)
        self.config = config
        self.trunk = spec.trunk() if tv_model is None else backbones.torchvision_trunk(config.backbone, tv_model)
        self.embeds = spec.embeds
        if spec.embeds:  # the trunk ends in its own embedding head
            if config.embedding_dim != spec.width:
                raise ModelFileError(f"backbone {config.backbone} gives {spec.width}-d embeddings, "
                                     f"not {config.embedding_dim}")
            self.pool = self.dropout = self.head = self.bn = None
        else:
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.dropout = nn.Dropout(0.2)
            self.head = nn.Linear(spec.width, config.embedding_dim)
            self.bn = nn.BatchNorm1d(config.embedding_dim)
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trunk(self.normalise_input(x))
        if not self.embeds:
            x = self.bn(self.head(self.dropout(self.pool(x).flatten(1))))
        return distance.normalize(x.float())

    def normalise_input(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] -> the trunk's input (the config's mean and std)."""
        return (x - self.mean) / self.std

    def blocks(self) -> list[tuple[str, nn.Module]]:
        """The network as a chain of named blocks (sharing this encoder's modules): the trunk's blocks
        (:meth:`Backbone.split`), then ``embedding``, the pooling and head, unless the trunk embeds
        itself. ``distance.normalize(blocks on normalise_input(x), in order)`` is :meth:`forward`; training
        freezes a leading run of them and can cache what that run gives (``facesearch.training.freeze``)."""
        out = backbones.get(self.config.backbone).split(self.trunk)
        if not self.embeds:
            out.append(("embedding", nn.Sequential(self.pool, nn.Flatten(1), self.dropout, self.head, self.bn)))
        return out

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def pretrained_checkpoint_path(backbone: str) -> Path:
    """Where torchvision keeps (and looks for) an ImageNet checkpoint of ``backbone``: the first of its
    published checkpoints found in the torch hub cache, torchvision's default first (mobilenet_v2 has
    two: IMAGENET1K_V2 is the default, and ``make setup`` installs IMAGENET1K_V1, the one facesearch's
    recipes were measured with); the default's path when none is there."""
    import torchvision

    enum = torchvision.models.get_model_weights(backbone)
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    paths = [cache / os.path.basename(w.url) for w in [enum.DEFAULT] + [w for w in enum if w != enum.DEFAULT]]
    return next((p for p in paths if p.is_file()), paths[0])


def build(config: ModelConfig, pretrained: str | os.PathLike | None = "imagenet") -> Encoder:
    """A fresh encoder. ``pretrained``: ``"imagenet"`` (torchvision's checkpoint, which must already be
    in the torch hub cache: nothing is downloaded), a path to such a checkpoint, or ``None`` (random).
    A torchvision backbone is built as torchvision's network (what its checkpoints fit)."""
    if not backbones.get(config.backbone).torchvision:
        if pretrained is not None:
            raise ModelFileError(f"backbone {config.backbone} has no ImageNet checkpoint: pass --pretrained none")
        return Encoder(config)
    tv_model = backbones.torchvision_model(config.backbone)
    if pretrained is not None:
        path = pretrained_checkpoint_path(config.backbone) if pretrained == "imagenet" else Path(pretrained)
        if not path.is_file():
            where = f"in {path.parent} (as {path.name})" if pretrained == "imagenet" else f"at {path}"
            setup = " (`make setup` copies mobilenet_v2's from ../shared/weights)" if config.backbone == "mobilenet_v2" else ""
            raise ModelFileError(
                f"ImageNet weights for {config.backbone} not found {where}. facesearch does not download "
                f"them: copy torchvision's checkpoint there{setup} or pass its path with --pretrained."
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


def load(directory: str | os.PathLike, device: str | torch.device = "cpu", config: ModelConfig | None = None
         ) -> Encoder:
    """Load a model directory (``weights_only=True``: no pickled code runs) in eval mode. ``config``: the
    directory's config as read before (a gallery keeps the one it opened with). The weights file is read
    once; ``model.weights_sha256`` is the hash of the bytes loaded. An int8 model has no torch path
    (:func:`load_for_embedding` gives its ONNX Runtime encoder): ModelFileError."""
    directory = Path(directory)
    config = read_model_dir(directory) if config is None else config
    if config.int8:
        raise ModelFileError(f"{directory} is an int8 model ({config.name}): it embeds through ONNX Runtime on the "
                             f"CPU only (pip install 'facesearch[onnx]'; not with --runtime torch or on a GPU); "
                             f"its fp32 original is {config.quantization.get('fp32_model', 'named in its model.json')}")
    return _load(directory, device, config)


def load_fp32(directory: str | os.PathLike, config: ModelConfig) -> Encoder:
    """The fp32 network in a model directory's weights, on the CPU, whatever ``config.quantization`` says
    (what an int8 model is quantised from)."""
    d = config.to_dict()
    d.pop("quantization", None)
    return _load(Path(directory), "cpu", ModelConfig.from_dict(d))


def load_for_embedding(directory: str | os.PathLike, device: str | torch.device | None = "auto",
                       config: ModelConfig | None = None):
    """What embeds a model directory's faces outside a gallery (evaluation, calibration, reindex): the torch
    encoder on ``device`` (``auto``: :func:`resolve_device`), or an int8 model's ONNX Runtime encoder on
    the CPU (``auto`` means the CPU for it). :func:`embed` takes either."""
    directory = Path(directory)
    config = read_model_dir(directory) if config is None else config
    if not config.int8:
        return load(directory, resolve_device(device) if device is None or isinstance(device, str) else device, config)
    from facesearch.model import onnx_runtime

    if not (device is None or str(device) in ("auto", "cpu")):
        raise ModelFileError(f"{directory} is an int8 model: it embeds on the CPU only (asked for {device})")
    enc = onnx_runtime.load(directory, config, None)
    if enc is None:
        raise ModelFileError(f"{directory} is an int8 model, and ONNX Runtime cannot embed with it: "
                             + onnx_runtime.why_not(directory, config))
    return enc


def _load(directory: Path, device, config: ModelConfig) -> Encoder:
    model = Encoder(config)
    path = directory / WEIGHTS_FILE
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ModelFileError(f"cannot read weights {path}: {e.strerror or e}") from None
    try:
        with warnings.catch_warnings():  # a damaged file makes the unpickler warn as well as fail: the
            warnings.simplefilter("ignore")  # error below says it once, in facesearch's words
            state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
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
    model.weights_sha256 = hashlib.sha256(raw).hexdigest()
    if not isinstance(device, torch.device):  # a name, or onnx_runtime.CPU (a device named without torch)
        device = torch.device(str(device))
    return model.to(device).eval()


@torch.inference_mode()
def embed(model: Encoder, batch_uint8: np.ndarray | torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """Embed N x 3 x S x S uint8 images; returns N x D float32 unit vectors.

    With ``model.config.flip_average`` each image is embedded together with its mirror image and the
    result is the normalised mean of the two embeddings (every facesearch embedding goes through here,
    so enrolled faces, probes, calibration and evaluation all see the same embedding). ``model`` may also
    be an ONNX Runtime encoder (:func:`load_for_embedding`), which does the same around its graph."""
    if getattr(model, "runtime", None) == "onnx":
        return model.embed(np.asarray(batch_uint8), batch_size=batch_size)
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
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise FaceSearchError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FaceSearchError(f"device {device}: torch sees no CUDA GPU on this machine; use --device cpu "
                                  "(or auto, which picks a GPU when there is one)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FaceSearchError(f"device {device}: torch sees {torch.cuda.device_count()} CUDA GPU(s), "
                                  f"numbered from 0")
    elif dev.type != "cpu":  # mps, xpu, ...: usable only where this torch build supports them
        try:
            torch.empty(1, device=dev)
        except Exception as e:
            why = ([ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__])[0]
            raise FaceSearchError(f"device {device} is not usable here ({why}); use --device cpu or auto") from None
    return dev
