"""Attributions through Captum: which input pixels make a unit (or the model's output) respond.

neuroprobe wraps Captum (Kokhlikyan et al. 2020); it does not re-implement the methods:

* a **unit** (a channel of a layer, or one neuron = channel at one position):
  :func:`attribute_unit` with Captum's ``NeuronIntegratedGradients`` (Sundararajan et al. 2017,
  "Axiomatic Attribution for Deep Networks") or ``NeuronGradient``; :func:`attribute_units`
  attributes a different unit on each image in one batched Captum call;
* the **output** of a model: :func:`attribute_output` -- for a saliency model the target is the
  predicted saliency summed over a region (for example a concept mask), for a scene model or a
  classifier a class (default: the predicted one);
* a **Grad-CAM** map (Selvaraju et al. 2017) for a unit, a region or a class with Captum's
  ``LayerGradCam`` (:func:`gradcam`), upsampled to the image.

Everything runs on the model's device.  ``internal_batch_size`` is passed through to Captum: it
bounds how many of the ``n_steps * batch`` interpolated images of integrated gradients go through
the model at once (the memory knob).  :func:`overlay` draws a map over an image.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..hooks import Recorder, resolve_layers
from ..utils import model_device

__all__ = ["attribute_unit", "attribute_units", "attribute_output", "gradcam",
           "unit_function", "output_function", "completeness_delta", "attribution_map",
           "overlay", "METHODS"]

METHODS = ("integrated_gradients", "gradient")
_ALIASES = {"ig": "integrated_gradients", "integrated-gradients": "integrated_gradients",
            "integrated_gradients": "integrated_gradients", "grad": "gradient",
            "gradient": "gradient", "saliency": "gradient"}


def _method(name: str) -> str:
    if name not in _ALIASES:
        raise UserError(f"unknown attribution method {name!r}",
                        hint="use integrated_gradients (ig) or gradient")
    return _ALIASES[name]


def _prepare(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4:
        raise UserError(f"images must be (B, 3, H, W) tensors, got shape {tuple(images.shape)}")
    model.eval()
    return images.to(model_device(model), torch.float32)


def _baselines(images: torch.Tensor, baselines):
    if baselines is None:
        return torch.zeros_like(images)
    if isinstance(baselines, (int, float)):
        return torch.full_like(images, float(baselines))
    return torch.as_tensor(baselines, dtype=images.dtype, device=images.device).expand_as(images)


def _layer_module(model: nn.Module, layer: str) -> nn.Module:
    return next(iter(resolve_layers(model, [layer]).values()))


def _check_channel(model: nn.Module, layer: str, unit: int, images: torch.Tensor) -> None:
    with torch.no_grad(), Recorder(model, layer, stop=True, clone=False) as rec:
        model(images[:1])
    out = rec[layer]
    if not 0 <= int(unit) < out.shape[1]:
        raise UserError(f"unit {unit} is out of range for layer {layer!r} with "
                        f"{out.shape[1]} channels")


# -- forward functions ---------------------------------------------------------------------------

def _select(out: torch.Tensor, units: torch.Tensor, position) -> torch.Tensor:
    rows = torch.arange(out.shape[0], device=out.device)
    units = units.to(out.device)
    if units.numel() == 1 and out.shape[0] > 1:
        units = units.expand(out.shape[0])
    sel = out[rows, units]
    if position is None:
        return sel.reshape(out.shape[0], -1).mean(1)
    y, x = position
    return sel[:, int(y), int(x)]


def unit_function(model: nn.Module, layer: str, position: tuple[int, int] | None = None):
    """``f(images, units) -> (B,)``: the activation of unit ``units[i]`` of ``layer`` on image
    ``i`` (mean over positions, or at ``position = (y, x)``).  The forward pass stops after the
    layer.  ``units`` may be an int or a ``(B,)`` long tensor (Captum expands it along with the
    inputs when passed as ``additional_forward_args``)."""
    resolve_layers(model, [layer])

    def f(images: torch.Tensor, units) -> torch.Tensor:
        with Recorder(model, layer, detach=False, clone=False, stop=True) as rec:
            model(images)
        return _select(rec[layer], torch.as_tensor(units, dtype=torch.long).reshape(-1),
                       position)

    return f


def output_function(model: nn.Module, raw: bool = False):
    """``f(images, region) -> (B,)``: the model's output summed over ``region``.

    For a saliency model ``(B, 1, H, W)`` output the region is a mask broadcastable to it
    (``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)``; resized to the output with nearest
    neighbours when its size differs).  ``raw=True`` uses the un-normalised logits of a
    :class:`~neuroprobe.models.SaliencyModel` (``model(x, raw=True)``) instead of the min-max
    normalised prediction: the per-image min-max makes the function very curved along the
    integrated-gradients path (far more steps are needed for completeness), the logits are not.
    """
    def f(images: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        out = model(images, raw=True) if raw else model(images)
        if out.dim() != 4:
            raise UserError("a region target needs a model whose output is a map "
                            f"(B, 1, H, W); this one returns shape {tuple(out.shape)}",
                            hint="give a class index as target instead")
        mask = _mask_like(region, out)
        return (out * mask).flatten(1).sum(1)

    return f


def _mask_like(region: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    m = torch.as_tensor(region, dtype=out.dtype, device=out.device)
    while m.dim() < 4:
        m = m.unsqueeze(0) if m.dim() < 3 else m.unsqueeze(1)
    if m.shape[-2:] != out.shape[-2:]:
        m = torch.nn.functional.interpolate(m, size=out.shape[-2:], mode="nearest")
    return m


# -- unit attributions -----------------------------------------------------------------------------

def attribute_unit(model: nn.Module, layer: str, unit: int, images: torch.Tensor, *,
                   method: str = "integrated_gradients", position: tuple[int, int] | None = None,
                   baselines=None, n_steps: int = 50, internal_batch_size: int | None = None
                   ) -> torch.Tensor:
    """Attribute one unit's activation to the input pixels, through Captum.

    Parameters
    ----------
    model : nn.Module
        Takes images in [0, 1].
    layer : str
        Dotted layer name.
    unit : int
        Channel index.
    images : (B, 3, H, W) tensor in [0, 1]
    method : "integrated_gradients" (Captum ``NeuronIntegratedGradients``) or "gradient"
        (``NeuronGradient``).
    position : (y, x), optional
        A single neuron; default: the channel's mean over all positions.
    baselines : tensor or float, optional
        Integrated-gradients baseline (default: black image, 0).
    n_steps, internal_batch_size
        Passed to Captum (``internal_batch_size`` bounds memory).

    Returns
    -------
    (B, 3, H, W) tensor on the model's device, the same shape as ``images``.
    """
    from captum.attr import NeuronGradient, NeuronIntegratedGradients

    method = _method(method)
    x = _prepare(model, images)
    module = _layer_module(model, layer)
    _check_channel(model, layer, unit, x)
    if position is None:
        def selector(out):
            return out[:, int(unit)].reshape(out.shape[0], -1).mean(1)
    else:
        selector = (int(unit), int(position[0]), int(position[1]))
    if method == "gradient":
        return NeuronGradient(model, module).attribute(x, selector)
    return NeuronIntegratedGradients(model, module).attribute(
        x, selector, baselines=_baselines(x, baselines), n_steps=n_steps,
        internal_batch_size=internal_batch_size)


def attribute_units(model: nn.Module, layer: str, units: Sequence[int], images: torch.Tensor, *,
                    method: str = "integrated_gradients", baselines=None, n_steps: int = 50,
                    internal_batch_size: int | None = None, return_delta: bool = False):
    """Attribute unit ``units[i]`` on image ``i``, for all images in one batched Captum call
    (``IntegratedGradients`` or ``Saliency`` without absolute value on :func:`unit_function`).

    Returns ``(B, 3, H, W)`` attributions (and Captum's convergence deltas ``(B,)`` for
    integrated gradients with ``return_delta=True``).
    """
    from captum.attr import IntegratedGradients, Saliency

    method = _method(method)
    x = _prepare(model, images)
    idx = torch.as_tensor([int(u) for u in units], dtype=torch.long, device=x.device)
    if idx.numel() != x.shape[0]:
        raise UserError(f"{idx.numel()} units for {x.shape[0]} images: give one unit per image")
    for u in set(idx.tolist()):
        _check_channel(model, layer, u, x)
    f = unit_function(model, layer)
    if method == "gradient":
        attr = Saliency(f).attribute(x, abs=False, additional_forward_args=(idx,))
        return (attr, None) if return_delta else attr
    return IntegratedGradients(f).attribute(
        x, baselines=_baselines(x, baselines), additional_forward_args=(idx,), n_steps=n_steps,
        internal_batch_size=internal_batch_size, return_convergence_delta=return_delta)


# -- output attributions ---------------------------------------------------------------------------

def attribute_output(model: nn.Module, images: torch.Tensor, *, target=None, region=None,
                     raw: bool = False,
                     method: str = "integrated_gradients", baselines=None, n_steps: int = 50,
                     internal_batch_size: int | None = None, return_delta: bool = False):
    """Attribute a model's output to the input pixels, through Captum.

    * saliency model (output ``(B, 1, H, W)``): give ``region``, a mask; the target is the
      predicted saliency summed over the mask (the whole map when ``region`` is None; with
      ``raw=True`` the un-normalised saliency logits, see :func:`output_function`);
    * scene model / classifier (output ``(B, K)``): give ``target``, a class index or one per
      image (default: the predicted class).

    Returns ``(B, 3, H, W)`` attributions (plus convergence deltas with ``return_delta=True``
    and integrated gradients).
    """
    from captum.attr import IntegratedGradients, Saliency

    method = _method(method)
    x = _prepare(model, images)
    with torch.no_grad():
        out = model(x[:1])
    if out.dim() == 4:
        if target is not None:
            raise UserError("this model returns a map: give a region mask, not a class target")
        if region is None:
            region = torch.ones(out.shape[-2:])
        region = _mask_like(region, out.expand(x.shape[0], *out.shape[1:])).expand(
            x.shape[0], *out.shape[1:]).contiguous()
        f, extra, tgt = output_function(model, raw), (region,), None
    else:
        if region is not None:
            raise UserError("a region target needs a saliency model (map output); this model "
                            "returns class scores", hint="give target=<class index>")
        if target is None:
            with torch.no_grad():
                target = model(x).argmax(1)
        tgt = _class_target(target, x.shape[0], out.shape[1], x.device)
        f, extra = model, None
    if method == "gradient":
        attr = Saliency(f).attribute(x, target=tgt, abs=False, additional_forward_args=extra)
        return (attr, None) if return_delta else attr
    return IntegratedGradients(f).attribute(
        x, baselines=_baselines(x, baselines), target=tgt, additional_forward_args=extra,
        n_steps=n_steps, internal_batch_size=internal_batch_size,
        return_convergence_delta=return_delta)


def _class_target(target, batch: int, classes: int, device):
    t = torch.as_tensor(target, dtype=torch.long, device=device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise UserError(f"{t.numel()} class targets for {batch} images")
    if int(t.min()) < 0 or int(t.max()) >= classes:
        raise UserError(f"class target {int(t.max())} is out of range: the model has "
                        f"{classes} classes")
    return t


# -- Grad-CAM ----------------------------------------------------------------------------------------

def gradcam(model: nn.Module, layer: str, images: torch.Tensor, *, unit: int | Sequence[int] |
            None = None, unit_layer: str | None = None, target=None, region=None,
            raw: bool = False, upsample: bool = True) -> torch.Tensor:
    """A Grad-CAM map (Selvaraju et al. 2017) at ``layer`` through Captum's ``LayerGradCam``.

    The explained quantity is, in this order of precedence: unit ``unit`` of ``unit_layer``
    (default: ``layer`` itself; its mean activation; one unit per image allowed), the saliency
    summed over ``region`` (saliency models), or class ``target`` (default: the predicted class).
    At the unit's own layer the map reduces to the unit's rectified activation map divided by the
    number of positions, a useful sanity check.

    Returns ``(B, 1, H, W)`` maps (``upsample=True``, bilinear to the image size) or the layer's
    resolution.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    x = _prepare(model, images)
    module = _layer_module(model, layer)
    tgt = None
    if unit is not None:
        ulayer = unit_layer or layer
        units = torch.as_tensor(unit, dtype=torch.long, device=x.device).reshape(-1)
        if units.numel() == 1:
            units = units.expand(x.shape[0])
        for u in set(units.tolist()):
            _check_channel(model, ulayer, u, x)
        f, extra = unit_function(model, ulayer), (units.contiguous(),)
    else:
        with torch.no_grad():
            out = model(x)
        if out.dim() == 4:
            region = torch.ones(out.shape[-2:]) if region is None else region
            mask = _mask_like(region, out).expand_as(out).contiguous()
            f, extra = output_function(model, raw), (mask,)
        else:
            tgt = _class_target(out.argmax(1) if target is None else target, x.shape[0],
                                out.shape[1], x.device)
            f, extra = model, None
    cam = LayerGradCam(f, module).attribute(x, target=tgt, additional_forward_args=extra,
                                            relu_attributions=True)
    if upsample:
        cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return cam


