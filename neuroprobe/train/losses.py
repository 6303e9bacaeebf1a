"""Differentiable saliency losses (torch), following the metric definitions of the field.

All functions take a predicted map ``pred`` of shape ``(B, 1, H, W)`` (or ``(B, H, W)``) and a
target of the same spatial size and return a scalar tensor averaged over the images of the batch
that carry ground truth (images without fixations are left out of the mean).

* :func:`nss_loss`: negative Normalized Scanpath Saliency (Peters, Iyer, Itti & Koch, Vision
  Research 2005), the loss of He et al., "Understanding and Visualizing Deep Visual Saliency
  Models", CVPR 2019: the map is z-scored over the image (standard deviation with ``ddof``) and
  averaged at the fixations, each weighted by the target's value (a binary map gives the MIT
  benchmark's NSS, a count map counts every fixation as pysaliency does).
* :func:`kl_loss`: Kullback-Leibler divergence of the MIT benchmark code (Bylinskii et al., "What
  do different evaluation metrics tell us about saliency models?", TPAMI 2019): both maps divided
  by their sums, ``sum(g * log(eps + g / (s + eps)))`` with ``eps = 2.2204e-16``.
* :func:`cc_loss`: negative Pearson correlation coefficient between the map and the fixation
  density (same paper).

:func:`combined_loss` forms weighted sums (``"nss"``, ``"kl"``, ``"nss+0.5*kl"``, ``"-1*cc"`` ...);
each term is the loss of its metric (negative NSS, KL, negative CC), so that lower is better.
The unit tests check every loss against :mod:`neuroprobe.saliency.metrics`.
"""
from __future__ import annotations

import re

import torch

from ..errors import UserError

EPS = 2.2204e-16  # MATLAB eps, as in the MIT benchmark code
LOSSES = ("nss", "kl", "cc")


def _flat(t: torch.Tensor) -> torch.Tensor:
    if t.dim() == 4:
        if t.shape[1] != 1:
            raise ValueError(f"expected one channel, got shape {tuple(t.shape)}")
        t = t[:, 0]
    if t.dim() != 3:
        raise ValueError(f"expected (B, 1, H, W) or (B, H, W), got shape {tuple(t.shape)}")
    return t.flatten(1)


def _check(pred, target):
    p, g = _flat(pred), _flat(target).to(pred.dtype)
    if p.shape != g.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} "
                         "differ in size")
    return p, g


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    if not bool(valid.any()):
        return values.sum() * 0.0  # keeps the graph; no image carries ground truth
    return values[valid].mean()


def nss_per_image(pred: torch.Tensor, fixmap: torch.Tensor, ddof: int = 1) -> torch.Tensor:
    """NSS of each image: mean of the z-scored map at fixations, weighted by ``fixmap``.

    A constant map has NSS 0 (as in :mod:`neuroprobe.saliency.metrics`).  Returns ``(B,)``;
    images without fixations give NaN.
    """
    p, f = _check(pred, fixmap)
    n = p.shape[1]
    mean = p.mean(dim=1, keepdim=True)
    c = p - mean
    var = (c * c).sum(dim=1, keepdim=True) / max(n - ddof, 1)
    std = var.sqrt()
    z = torch.where(std > 0, c / std.clamp_min(1e-12), torch.zeros_like(c))
    total = f.sum(dim=1)
    return (z * f).sum(dim=1) / total.where(total > 0, torch.full_like(total, float("nan")))


def nss_loss(pred: torch.Tensor, fixmap: torch.Tensor, ddof: int = 1) -> torch.Tensor:
    """Negative NSS averaged over the images that have fixations (the study's loss)."""
    v = nss_per_image(pred, fixmap, ddof)
    return -_masked_mean(v, ~torch.isnan(v))


def kl_per_image(pred: torch.Tensor, density: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """MIT-benchmark KL divergence of each image (``pred`` must be non-negative).

    A map that sums to 0 is taken as the uniform distribution.  Returns ``(B,)`` (NaN where the
    ground truth is empty).
    """
    s, g = _check(pred, density)
    ssum = s.sum(dim=1, keepdim=True)
    uniform = torch.full_like(s, 1.0 / s.shape[1])
    q = torch.where(ssum > 0, s / ssum.clamp_min(1e-30), uniform)
    gsum = g.sum(dim=1, keepdim=True)
    p = g / gsum.clamp_min(1e-30)
    terms = torch.where(p > 0, p * torch.log(eps + p / (q + eps)), torch.zeros_like(p))
    out = terms.sum(dim=1)
    return out.where(gsum[:, 0] > 0, torch.full_like(out, float("nan")))


def kl_loss(pred: torch.Tensor, density: torch.Tensor) -> torch.Tensor:
    v = kl_per_image(pred, density)
    return _masked_mean(v, ~torch.isnan(v))


def cc_per_image(pred: torch.Tensor, density: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each image's map with its density (0 for a constant map)."""
    s, g = _check(pred, density)
    sc = s - s.mean(dim=1, keepdim=True)
    gc = g - g.mean(dim=1, keepdim=True)
    den = ((sc * sc).sum(dim=1) * (gc * gc).sum(dim=1)).sqrt()
    num = (sc * gc).sum(dim=1)
    out = torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(num))
    empty = g.sum(dim=1) <= 0
    return out.masked_fill(empty, float("nan"))


def cc_loss(pred: torch.Tensor, density: torch.Tensor) -> torch.Tensor:
    v = cc_per_image(pred, density)
    return -_masked_mean(v, ~torch.isnan(v))


_TERM = re.compile(r"^\s*(?:([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*\*\s*)?([a-z]+)\s*$")


def parse_loss(text: str) -> dict[str, float]:
    """``"nss"``, ``"kl"``, ``"nss+0.5*kl"``, ``"2*cc+kl"`` -> ``{name: weight}``."""
    out: dict[str, float] = {}
    for part in str(text).lower().replace(",", "+").split("+"):
        m = _TERM.match(part)
        if not m or m.group(2) not in LOSSES:
            raise UserError(f"cannot read the loss term {part.strip()!r} in {text!r}",
                            hint="write a weighted sum of nss, kl, cc, e.g. nss or nss+0.5*kl")
        w = float(m.group(1)) if m.group(1) else 1.0
        out[m.group(2)] = out.get(m.group(2), 0.0) + w
    if not out:
        raise UserError(f"empty loss {text!r}", hint="e.g. --loss nss")
    return out


def needs_density(weights: dict[str, float]) -> bool:
    return any(k in weights for k in ("kl", "cc"))


def combined_loss(pred: torch.Tensor, fixmap: torch.Tensor, density: torch.Tensor | None,
                  weights: dict[str, float], ddof: int = 1) -> tuple[torch.Tensor, dict]:
    """Weighted sum of the losses in ``weights`` and each term's value (for logging)."""
    terms = {}
    total = pred.sum() * 0.0
    for name, w in weights.items():
        if name == "nss":
            v = nss_loss(pred, fixmap, ddof)
        elif density is None:
            raise ValueError(f"the {name} loss needs a fixation density")
        elif name == "kl":
            v = kl_loss(pred, density)
        else:
            v = cc_loss(pred, density)
        terms[name] = float(v.detach())
        total = total + w * v
    return total, terms
