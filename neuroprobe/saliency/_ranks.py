"""The sorted values of a map, known only near some values: AUC-Judd's ranks without a full sort.

AUC-Judd needs, for the map's values at the fixations (and, in the ``mit`` protocol, for a band
of about 4e-7 around each of them), how many pixels lie below or at a value and what the sorted
map holds at a few positions.  Sorting all ~480,000 pixels of an 800x600 map gives that but
costs more than the rest of the metric.  :class:`PartialSort` gets the same numbers from a
histogram: every pixel falls into one of 65,536 buckets by the high bits of its float64 bit
pattern (4,096 per factor of two, the 16 factors of two below the maximum; smaller values share
bucket 0) (monotone in the value for non-negative numbers, so a pixel in a lower bucket is
smaller, one in a higher bucket larger); only the pixels in buckets that an interval of interest
touches are gathered and sorted.  Counts and values are exactly those of the full sort; where
the map has negative values (the bit patterns are then not monotone) or the intervals cover many
pixels (heavy ties), :func:`partial_sort` returns None and the caller sorts everything.  The
histogram and the gathering are one compiled loop where Numba is available
(:mod:`~neuroprobe.saliency._kernels`: 0.9 ms per 800x600 map against 2.5 ms in numpy), which
counts only the pixels between the gathered buckets' runs (all that the ranks need).
"""
from __future__ import annotations

import numpy as np

from . import _kernels

__all__ = ["PartialSort", "RankTable", "likely_too_many", "partial_sort"]

#: Buckets of the histogram and the bits of the float64 pattern below a bucket's index: 12
#: mantissa bits per binade, 16 binades below the maximum (smaller values share bucket 0).  On
#: OSIE's classical maps the intervals of AUC-Judd then gather about 1 % of the pixels (8
#: bits: 10-20 %; 2**18 or more buckets: the histogram itself gets slower than the sort).
N_BUCKETS = 1 << 16
SHIFT = 52 - 12
#: Pixels sampled (evenly spaced) to estimate, before the histogram, the share the intervals
#: would gather.
SAMPLE = 4096


def _bucket_of(values: np.ndarray, base: int) -> np.ndarray:
    """Bucket of each value (clipped to [0, N_BUCKETS - 1]); monotone non-decreasing in the
    value for values >= 0 (with -0.0), and 0 for every negative value."""
    b = np.right_shift(np.ascontiguousarray(values, dtype=np.float64).view(np.int64), SHIFT)
    b -= base
    return np.clip(b, 0, N_BUCKETS - 1, out=b)


class PartialSort:
    """``np.sort(flat)`` where it is asked: ranks of, and values near, the given intervals.

    Behaves as the sorted array for :meth:`searchsorted` of values inside the intervals it was
    built for and for indexing at positions whose sorted values lie in them; anything else is
    an error (never a wrong number).  ``size`` is the map's size.
    """

    def __init__(self, size: int, base: int, flagged: np.ndarray, below: np.ndarray,
                 values: np.ndarray, positions: np.ndarray):
        self.size = size
        self._base = base
        self._flagged = flagged  # (N_BUCKETS,) bool: buckets whose pixels were gathered
        self._below = below  # (N_BUCKETS,) pixels below each bucket that were not gathered
        self.values = values  # gathered pixels, sorted
        self.positions = positions  # their positions in the full sort (increasing)

    def searchsorted(self, v, side: str = "left") -> np.ndarray:
        """``np.searchsorted(np.sort(flat), v, side)`` for values inside the intervals."""
        v = np.asarray(v, dtype=np.float64)
        b = _bucket_of(v.ravel(), self._base).reshape(v.shape)
        if not self._flagged[b].all():
            raise ValueError("rank asked outside the gathered intervals")
        return self._below[b] + np.searchsorted(self.values, v, side=side)

    def __getitem__(self, idx) -> np.ndarray:
        idx = np.asarray(idx)
        i = np.searchsorted(self.positions, idx)
        if len(self.positions) == 0 or np.any(i >= len(self.positions)) or \
                np.any(self.positions[np.minimum(i, len(self.positions) - 1)] != idx):
            raise IndexError("sorted value asked outside the gathered intervals")
        return self.values[i]


