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

Methods (``method=``; :data:`METHODS`), each Captum's own implementation:

* ``integrated_gradients`` (``ig``) -- Sundararajan et al. 2017;
* ``gradient`` -- the plain (signed) input gradient, Simonyan et al. 2014;
* ``input_x_gradient`` -- Captum's ``InputXGradient``: the input times its gradient
  (Shrikumar et al. 2016, "Not Just a Black Box"), which is integrated gradients from a zero
  baseline with a single right-Riemann step: the cheap signed method for galleries of hundreds
  of units on a CPU (one backward pass per unit, against ``n_steps`` for integrated gradients);
* ``smoothgrad`` -- ``NoiseTunnel`` over the gradient, averaged over noisy copies of the image
  (Smilkov et al. 2017, noise 15 % of the image's value range by default);
* ``occlusion`` -- ``Occlusion``: the drop of the target when a square patch is replaced by the
  baseline (Zeiler & Fergus 2014);
* ``gradient_shap`` -- ``GradientShap``: expected gradients over random baselines
  (Lundberg & Lee 2017);
* ``guided_gradcam`` -- ``GuidedGradCam``: guided backpropagation times Grad-CAM
  (Selvaraju et al. 2017); for a unit the CAM is taken at the unit's own layer.

All of them give signed maps except Grad-CAM (rectified): :func:`is_signed` says which, and
:func:`overlay` draws signed maps with a diverging colour map and magnitudes with a sequential
one over a greyed image.  Layers may be given by dotted name or as the module object.  Every
function runs the model in eval mode and puts back the train/eval mode of each sub-module
afterwards.

Everything runs on the model's device.  ``internal_batch_size`` is passed through to Captum: it
bounds how many of the ``n_steps * batch`` interpolated images of integrated gradients go through
the model at once (the memory knob).  :func:`overlay` draws a map over an image.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Sequence, Union

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..hooks import Recorder, resolve_layers
from ..figures import wrap_to_figure
from ..utils import model_device

__all__ = ["attribute_unit", "attribute_units", "attribute_output", "gradcam",
           "unit_function", "output_function", "completeness_delta", "attribution_map",
           "overlay", "colorbar_strip", "canonical_method", "is_signed", "method_label",
           "eval_mode", "METHODS",
           "CMAP_SIGNED", "CMAP_MAGNITUDE", "greyed", "figure"]

Layer = Union[str, nn.Module]

METHODS = ("integrated_gradients", "gradient", "input_x_gradient", "smoothgrad", "occlusion",
           "gradient_shap", "guided_gradcam")
_ALIASES = {"ig": "integrated_gradients", "integrated-gradients": "integrated_gradients",
            "integrated_gradients": "integrated_gradients", "grad": "gradient",
            "gradient": "gradient", "saliency": "gradient", "smoothgrad": "smoothgrad",
            "smooth-grad": "smoothgrad", "noise_tunnel": "smoothgrad", "occlusion": "occlusion",
            "gradient_shap": "gradient_shap", "gradientshap": "gradient_shap",
            "gradient-shap": "gradient_shap", "shap": "gradient_shap",
            "guided_gradcam": "guided_gradcam", "guided-gradcam": "guided_gradcam",
            "guided_grad_cam": "guided_gradcam", "input_x_gradient": "input_x_gradient",
            "input-x-gradient": "input_x_gradient", "inputxgradient": "input_x_gradient",
            "ixg": "input_x_gradient"}
_LABELS = {"integrated_gradients": "integrated gradients", "gradient": "gradient",
           "input_x_gradient": "input x gradient",
           "smoothgrad": "SmoothGrad", "occlusion": "occlusion", "gradient_shap": "GradientSHAP",
           "guided_gradcam": "guided Grad-CAM", "gradcam": "Grad-CAM"}
_SHORT = {"integrated_gradients": "IG", "gradient": "gradient", "input_x_gradient": "in x grad",
          "smoothgrad": "SmoothGrad", "occlusion": "occlusion", "gradient_shap": "GradSHAP", "guided_gradcam": "guided GC",
          "gradcam": "Grad-CAM"}

#: colour map of signed attributions (blue negative, white zero, red positive)
CMAP_SIGNED = "RdBu_r"
#: colour map of magnitudes (Grad-CAM, absolute values): dark blue = 0, yellow = largest
CMAP_MAGNITUDE = "plasma"


def _method(name: str) -> str:
    if name not in _ALIASES:
        raise UserError(f"unknown attribution method {name!r}",
                        hint="use one of " + ", ".join(METHODS) + " (ig for short)")
    return _ALIASES[name]


def canonical_method(name: str) -> str:
    """The canonical name of a method or alias (``"ig"`` -> ``"integrated_gradients"``);
    one clear error for an unknown one."""
    return _method(name)


def is_signed(method: str) -> bool:
    """Whether ``method`` gives signed maps (everything but Grad-CAM, which is rectified)."""
    return method != "gradcam" and _method(method) is not None


def method_label(method: str, short: bool = False) -> str:
    """A human name of a method (``"integrated gradients"``, ``"Grad-CAM"``; ``short=True``:
    at most 10 characters, ``"IG"``, for captions under small tiles)."""
    key = "gradcam" if method == "gradcam" else _method(method)
    return (_SHORT if short else _LABELS)[key]


@contextmanager
def eval_mode(model: nn.Module):
    """Run ``model`` in eval mode inside the block and give every sub-module its own
    ``training`` flag back afterwards (also when the block raises)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _prepare(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4:
        raise UserError(f"images must be (B, 3, H, W) tensors, got shape {tuple(images.shape)}")
    return images.to(model_device(model), torch.float32)


def _baselines(images: torch.Tensor, baselines):
    if baselines is None:
        return torch.zeros_like(images)
    if isinstance(baselines, (int, float)):
        return torch.full_like(images, float(baselines))
    return torch.as_tensor(baselines, dtype=images.dtype, device=images.device).expand_as(images)


def _layer_module(model: nn.Module, layer: Layer) -> nn.Module:
    return next(iter(resolve_layers(model, [layer]).values()))


def _layer_name(model: nn.Module, layer: Layer) -> str:
    """The dotted name of a layer given by name or as a module object."""
    return next(iter(resolve_layers(model, [layer])))


def _check_channel(model: nn.Module, layer: str, unit: int | Sequence[int],
                   images: torch.Tensor) -> None:
    """Refuse a unit (or any of several units) outside ``layer``'s channels (one forward pass
    of one image, stopped after the layer)."""
    units = [int(u) for u in unit] if isinstance(unit, (list, tuple)) else [int(unit)]
    with torch.no_grad(), Recorder(model, layer, stop=True, clone=False) as rec:
        model(images[:1])
    out = rec[layer]
    bad = [u for u in units if not 0 <= u < out.shape[1]]
    if bad:
        raise UserError(f"unit {bad[0]} is out of range for layer {layer!r} with "
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


def unit_function(model: nn.Module, layer: Layer, position: tuple[int, int] | None = None):
    """``f(images, units) -> (B,)``: the activation of unit ``units[i]`` of ``layer`` on image
    ``i`` (mean over positions, or at ``position = (y, x)``).  The forward pass stops after the
    layer.  ``units`` may be an int or a ``(B,)`` long tensor (Captum expands it along with the
    inputs when passed as ``additional_forward_args``).  ``layer``: dotted name or module."""
    name = _layer_name(model, layer)

    def f(images: torch.Tensor, units) -> torch.Tensor:
        with Recorder(model, name, detach=False, clone=False, stop=True) as rec:
            model(images)
        return _select(rec[name], torch.as_tensor(units, dtype=torch.long).reshape(-1),
                       position)

    return f


class _Forward(nn.Module):
    """A forward function as a module holding ``model`` (Captum's guided backpropagation
    looks for the ReLU modules of the module it is given)."""

    def __init__(self, model: nn.Module, f):
        super().__init__()
        self.model = model
        self._f = f

    def forward(self, x, *args):
        return self._f(x, *args)


@contextmanager
def _no_inplace_relu(model: nn.Module):
    """Guided backpropagation hooks every ReLU; in-place ones cannot carry such hooks, so they
    run out of place inside the block (the same numbers) and are put back afterwards."""
    changed = [m for m in model.modules() if isinstance(m, nn.ReLU) and m.inplace]
    for m in changed:
        m.inplace = False
    try:
        yield
    finally:
        for m in changed:
            m.inplace = True


@contextmanager
def _seeded(x: torch.Tensor, seed: int):
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def _shap_baselines(x: torch.Tensor, baselines, count: int, seed: int) -> torch.Tensor:
    if baselines is not None:
        b = _baselines(x, baselines) if not torch.is_tensor(baselines) or \
            baselines.dim() < 4 else baselines.to(x.device, x.dtype)
        return b
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.rand((max(0, count - 1), *x.shape[1:]), generator=g)
    return torch.cat([torch.zeros(1, *x.shape[1:]), noise]).to(x.device, x.dtype)


def _run_method(method: str, f, x: torch.Tensor, *, target=None, extra=None, baselines=None,
                n_steps: int = 50, internal_batch_size: int | None = None,
                return_delta: bool = False, options: dict | None = None, guided=None):
    """One Captum method on forward function ``f`` (see the module docstring).  ``guided`` is
    ``(module, layer_module)`` for guided Grad-CAM.  Returns attributions, or
    ``(attributions, deltas)`` with ``return_delta`` (deltas None where the method has none)."""
    from captum.attr import (GradientShap, GuidedGradCam, InputXGradient, IntegratedGradients,
                             NoiseTunnel, Occlusion, Saliency)

    opts = dict(options or {})
    seed = int(opts.get("seed", 0))
    delta = None
    if method in ("gradient", "input_x_gradient", "guided_gradcam"):
        x = x.detach().requires_grad_(True)     # (Captum warns when it has to set the flag)
    if method == "integrated_gradients":
        return IntegratedGradients(f).attribute(
            x, baselines=_baselines(x, baselines), target=target, additional_forward_args=extra,
            n_steps=n_steps, internal_batch_size=internal_batch_size,
            return_convergence_delta=return_delta)
    if method == "gradient":
        attr = Saliency(f).attribute(x, target=target, abs=False, additional_forward_args=extra)
    elif method == "input_x_gradient":
        attr = InputXGradient(f).attribute(x, target=target, additional_forward_args=extra)
    elif method == "smoothgrad":
        spread = float(x.max() - x.min()) or 1.0
        with _seeded(x, seed):
            attr = NoiseTunnel(Saliency(f)).attribute(
                x, nt_type="smoothgrad", nt_samples=int(opts.get("samples", 16)),
                nt_samples_batch_size=internal_batch_size,
                stdevs=float(opts.get("noise", 0.15)) * spread, target=target, abs=False,
                additional_forward_args=extra)
    elif method == "occlusion":
        win = int(opts.get("window") or max(1, min(x.shape[-2:]) // 4))
        stride = int(opts.get("stride") or max(1, win // 2))
        per_eval = max(1, (internal_batch_size or 16) // max(1, x.shape[0]))
        attr = Occlusion(f).attribute(
            x, sliding_window_shapes=(x.shape[1], win, win), strides=(x.shape[1], stride, stride),
            baselines=_baselines(x, baselines), target=target, additional_forward_args=extra,
            perturbations_per_eval=per_eval)
    elif method == "gradient_shap":
        b = _shap_baselines(x, baselines, int(opts.get("baselines", 8)), seed)
        with _seeded(x, seed):
            out = GradientShap(f).attribute(
                x, baselines=b, n_samples=int(opts.get("samples", 16)),
                stdevs=float(opts.get("stdevs", 0.0)), target=target,
                additional_forward_args=extra, return_convergence_delta=return_delta)
        attr, delta = out if return_delta else (out, None)
    elif method == "guided_gradcam":
        module, layer_module = guided
        with _no_inplace_relu(module), warnings.catch_warnings():
            # Captum announces the ReLU hooks it sets and removes again; nothing to act on
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
            attr = GuidedGradCam(module, layer_module).attribute(
                x, target=target, additional_forward_args=extra, interpolate_mode="bilinear")
    else:  # pragma: no cover - _method() guards
        raise UserError(f"unknown attribution method {method!r}")
    return (attr, delta) if return_delta else attr


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

def attribute_unit(model: nn.Module, layer: Layer, unit: int, images: torch.Tensor, *,
                   method: str = "integrated_gradients", position: tuple[int, int] | None = None,
                   baselines=None, n_steps: int = 50, internal_batch_size: int | None = None,
                   options: dict | None = None) -> torch.Tensor:
    """Attribute one unit's activation to the input pixels, through Captum.

    Parameters
    ----------
    model : nn.Module
        Takes images in [0, 1].  Run in eval mode; its train/eval modes are put back.
    layer : str or nn.Module
        Dotted layer name or the layer's module object.
    unit : int
        Channel index.
    images : (B, 3, H, W) tensor in [0, 1]
    method : one of :data:`METHODS` (``integrated_gradients`` uses Captum's
        ``NeuronIntegratedGradients``, ``gradient`` ``NeuronGradient``; the others run on
        :func:`unit_function`).
    position : (y, x), optional
        A single neuron; default: the channel's mean over all positions.
    baselines : tensor or float, optional
        Baseline of integrated gradients and occlusion (default: black image, 0); for
        gradient SHAP a batch of baselines to draw from (default: black plus 7 uniform-noise
        images, seeded).
    n_steps, internal_batch_size
        Passed to Captum (``internal_batch_size`` bounds memory).
    options : dict, optional
        Method settings: ``samples`` (SmoothGrad / SHAP samples, 16), ``noise`` (SmoothGrad
        noise as a fraction of the image's value range, 0.15), ``window`` / ``stride``
        (occlusion patch, default a quarter of the image edge and half of that: 7 x 7
        positions, 49 forward passes per image), ``seed`` (0).

    Returns
    -------
    (B, 3, H, W) tensor on the model's device, the same shape as ``images``.
    """
    from captum.attr import NeuronGradient, NeuronIntegratedGradients

    method = _method(method)
    with eval_mode(model):
        x = _prepare(model, images)
        name = _layer_name(model, layer)
        module = _layer_module(model, name)
        _check_channel(model, name, unit, x)
        if method not in ("integrated_gradients", "gradient"):
            f = unit_function(model, name, position)
            units = torch.full((x.shape[0],), int(unit), dtype=torch.long, device=x.device)
            return _run_method(method, f, x, extra=(units,), baselines=baselines,
                               n_steps=n_steps, internal_batch_size=internal_batch_size,
                               options=options, guided=(_Forward(model, f), module))
        if position is None:
            def selector(out):
                return out[:, int(unit)].reshape(out.shape[0], -1).mean(1)
        else:
            selector = (int(unit), int(position[0]), int(position[1]))
        if method == "gradient":
            return NeuronGradient(model, module).attribute(x.detach().requires_grad_(True),
                                                           selector)
        return NeuronIntegratedGradients(model, module).attribute(
            x, selector, baselines=_baselines(x, baselines), n_steps=n_steps,
            internal_batch_size=internal_batch_size)


def attribute_units(model: nn.Module, layer: Layer, units: Sequence[int], images: torch.Tensor,
                    *, method: str = "integrated_gradients", baselines=None, n_steps: int = 50,
                    internal_batch_size: int | None = None, return_delta: bool = False,
                    options: dict | None = None):
    """Attribute unit ``units[i]`` on image ``i``, for all images in one batched Captum call
    on :func:`unit_function` (any of :data:`METHODS`; ``gradient`` is Captum's ``Saliency``
    without absolute value; guided Grad-CAM takes the CAM at ``layer``).

    Returns ``(B, 3, H, W)`` attributions (and Captum's convergence deltas ``(B,)`` for
    integrated gradients and gradient SHAP with ``return_delta=True``, None otherwise).
    """
    method = _method(method)
    with eval_mode(model):
        x = _prepare(model, images)
        name = _layer_name(model, layer)
        idx = torch.as_tensor([int(u) for u in units], dtype=torch.long, device=x.device)
        if idx.numel() != x.shape[0]:
            raise UserError(f"{idx.numel()} units for {x.shape[0]} images: give one unit per "
                            "image")
        _check_channel(model, name, sorted(set(idx.tolist())), x)
        f = unit_function(model, name)
        return _run_method(method, f, x, extra=(idx,), baselines=baselines, n_steps=n_steps,
                           internal_batch_size=internal_batch_size, return_delta=return_delta,
                           options=options,
                           guided=(_Forward(model, f), _layer_module(model, name)))


# -- output attributions ---------------------------------------------------------------------------

def _last_conv(model: nn.Module) -> nn.Module:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UserError("guided Grad-CAM needs a convolutional layer and this model has none",
                        hint="give layer=<a layer with a spatial output>")
    return convs[-1]


def attribute_output(model: nn.Module, images: torch.Tensor, *, target=None, region=None,
                     raw: bool = False,
                     method: str = "integrated_gradients", baselines=None, n_steps: int = 50,
                     internal_batch_size: int | None = None, return_delta: bool = False,
                     layer: Layer | None = None, options: dict | None = None):
    """Attribute a model's output to the input pixels, through Captum.

    * saliency model (output ``(B, 1, H, W)``): give ``region``, a mask; the target is the
      predicted saliency summed over the mask (the whole map when ``region`` is None; with
      ``raw=True`` the un-normalised saliency logits, see :func:`output_function`);
    * scene model / classifier (output ``(B, K)``): give ``target``, a class index or one per
      image (default: the predicted class).

    ``method``: any of :data:`METHODS` (``options`` as in :func:`attribute_unit`); guided
    Grad-CAM takes its CAM at ``layer`` (name or module; default the last ``Conv2d``).

    Returns ``(B, 3, H, W)`` attributions (plus convergence deltas with ``return_delta=True``
    for integrated gradients and gradient SHAP, None for the others).
    """
    method = _method(method)
    with eval_mode(model):
        x = _prepare(model, images)
        with torch.no_grad():
            out = model(x[:1])
        if out.dim() == 4:
            if target is not None:
                raise UserError("this model returns a map: give a region mask, not a class "
                                "target")
            if region is None:
                region = torch.ones(out.shape[-2:])
            region = _mask_like(region, out.expand(x.shape[0], *out.shape[1:])).expand(
                x.shape[0], *out.shape[1:]).contiguous()
            f, extra, tgt = output_function(model, raw), (region,), None
            module = _Forward(model, f)
        else:
            if region is not None:
                raise UserError("a region target needs a saliency model (map output); this "
                                "model returns class scores", hint="give target=<class index>")
            if target is None:
                with torch.no_grad():
                    target = model(x).argmax(1)
            tgt = _class_target(target, x.shape[0], out.shape[1], x.device)
            f, extra, module = model, None, model
        cam_layer = None
        if method == "guided_gradcam":
            cam_layer = _layer_module(model, layer) if layer is not None else _last_conv(model)
        return _run_method(method, f, x, target=tgt, extra=extra, baselines=baselines,
                           n_steps=n_steps, internal_batch_size=internal_batch_size,
                           return_delta=return_delta, options=options,
                           guided=(module, cam_layer))


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

def gradcam(model: nn.Module, layer: Layer, images: torch.Tensor, *, unit: int | Sequence[int] |
            None = None, unit_layer: Layer | None = None, target=None, region=None,
            raw: bool = False, upsample: bool = True) -> torch.Tensor:
    """A Grad-CAM map (Selvaraju et al. 2017) at ``layer`` through Captum's ``LayerGradCam``.

    The explained quantity is, in this order of precedence: unit ``unit`` of ``unit_layer``
    (default: ``layer`` itself; its mean activation; one unit per image allowed), the saliency
    summed over ``region`` (saliency models), or class ``target`` (default: the predicted class).
    At the unit's own layer the map reduces to the unit's rectified activation map divided by the
    number of positions, a useful sanity check.

    ``layer`` and ``unit_layer``: dotted names or module objects.  The model runs in eval mode
    and gets its train/eval modes back.

    Returns ``(B, 1, H, W)`` maps (``upsample=True``, bilinear to the image size) or the layer's
    resolution.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    with eval_mode(model):
        x = _prepare(model, images)
        module = _layer_module(model, layer)
        tgt = None
        if unit is not None:
            ulayer = _layer_name(model, unit_layer if unit_layer is not None else layer)
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
            cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]),
                                               interpolate_mode="bilinear")
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


