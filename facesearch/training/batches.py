"""A batch on the training device: the host index arrays copied over, the images augmented there."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A small host array on the device. On CUDA through pinned memory without waiting: a plain copy from
    pageable memory would make every step wait for the previous one to finish on the GPU."""
    t = torch.from_numpy(a)
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def augment_batch(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """uint8 N x 3 x S x S on any device -> float [0, 1], randomly flipped, scaled (0.9-1.1), shifted
    (+-6%), rotated (+-8 degrees), with brightness (x0.8-1.2) and contrast (x0.8-1.2) jitter."""
    n, dev = x.shape[0], x.device
    x = x.float().div_(255.0)

    def u(lo, hi):
        return torch.rand(n, device=dev, generator=gen) * (hi - lo) + lo

    flip = torch.where(torch.rand(n, device=dev, generator=gen) < 0.5, -1.0, 1.0)
    scale = 1.0 / u(0.9, 1.1)  # the grid samples the input: a grid scale s shows the face at 1/s
    ang = u(-8.0, 8.0) * (math.pi / 180.0)
    cos, sin = torch.cos(ang) * scale, torch.sin(ang) * scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, u(-0.06, 0.06)], 1), torch.stack([sin * flip, cos, u(-0.06, 0.06)], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    b = u(0.8, 1.2).view(n, 1, 1, 1)
    c = u(0.8, 1.2).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * c + mean).mul_(b).clamp_(0.0, 1.0)
