"""The Numba kernels of :mod:`neuroprobe.saliency._kernels` (which documents them and imports
this module only when they are first used, so that importing neuroprobe does not import Numba).

Module-level functions, so that Numba's on-disk cache (``cache=True``) finds them again in the
next process (functions defined inside another function and calling each other are compiled
afresh in every process: two seconds).
"""
from __future__ import annotations

import numba
import numpy as np

__all__ = ["bucket_gather", "clip_sum", "log_args", "pairwise_sum", "rank_sums", "rank_table",
           "share_block"]

#: MATLAB's eps as the MIT code adds it (= neuroprobe.saliency._maps.EPS; not imported from
#: there, which would close an import circle through the ground truth).
EPS = 2.2204e-16
#: The smallest normal float64 (the mit KL's ``p log p`` is taken as ``p log(max(p, TINY))``).
TINY = float(np.finfo(np.float64).tiny)
#: Interleaved partial sums per reduction in :func:`share_block` (a multiple of the vector
#: width; 64 measured as fast as numpy's dot on a block in cache, 8 half as fast).
LANES = 64

jit = numba.njit(cache=True, nogil=True, boundscheck=False)


@jit
def bucket_gather(bits, flat, shift, base, qa, qb, n_buckets, out, limit):
    """AUC-Judd's partial sort in one pass over the map (see
    :func:`neuroprobe.saliency._ranks.partial_sort`).

    The buckets ``qa[i]..qb[i]`` (inclusive) are flagged; they form runs, and the buckets
    between two runs a gap.  Each pixel's bucket ``(bits >> shift) - base`` (clipped to
    ``[0, n_buckets - 1]``) is looked up in one table: a pixel in a flagged bucket is
    copied to ``out`` (in index order), any other is counted in its gap (in four interleaved
    count tables; one table measured as fast).  Returns ``(k, flagged, below)``: the number gathered (-1 once it
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


@jit
def _affine(x, s, e, out):
    for j in range(x.size):
        out[j] = x[j] * s + e


@jit
def _floor(x, s, lo, out):
    for j in range(x.size):
        v = x[j] * s
        out[j] = v if (v > lo or np.isnan(v)) else lo  # np.maximum: NaN stays


@jit
def log_args(a, b, qarr, qscale, ops, scales, spec, L):
    """Write the arguments of the block's logarithms into the rows of ``L`` (length
    ``b - a``): for each row ``spec[r] = (kind, operand)``: kind 0, ``q + EPS`` of the
    map's density ``q = qarr * qscale``; kind 1, ``max(p, TINY)``; kind 2, ``p + EPS``,
    for ``p = ops[operand] * scales[operand]``."""
    m = b - a
    for r in range(spec.shape[0]):
        kind = spec[r, 0]
        if kind == 0:
            _affine(qarr[a:b], qscale, EPS, L[r, :m])
        elif kind == 1:
            _floor(ops[spec[r, 1]][a:b], scales[spec[r, 1]], TINY, L[r, :m])
        else:
            _affine(ops[spec[r, 1]][a:b], scales[spec[r, 1]], EPS, L[r, :m])


@jit
def _combine(lanes, tail):
    """The partial sums of one term, combined pairwise (a fixed order)."""
    w = lanes.size
    while w > 1:
        h = w // 2
        for j in range(h):
            lanes[j] = lanes[j] + lanes[j + h]
        if w % 2:
            lanes[0] = lanes[0] + lanes[w - 1]
        w = h
    return lanes[0] + tail


# Each reduction below runs in LANES interleaved partial sums held in a local array (which
# nothing else can alias, so the compiler vectorises the inner loop), over slices of the
# block, with the few elements past the last whole row of lanes summed apart.
@jit
def _sum(c):
    lanes = np.zeros(LANES)
    full = c.size - c.size % LANES
    for r in range(0, full, LANES):
        for j in range(LANES):
            lanes[j] += c[r + j]
    tail = 0.0
    for j in range(full, c.size):
        tail += c[j]
    return _combine(lanes, tail)


@jit
def _sum_cx(c, x, sx):
    lanes = np.zeros(LANES)
    full = c.size - c.size % LANES
    for r in range(0, full, LANES):
        for j in range(LANES):
            lanes[j] += c[r + j] * (x[r + j] * sx)
    tail = 0.0
    for j in range(full, c.size):
        tail += c[j] * (x[j] * sx)
    return _combine(lanes, tail)


@jit
def _sum_xl(x, sx, lg):
    lanes = np.zeros(LANES)
    full = x.size - x.size % LANES
    for r in range(0, full, LANES):
        for j in range(LANES):
            lanes[j] += (x[r + j] * sx) * lg[r + j]
    tail = 0.0
    for j in range(full, x.size):
        tail += (x[j] * sx) * lg[j]
    return _combine(lanes, tail)


@jit
def _sum_min(x, sx, y, sy):
    lanes = np.zeros(LANES)
    full = x.size - x.size % LANES
    for r in range(0, full, LANES):
        for j in range(LANES):
            u = x[r + j] * sx
            v = y[r + j] * sy
            lanes[j] += u if (u < v or np.isnan(u)) else v  # np.minimum: NaN wins
    tail = 0.0
    for j in range(full, x.size):
        u = x[j] * sx
        v = y[j] * sy
        tail += u if (u < v or np.isnan(u)) else v
    return _combine(lanes, tail)


@jit
def _sum_sq(x, sx, mu):
    lanes = np.zeros(LANES)
    full = x.size - x.size % LANES
    for r in range(0, full, LANES):
        for j in range(LANES):
            d = x[r + j] * sx - mu
            lanes[j] += d * d
    tail = 0.0
    for j in range(full, x.size):
        d = x[j] * sx - mu
        tail += d * d
    return _combine(lanes, tail)


@jit
def share_block(a, b, c, qarr, qscale, ops, scales, spec, param, L, totals):
    """Add one block's part of each term to ``totals``; ``c`` holds the centred map of
    the block (``c[j]`` for pixel ``a + j``).  ``spec[t] = (kind, i, k, row)`` with
    ``X(i) = ops[i] * scales[i]`` (``X(-1)`` the map's density ``qarr * qscale``):
    kind 0, ``sum(c)``; 1, ``sum(c * X(i))``; 2, ``sum(X(i) * L[row])`` (``L`` holds
    the logarithms by now); 3, ``sum(min(X(i), X(k)))``; 4, ``sum((X(i) - param[t])**2)``.
    """
    m = b - a
    for t in range(spec.shape[0]):
        kind = spec[t, 0]
        i = spec[t, 1]
        k = spec[t, 2]
        x = qarr[a:b] if i < 0 else ops[i][a:b]
        sx = qscale if i < 0 else scales[i]
        if kind == 0:
            v = _sum(c[:m])
        elif kind == 1:
            v = _sum_cx(c[:m], x, sx)
        elif kind == 2:
            v = _sum_xl(x, sx, L[spec[t, 3], :m])
        elif kind == 3:
            y = qarr[a:b] if k < 0 else ops[k][a:b]
            v = _sum_min(x, sx, y, qscale if k < 0 else scales[k])
        else:
            v = _sum_sq(x, sx, param[t])
        totals[t] += v


@jit
def rank_table(ubits, shift, base, n_buckets):
    """For sorted non-negative values (their bit patterns ``ubits``, ascending): ``first[b]``,
    how many lie in buckets below ``b`` (bucket ``(bits >> shift) - base`` clipped to ``[0,
    n_buckets - 1]``, as :func:`bucket_gather`), and ``has[b]``, how many lie in ``b``."""
    first = np.empty(n_buckets, np.int32)
    has = np.zeros(n_buckets, np.int32)
    j = 0
    top = n_buckets - 1
    for b in range(n_buckets):
        first[b] = j
        while j < ubits.size:
            v = (ubits[j] >> shift) - base
            v = min(max(v, 0), top)
            if v != b:
                break
            j += 1
        has[b] = j - first[b]
    return first, has


@jit
def rank_sums(flat, index, u, ucum, ucnt, first, has, shift, base):
    """For each row ``s`` of ``index`` (flat pixel indices of negatives), ``G[s]``, the sum
    over its negatives ``x = flat[index[s, j]]`` of the positives above ``x``, and ``E[s]``,
    of the positives equal to ``x``.  The positives: sorted distinct values ``u`` (``>= 0``)
    with counts ``ucnt`` and ``ucum[i] = ucnt[:i].sum()``; ``first``/``has``: their
    :func:`rank_table`.  A negative in a bucket without positives needs one table lookup;
    one in a bucket with some is compared with those (few) values."""
    rows, m = index.shape
    k = ucum[ucum.size - 1]
    top = first.size - 1
    g_out = np.zeros(rows, np.int64)
    e_out = np.zeros(rows, np.int64)
    bits = flat.view(np.int64)
    for s in range(rows):
        g = 0
        e = 0
        for j in range(m):
            p = index[s, j]
            b = (bits[p] >> shift) - base
            b = min(max(b, 0), top)
            i = first[b]
            h = has[b]
            if h == 0:
                g += k - ucum[i]
            else:
                x = flat[p]
                while h > 0 and u[i] < x:
                    i += 1
                    h -= 1
                if h > 0 and u[i] == x:
                    e += ucnt[i]
                    g += k - ucum[i + 1]
                else:
                    g += k - ucum[i]
        g_out[s] = g
        e_out[s] = e
    return g_out, e_out


@jit
def pairwise_sum(a, lo, n):
    """``a[lo:lo + n].sum()`` as numpy sums a contiguous float64 array (its pairwise
    summation: eight running sums over runs of at most 128 elements, halves split at a
    multiple of 8), so the same number to the bit."""
    if n < 8:
        res = 0.0
        for i in range(n):
            res += a[lo + i]
        return res
    if n <= 128:
        r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
        r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
        i = 8
        m = n - n % 8
        while i < m:
            r0 += a[lo + i]
            r1 += a[lo + i + 1]
            r2 += a[lo + i + 2]
            r3 += a[lo + i + 3]
            r4 += a[lo + i + 4]
            r5 += a[lo + i + 5]
            r6 += a[lo + i + 6]
            r7 += a[lo + i + 7]
            i += 8
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            res += a[lo + i]
            i += 1
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return pairwise_sum(a, lo, n2) + pairwise_sum(a, lo + n2, n - n2)


@jit
def _clip_min(x):
    """Clip at 0 in place (NaN stays, as with ``np.maximum(x, 0)``); the minimum after."""
    lows = np.full(LANES, np.inf)
    full = x.size - x.size % LANES
    for r in range(0, full, LANES):
        for j in range(LANES):
            v = x[r + j]
            v = v if (v > 0.0 or np.isnan(v)) else 0.0
            x[r + j] = v
            lows[j] = v if v < lows[j] else lows[j]
    lo = np.inf
    for j in range(full, x.size):
        v = x[j]
        v = v if (v > 0.0 or np.isnan(v)) else 0.0
        x[j] = v
        lo = v if v < lo else lo
    for j in range(LANES):
        lo = lows[j] if lows[j] < lo else lo
    return lo


@jit
def clip_sum(d, block):
    """Clip ``d`` at 0 in place block by block; return the sum of the blocks' numpy sums
    (:func:`pairwise_sum`, added in order: the numbers of the numpy loop) and the minimum."""
    total = 0.0
    lo = np.inf
    for a in range(0, d.size, block):
        b = min(d.size, a + block)
        m = _clip_min(d[a:b])
        lo = m if m < lo else lo
        total += pairwise_sum(d, a, b - a)
    return total, lo


@jit
def split_counts(keys, m, vals, th):
    """The mit sAUC's negatives per split, counted at the thresholds.

    For each split ``s`` (a row of ``keys``, uniform numbers in [0, 1), one per candidate
    negative ``j`` of value ``vals[j]``), the ``m`` candidates with the smallest keys (the
    set ``np.argpartition`` picks) are the negatives; ``counts[t, s]`` is how many of their
    values are at or above ``th[t]``.  Per split: the keys below a cut-off a few standard
    deviations above the expected ``m``-th smallest are gathered (all keys where too few
    are below), counted into 64 bins of the cut-off's range, and only the bin holding the
    ``m``-th smallest is sorted.  Returns ``(counts, True)``, or ``(counts, False)`` where
    keys tie at the ``m``-th value in some split (the set is then not unique; the caller
    uses ``argpartition``)."""
    splits, n = keys.shape
    nb = 64
    counts = np.zeros((th.size, splits), np.int64)
    cut0 = m / n + 6.0 * np.sqrt(m) / n
    cand = np.empty(n)
    cidx = np.empty(n, np.int64)
    bins = np.empty(n, np.int64)
    hist = np.empty(nb, np.int64)
    edge = np.empty(n)
    for s in range(splits):
        row = keys[s]
        cut = cut0
        k = 0
        for j in range(n):  # branch-free compaction
            v = row[j]
            cand[k] = v
            cidx[k] = j
            k += v < cut
        if k <= m:  # too few below the cut-off (rare): all of them
            cut = 1.0
            for j in range(n):
                cand[j] = row[j]
                cidx[j] = j
            k = n
        width = cut / nb
        hist[:] = 0
        for q in range(k):
            b = int(cand[q] / width)
            b = b if b < nb else nb - 1
            bins[q] = b
            hist[b] += 1
        below = 0
        kb = 0
        while below + hist[kb] < m:
            below += hist[kb]
            kb += 1
        e = 0
        for q in range(k):
            if bins[q] == kb:
                edge[e] = cand[q]
                e += 1
        srt = np.sort(edge[:e])
        need = m - below
        kth = srt[need - 1]
        if need < e and srt[need] == kth:
            return counts, False
        for q in range(k):
            if bins[q] < kb or (bins[q] == kb and cand[q] <= kth):
                v = vals[cidx[q]]
                for t in range(th.size):
                    counts[t, s] += v >= th[t]
    return counts, True
