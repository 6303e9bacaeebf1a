"""Compiled loops (Numba) for the passes of the saliency metrics over every pixel of a map.

Why (issue 20): scoring one 800x600 image in both protocols makes a few dozen passes over its
480,000 pixels; done with numpy one operation at a time over blocks, each pass is fast but a
chain of them costs a call, a temporary and a Python round trip per block and operation, and
some steps (a histogram, a sort of negatives) do more work than the metric needs.  The
kernels, in :mod:`~neuroprobe.saliency._kernels_numba`:

* ``bucket_gather``: AUC-Judd's histogram of the map's bit patterns and the gathering of the
  pixels in the flagged buckets (:func:`~neuroprobe.saliency._ranks.partial_sort`), one loop
  instead of five numpy passes and a boolean gather (0.9 against 2.5 ms per 800x600 map);
* ``log_args`` and ``share_block``: the sums of the shared pass of CC, KL and SIM
  (:func:`~neuroprobe.saliency._fused.map_sums`), each term one vectorised loop over a block
  in cache.  The logarithms stay numpy's (its vectorised ``log`` is about six times faster than
  the scalar one a compiled loop calls), taken between the two kernels on block-sized rows,
  and NSS's sum of squares stays numpy's (a BLAS dot, whose order of summation is not
  reproduced);
* ``rank_table`` and ``rank_sums``: the exact sAUC and AUC-Borji count, for each negative, the
  positives above and equal to it from a bucket table of the positives
  (:class:`~neuroprobe.saliency._ranks.RankTable`) instead of sorting the negatives;
* ``split_counts``: the mit sAUC's per-split selection of the ``m`` negatives with the
  smallest random keys and their counts at the ROC thresholds;
* ``clip_sum``: clipping the mit blur at 0 with its sum and minimum, the sums being numpy's
  pairwise sums reproduced (``pairwise_sum``).

Every count is an integer and every selected value the map's own, so AUC-Judd, AUC-Borji, sAUC,
NSS and IG are the numbers of the numpy code to the bit (``benchmarks/ab_saliency.py`` checks
it against a git ref).  fastmath is off: no reassociation and no fused multiply-add, so each
element-wise operation is rounded as numpy rounds it; only the order of the shared pass's sums
differs (64 interleaved partial sums per term, combined pairwise), which moves CC, KL and SIM by
about 1e-14 at most.

Numba is imported on first use (about 0.15 s, and 0.15-0.3 s more for its first call in a
process; the compiled code is cached on disk next to the module, compiled once, about 6 s);
where it is missing, :func:`compiled` is None and the callers run their numpy code.
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