# -- checks and display -------------------------------------------------------------------------------

def completeness_delta(f, attributions: torch.Tensor, images: torch.Tensor, baselines=None,
                       *args) -> torch.Tensor:
    """``sum(attributions) - (f(images) - f(baselines))`` per image: integrated gradients'
    completeness axiom says this is 0 up to the integral's discretisation error."""
    x = images.to(attributions.device)
    b = _baselines(x, baselines)
    with torch.no_grad():
        diff = f(x, *args) - f(b, *args)
    return attributions.flatten(1).sum(1) - diff


def attribution_map(attributions: torch.Tensor, signed: bool = False) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, H, W)``: sum over colour channels (absolute value unless
    ``signed``)."""
    a = attributions.detach()
    if a.dim() == 3:
        a = a[None]
    a = a.sum(1)
    return a if signed else a.abs()


def overlay(image, heat, *, alpha: float = 0.55, cmap: str = "inferno",
            percentile: float = 99.0) -> np.ndarray:
    """Draw a heat map over an image.

    Parameters
    ----------
    image : (3, H, W) tensor / array in [0, 1] or (H, W, 3) array
    heat : (H, W) or (1, H, W) map (e.g. :func:`attribution_map` or a Grad-CAM map); resized to
        the image when needed; scaled so that its ``percentile`` maps to 1.
    Returns
    -------
    (H, W, 3) uint8 array.
    """
    import matplotlib

    img = _hwc(image)
    h = torch.as_tensor(np.asarray(heat, dtype=np.float32) if not torch.is_tensor(heat)
                        else heat.detach().float().cpu())
    while h.dim() > 2:
        h = h[0]
    if tuple(h.shape) != img.shape[:2]:
        h = torch.nn.functional.interpolate(h[None, None], size=img.shape[:2], mode="bilinear",
                                            align_corners=False)[0, 0]
    h = h.abs().numpy()
    top = np.percentile(h, percentile) if h.size else 0.0
    h = np.clip(h / top, 0, 1) if top > 0 else np.zeros_like(h)
    colours = matplotlib.colormaps[cmap](h)[..., :3]
    weight = alpha * h[..., None]
    out = img * (1 - weight) + colours * weight
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def _hwc(image) -> np.ndarray:
    a = image.detach().float().cpu().numpy() if torch.is_tensor(image) else np.asarray(
        image, dtype=np.float32)
    if a.ndim == 4:
        a = a[0]
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.max() > 1.0 + 1e-6:
        a = a / 255.0
    return np.clip(a, 0, 1)
