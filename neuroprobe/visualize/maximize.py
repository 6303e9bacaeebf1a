"""Activation maximization: images that drive units of a model as hard as possible.

Three separate, composable pieces, in the spirit of lucid / lucent (Olah, Mordvintsev and
Schubert, "Feature Visualization", Distill 2017, https://distill.pub/2017/feature-visualization):

* **Parameterizations** (:class:`PixelImage`, :class:`FourierImage`): learnable tensors that
  produce a batch of images in ``[0, 1]``.  The Fourier parameterization scales each spatial
  frequency by ``1 / f ** decay_power`` (so that optimisation works on a roughly whitened image)
  and both can *decorrelate colour*: the three learned channels are mapped to RGB through the
  square root of the colour-correlation matrix of natural images given by Olah et al. (2017).
* **Transforms** (:func:`pad`, :func:`jitter`, :func:`random_scale`, :func:`random_rotate`,
  :func:`compose`): random, differentiable image transformations applied at every step
  ("transformation robustness"), drawn from a seeded generator.
* **Objectives** (:func:`channel`, :func:`neuron`, :func:`layer`, :func:`direction`,
  :func:`diversity`): functions of recorded layer outputs that return one value per batch item;
  they compose with ``+``, ``-`` and scalar ``*``.

:func:`maximize` runs the optimisation on the model's own device (there is no global device),
deterministically for a given ``seed`` on the CPU, and returns the images together with the
objective value each one reached.  :func:`maximize_units` optimises many channels of one layer
in one batch (one image per unit).

Example::

    from neuroprobe.visualize import maximize as am
    obj = am.channel("encoder.block4", [3, 7, 12])            # one image per unit
    res = am.maximize(model, obj, size=128, steps=256, seed=0)
    res.images            # (3, 3, 128, 128) in [0, 1], on the CPU
    res.activations       # (3,) mean activation of each unit on its own image
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError

__all__ = [
    "Objective", "channel", "neuron", "layer", "direction", "diversity",
    "PixelImage", "FourierImage", "make_param",
    "pad", "jitter", "random_scale", "random_rotate", "compose", "standard_transforms",
    "maximize", "maximize_units", "MaxResult", "COLOR_CORRELATION_SVD_SQRT",
]

# -- colour decorrelation ----------------------------------------------------------------------

#: Square root (via SVD) of the colour-correlation matrix of ImageNet images, as published with
#: Olah et al. (2017) "Feature Visualization" (Distill).  Columns map decorrelated channels to RGB.
COLOR_CORRELATION_SVD_SQRT = ((0.26, 0.09, 0.02),
                              (0.27, 0.00, -0.05),
                              (0.27, -0.09, 0.03))


def _color_matrix(device, dtype) -> torch.Tensor:
    m = torch.tensor(COLOR_CORRELATION_SVD_SQRT, device=device, dtype=dtype)
    return m / m.norm(dim=0).max()


def _to_rgb(x: torch.Tensor, decorrelate: bool) -> torch.Tensor:
    """Map unconstrained channels to an image in [0, 1] (decorrelated colour, then sigmoid)."""
    if decorrelate:
        x = torch.einsum("rc,bchw->brhw", _color_matrix(x.device, x.dtype), x)
    return torch.sigmoid(x)


# -- parameterizations ---------------------------------------------------------------------------

class PixelImage(nn.Module):
    """A batch of images parameterized directly by (pre-sigmoid) pixel values.

    Parameters
    ----------
    batch, height, width : int
    sd : float
        Standard deviation of the random initialisation.
    decorrelate : bool
        Map the three channels to RGB through the decorrelating colour matrix.
    generator : torch.Generator, optional
        Source of the initial values (CPU); the parameter then moves to ``device``.
    """

    def __init__(self, batch: int, height: int, width: int | None = None, *, sd: float = 0.01,
                 decorrelate: bool = True, generator: torch.Generator | None = None,
                 device=None):
        super().__init__()
        width = width or height
        init = torch.randn(batch, 3, height, width, generator=generator) * sd
        self.pixels = nn.Parameter(init.to(device or "cpu"))
        self.decorrelate = decorrelate

    def forward(self) -> torch.Tensor:
        return _to_rgb(self.pixels, self.decorrelate)


class FourierImage(nn.Module):
    """A batch of images parameterized by their 2-D Fourier spectrum (Olah et al. 2017).

    The image is ``irfft2(scale * spectrum)`` with ``scale = 1 / max(f, 1/max(H, W)) **
    decay_power`` (``f`` = frequency in cycles per pixel), which equalises the energy of natural
    images across frequencies; colour is then decorrelated and squashed with a sigmoid.
    """

    def __init__(self, batch: int, height: int, width: int | None = None, *, sd: float = 0.01,
                 decay_power: float = 1.0, decorrelate: bool = True,
                 generator: torch.Generator | None = None, device=None):
        super().__init__()
        width = width or height
        self.size = (int(height), int(width))
        fy = torch.fft.fftfreq(height)[:, None]
        fx = torch.fft.rfftfreq(width)[None, :]
        freqs = torch.sqrt(fx * fx + fy * fy)
        scale = 1.0 / torch.clamp(freqs, min=1.0 / max(height, width)) ** decay_power
        # with the orthonormal inverse FFT below the transform is unitary, so learning rates
        # are comparable with the pixel parameterization (lucid multiplies by sqrt(H*W)
        # instead because its inverse FFT is unnormalised)
        self.register_buffer("scale", scale.to(device or "cpu"), persistent=False)
        init = torch.randn(batch, 3, *freqs.shape, 2, generator=generator) * sd
        self.spectrum = nn.Parameter(init.to(device or "cpu"))
        self.decorrelate = decorrelate

    def forward(self) -> torch.Tensor:
        spec = torch.view_as_complex(self.spectrum) * self.scale
        img = torch.fft.irfft2(spec, s=self.size, norm="ortho") / 4.0
        return _to_rgb(img, self.decorrelate)


def make_param(kind: str, batch: int, height: int, width: int | None = None, **kwargs) -> nn.Module:
    """``"fourier"`` or ``"pixel"`` -> a parameterization module (see the two classes)."""
    kinds = {"fourier": FourierImage, "fft": FourierImage, "pixel": PixelImage}
    if kind not in kinds:
        raise UserError(f"unknown image parameterization {kind!r}", hint="use fourier or pixel")
    return kinds[kind](batch, height, width, **kwargs)


# -- transforms ------------------------------------------------------------------------------------

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


# -- objectives -------------------------------------------------------------------------------------

class Objective:
    """A function of recorded layer outputs returning one value per batch item (to maximize).

    Objectives compose: ``a + b``, ``a - b``, ``2.0 * a``, ``-a``.  ``layers`` lists the layer
    names the objective needs.
    """

    def __init__(self, fn: Callable[[dict], torch.Tensor], layers: Iterable[str], name: str,
                 batch: int | None = None):
        self.fn = fn
        self.layers = list(dict.fromkeys(layers))
        self.name = name
        #: number of images the objective is made for (one per unit), None if any
        self.batch = batch

    def __call__(self, acts: dict) -> torch.Tensor:
        return self.fn(acts)

    def __add__(self, other):
        if isinstance(other, (int, float)):
            return Objective(lambda a: self(a) + other, self.layers, f"{self.name} + {other}",
                             self.batch)
        batch = max([b for b in (self.batch, other.batch) if b] or [0]) or None
        return Objective(lambda a: self(a) + other(a), self.layers + other.layers,
                         f"{self.name} + {other.name}", batch)

    __radd__ = __add__

    def __sub__(self, other):
        return self + (-1.0) * other

    def __neg__(self):
        return (-1.0) * self

    def __mul__(self, k):
        if not isinstance(k, (int, float)):
            raise TypeError("objectives can only be scaled by a number")
        return Objective(lambda a: k * self(a), self.layers, f"{k} * ({self.name})", self.batch)

    __rmul__ = __mul__

    def __truediv__(self, k):
        return self * (1.0 / k)

    def __repr__(self) -> str:
        return f"Objective({self.name})"


def _per_item(units, batch: int, device) -> torch.Tensor:
    """Unit index for each batch item: an int (same for all) or a sequence of length batch."""
    if isinstance(units, int):
        return torch.full((batch,), units, dtype=torch.long, device=device)
    t = torch.as_tensor(list(units), dtype=torch.long, device=device)
    if t.numel() != batch:
        raise UserError(f"{t.numel()} units given for a batch of {batch} images: give one "
                        "unit per image or a single unit")
    return t


def _units_batch(units) -> int | None:
    return None if isinstance(units, int) else len(list(units))


def _units_text(units) -> str:
    return str(units) if isinstance(units, int) else ",".join(str(int(u)) for u in units)


def _check_unit(out: torch.Tensor, name: str, idx: torch.Tensor) -> None:
    if out.dim() < 2:
        raise UserError(f"layer {name!r} output has shape {tuple(out.shape)}; unit objectives "
                        "need (batch, channels, ...)")
    if int(idx.max()) >= out.shape[1] or int(idx.min()) < 0:
        raise UserError(f"unit {int(idx.max())} is out of range for layer {name!r} with "
                        f"{out.shape[1]} channels")


def channel(layer_name: str, unit: int | Sequence[int]) -> Objective:
    """Mean activation of a channel over all positions.

    ``unit`` is one channel for every image, or a sequence with one channel per batch item
    (many units optimised in one batch).
    """
    def fn(acts):
        out = acts[layer_name]
        idx = _per_item(unit, out.shape[0], out.device)
        _check_unit(out, layer_name, idx)
        sel = out[torch.arange(out.shape[0], device=out.device), idx]
        return sel.reshape(out.shape[0], -1).mean(1)
    return Objective(fn, [layer_name], f"channel {layer_name}:{_units_text(unit)}",
                     _units_batch(unit))


def neuron(layer_name: str, unit: int | Sequence[int], y: int | None = None,
           x: int | None = None) -> Objective:
    """Activation of one channel at one spatial position (default: the centre of the map)."""
    def fn(acts):
        out = acts[layer_name]
        idx = _per_item(unit, out.shape[0], out.device)
        _check_unit(out, layer_name, idx)
        if out.dim() != 4:
            return out[torch.arange(out.shape[0], device=out.device), idx].reshape(
                out.shape[0], -1)[:, 0]
        h, w = out.shape[-2:]
        yy = h // 2 if y is None else min(int(y), h - 1)
        xx = w // 2 if x is None else min(int(x), w - 1)
        return out[torch.arange(out.shape[0], device=out.device), idx, yy, xx]
    return Objective(fn, [layer_name], f"neuron {layer_name}:{_units_text(unit)}@{y},{x}",
                     _units_batch(unit))


def layer(layer_name: str) -> Objective:
    """A whole layer: mean of the squared activations (the "DeepDream" objective)."""
    def fn(acts):
        out = acts[layer_name]
        return out.pow(2).reshape(out.shape[0], -1).mean(1)
    return Objective(fn, [layer_name], f"layer {layer_name}")


def direction(layer_name: str, vector, cosine: bool = False) -> Objective:
    """A direction in activation space: mean over positions of ``<v, a(p)>`` (``v`` unit-norm),
    or of the cosine similarity between ``v`` and ``a(p)`` with ``cosine=True``."""
    vec = torch.as_tensor(vector, dtype=torch.float32).flatten()
    if vec.norm() == 0:
        raise UserError("a direction objective needs a non-zero vector")
    vec = vec / vec.norm()

    def fn(acts):
        out = acts[layer_name]
        if out.shape[1] != vec.numel():
            raise UserError(f"direction has {vec.numel()} entries but layer {layer_name!r} has "
                            f"{out.shape[1]} channels")
        v = vec.to(out.device, out.dtype).view(1, -1, *([1] * (out.dim() - 2)))
        proj = (out * v).sum(1)
        if cosine:
            proj = proj / (out.norm(dim=1) + 1e-8)
        return proj.reshape(out.shape[0], -1).mean(1)
    return Objective(fn, [layer_name], f"direction {layer_name}")


def diversity(layer_name: str) -> Objective:
    """Diversity term (Olah et al. 2017): minus the mean cosine similarity between the Gram
    matrix of each batch item and those of the other items; add it with a weight
    (``obj + 10 * diversity(L)``) to make a batch of images for one unit differ."""
    def fn(acts):
        out = acts[layer_name]
        b, c = out.shape[:2]
        if b < 2:
            return out.new_zeros(b)
        flat = out.reshape(b, c, -1)
        gram = torch.bmm(flat, flat.transpose(1, 2)).reshape(b, -1)
        gram = F.normalize(gram, dim=1)
        sim = gram @ gram.T
        off = sim.sum(1) - sim.diagonal()
        return -off / (b - 1)
    return Objective(fn, [layer_name], f"diversity {layer_name}")


# -- the optimisation --------------------------------------------------------------------------------

@dataclass
class MaxResult:
    """What :func:`maximize` returns.

    images : (B, 3, H, W) float tensor in [0, 1] on the CPU
    activations : (B,) objective value of each final image (untransformed), on the CPU
    history : objective value (batch mean) every ``log_every`` steps
    config : the settings that made the images
    """

    images: torch.Tensor
    activations: torch.Tensor
    history: list = field(default_factory=list)
    config: dict = field(default_factory=dict)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _forward_acts(model: nn.Module, x: torch.Tensor, layers: list[str]) -> dict:
    from ..hooks import Recorder

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
    device = _model_device(model)
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
        from ..utils import progress

        return progress(range(n), desc="maximize", leave=False)
    return range(n)


def maximize_units(model: nn.Module, layer_name: str, units: Sequence[int], *,
                   batch_size: int = 32, objective: str = "channel", **kwargs) -> MaxResult:
    """Maximize many channels of one layer, one image per unit, ``batch_size`` units at a time.

    ``objective`` is ``"channel"`` (mean over positions) or ``"neuron"`` (centre position).
    Other keyword arguments go to :func:`maximize`; every chunk uses the same ``seed`` (results
    are deterministic for a given unit list and ``batch_size``).
    """
    units = [int(u) for u in units]
    if not units:
        raise UserError("no units to maximize")
    make = {"channel": channel, "neuron": neuron}.get(objective)
    if make is None:
        raise UserError(f"unknown unit objective {objective!r}", hint="use channel or neuron")
    images, acts, history = [], [], []
    config = {}
    for start in range(0, len(units), batch_size):
        chunk = units[start:start + batch_size]
        res = maximize(model, make(layer_name, chunk), batch=len(chunk), **kwargs)
        images.append(res.images)
        acts.append(res.activations)
        history.append(res.history)
        config = res.config
    config = dict(config, objective=f"{objective} {layer_name}", units=units,
                  batch_size=batch_size)
    return MaxResult(torch.cat(images), torch.cat(acts), history, config)
