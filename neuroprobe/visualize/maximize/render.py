"""The optimisation loop of activation maximization: :func:`maximize` (one batch of images for
an objective); :func:`~.units.maximize_units` (one image per unit of a layer, in batches, until
each unit's threshold) is in :mod:`.units`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from ...errors import UserError
from ...hooks import Recorder
from ...utils import model_device, progress
from .objectives import Objective
from .param import make_param
from .transforms import Transform, compose, standard_transforms

__all__ = ["maximize", "MaxResult"]

@dataclass
class MaxResult:
    """What :func:`maximize` returns.

    images : (B, 3, H, W) float tensor in [0, 1] on the CPU
    activations : (B,) objective value of each final image (untransformed), on the CPU
    history : objective value (batch mean) every ``log_every`` steps
    config : the settings that made the images
    peaks : (B,) peak of each unit's map on its image (:func:`~.units.maximize_units` only)
    steps_used : (B,) steps each image took (:func:`~.units.maximize_units` only)
    reached : (B,) bool, peak above the unit's threshold (with thresholds only)
    """

    images: torch.Tensor
    activations: torch.Tensor
    history: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    peaks: torch.Tensor | None = None
    steps_used: torch.Tensor | None = None
    reached: torch.Tensor | None = None


def _forward_acts(model: nn.Module, x: torch.Tensor, layers: list[str]) -> dict:
    with Recorder(model, layers, detach=False, clone=False, stop=True) as rec:
        model(x)
    return {n: rec[n] for n in layers}


def maximize(model: nn.Module, objective: Objective, *, batch: int | None = None,
             size: int | tuple[int, int] = 128, steps: int = 256, lr: float = 0.05,
             param: str | nn.Module = "fourier", decorrelate: bool = True,
             transforms: Sequence[Transform] | str | None = "standard", seed: int = 0,
             log_every: int = 16, show_progress: bool = False) -> MaxResult:
    """Optimise a batch of images to maximize ``objective`` (Adam on the parameterization).

    Parameters
    ----------
    model : nn.Module
        Takes images in [0, 1]; it is put in eval mode for the run and restored after.
        Images are made on the model's device.
    objective : Objective
        One value per batch item; the loss is minus their sum, so items are optimised
        independently unless the objective couples them (:func:`diversity`).
    batch : int, optional
        Number of images; default: the number of units of the objective (1 if unknown).
    size : int or (H, W)
    steps, lr : optimisation length and Adam learning rate.
    param : "fourier", "pixel" or a module returning images
    transforms : "standard", None (no transforms) or a list of transforms
    seed : int
        Seeds the initial image and the random transforms (results are bit-identical on the
        CPU for equal arguments).

    Returns
    -------
    MaxResult
    """
    if steps < 0:
        raise UserError("steps must be >= 0")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    device = model_device(model)
    gen = torch.Generator().manual_seed(int(seed))
    batch = int(batch or objective.batch or 1)
    if isinstance(param, str):
        image = make_param(param, batch, h, w, decorrelate=decorrelate, generator=gen,
                           device=device)
    else:
        image = param.to(device)
    if transforms == "standard":
        transforms = standard_transforms(max(h, w))
    tf = compose(transforms or [])
    was_training = model.training
    grads = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    history = []
    try:
        opt = torch.optim.Adam(image.parameters(), lr=lr)
        for step in _steps(steps, show_progress):
            opt.zero_grad(set_to_none=True)
            x = tf(image(), gen)
            values = objective(_forward_acts(model, x, objective.layers))
            (-values.sum()).backward()
            opt.step()
            if log_every and step % log_every == 0:
                history.append(float(values.detach().mean()))
        with torch.no_grad():
            final = image().detach()
            reached = objective(_forward_acts(model, final, objective.layers)).detach()
    finally:
        for p, g in zip(model.parameters(), grads):
            p.requires_grad_(g)
        model.train(was_training)
    config = {"objective": objective.name, "batch": batch, "size": [h, w], "steps": steps,
              "lr": lr, "param": param if isinstance(param, str) else type(param).__name__,
              "decorrelate": decorrelate, "seed": int(seed),
              "transforms": "none" if not transforms else "custom" if not isinstance(
                  transforms, list) else f"{len(transforms)} transforms"}
    return MaxResult(final.cpu(), reached.cpu(), history, config)


def _steps(n: int, show: bool):
    if show:
        return progress(range(n), desc="maximize", leave=False)
    return range(n)
