"""Random, differentiable image transformations applied at every optimisation step
("transformation robustness", Olah et al. 2017).  A transform is a function ``(images, generator)
-> images``; its randomness comes from the seeded CPU generator it is given.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from ...errors import UserError

__all__ = ["Transform", "pad", "jitter", "random_scale", "random_rotate", "compose",
           "standard_transforms"]

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high] from a CPU generator."""
    return int(torch.randint(low, high + 1, (1,), generator=gen).item())


def _choice(gen: torch.Generator, values: Sequence[float]) -> float:
    return float(values[_randint(gen, 0, len(values) - 1)])


def pad(width: int, mode: str = "constant", value: float = 0.5) -> Transform:
    """Pad every side by ``width`` pixels (constant grey by default, or ``reflect``)."""
    def fn(x, gen):
        if mode == "constant":
            return F.pad(x, [width] * 4, mode="constant", value=value)
        return F.pad(x, [width] * 4, mode=mode)
    return fn


def jitter(d: int) -> Transform:
    """Crop a random ``(H-d, W-d)`` window: a random translation by up to ``d`` pixels."""
    if d < 1:
        raise UserError("jitter needs d >= 1")

    def fn(x, gen):
        dy, dx = _randint(gen, 0, d), _randint(gen, 0, d)
        h, w = x.shape[-2:]
        return x[..., dy:h - d + dy, dx:w - d + dx]
    return fn


def random_scale(scales: Sequence[float]) -> Transform:
    """Resize by a factor drawn from ``scales`` (bilinear)."""
    scales = list(scales)

    def fn(x, gen):
        s = _choice(gen, scales)
        h, w = x.shape[-2:]
        size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return fn


def random_rotate(angles: Sequence[float]) -> Transform:
    """Rotate about the centre by an angle (degrees) drawn from ``angles`` (bilinear, border
    pixels repeated)."""
    angles = list(angles)

    def fn(x, gen):
        a = math.radians(_choice(gen, angles))
        cos, sin = math.cos(a), math.sin(a)
        theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                             align_corners=False)
    return fn


def compose(transforms: Iterable[Transform]) -> Transform:
    """Apply transforms in order."""
    transforms = list(transforms)

    def fn(x, gen):
        for t in transforms:
            x = t(x, gen)
        return x
    return fn


def standard_transforms(size: int = 128) -> list[Transform]:
    """The robustness transforms of Olah et al. (2017), scaled to the image ``size``: pad 12,
    jitter 8, scale 0.9..1.1, rotate -10..10 degrees, jitter 4 (for a 224-pixel image)."""
    k = max(size / 224.0, 0.25)
    return [pad(max(1, round(12 * k))), jitter(max(1, round(8 * k))),
            random_scale([1 + (i - 5) / 50 for i in range(11)]),
            random_rotate(list(range(-10, 11))), jitter(max(1, round(4 * k)))]
