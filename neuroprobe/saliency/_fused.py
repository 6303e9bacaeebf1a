"""One blocked pass over a prepared map for the sums CC, NSS, KL and SIM need in every protocol.

Each of those metrics reduces the map (or its density) against an image-sized array of the
ground truth: NSS the map's moments, CC the centred map against the density, KL the density's
logarithm against the ground-truth distribution, SIM the element-wise minimum of two
distributions.  Done one metric and one protocol at a time, every reduction streams its arrays
from memory again (an 800x600 float64 array is 3.8 MB, more than a core's cache), and the
logarithm and the centred map are written out whole.  :func:`map_sums` computes all of them in
one pass over blocks of :data:`~neuroprobe.saliency._maps.BLOCK` elements: each block of every
array is read once while it is in cache, and the centred map and the logarithm only ever exist
one block at a time.  The same pass takes the image's own terms (CC's centred sum of squares of
each density, KL's ``sum(p log p)``) where they are not cached yet, and forms the mit
distribution ``d / sum(d)`` block by block (:class:`Scaled`) instead of writing it out.
:func:`density_sums` gives the image's terms alone (two passes over one density), for ground
truths the shared pass does not cover.

The element-wise operations are those of the metric-by-metric code, except that a division by a
sum is a multiplication by its reciprocal (one unit in the last place); the reductions are summed
block by block (as :func:`~neuroprobe.saliency._maps.block_sum` does), so the moments are
bit-identical to the kernels' and the other sums differ from whole-array ones by rounding (about
1e-16 of the result).
"""
from __future__ import annotations

import numpy as np

from . import _kernels
from ._maps import BLOCK, EPS, dot

__all__ = ["MapSums", "Own", "Scaled", "density_sums", "map_sums"]

#: The smallest normal float64: ``p log p`` is taken as ``p log(max(p, TINY))`` (0 where p is 0).
TINY = float(np.finfo(np.float64).tiny)


class MapSums:
    """The results of :func:`map_sums`: ``csum`` and ``ss`` (sum and sum of squares of the
    centred map), and one value per entry given in ``cross``, ``kl``, ``sim`` and ``own``
    (``own`` and ``gss`` for the latter)."""

    def __init__(self, n_cross: int, n_kl: int, n_sim: int, n_own: int = 0):
        self.csum = 0.0
        self.ss = 0.0
        self.cross = [0.0] * n_cross
        self.kl = [0.0] * n_kl
        self.sim = [0.0] * n_sim
        self.own = [0.0] * n_own
        self.gss = [0.0] * n_own


class Scaled:
    """``d * factor``, formed one block at a time where :func:`map_sums` reads it (never whole):
    the mit distribution ``d / sum(d)`` as the blur times the reciprocal of its sum."""

    def __init__(self, d: np.ndarray, factor: float):
        self.d = d
        self.factor = factor
        self.work = np.empty(min(d.size, BLOCK))

    def block(self, a: int, b: int) -> np.ndarray:
        return np.multiply(self.d[a:b], self.factor, out=self.work[: b - a])


class Own:
    """An image's own terms for :func:`map_sums`: ``kind`` "mit" (``sum(p log p)``, 0 where p is
    0) or "exact" (``sum(p log(p + EPS))``) or None, of ``p``; and, with ``mean`` given, the sum
    of squared deviations of ``d`` from it (CC's ``gss``)."""

    def __init__(self, kind: str | None, p, d: np.ndarray | None = None,
                 mean: float | None = None):
        self.kind, self.p, self.d, self.mean = kind, p, d, mean


def _block(x, a: int, b: int, memo: dict) -> np.ndarray:
    if isinstance(x, Scaled):
        if id(x) not in memo:
            memo[id(x)] = x.block(a, b)
        return memo[id(x)]
    return x[a:b]


