"""Activation maximization: images that drive units of a model as hard as possible.

Three separate, composable pieces, in the spirit of lucid / lucent (Olah, Mordvintsev and
Schubert, "Feature Visualization", Distill 2017, https://distill.pub/2017/feature-visualization):

* **Parameterizations** (:mod:`.param`: :class:`PixelImage`, :class:`FourierImage`): learnable
  tensors that produce a batch of images in ``[0, 1]``.  The Fourier parameterization scales each
  spatial frequency by ``1 / f ** decay_power`` (so that optimisation works on a roughly whitened
  image) and both can *decorrelate colour*: the three learned channels are mapped to RGB through
  the square root of the colour-correlation matrix of natural images given by Olah et al. (2017).
* **Transforms** (:mod:`.transforms`: :func:`pad`, :func:`jitter`, :func:`random_scale`,
  :func:`random_rotate`, :func:`compose`): random, differentiable image transformations applied
  at every step ("transformation robustness"), drawn from a seeded generator.
* **Objectives** (:mod:`.objectives`: :func:`channel`, :func:`neuron`, :func:`layer`,
  :func:`direction`, :func:`diversity`): functions of recorded layer outputs that return one
  value per batch item; they compose with ``+``, ``-`` and scalar ``*``.
* **The render loop** (:mod:`.render`): :func:`maximize` runs the optimisation on the model's own
  device (there is no global device), deterministically for a given ``seed`` on the CPU, and
  returns the images together with the objective value each one reached.
  :func:`maximize_units` (:mod:`.units`) optimises many channels of one layer in one batch (one
  image per unit, one forward and backward pass per step), each until the peak of its map
  exceeds its threshold or the step budget is spent.

The package re-exports all of these, so ``from neuroprobe.visualize import maximize as am;
am.maximize(...)`` works as it did when this was one module.

Example::

    from neuroprobe.visualize import maximize as am
    obj = am.channel("encoder.block4", [3, 7, 12])            # one image per unit
    res = am.maximize(model, obj, size=128, steps=256, seed=0)
    res.images            # (3, 3, 128, 128) in [0, 1], on the CPU
    res.activations       # (3,) mean activation of each unit on its own image
"""
from __future__ import annotations

from .objectives import Objective, channel, direction, diversity, layer, neuron
from .param import (COLOR_CORRELATION_SVD_SQRT, FourierImage, PixelImage, _color_matrix, _to_rgb,
                    make_param)
from .render import MaxResult, maximize
from .transforms import (Transform, compose, jitter, pad, random_rotate, random_scale,
                         standard_transforms)
from .units import OBJECTIVES, maximize_units, redirected_relu, unit_values

__all__ = [
    "Objective", "channel", "neuron", "layer", "direction", "diversity",
    "PixelImage", "FourierImage", "make_param",
    "pad", "jitter", "random_scale", "random_rotate", "compose", "standard_transforms",
    "maximize", "maximize_units", "MaxResult", "COLOR_CORRELATION_SVD_SQRT",
    "OBJECTIVES", "redirected_relu", "unit_values",
]
