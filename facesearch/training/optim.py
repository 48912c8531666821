"""The optimiser: AdamW over parameter groups, its learning-rate schedule, mixed precision, and loading
a checkpoint's optimiser state into this run's optimiser."""

from __future__ import annotations

import math
from typing import Any

import torch

from facesearch.model import encoder
from facesearch.training.options import TrainOptions


def lr_factor(progress: float, warmup: float, floor: float) -> float:
    """Multiplier of the peak lr at ``progress`` in [0, 1]: linear warmup, then cosine down to ``floor``."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return max(progress / warmup, 1e-3)
    t = (progress - warmup) / max(1.0 - warmup, 1e-9)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def _param_groups(model: encoder.Encoder, options: TrainOptions) -> list[dict]:
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:  # a frozen block's: no update, no weight decay
            continue
        is_backbone = name.startswith("trunk.")
        no_decay = p.ndim <= 1  # biases and norm layers
        groups.setdefault((is_backbone, no_decay), []).append(p)
    out = []
    for (is_backbone, no_decay), params in sorted(groups.items()):
        scale = options.backbone_lr_factor if is_backbone else 1.0
        out.append({
            "params": params,
            "lr": options.lr * scale,
            "base_lr": options.lr * scale,
            "weight_decay": 0.0 if no_decay else options.weight_decay,
        })
    return out


def make_optimizer(model: encoder.Encoder, options: TrainOptions, device: torch.device,
                   capturable: bool = False) -> torch.optim.AdamW:
    """AdamW over the parameter groups of :func:`_param_groups`; on CUDA the fused kernel (one launch per
    group instead of several per tensor). ``capturable``: learning rates live in device tensors, so a
    captured CUDA graph sees :meth:`TrainStep.set_lr` changes."""
    groups = _param_groups(model, options)
    kw: dict[str, Any] = {"fused": True} if device.type == "cuda" else {}
    if capturable:
        for g in groups:
            g["lr"] = torch.tensor(g["lr"], dtype=torch.float32, device=device)
        kw["capturable"] = True
    return torch.optim.AdamW(groups, lr=options.lr, weight_decay=options.weight_decay, **kw)


def load_optimizer_state(opt: torch.optim.AdamW, state: dict, device: torch.device, cuda_graph: bool) -> None:
    """Load a checkpoint's optimiser state. The saved groups carry the saving run's flags and lr type, and
    its step counters sit where that run kept them: make all of it this run's (a CPU checkpoint resumed on
    CUDA, eager <-> graph)."""
    opt.load_state_dict(state)
    on_device = cuda_graph or device.type == "cuda"
    for g in opt.param_groups:
        g["capturable"] = cuda_graph
        g["fused"] = True if device.type == "cuda" else None
        lr = float(g["lr"])
        g["lr"] = torch.tensor(lr, dtype=torch.float32, device=device) if cuda_graph else lr
    for st in opt.state.values():
        if "step" in st:
            st["step"] = torch.as_tensor(st["step"], dtype=torch.float32).to(device if on_device else "cpu")


def amp_dtype(options: TrainOptions, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or options.amp == "off":
        return None
    if options.amp == "fp16":
        return torch.float16
    if options.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16