def map_sums(flat: np.ndarray, mean: float, q: np.ndarray | float | None = None, cross=(),
             kl=(), sim=(), own=(), compiled: bool = True) -> MapSums:
    """One blocked pass over the map (and the densities) computing every sum asked for.

    Parameters
    ----------
    flat : (N,) float64
        The map.
    mean : float
        Its mean; ``c = flat - mean`` is the centred map (formed one block at a time).
    q : (N,) float64 or float, optional
        The map's density, or the map's sum where the density is the map divided by it (formed
        one block at a time as the map times the reciprocal of the sum: within one unit in the
        last place of the division, three times cheaper);
        ``log(q + EPS)`` is formed one block at a time (needed with ``kl``).
    cross : sequence of (N,) arrays or :class:`Scaled` ``d``
        ``sum(c * d)`` for each (CC's covariance term).
    kl : sequence of (N,) arrays or :class:`Scaled` ``p``
        ``sum(p * log(q + EPS))`` for each (KL's term of the map).
    sim : sequence of pairs ``(a, b)`` of (N,) arrays or :class:`Scaled`
        ``sum(min(a, b))`` for each (SIM); ``a`` None stands for ``q``.
    own : sequence of :class:`Own`
        The image's own KL term and CC's ``gss`` (per ground truth; computed here where they are
        not cached yet, while the density's blocks are in cache anyway).
    compiled : bool
        Every sum but ``ss`` in compiled loops (:func:`_compiled_sums`) where Numba is
        available; ``ss`` (NSS's, which must not move) is numpy's in both cases.

    Returns
    -------
    MapSums, with ``csum = sum(c)`` and ``ss = sum(c * c)`` always.
    """
    n = flat.size
    if q is None and (kl or any(x is None for x, _ in sim)):
        raise ValueError("map_sums: kl terms need the density q")
    out = MapSums(len(cross), len(kl), len(sim), len(own))
    kern = _kernels.compiled() if compiled else None
    if kern is not None and _compiled_sums(kern, out, flat, mean, q, cross, kl, sim, own):
        return out
    work = np.empty(min(n, BLOCK))
    work2 = np.empty(min(n, BLOCK)) if sim else None
    qwork = np.empty(min(n, BLOCK)) if isinstance(q, float) else None
    inv = 1.0 / q if qwork is not None else None
    for a in range(0, n, BLOCK):
        b = min(n, a + BLOCK)
        memo: dict = {}
        if q is None:
            qb = None
        elif qwork is not None:
            qb = np.multiply(flat[a:b], inv, out=qwork[: b - a])
        else:
            qb = q[a:b]
        c = np.subtract(flat[a:b], mean, out=work[: b - a])
        out.csum += float(c.sum())
        out.ss += dot(c, c)
        for i, d in enumerate(cross):
            out.cross[i] += dot(c, _block(d, a, b, memo))
        if kl:
            lg = np.add(qb, EPS, out=work[: b - a])
            np.log(lg, out=lg)
            for i, p in enumerate(kl):
                out.kl[i] += dot(_block(p, a, b, memo), lg)
        for i, (x, y) in enumerate(sim):
            xb = qb if x is None else _block(x, a, b, memo)
            out.sim[i] += float(np.minimum(xb, _block(y, a, b, memo), out=work2[: b - a]).sum())
        for i, o in enumerate(own):
            w = work[: b - a]
            if o.mean is not None:
                np.subtract(o.d[a:b], o.mean, out=w)
                out.gss[i] += dot(w, w)
            if o.kind is not None:
                pb = _block(o.p, a, b, memo)
                if o.kind == "mit":
                    np.maximum(pb, TINY, out=w)
                else:
                    np.add(pb, EPS, out=w)
                out.own[i] += dot(pb, np.log(w, out=w))
    return out


#: Operands (distinct arrays and scale factors) one compiled pass takes: a fixed number, so that
#: one compiled signature serves every call (unused slots repeat the first operand).
MAX_OPERANDS = 6


def _usable(a) -> bool:
    return (isinstance(a, np.ndarray) and a.dtype == np.float64 and a.ndim == 1
            and a.flags.c_contiguous and a.flags.writeable)