def _heat(heat, shape) -> np.ndarray:
    h = torch.as_tensor(np.asarray(heat, dtype=np.float32) if not torch.is_tensor(heat)
                        else heat.detach().float().cpu())
    while h.dim() > 2:
        h = h[0]
    if tuple(h.shape) != tuple(shape):
        h = torch.nn.functional.interpolate(h[None, None], size=tuple(shape), mode="bilinear",
                                            align_corners=False)[0, 0]
    return h.numpy()


def greyed(image) -> np.ndarray:
    """``(H, W, 3)`` float image in [0.3, 0.8]: the image's luminance (Rec. 601 weights) with
    its contrast halved, a quiet background for a colour heat map."""
    img = _hwc(image)
    lum = img @ np.array([0.299, 0.587, 0.114])
    return np.repeat((0.3 + 0.5 * lum)[..., None], 3, axis=-1)


def overlay(image, heat, *, signed: bool | None = None, alpha: float = 0.85,
            cmap: str | None = None, percentile: float = 99.0, gamma: float = 0.6,
            smooth: float = 0.0) -> np.ndarray:
    """Draw a heat map in colour over a greyed copy of an image.

    Signed maps use the diverging :data:`CMAP_SIGNED` (blue negative, red positive, symmetric
    about 0), magnitudes the sequential :data:`CMAP_MAGNITUDE`.  Values are scaled by the
    ``percentile`` of ``|heat|`` (as Captum's visualisation does, so one outlier pixel cannot
    wash the map out) and each pixel's colour is blended in with weight
    ``alpha * |h| ** gamma``: where the map is 0 the grey image shows.

    Parameters
    ----------
    image : (3, H, W) tensor / array in [0, 1] or (H, W, 3) array
    heat : (H, W) or (1, H, W) map (e.g. :func:`attribution_map` or a Grad-CAM map); resized to
        the image when needed.
    signed : draw signs (default: whether the map has negative values).
    cmap : override the colour map.
    smooth : Gaussian blur of the map (sigma in image pixels) before drawing; pixel-level
        gradient maps of strided networks are checkerboards that read as a faint grid at tile
        size, a blur of 1-2 % of the image shows the regions (signs of neighbours net out).

    Returns
    -------
    (H, W, 3) uint8 array.
    """
    import matplotlib

    img = _hwc(image)
    h = _heat(heat, img.shape[:2])
    if signed is None:
        signed = bool((h < 0).any())
    if not signed:
        h = np.abs(h)
    if smooth > 0:
        from scipy import ndimage

        h = ndimage.gaussian_filter(h.astype(np.float64), sigma=float(smooth), mode="nearest")
    top = np.percentile(np.abs(h), percentile) if h.size else 0.0
    h = np.clip(h / top, -1, 1) if top > 0 else np.zeros_like(h)
    colours = matplotlib.colormaps[cmap or (CMAP_SIGNED if signed else CMAP_MAGNITUDE)](
        (h + 1) / 2 if signed else h)[..., :3]
    weight = alpha * np.abs(h)[..., None] ** gamma
    out = greyed(img) * (1 - weight) + colours * weight
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def colorbar_strip(width: int, height: int, signed: bool, cmap: str | None = None) -> np.ndarray:
    """A horizontal colour bar of :func:`overlay`'s colours, ``(height, width, 3)`` uint8:
    -max .. 0 .. +max for signed maps, 0 .. max for magnitudes."""
    import matplotlib

    t = np.linspace(0.0, 1.0, max(2, int(width)))
    rgb = matplotlib.colormaps[cmap or (CMAP_SIGNED if signed else CMAP_MAGNITUDE)](t)[:, :3]
    return (np.repeat(rgb[None], max(1, int(height)), axis=0) * 255 + 0.5).astype(np.uint8)


