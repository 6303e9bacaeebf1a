"""Compiled loops (Numba) for the passes of the saliency metrics over every pixel of a map.

Why (issue 20): scoring one 800x600 image in both protocols makes a few dozen passes over its
480,000 pixels; done with numpy one operation at a time over blocks, each pass is fast but a
chain of them costs a call, a temporary and a Python round trip per block and operation.  Two
chains are replaced here by one loop each:

* :func:`bucket_gather`: AUC-Judd's histogram of the map's bit patterns and the gathering of
  the pixels in the flagged buckets (:func:`neuroprobe.saliency._ranks.partial_sort`), which
  numpy does in five passes and a boolean gather.  Counts are integers and the gathered
  values are the map's own, so the results are identical to the numpy path;
* :func:`share_block`: the sums of the shared pass of CC, KL and SIM over one block
  (:func:`neuroprobe.saliency._fused.map_sums`): every product, minimum and square of a pixel
  in one visit.  The logarithms stay numpy's (its vectorised ``log`` is about six times
  faster than the scalar one a compiled loop calls), computed between the two kernels on
  block-sized rows (:func:`log_args` writes their arguments).

fastmath is off: no reassociation and no fused multiply-add, so every element-wise operation
is rounded exactly as numpy rounds it; only the order of the sums differs from numpy's (eight
running partial sums per reduction, combined at the end: rounding differences of about 1e-16
of the result).

Numba is imported on first use; where it is missing, :func:`compiled` is None and the callers
run their numpy code.
"""
from __future__ import annotations

import functools

__all__ = ["compiled"]


@functools.lru_cache(maxsize=1)
def compiled():
    """The module of compiled kernels (:mod:`~neuroprobe.saliency._kernels_numba`), or None
    where Numba cannot be imported."""
    try:
        from . import _kernels_numba
    except Exception:  # not installed, or built for another NumPy: the numpy code runs
        return None
    return _kernels_numba