def _compiled_sums(kern, out: MapSums, flat, mean, q, cross, kl, sim, own) -> bool:
    """:func:`map_sums` with the terms summed by :func:`~._kernels.compiled`'s ``log_args``
    and ``share_block`` (numpy's log in between); the centred map and ``ss`` stay numpy's
    (NSS reads ``ss``: the same numbers as the numpy path).  Fills ``out`` and returns True,
    or returns False (nothing done) where the arrays do not fit the compiled signature."""
    ops, scales, index = [], [], {}

    def operand(x) -> int:
        arr, sc = (x.d, x.factor) if isinstance(x, Scaled) else (x, 1.0)
        key = (id(arr), sc)
        if key not in index:
            index[key] = len(ops)
            ops.append(arr)
            scales.append(sc)
        return index[key]

    qarr, qscale = (flat, 1.0 / q) if isinstance(q, float) else (flat if q is None else q, 1.0)
    rows = [(0, 0)] if kl else []  # log rows: (kind, operand)
    spec = [(0, 0, 0, 0, 0.0)]  # (kind, i, k, log row, param); the first: sum(c)
    spec += [(1, operand(d), 0, 0, 0.0) for d in cross]
    spec += [(2, operand(p), 0, 0, 0.0) for p in kl]
    spec += [(3, -1 if x is None else operand(x), operand(y), 0, 0.0) for x, y in sim]
    gss, own_at = [], []
    for o in own:
        gss.append(len(spec) if o.mean is not None else None)
        if o.mean is not None:
            spec.append((4, operand(o.d), 0, 0, float(o.mean)))
        own_at.append(len(spec) if o.kind is not None else None)
        if o.kind is not None:
            rows.append((1 if o.kind == "mit" else 2, operand(o.p)))
            spec.append((2, rows[-1][1], 0, len(rows) - 1, 0.0))
    if len(ops) > MAX_OPERANDS or not all(_usable(a) for a in [flat, qarr, *ops]) \
            or any(a.size != flat.size for a in [qarr, *ops]):
        return False
    ops += [ops[0] if ops else flat] * (MAX_OPERANDS - len(ops))
    scales += [1.0] * (MAX_OPERANDS - len(scales))
    n = flat.size
    m = min(n, BLOCK)
    work = np.empty(m)
    L = np.empty((max(1, len(rows)), m))
    totals = np.zeros(len(spec))
    spec_i = np.array([t[:4] for t in spec], dtype=np.int64)
    param = np.array([t[4] for t in spec])
    rows_i = np.array(rows, dtype=np.int64).reshape(-1, 2)
    ops_t, scales = tuple(ops), np.array(scales)
    ss = 0.0
    for a in range(0, n, BLOCK):
        b = min(n, a + BLOCK)
        c = np.subtract(flat[a:b], mean, out=work[: b - a])
        ss += dot(c, c)
        if rows:
            kern.log_args(a, b, qarr, qscale, ops_t, scales, rows_i, L)
            lg = L[:, : b - a]
            np.log(lg, out=lg)
        kern.share_block(a, b, work, qarr, qscale, ops_t, scales, spec_i, param, L, totals)
    out.ss, out.csum = ss, float(totals[0])
    j = 1
    for lst in (out.cross, out.kl, out.sim):
        lst[:] = totals[j:j + len(lst)].tolist()
        j += len(lst)
    for i in range(len(own)):
        if gss[i] is not None:
            out.gss[i] = float(totals[gss[i]])
        if own_at[i] is not None:
            out.own[i] = float(totals[own_at[i]])
    return True


def density_sums(d: np.ndarray, *, own: str | None = None, cc: bool = True,
                 out: np.ndarray | None = None, total: float | None = None,
                 lo: float | None = None) -> dict:
    """The sums of one ground-truth density that CC and KL need, in two blocked passes.

    Parameters
    ----------
    d : (N,) float64
        The density (``mit``: the clipped blur; ``exact``: the normalised Gaussian density).
    own : "mit", "exact" or None
        KL's term of the image: ``"mit"``, ``sum(p log p)`` for ``p = d / sum(d)`` (formed as
        ``d`` times the reciprocal of the sum, within one unit in the last place of the
        division; written to ``out``); ``"exact"``, ``sum(d log(d + EPS))`` of ``d`` itself; None: neither.
    cc : bool
        Compute CC's ``mean`` and ``gss`` (sum of squared deviations from the mean).
    out : (N,) float64, optional
        Where ``p = d / sum(d)`` goes for ``own="mit"``.
    total, lo : float, optional
        ``d``'s sum and minimum where the caller has them (no first pass then).

    Returns
    -------
    dict with ``total`` (sum), ``min``, and where asked ``mean``, ``gss``, ``own``, ``p``.
    The mean is ``total / N`` with the total summed block by block (numpy's ``mean`` sums
    pairwise: the two differ by rounding, about 1e-16 relative).
    """
    n = d.size
    if total is None or lo is None:
        total, lo = 0.0, np.inf
        for a in range(0, n, BLOCK):
            blk = d[a:a + BLOCK]
            total += float(blk.sum())
            lo = min(lo, float(blk.min()))
    res = {"total": total, "min": lo, "mean": total / n}
    if not cc and own is None:
        return res
    if own == "mit" and out is None:
        out = np.empty(n)
    mean = res["mean"]
    inv = 1.0 / total if total > 0 else np.inf
    gss = kl = 0.0
    work = np.empty(min(n, BLOCK))
    for a in range(0, n, BLOCK):
        b = min(n, a + BLOCK)
        blk, w = d[a:b], work[: b - a]
        if cc:
            np.subtract(blk, mean, out=w)
            gss += dot(w, w)
        if own == "mit":
            p = np.multiply(blk, inv, out=out[a:b])
            np.maximum(p, TINY, out=w)
            kl += dot(p, np.log(w, out=w))
        elif own == "exact":
            np.add(blk, EPS, out=w)
            kl += dot(blk, np.log(w, out=w))
    if cc:
        res["gss"] = gss
    if own is not None:
        res["own"] = kl
    if own == "mit":
        res["p"] = out
    return res