def figure(image, heat, *, signed: bool, title: str = "", method: str = "",
           percentile: float = 99.0, smooth: float = 0.0):
    """A matplotlib figure of an attribution: :func:`overlay` (the map in colour over the
    greyed image) with a colour bar in the map's own units, ``title`` above and the method and
    colour map stated below.  The caller saves it (no pyplot state is touched).

    Captum's ``visualize_image_attr(method="blended_heat_map")`` lays its colour map over the
    image at one opacity, so pixels with no attribution are veiled in the map's middle colour
    (white for a diverging map); :func:`overlay` fades the colour out towards 0 instead.
    ``smooth``: Gaussian blur of the map in pixels, as in :func:`overlay`.
    """
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    img = _hwc(image)
    h = _heat(heat, img.shape[:2]).astype(np.float64)
    if smooth > 0:
        from scipy import ndimage

        h = ndimage.gaussian_filter(h, sigma=float(smooth), mode="nearest")
    if not signed:
        h = np.abs(h)
    top = float(np.percentile(np.abs(h), percentile)) if h.size else 0.0
    top = top if top > 0 else 1.0
    cmap = CMAP_SIGNED if signed else CMAP_MAGNITUDE
    fig = Figure(figsize=(4.4, 4.6), dpi=110, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(overlay(img, h, signed=signed, percentile=percentile))
    ax.set_axis_off()
    ax.set_title(wrap_to_figure(fig, title, 9), fontsize=9)
    norm = Normalize(-top, top) if signed else Normalize(0.0, top)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=matplotlib.colormaps[cmap]), ax=ax,
                       orientation="horizontal", fraction=0.06, pad=0.03, extend="both"
                       if signed else "max")
    bar.ax.tick_params(labelsize=7)
    bar.ax.xaxis.set_major_locator(MaxNLocator(5))
    bar.ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
    what = "blue negative, red positive" if signed else "magnitude"
    bar.set_label(f"{method + ' ' if method else ''}attribution: {what}\ncolour map {cmap}"
                  + (f", blurred (sigma {smooth:.3g} px)" if smooth > 0 else ""), fontsize=8)
    return fig


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
