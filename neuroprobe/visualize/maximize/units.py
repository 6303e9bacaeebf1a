"""Batched activation maximization of the units of one layer (lucent-style batched objectives).

:func:`maximize_units` optimises one image per unit, a batch of units at a time: every step is
one forward and one backward pass over the batch, and the loss is minus the sum over the batch of
each image's own unit's objective, so (the model being in eval mode) every image follows the
gradient of its own unit only.  Each unit's image is initialised from its own seeded generator
and the random transforms of a step are the same for every image, so a unit's image does not
depend on which other units share its batch: the batched result equals the one-unit-at-a-time
result up to floating-point summation order (see the tests).

With ``thresholds`` the optimisation of a unit stops as soon as the **peak** of its map on the
untransformed image (checked every ``check_every`` steps, one forward pass without gradients)
exceeds its threshold; that unit then leaves the batch, so later steps run on fewer images.
Units that never reach it keep the image of their best check; :class:`MaxResult` says which
reached (``reached``), their peaks (``peaks``) and the steps each one took (``steps_used``).

``relu_redirect=True`` uses the redirected ReLU gradient of lucid (Olah et al. 2017, lucid's
``redirected_relu_grad``): in every ``nn.ReLU`` of the model, for an image whose ordinary
gradient through that ReLU is zero everywhere (a unit that is off on the whole image, so plain
gradient ascent cannot start), the gradient is passed through the ReLU except where it would
push an already negative input further down.  The forward values are unchanged.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Sequence

import torch
from torch import nn

from ...errors import UserError
from ...utils import model_device
from .param import make_param
from .render import MaxResult, _forward_acts
from .transforms import compose, standard_transforms

__all__ = ["maximize_units", "unit_values", "redirected_relu", "OBJECTIVES"]

#: unit objectives: the statistic of the unit's map that is maximized (``peak`` is the one the
#: gallery reports and the dissection ranks top images by)
OBJECTIVES = ("channel", "mean", "peak", "neuron")


def unit_values(out: torch.Tensor, units: torch.Tensor, objective: str) -> torch.Tensor:
    """One value per image: the ``objective`` statistic of unit ``units[i]``'s map on image
    ``i`` (``channel``/``mean``: mean over positions; ``peak``: maximum over positions;
    ``neuron``: the centre position)."""
    if out.dim() < 2:
        raise UserError(f"layer output has shape {tuple(out.shape)}; unit objectives need "
                        "(batch, channels, ...)")
    if int(units.max()) >= out.shape[1] or int(units.min()) < 0:
        raise UserError(f"unit {int(units.max())} is out of range for a layer with "
                        f"{out.shape[1]} channels")
    sel = out[torch.arange(out.shape[0], device=out.device), units]
    if objective == "neuron" and sel.dim() == 3:
        return sel[:, sel.shape[1] // 2, sel.shape[2] // 2]
    flat = sel.reshape(out.shape[0], -1)
    if objective == "peak":
        return flat.amax(1)
    if objective == "neuron":
        return flat[:, 0]
    return flat.mean(1)


class _RedirectedReLU(torch.autograd.Function):
    """ReLU whose backward pass redirects the gradient of images that get none through it
    (lucid's ``redirected_relu_grad``)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        relu_grad = grad * (x > 0)
        # the loss is minimized: grad > 0 at x < 0 would push x lower, keep those at zero
        redirected = torch.where((x < 0) & (grad > 0), torch.zeros_like(grad), grad)
        if grad.dim() == 0:
            return relu_grad if bool(relu_grad != 0) else redirected
        none_through = relu_grad.reshape(grad.shape[0], -1).norm(dim=1) == 0
        return torch.where(none_through.view(-1, *([1] * (grad.dim() - 1))), redirected,
                           relu_grad)


@contextmanager
def redirected_relu(model: nn.Module):
    """Inside the block every ``nn.ReLU`` of ``model`` computes the same values with the
    redirected gradient (:class:`_RedirectedReLU`); the modules are restored afterwards."""
    relus = [m for m in model.modules() if type(m) is nn.ReLU]
    for m in relus:
        m.forward = _RedirectedReLU.apply
    try:
        yield model
    finally:
        for m in relus:
            del m.forward


class _Adam:
    """Adam (Kingma & Ba 2015) with PyTorch's defaults and update rule (betas 0.9, 0.999,
    eps 1e-8, bias-corrected step; equal to ``torch.optim.Adam`` up to rounding, see the
    tests).  Written out because the first ``torch.optim`` optimizer a process builds imports
    ``torch._dynamo``: about 5 s on the shared 2-core machine, a tenth of a demo gallery."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = [p for p in params]
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            m.lerp_(p.grad, 1 - self.b1)
            v.mul_(self.b2).addcmul_(p.grad, p.grad, value=1 - self.b2)
            p.addcdiv_(m, v.sqrt().div_(c2 ** 0.5).add_(self.eps), value=-self.lr / c1)


def _unit_seed(seed: int, unit: int) -> int:
    return (int(seed) * 1_000_003 + int(unit) * 7_919 + 17) % (2 ** 63)


def _init_param(kind, units, h, w, decorrelate, seed, device) -> nn.Module:
    """A batch parameterization whose image ``i`` starts from unit ``units[i]``'s own seed."""
    image = make_param(kind, len(units), h, w, decorrelate=decorrelate, device=device)
    with torch.no_grad():
        for i, u in enumerate(units):
            one = make_param(kind, 1, h, w, decorrelate=decorrelate,
                             generator=torch.Generator().manual_seed(_unit_seed(seed, u)))
            for name, p in image.named_parameters():
                p[i] = one.get_parameter(name)[0].to(p.device)
    return image


def _optimise_chunk(model, layer_name, units, thr, *, objective, size, steps, lr, param,
                    decorrelate, transforms, seed, check_every, device):
    """Optimise one batch of units; returns (images, values, peaks, steps_used)."""
    h, w = size
    n = len(units)
    image = _init_param(param, units, h, w, decorrelate, seed, device)
    gen = torch.Generator().manual_seed(int(seed))
    idx_all = torch.as_tensor(units, dtype=torch.long, device=device)
    opt = _Adam(image.parameters(), lr=lr)
    best_img = torch.zeros(n, 3, h, w)
    best_peak = torch.full((n,), -float("inf"))
    best_val = torch.zeros(n)
    used = torch.zeros(n, dtype=torch.long)
    active = torch.ones(n, dtype=torch.bool)
    tf = compose(transforms) if transforms else None

    def check(step: int) -> None:
        on = active.nonzero().flatten()
        with torch.no_grad():
            x = image()[on.to(device)]
            out = _forward_acts(model, x, [layer_name])[layer_name]
            peaks = unit_values(out, idx_all[on.to(device)], "peak").float().cpu()
            vals = unit_values(out, idx_all[on.to(device)], objective).float().cpu()
        better = peaks > best_peak[on]
        for j, i in enumerate(on.tolist()):
            if better[j]:
                best_img[i], best_peak[i], best_val[i] = x[j].cpu(), peaks[j], vals[j]
                used[i] = step
            if thr is not None and peaks[j] > thr[i]:
                active[i] = False

    if thr is not None or steps == 0:
        check(0)
    for step in range(1, steps + 1):
        if not active.any():
            break
        on = active.nonzero().flatten().to(device)
        opt.zero_grad()
        x = image()[on]
        x = tf(x, gen) if tf is not None else x
        values = unit_values(_forward_acts(model, x, [layer_name])[layer_name],
                             idx_all[on], objective)
        (-values.sum()).backward()
        opt.step()
        if step == steps or (thr is not None and step % check_every == 0):
            check(step)
    return best_img, best_val, best_peak, used


def maximize_units(model: nn.Module, layer_name: str, units: Sequence[int], *,
                   batch_size: int = 32, objective: str = "channel",
                   thresholds: Sequence[float] | None = None, steps: int = 256,
                   check_every: int = 8, size: int | tuple[int, int] = 128, lr: float = 0.05,
                   param: str = "fourier", decorrelate: bool = True, transforms="standard",
                   seed: int = 0, relu_redirect: bool = False,
                   on_chunk: Callable[[int], None] | None = None) -> MaxResult:
    """Maximize many units of one layer, one image per unit, ``batch_size`` units per batch.

    Parameters
    ----------
    model : nn.Module
        Takes images in [0, 1]; eval mode and frozen parameters for the run, restored after.
    layer_name : str
    units : sequence of int
        Channels of ``layer_name``, one image each.
    batch_size : int
        Units optimised together (one forward and backward pass per step for all of them).
    objective : "channel" (or "mean"), "peak" or "neuron"
        The statistic of the unit's map that is maximized (see :func:`unit_values`).
    thresholds : sequence of float, optional
        One per unit: stop optimising a unit once the peak of its map exceeds it (checked every
        ``check_every`` steps on the untransformed image).  Without thresholds every unit runs
        ``steps`` steps.
    steps : int
        Step budget per unit.
    size, lr, param, decorrelate, transforms
        Image size, Adam learning rate, ``"fourier"`` or ``"pixel"``, colour decorrelation,
        ``"standard"`` / None / a list of transforms (see :mod:`.transforms`).
    seed : int
        Seeds each unit's initial image (from the seed and the unit) and the transforms:
        deterministic on the CPU, and independent of which units share a batch.
    relu_redirect : bool
        Use lucid's redirected ReLU gradient (see the module docstring).
    on_chunk : callable, optional
        Called with the number of units of each batch when it is done (progress bars).

    Returns
    -------
    MaxResult
        ``images`` (N, 3, H, W), ``activations`` (the objective on each returned image),
        ``peaks`` (the peak of each unit's map on its image), ``steps_used`` and, with
        thresholds, ``reached`` (peak > threshold).
    """
    units = [int(u) for u in units]
    if not units:
        raise UserError("no units to maximize")
    if objective not in OBJECTIVES:
        raise UserError(f"unknown unit objective {objective!r}",
                        hint="use " + ", ".join(OBJECTIVES))
    if steps < 0 or check_every < 1 or batch_size < 1:
        raise UserError("steps must be >= 0, check_every and batch_size >= 1")
    thr = None if thresholds is None else torch.as_tensor(list(thresholds), dtype=torch.float32)
    if thr is not None and thr.numel() != len(units):
        raise UserError(f"{thr.numel()} thresholds for {len(units)} units: give one per unit")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    device = model_device(model)
    tfs = standard_transforms(max(h, w)) if transforms == "standard" else list(transforms or [])
    modes = [(m, m.training) for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    parts = []
    try:
        with redirected_relu(model) if relu_redirect else _nothing():
            for s in range(0, len(units), batch_size):
                chunk = units[s:s + batch_size]
                parts.append(_optimise_chunk(
                    model, layer_name, chunk, None if thr is None else thr[s:s + batch_size],
                    objective=objective, size=(h, w), steps=steps, lr=lr, param=param,
                    decorrelate=decorrelate, transforms=tfs, seed=seed,
                    check_every=check_every, device=device))
                if on_chunk is not None:
                    on_chunk(len(chunk))
    finally:
        for p, g in zip(model.parameters(), grads):
            p.requires_grad_(g)
        for m, training in modes:
            m.training = training
    images, values, peaks, used = (torch.cat(t) for t in zip(*parts))
    config = {"objective": f"{objective} {layer_name}", "units": units, "size": [h, w],
              "steps": steps, "lr": lr, "param": param, "decorrelate": decorrelate,
              "seed": int(seed), "batch_size": batch_size, "check_every": check_every,
              "relu_redirect": relu_redirect, "thresholds": thr is not None,
              "transforms": f"{len(tfs)} transforms" if tfs else "none"}
    return MaxResult(images, values, [], config, peaks=peaks, steps_used=used,
                     reached=None if thr is None else peaks > thr)


@contextmanager
def _nothing():
    yield
