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

import numpy as np

__all__ = ["compiled"]

#: Partial sums per reduction (independent chains the compiler may keep in one vector).
LANES = 8


@functools.lru_cache(maxsize=1)
def compiled():
    """A namespace of the compiled kernels, or None where Numba cannot be imported."""
    try:
        import numba
    except Exception:  # not installed, or built for another NumPy: the numpy code runs
        return None
    from types import SimpleNamespace

    jit = numba.njit(cache=True, nogil=True, boundscheck=False)

    @jit
    def bucket_gather(bits, flat, shift, base, qa, qb, n_buckets, out, limit):
        """AUC-Judd's partial sort in one pass over the map (see
        :func:`neuroprobe.saliency._ranks.partial_sort`).

        The buckets ``qa[i]..qb[i]`` (inclusive) are flagged; they form runs, and the buckets
        between two runs a gap.  Each pixel's bucket ``(bits >> shift) - base`` (clipped to
        ``[0, n_buckets - 1]``) is looked up in one table: a pixel in a flagged bucket is
        copied to ``out`` (in index order), any other is counted in its gap (four interleaved
        tables of counts, so that neighbouring pixels in one gap do not wait for each
        other's increment).  Returns ``(k, flagged, below)``: the number gathered (-1 once it
        would exceed ``limit``), the flags, and for each flagged bucket the number of pixels
        below it that were not gathered (0 elsewhere)."""
        mark = np.zeros(n_buckets + 1, np.int64)
        for i in range(qa.size):
            mark[qa[i]] += 1
            mark[qb[i] + 1] -= 1
        table = np.empty(n_buckets, np.int32)  # gap index, or -(run + 1) where flagged
        depth = 0
        gap = 0
        inside = False
        for b in range(n_buckets):
            depth += mark[b]
            if depth > 0:
                table[b] = -(gap + 1)
                inside = True
            else:
                if inside:
                    gap += 1
                    inside = False
                table[b] = gap
        cnt = np.zeros((4, gap + 1), np.int64)
        top = n_buckets - 1
        k = 0
        n = bits.size
        for i in range(n):
            b = (bits[i] >> shift) - base
            if b < 0:
                b = 0
            elif b > top:
                b = top
            g = table[b]
            if g < 0:
                if k >= limit:
                    return -1, table < 0, mark
                out[k] = flat[i]
                k += 1
            else:
                cnt[i & 3, g] += 1
        # below run r: the pixels of gaps 0..r
        cum = np.zeros(gap + 1, np.int64)
        run = 0
        for g in range(gap + 1):
            run += cnt[0, g] + cnt[1, g] + cnt[2, g] + cnt[3, g]
            cum[g] = run
        flagged = np.zeros(n_buckets, np.bool_)
        below = np.zeros(n_buckets, np.int64)
        for b in range(n_buckets):
            if table[b] < 0:
                flagged[b] = True
                below[b] = cum[-table[b] - 1]
        return k, flagged, below

    return SimpleNamespace(bucket_gather=bucket_gather)