def partial_sort(flat: np.ndarray, hi: float, lo_edges: np.ndarray, hi_edges: np.ndarray,
                 work: np.ndarray, max_fraction: float = 0.125,
                 compiled: bool = True) -> PartialSort | None:
    """A :class:`PartialSort` of ``flat`` (finite, minimum >= 0, maximum ``hi``) that answers for
    every value in the closed intervals ``[lo_edges[i], hi_edges[i]]``.

    ``work``: a float64 buffer of ``flat``'s size (holds the bucket indices, or the gathered
    pixels).  Returns None where gathering would take more than ``max_fraction`` of the pixels
    (sort them all instead).  ``compiled``: count and gather in one compiled loop
    (:func:`~neuroprobe.saliency._kernels.compiled`) where Numba is available, else with numpy
    (the same counts and values).
    """
    n = flat.size
    base = (int(np.float64(hi).view(np.int64)) >> SHIFT) - (N_BUCKETS - 1)
    if base <= 0:
        # a maximum below about 1e-303: 0.0 would not share bucket 0 with -0.0 and the negatives
        return None
    # every bucket from an interval's first to its last is gathered
    qa = _bucket_of(lo_edges, base)
    qb = _bucket_of(hi_edges, base)
    kern = _kernels.compiled() if compiled else None
    if kern is not None:
        flat = np.ascontiguousarray(flat, dtype=np.float64)
        k, flagged, below = kern.bucket_gather(flat.view(np.int64), flat, SHIFT, base, qa, qb,
                                               N_BUCKETS, work, int(max_fraction * n))
        if k < 0:
            return None
        values = np.sort(work[:k])
        positions = np.arange(k) + below[_bucket_of(values, base)]
        return PartialSort(n, base, flagged, below, values, positions)
    mark = np.bincount(qa, minlength=N_BUCKETS + 1) - np.bincount(qb + 1,
                                                                  minlength=N_BUCKETS + 1)
    flagged = np.cumsum(mark[:-1]) > 0
    b = work.view(np.int64)
    np.right_shift(flat.view(np.int64), SHIFT, out=b)
    b -= base
    np.maximum(b, 0, out=b)  # at most N_BUCKETS - 1: hi is the maximum
    counts = np.bincount(b, minlength=N_BUCKETS)
    counts[flagged] = 0  # now the pixels that are not gathered
    if n - int(counts.sum()) > max_fraction * n:
        return None
    values = np.sort(flat[np.flatnonzero(flagged[b])])
    below = np.zeros(N_BUCKETS, dtype=np.int64)
    np.cumsum(counts[:-1], out=below[1:])
    positions = np.arange(len(values)) + below[_bucket_of(values, base)]
    return PartialSort(n, base, flagged, below, values, positions)


def likely_too_many(flat: np.ndarray, lo_edges: np.ndarray, hi_edges: np.ndarray,
                    max_fraction: float = 0.125) -> bool:
    """True when :func:`partial_sort` would probably gather more than ``max_fraction`` of the
    pixels (and decline after building its histogram), judged from ``SAMPLE`` evenly spaced
    pixels without a pass over the map.

    A map with heavy ties (an 8-bit PNG map has at most 256 values) puts a large share of its
    pixels into the buckets of the fixated values; building the histogram first and sorting
    everything after made such maps 2-3 ms per 800x600 image slower than the plain sort.  The
    buckets here are those of the sample's maximum (an estimate: :func:`partial_sort` still
    counts exactly and declines where this lets a map through).
    """
    sample = flat[:: max(1, flat.size // SAMPLE)]
    hi = float(sample.max()) if sample.size else 0.0
    if not (hi > 0 and np.isfinite(hi)):
        return False  # no estimate: partial_sort decides
    base = (int(np.float64(hi).view(np.int64)) >> SHIFT) - (N_BUCKETS - 1)
    if base <= 0:
        return False
    # the bucket intervals, merged where they overlap, against the sorted sample's buckets
    qa, qb = _bucket_of(lo_edges, base), _bucket_of(hi_edges, base)
    order = np.argsort(qa, kind="stable")
    qa, qb = qa[order], np.maximum.accumulate(qb[order])
    first = np.concatenate([[True], qa[1:] > qb[:-1]])
    last = np.concatenate([np.flatnonzero(first)[1:] - 1, [len(qa) - 1]])
    sb = np.sort(_bucket_of(sample, base))
    inside = (np.searchsorted(sb, qb[last], side="right")
              - np.searchsorted(sb, qa[first], side="left")).sum()
    return bool(inside > max_fraction * len(sample))


class RankTable:
    """Ranks of values among a few positives, for exact ROC areas without sorting negatives.

    ``G`` and ``E`` of :func:`~._roc.auc_exact`'s statistic (per negative: the positives above
    it, the positives equal to it) are integers, so they can be summed in any order; with the
    positives' buckets (as :func:`partial_sort` buckets the map) in a table, a negative in a
    bucket without positives (nearly all) is ranked with one lookup instead of a binary search
    or a sort.  Needs the compiled kernels and a map with minimum >= 0 and maximum ``hi`` above
    about 1e-303 (:meth:`make` returns None otherwise; the callers sort then).
    """

    def __init__(self, kern, pos: np.ndarray, base: int):
        self._kern = kern
        self._base = base
        self.u, self.counts = np.unique(pos, return_counts=True)
        self.k = len(pos)
        self._cum = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self._first, self._has = kern.rank_table(np.ascontiguousarray(self.u).view(np.int64),
                                                 SHIFT, base, N_BUCKETS)

    @classmethod
    def make(cls, pos: np.ndarray, lo: float, hi: float) -> RankTable | None:
        kern = _kernels.compiled()
        base = (int(np.float64(hi).view(np.int64)) >> SHIFT) - (N_BUCKETS - 1)
        if kern is None or not lo >= 0 or base <= 0 or len(pos) == 0:
            return None
        return cls(kern, np.asarray(pos, dtype=np.float64), base)

    def sums(self, flat: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(G, E)`` per row of ``index`` (flat pixel indices of the negatives of one set):
        ``G[s]`` the number of (positive, negative) pairs with the positive above, ``E[s]``
        of pairs with equal values."""
        index = np.ascontiguousarray(index, dtype=np.int64)
        if index.ndim == 1:
            index = index[None, :]
        return self._kern.rank_sums(np.ascontiguousarray(flat, dtype=np.float64), index,
                                    self.u, self._cum, self.counts.astype(np.int64),
                                    self._first, self._has, SHIFT, self._base)
