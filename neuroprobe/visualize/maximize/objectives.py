"""Objectives for activation maximization: functions of recorded layer outputs that return one
value per batch item (to maximize); they compose with ``+``, ``-`` and scalar ``*``.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from ...errors import UserError

__all__ = ["Objective", "channel", "neuron", "layer", "direction", "diversity"]

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
