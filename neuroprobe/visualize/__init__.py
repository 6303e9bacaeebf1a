"""Seeing units: activation maximization, Captum attributions, per-unit galleries, HTML report.

* :mod:`neuroprobe.visualize.maximize` -- parameterizations, transforms and objectives for
  activation maximization (Olah et al. 2017), composable like lucent's.
* :mod:`neuroprobe.visualize.attribute` -- unit / output attributions through Captum and overlays.
* :mod:`neuroprobe.visualize.gallery` -- one PNG per unit from a dissection run.
* :mod:`neuroprobe.visualize.report` -- the static, self-contained HTML report of a run.

Submodules import torch lazily where they can; import them directly.
"""
__all__ = ["maximize", "attribute", "gallery", "report"]
