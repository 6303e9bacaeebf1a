"""Saliency metrics in two protocols: ``mit`` and ``exact``; one documented function per metric.

Published saliency numbers come from two families of code that disagree in their details, so
every function here takes ``protocol="mit"|"exact"`` and every table neuroprobe writes names the
protocol it used.  ``help(neuroprobe.saliency.metrics.nss)`` (and ``auc_judd``, ``auc_borji``,
``sauc``, ``cc``, ``kl``, ``sim``, ``ig``, ``emd``) states what a metric computes in each protocol.

``mit``
    The MIT saliency benchmark's MATLAB code (Bylinskii, Judd, Oliva, Torralba, Durand, "What do
    different evaluation metrics tell us about saliency models?", TPAMI 2019; code
    ``github.com/cvzoya/saliency``).  Fixations enter as a *binary* map (a pixel fixated twice
    counts once), their coordinates rounded as MATLAB rounds (halves away from zero); a saliency
    map of another size is resized to the fixation map (bilinear, with a warning); the continuous
    ground truth is the binary map blurred by :func:`mit_blur` (``antonioGaussian.m``).
``exact``
    The conventions of the Tuebingen code (pysaliency; Kümmerer, Wallis, Bethge, "Saliency
    benchmarking made easy", ECCV 2018): a list of fixations where every fixation counts, exact
    ROC areas with ties scored 0.5, no resizing (maps of another size are refused), the
    continuous ground truth a Gaussian density over every fixation (:func:`gaussian_density`).

Where the two definitions coincide (no pixel fixated twice, no coordinate ending in .5, the same
ground-truth density, a map without ties) the two protocols agree; the tests check that.  EMD
is available when the optional package POT (``pip install pot``) is installed.

Randomness: AUC-Judd (``mit`` jitter), AUC-Borji and sAUC (``mit`` splits) each draw from their
own stream, derived from the seed with :class:`numpy.random.SeedSequence` spawn keys per
protocol and metric (:func:`metric_rng`), so a metric's value never depends on which other
metrics or protocols were requested.

Conventions shared by both protocols (and deliberately different from MATLAB, which returns NaN
through a division by zero): a constant map has NSS 0 and CC 0 and is treated as the uniform
distribution by KL, SIM and IG.  An image without fixations gives NaN with a warning; a map that
contains NaN or infinity gives NaN with a warning.  Fixations outside the image are dropped with a
warning.  Coordinates are 0-based pixels with pixel centres at integers
(:mod:`neuroprobe.saliency.fixations`).

Layout and speed: the ground truth (fixations as pixels, the blurred densities) is
:mod:`neuroprobe.saliency.groundtruth`, built once per image and shared by every metric,
protocol and model (:class:`GroundTruth`); the ROC areas are ``neuroprobe.saliency._roc`` (one
sort and binary searches, no threshold loops; AUC-Judd reads the sorted map only near the
fixated values, which ``neuroprobe.saliency._ranks`` finds from a histogram of the map without
sorting it all; tie-heavy maps, which it would not help, are told from a sample and sorted);
the prepared map (extremes, moments, distributions, AUC-Judd's ranks, each computed once and
shared by the protocols) is ``neuroprobe.saliency._maps``.  Where several of CC, NSS, KL and SIM
are asked for, one blocked pass over the map and both protocols' densities
(``neuroprobe.saliency._fused``) gives all their sums, the image's own terms included, with
every block read once while it is in cache (:func:`_share_map_sums`); a metric asked for alone
runs its own code, with the same results to about 1e-14.  The loops over every pixel (the
partial sort's histogram, the shared pass's sums, the blur's clipping) and the exact and mit
sAUC's and the exact AUC-Borji's counting are compiled with Numba where it is installed
(``neuroprobe.saliency._kernels``; the numpy code runs otherwise): AUCs, NSS and IG are the same
numbers either way, CC, KL and SIM agree to about 1e-14.  BLAS runs on one thread inside the
metric loops (:func:`blas_single_thread`).  Results equal a literal implementation to about
1e-14 (the tests compare with brute-force and MATLAB-loop references).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from ..errors import UserError
from . import _kernels
from ._blas import blas_single_thread  # noqa: F401 - re-exported
from ._maps import (
    EPS,
    Map,
    as_density,
    as_distribution,
    as_map_array,
    block_sum,
    dot,
    prepare,
    resize,
)
from ._fused import Own, Scaled, density_sums, map_sums
from ._ranks import PartialSort, RankTable, likely_too_many, partial_sort
from ._roc import (
    auc_exact,
    auc_exact_sorted,
    auc_exact_splits,
    auc_threshold_counts,
    auc_thresholds,
    thresholds,
    trapz,
)
from ._workspace import Workspace
from .groundtruth import (  # noqa: F401
    PROTOCOLS,
    GroundTruth,
    OtherFixations,
    SaliencyShapeError,
    _as_ground_truth,
    _check_protocol,
    _gt_get,
    _mit_blur_points,
    _rng,
    _to_pixels,
    fixation_map,
    gaussian_density,
    ground_truths,
    leave_out_density,
    matlab_round,
    mit_blur,
    mit_sigma,
    mit_transfer_size,
    other_fixations,
)

METRICS = ("auc_judd", "auc_borji", "sauc", "nss", "cc", "kl", "sim", "ig")
OPTIONAL_METRICS = ("emd",)
#: For each metric: True when larger is better.
HIGHER_IS_BETTER = {"auc_judd": True, "auc_borji": True, "sauc": True, "nss": True, "cc": True,
                    "kl": False, "sim": True, "ig": True, "emd": False}
#: Display names of metrics (and of the other validation scores of training).
METRIC_NAMES = {"auc_judd": "AUC-Judd", "auc_borji": "AUC-Borji", "sauc": "shuffled AUC",
                "nss": "NSS", "cc": "CC", "kl": "KL divergence", "sim": "SIM",
                "ig": "information gain", "emd": "EMD", "accuracy": "accuracy",
                "mAP": "mean average precision", "loss": "loss"}
_HIGHER = {**HIGHER_IS_BETTER, "accuracy": True, "mAP": True, "loss": False}


def metric_title(key: str) -> str:
    """``"nss"`` -> ``"NSS (higher is better)"``: a metric's name and direction, for plots."""
    name = METRIC_NAMES.get(key, key)
    if key not in _HIGHER:
        return name
    return f"{name} ({'higher' if _HIGHER[key] else 'lower'} is better)"


#: The metrics that draw random numbers, with the fixed index of their stream (never reorder).
RANDOM_STREAMS = {"auc_judd": 0, "auc_borji": 1, "sauc": 2}
#: The smallest normal float64 (the mit KL's p log p takes log(max(p, TINY)): 0 where p is 0).
TINY = float(np.finfo(np.float64).tiny)

__all__ = [
    "PROTOCOLS", "METRICS", "METRIC_NAMES", "metric_title", "GroundTruth", "mit_blur",
    "mit_sigma", "gaussian_density",
    "fixation_map", "auc_judd", "auc_borji", "sauc", "nss", "cc", "kl", "sim", "ig", "emd",
    "evaluate_map", "evaluate_image", "evaluate_protocols", "evaluate_batch", "has_emd",
    "leave_out_density", "metric_rng", "other_fixations", "ground_truths", "matlab_round",
]

# names of the single-module layout, kept for code that imported them
_Map = Map
_resize = resize
_as_distribution = as_distribution
_dot = dot
_auc_exact = auc_exact
_auc_exact_sorted = auc_exact_sorted
_auc_exact_splits = auc_exact_splits
_auc_thresholds = auc_thresholds
_trapz = trapz


# --------------------------------------------------------------------------- random streams
def _base_seed(rng) -> np.random.SeedSequence:
    """The seed sequence one call derives its metrics' streams from.

    A Generator gives a fresh child of its seed sequence (so calls with one Generator draw
    afresh, as they would from the Generator itself); a seed (int, list of ints, None) or a
    SeedSequence is used as it is."""
    if isinstance(rng, np.random.SeedSequence):
        return rng
    if isinstance(rng, np.random.Generator):
        ss = getattr(rng.bit_generator, "seed_seq", None)
        if isinstance(ss, np.random.SeedSequence):
            return ss.spawn(1)[0]
        return np.random.SeedSequence(int(rng.integers(2 ** 63)))
    return np.random.SeedSequence(rng)


def _stream(base: np.random.SeedSequence, protocol: str, metric: str) -> np.random.Generator:
    key = tuple(base.spawn_key) + (PROTOCOLS.index(protocol), RANDOM_STREAMS[metric])
    return np.random.default_rng(np.random.SeedSequence(base.entropy, spawn_key=key,
                                                        pool_size=base.pool_size))


def metric_rng(seed, protocol: str, metric: str) -> np.random.Generator:
    """The generator ``metric`` draws from in ``protocol`` when a call is given ``rng=seed``.

    Each random metric (AUC-Judd's jitter, AUC-Borji's and sAUC's splits) has its own stream:
    the seed's :class:`~numpy.random.SeedSequence` with the spawn key extended by the protocol's
    index in :data:`PROTOCOLS` and the metric's in :data:`RANDOM_STREAMS`.  For a seed (an int,
    a list of ints or a SeedSequence) this is the very generator the metric uses; a Generator
    passed as ``rng`` is spawned from once per call, so calls sharing it draw afresh.
    """
    _check_protocol(protocol)
    if metric not in RANDOM_STREAMS:
        raise UserError(f"metric {metric!r} draws no random numbers",
                        hint="random metrics: " + ", ".join(RANDOM_STREAMS))
    return _stream(_base_seed(seed), protocol, metric)


# --------------------------------------------------------------------------- metric kernels
# Each kernel takes the prepared map, the ground truth of its protocol (``GroundTruth.at``), the
# protocol name, and the shared options; the public functions below document them.
def _m_auc_judd(sm: Map, gt, protocol, rng, **_):
    flat = sm.flat
    srt = _judd_ranks(sm, (gt,), (protocol,))  # sorted map, or the part of it that is read
    if protocol == "exact":
        return auc_exact_sorted(flat[gt.flat], srt)
    # MIT: the map plus a uniform jitter in [0, 1e-7], thresholds at the jittered values of the
    # fixated pixels, negatives = the non-fixated pixels
    at = gt.unique_flat
    k, n = len(at), flat.size
    if n == k:
        return float("nan")
    fixed = flat[at]
    # one jitter per pixel, in the order of the sorted map (drawn only where it matters)
    jitter = _jitter(_rng(rng), srt, fixed, sm.scratch)
    jit_at = fixed + jitter[_sorted_positions(srt, fixed)] / 1e7
    th = np.sort(jit_at)[::-1]  # descending, i = 1..k
    if isinstance(jitter, np.ndarray) and isinstance(srt, PartialSort):
        srt = sm.sorted  # all jitters drawn: the count may need the whole sorted map
    ge = _count_jittered_ge(srt, jitter, th)
    i = np.arange(1, k + 1)
    tp = np.concatenate([[0.0], i / k, [1.0]])
    fp = np.concatenate([[0.0], (ge - i) / (n - k), [1.0]])
    return float(trapz(fp, tp))


def _judd_bands(fixed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the mit AUC-Judd reads the sorted map around fixated values (see :func:`_jitter`;
    the same expressions, so the same edges)."""
    pad = 8 * np.spacing(np.abs(fixed) + 1e-7)
    return fixed - (2.5e-7 + pad), fixed + (1.5e-7 + pad)


def _judd_ranks(sm: Map, gts, protocols):
    """The sorted map as AUC-Judd reads it, built once per prepared map for the ground truths
    of every protocol given: a :class:`~._ranks.PartialSort` over the fixated values (and the
    mit bands around them) where the map allows, else the full sort."""
    def make():
        if "sorted" in sm._c:
            return None
        los, his = [], []
        for g, p in zip(gts, protocols):
            if p == "exact":
                v = sm.flat[g.flat]
                los.append(v)
                his.append(v)
            else:
                a, b = _judd_bands(sm.flat[g.unique_flat])
                los.append(a)
                his.append(b)
        los, his = np.concatenate(los), np.concatenate(his)
        if likely_too_many(sm.flat, los, his):
            return None  # heavy ties: the full sort at once (it also gives the extremes)
        if not sm.lo >= 0 or sm.constant:
            return None
        return partial_sort(sm.flat, sm.hi, los, his, sm.scratch)

    part = sm.get("judd_ranks", make)
    return sm.sorted if part is None else part


def _sorted_positions(srt: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Positions in the sorted map of the pixels with ``values`` (the fixated pixels, in
    row-major order): within a run of equal values the fixated pixels take its first places, in
    row-major order.  Which places tied pixels take changes nothing but which jitter each draws,
    and the jitters are independent and identically distributed."""
    order = np.argsort(values, kind="stable")
    v = values[order]
    rank = np.arange(len(v)) - np.searchsorted(v, v, side="left")  # among equal fixated values
    pos = np.empty(len(v), dtype=np.int64)
    pos[order] = srt.searchsorted(v, side="left") + rank
    return pos


class _SparseJitter:
    """The jitter ``rng.random(n)`` would draw, at the positions of some runs only.

    PCG64 (numpy's default generator) draws one 64-bit word per float64, and its ``advance``
    skips words, so the values at positions ``[a, b)`` are ``advance(a - drawn so far)`` then
    ``random(b - a)``: the very numbers a full draw would put there.  Indexing with positions
    outside the runs is an error."""

    def __init__(self, rng: np.random.Generator, starts: np.ndarray, stops: np.ndarray, n: int):
        bg = rng.bit_generator
        parts, cur = [], 0
        for a, b in zip(starts.tolist(), stops.tolist()):
            if a > cur:
                bg.advance(a - cur)
            parts.append(rng.random(b - a))
            cur = b
        if n > cur:
            bg.advance(n - cur)  # leave the generator where a full draw would
        self.starts = starts
        self.offsets = np.concatenate([[0], np.cumsum(stops - starts)[:-1]]).astype(np.int64)
        self.stops = stops
        self.values = np.concatenate(parts) if parts else np.zeros(0)

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        r = np.searchsorted(self.starts, idx, side="right") - 1
        if len(idx) and (r.min() < 0 or np.any(idx >= self.stops[r])):
            raise IndexError("jitter asked outside the drawn runs")
        return self.values[self.offsets[r] + (idx - self.starts[r])]


def _jitter(rng: np.random.Generator, srt: np.ndarray, fixed: np.ndarray, out: np.ndarray):
    """The mit AUC-Judd jitter (``rng.random(n)``, one value per position of the sorted map).

    Only the positions near a fixated value are ever read: the fixated pixels and the runs
    below each threshold (:func:`_count_jittered_ge`); a threshold lies in ``[v, v + 1e-7]``
    (plus rounding) of a fixated value ``v`` and its run in ``[t - 2e-7, t)``, so the sorted
    positions of ``[v - 2.5e-7, v + 1.5e-7]`` (widened by a few ulps) hold every one.  Where the
    generator can skip ahead (PCG64) and those positions are few, only they are drawn
    (:class:`_SparseJitter`); otherwise all ``n`` values are drawn into ``out``.
    """
    n = srt.size
    if type(rng.bit_generator) is np.random.PCG64 and len(fixed):
        a, b = _judd_bands(fixed)
        lo = srt.searchsorted(a, side="left")
        hi = srt.searchsorted(b, side="right")
        order = np.argsort(lo, kind="stable")
        lo, hi = lo[order], np.maximum.accumulate(hi[order])
        # merge runs that overlap or lie within 1024 positions (drawing is cheaper than a skip)
        new = np.concatenate([[True], lo[1:] > hi[:-1] + 1024])
        starts = lo[new]
        stops = hi[np.concatenate([np.flatnonzero(new)[1:] - 1, [len(hi) - 1]])]
        if int((stops - starts).sum()) <= n // 4:
            return _SparseJitter(rng, starts, stops, n)
    return rng.random(out=out)


def _count_jittered_ge(srt: np.ndarray, jitter, th: np.ndarray) -> np.ndarray:
    """For each threshold, the pixels of the jittered map ``srt + jitter / 1e7`` at or above it.

    ``srt`` is the sorted map and ``jitter / 1e7`` (at most 1e-7) belongs to its positions, so a
    position at or above ``t`` stays there and one more than ``w = 2e-7`` (plus rounding) below
    stays below: only the positions in ``[t - w, t)``, a contiguous run, need their jitter
    added.  Where those runs are long (many ties) the jittered map is sorted instead (then
    ``jitter`` is the full array: a :class:`_SparseJitter` only exists where the runs are short).
    """
    n = srt.size
    lower = th - (2e-7 + 4 * np.spacing(np.abs(th)))
    hi = srt.searchsorted(th, side="left")
    lo = srt.searchsorted(lower, side="left")
    lengths = hi - lo
    total = int(lengths.sum())
    if total > n // 4 + 4096 and isinstance(jitter, np.ndarray):
        # a map with many ties: one more sort is cheaper
        jittered = np.divide(jitter, 1e7, out=jitter)
        jittered += srt
        jittered.sort()
        return n - np.searchsorted(jittered, th, side="left")
    owner = np.repeat(np.arange(len(th)), lengths)
    idx = np.repeat(lo - np.cumsum(lengths) + lengths, lengths) + np.arange(total)
    above = np.bincount(owner, weights=(srt[idx] + jitter[idx] / 1e7) >= th[owner],
                        minlength=len(th))
    return (n - hi) + above.astype(np.int64)


def _m_auc_borji(sm: Map, gt, protocol, rng, n_splits=100, step=0.1, **_):
    rng = _rng(rng)
    if protocol == "mit":
        sth = sm.minmax_at(gt.unique_flat)
        r = rng.integers(0, sm.flat.size, size=(len(sth), n_splits))
        return float(auc_thresholds(sth, sm.minmax_at(r), step).mean())
    flat = sm.flat
    pos = flat[gt.flat]
    r = rng.integers(0, flat.size, size=(n_splits, len(pos)))
    table = _exact_ranks(sm, gt)
    if table is None:
        return float(auc_exact_splits(pos, flat[r]).mean())
    # the same exact sums as auc_exact_splits (multiples of 0.5), so the same numbers
    g, e = table.sums(flat, r)
    return float(((g + 0.5 * e) / r.shape[1] / len(pos)).mean())


def _exact_ranks(sm: Map, gt) -> RankTable | None:
    """The ranks of the map's values at the ``exact`` fixations (a :class:`~._ranks.RankTable`,
    shared by AUC-Borji and sAUC), or None where it does not apply (then they sort)."""
    return sm.get(("rank_table", id(gt)), lambda: RankTable.make(sm.flat[gt.flat], sm.lo, sm.hi))


def _m_sauc(sm: Map, gt, protocol, rng, other=None, n_splits=100, step=0.1, **_):
    if other is None:
        raise UserError("the shuffled AUC needs the fixations of other images (other=)")
    other = other if isinstance(other, GroundTruth) else _as_ground_truth(other, gt.shape)
    other = other.at(protocol)
    if other.shape != gt.shape:
        raise UserError("other-image fixations must be given in this image's pixel frame")
    if len(other) == 0:
        warnings.warn("no other-image fixations for the shuffled AUC; NaN", RuntimeWarning)
        return float("nan")
    if protocol == "exact":
        table = _exact_ranks(sm, gt)
        if table is None:
            return auc_exact(sm.flat[gt.flat], sm.flat[other.flat])
        # auc_exact's integer sums, counted without sorting the negatives: the same number
        g, e = table.sums(sm.flat, other.flat)
        return float((g[0] + 0.5 * e[0]) / (len(gt.flat) * len(other.flat)))
    rng = _rng(rng)
    sth = sm.minmax_at(gt.unique_flat)
    ind = other.unique_flat
    m = min(len(sth), len(ind))
    keys = rng.random((len(ind), n_splits))
    # the first m of a random permutation per split (MATLAB: randperm); only the set matters
    # to the ROC, so a partition (linear time) gives what a full argsort would (along the
    # contiguous axis of the transposed keys: the same sets, twice as fast as along axis 0);
    # compiled where Numba is available, counting the picks at the thresholds at once
    kt = np.ascontiguousarray(keys.T)
    kern = _kernels.compiled() if m < len(ind) else None
    if kern is not None:
        counts, ok = kern.split_counts(kt, m, sm.minmax_at(ind), thresholds(step))
        if ok:  # no tie at the m-th key (a tie leaves the set to argpartition)
            return float(auc_threshold_counts(sth, counts, m, step).mean())
    picks = (np.argpartition(kt, m - 1, axis=1)[:, :m].T
             if m < len(ind) else np.broadcast_to(np.arange(m)[:, None], (m, n_splits)))
    return float(auc_thresholds(sth, sm.minmax_at(ind[picks]), step).mean())


def _m_nss(sm: Map, gt, protocol, **_):
    ddof = 1 if protocol == "mit" else 0
    n = sm.flat.size
    if n - ddof <= 0 or sm.constant:
        return 0.0
    sd = math.sqrt(sm.ss / (n - ddof))
    at = gt.unique_flat if protocol == "mit" else gt.flat
    return float((sm.flat[at].mean() - sm.mean) / sd)


def _m_cc(sm: Map, gt, protocol, **_):
    d = gt.density(protocol).ravel()
    mean = _gt_get(gt, "mean_" + protocol, lambda: float(d.mean()))

    def centred_ss():  # once per image: the centred ground truth lives only in a work block
        def part(dd, w):
            np.subtract(dd, mean, out=w)
            return dot(w, w)
        return block_sum(part, d)

    gss = _gt_get(gt, "gss_" + protocol, centred_ss)
    den = math.sqrt(sm.ss * gss)
    if not den > 0 or sm.constant:
        return 0.0
    # sum(a * (d - mean)) = sum(a * d) - mean * sum(a) for the centred map a, without writing
    # the centred ground truth again; sum(a * d) from the shared pass where it ran
    cross = sm._c.get(("cc", protocol))
    if cross is None:
        cross = dot(sm.centred, d)
    return (cross - mean * sm.centred_sum) / den


def _gt_sum1_mit(gt):
    """The mit ground truth divided by its sum (KL)."""
    def make():
        d = gt.density("mit").ravel()
        # the sum from the blur's clipping pass where it ran, and the reciprocal, as
        # _fused.density_sums forms it (the same numbers whichever of the two made it)
        total = gt._cache.get("total_mit")
        if total is None:
            total = float(d.sum())
        return np.multiply(d, 1.0 / total if total > 0 else np.inf, out=gt._buf())

    return _gt_get(gt, "sum1_mit", make)


def _gt_dist(gt, protocol):
    """The ground truth as SIM and KL compare it: ``mit``, min-max normalised and divided by its
    sum (MIT ``similarity.m``); ``exact``, divided by its sum, shifted only if negative."""
    def make():
        d = gt.density(protocol).ravel()
        if protocol == "exact":
            if gt.density_map is None:
                return d  # the Gaussian density: non-negative, sum 1 by construction
            return as_density(d, out=gt._buf())
        if d.min() == 0:
            # shifting by a minimum of 0 changes nothing: the distribution is the map over its
            # sum, which KL has already computed (the same operations, the same numbers)
            return _gt_sum1_mit(gt)
        return as_distribution(d, out=gt._buf())

    return _gt_get(gt, "dist_" + protocol, make)


def _m_kl(sm: Map, gt, protocol, **_):
    if protocol == "mit":
        flat = sm.flat
        if sm.lo < 0:
            warnings.warn("negative saliency values: the mit KL divides the raw map by its sum; "
                          "shift the map to non-negative values", RuntimeWarning, stacklevel=3)
        if sm.lo >= 0 and not sm.constant and sm.total > 0 and ("kl", "mit") in sm._c \
                and "plogp_mit" in gt._cache:
            return gt._cache["plogp_mit"] - sm._c[("kl", "mit")]  # from the shared pass
        p = _gt_sum1_mit(gt)
        if sm.lo >= 0 and not sm.constant and sm.total > 0:
            # q = map / sum(map) is the map's density (the same numbers).  sum(p * log(eps + p /
            # (q + eps))) = sum(p log p) - sum(p log(q + eps)) + r with 0 <= r <= eps * sum(q +
            # eps) ~ 2.2e-16 (log(1 + x) <= x); the first sum belongs to the image (cached), the
            # log of the map is shared with the exact KL
            def plogp(pp, w):  # p log p, 0 where p is 0 (the blur is clipped at 0)
                np.maximum(pp, TINY, out=w)
                return dot(pp, np.log(w, out=w))

            own = _gt_get(gt, "plogp_mit", lambda: block_sum(plogp, p))
            return own - _kl_map_term(sm, p, protocol)
        r = sm.scratch  # r = eps + p / (q + eps) without temporaries
        if sm.constant:
            r.fill(1.0 / flat.size)
        else:
            np.divide(flat, sm.total, out=r)
        r += EPS
        np.divide(p, r, out=r)
        r += EPS
        return dot(p, np.log(r, out=r))
    # sum(p * log((p + eps) / (q + eps))) = sum(p * log(p + eps)) - sum(p * log(q + eps)): the
    # first sum belongs to the image (cached)
    p = _gt_dist(gt, protocol)

    def plogq(pp, q, w):
        np.add(q, EPS, out=w)
        return dot(pp, np.log(w, out=w))

    own = _gt_get(gt, "plogp_" + protocol, lambda: block_sum(plogq, p, p))
    return own - _kl_map_term(sm, p, protocol)


def _kl_map_term(sm: Map, p: np.ndarray, protocol: str) -> float:
    """``sum(p * log(q + eps))`` for the map's density ``q``: from the shared pass where it ran
    (:func:`_share_map_sums`), else from the map's log (computed once for both protocols)."""
    v = sm._c.get(("kl", protocol))
    return dot(p, _log_density(sm)) if v is None else v


def _log_density(sm: Map) -> np.ndarray:
    """``log(q + eps)`` of the map's density ``q`` (:attr:`Map.density`), once per prepared map:
    both protocols' KL read it."""
    def make():
        out = sm._buf()
        np.add(sm.density, EPS, out=out)
        return np.log(out, out=out)

    return sm.get("log_density", make)


def _share_map_sums(sm: Map, gt: GroundTruth, protocols, metrics) -> None:
    """The sums of CC, NSS, KL and SIM over the map for every protocol, in one blocked pass
    (:func:`~._fused.map_sums`), left in the prepared map's cache for the metric kernels
    (``("cc", p)``: sum of the centred map times the density; ``("kl", p)``: the map's KL
    term; ``("sim", p)``: SIM itself; and the moments).  The image's own terms (CC's mean and
    ``gss``, KL's ``sum(p log p)``) come from the same pass where they are not cached yet, and
    the mit distribution ``p = d / sum(d)`` is formed one block at a time (never written out).
    Only where at least two such sums are asked for; the kernels compute whatever is missing
    themselves."""
    kl_map = sm.lo >= 0 and not sm.constant and sm.total > 0  # the mit KL's fast path
    wanted = ("nss" in metrics) + sum(("cc" in metrics and not sm.constant) + ("sim" in metrics)
                                      + ("kl" in metrics and (p == "exact" or kl_map))
                                      for p in protocols)
    if wanted < 2:
        return  # one sum (or none): the kernels' own code, no densities made for nothing
    cross, kl, sim, own, owned, keys = [], [], [], [], [], ([], [], [])
    # a non-negative map's density is the map over its sum: formed block by block in the pass
    # (never written out whole) unless a kernel has made it already; the mit SIM's shifted
    # map is the same numbers where the minimum is 0
    plain = sm.lo >= 0 and not sm.constant and sm.total > 0 and "dist" not in sm._c and \
        "density" not in sm._c
    for p in protocols:
        g = gt.at(p)
        if not any(m in metrics for m in ("cc", "kl", "sim")):
            continue  # NSS alone: the map's moments only
        pkl, pdist = _pass_distributions(g, p, metrics, own, owned)
        if "cc" in metrics and not sm.constant:
            cross.append(g.density(p).ravel())
            keys[0].append(("cc", p))
        if "kl" in metrics and (p == "exact" or kl_map):
            kl.append(pkl)
            keys[1].append(("kl", p))
        if "sim" in metrics:
            if p == "exact":
                a = None if plain else sm.density
            else:
                a = None if plain and sm.lo == 0 else sm.dist
            sim.append((a, pdist))  # a None: the density formed in the pass
            keys[2].append(("sim", p))
    q = sm.total if plain else (sm.density if kl else None)
    res = map_sums(sm.flat, sm.mean, q, cross, kl, sim, own)
    if "ss" not in sm._c:
        sm._c.update(csum=res.csum, ss=res.ss)
    for ks, vals in zip(keys, (res.cross, res.kl, res.sim)):
        sm._c.update(zip(ks, vals))
    for i, (g, p, want_cc, want_kl, mean) in enumerate(owned):
        if want_cc:
            g._cache[f"mean_{p}"], g._cache[f"gss_{p}"] = mean, res.gss[i]
        if want_kl:
            g._cache[f"plogp_{p}"] = res.own[i]


def _pass_distributions(g: GroundTruth, protocol: str, metrics, own: list, owned: list):
    """The ground truth's distributions as the shared pass reads them: (KL's ``p``, SIM's),
    and the image's own terms to compute in it (appended to ``own`` / ``owned``).  The
    Gaussian density is its own distribution; the mit one is the clipped blur over its sum
    (from the clipping pass), formed in the pass unless a kernel made it already."""
    if g.density_map is not None:  # a given map: the kernels' own route
        _share_gt_sums(g, protocol, metrics)
        pdist = _gt_dist(g, protocol)
        return (pdist if protocol == "exact" else _gt_sum1_mit(g)), pdist
    c = g._cache
    d = g.density(protocol).ravel()
    if protocol == "mit":
        total = c["total_mit"]
        pkl = c.get("sum1_mit")
        if pkl is None:
            pkl = Scaled(d, 1.0 / total if total > 0 else np.inf)
        pdist = pkl if c["min_mit"] == 0 else _gt_dist(g, "mit")
        mean = total / d.size
    else:
        pkl = pdist = d  # normalised and non-negative
        mean = 1.0 / d.size
    want_cc = "cc" in metrics and f"gss_{protocol}" not in c
    want_kl = "kl" in metrics and f"plogp_{protocol}" not in c
    if want_cc or want_kl:
        own.append(Own(protocol if want_kl else None, pkl, d, mean if want_cc else None))
        owned.append((g, protocol, want_cc, want_kl, mean))
    return pkl, pdist


def _share_gt_sums(g: GroundTruth, protocol: str, metrics) -> None:
    """The image's terms of CC (mean and centred sum of squares of the density) and KL (the
    mit distribution ``p = d / sum(d)`` and ``sum(p log p)``, the exact ``sum(p log(p +
    eps))``) in two blocked passes over the density (:func:`~._fused.density_sums`), cached in
    the ground truth under the keys the kernels read; what is cached already is not redone."""
    c = g._cache
    want_cc = "cc" in metrics and f"gss_{protocol}" not in c
    want_kl = "kl" in metrics and f"plogp_{protocol}" not in c
    if g.density_map is not None or not (want_cc or want_kl):
        return
    d = g.density(protocol).ravel()
    own = protocol if want_kl else None
    if own == "mit" and "sum1_mit" in c:
        own = None  # p exists: the kernel's own pass over it
    if protocol == "mit":  # sum and minimum from the clipping pass of the blur
        known = c.get("total_mit"), c.get("min_mit")
    else:  # the Gaussian density is normalised and non-negative
        known = (1.0, 0.0) if g.density_map is None else (None, None)
    res = density_sums(d, own=own, cc=want_cc, out=g._buf() if own == "mit" else None,
                       total=known[0], lo=known[1])
    if want_cc:
        c[f"mean_{protocol}"], c[f"gss_{protocol}"] = res["mean"], res["gss"]
    if own is not None:
        c[f"plogp_{protocol}"] = res["own"]
    if own == "mit":
        c["sum1_mit"] = res["p"]
        if res["min"] == 0:  # as _gt_dist: shifting by a minimum of 0 changes nothing
            c.setdefault("dist_mit", res["p"])


def _m_sim(sm: Map, gt, protocol, **_):
    if ("sim", protocol) in sm._c:  # from the shared pass
        return sm._c[("sim", protocol)]
    q = sm.dist if protocol == "mit" else sm.density

    def part(a, b, w):
        return np.minimum(a, b, out=w).sum()

    return block_sum(part, q, _gt_dist(gt, protocol))


def _m_ig(sm: Map, gt, protocol, baseline=None, **_):
    if baseline is None:
        from .classical import centre_bias

        baseline = centre_bias(gt.shape)
    if not isinstance(baseline, Map):
        b = np.asarray(baseline, dtype=np.float64)
        if b.shape != tuple(gt.shape):
            b = resize(b, gt.shape)
        baseline = Map(b)
    at = gt.unique_flat if protocol == "mit" else gt.flat
    return float(np.mean(np.log2(EPS + sm.dist_at(at)) - np.log2(EPS + baseline.dist[at])))


def has_emd() -> bool:
    """True when the optional optimal-transport package POT is importable."""
    try:
        import ot  # noqa: F401
    except ImportError:
        return False
    return True


def _m_emd(sm: Map, gt, protocol, emd_scale=1 / 32, **_):
    if not has_emd():
        raise UserError("the EMD metric needs the optional package POT", hint="pip install pot")
    import ot

    h_, w_ = gt.shape
    small = (max(1, round(h_ * emd_scale)), max(1, round(w_ * emd_scale)))
    a = as_distribution(resize(sm.map, small).ravel())
    b = as_distribution(resize(np.nan_to_num(gt.density(protocol)), small).ravel())
    yy, xx = np.mgrid[: small[0], : small[1]]
    pts = np.stack([yy.ravel(), xx.ravel()], 1).astype(np.float64)
    cost = ot.dist(pts, pts, metric="euclidean")
    return float(ot.emd2(a, b, cost))


_FUNCS = {"auc_judd": _m_auc_judd, "auc_borji": _m_auc_borji, "sauc": _m_sauc, "nss": _m_nss,
          "cc": _m_cc, "kl": _m_kl, "sim": _m_sim, "ig": _m_ig, "emd": _m_emd}


def _check_metrics(metrics):
    unknown = [m for m in metrics if m not in _FUNCS]
    if unknown:
        raise UserError(f"unknown saliency metric(s) {', '.join(unknown)}",
                        hint="choose from " + ", ".join(METRICS + OPTIONAL_METRICS))


# --------------------------------------------------------------------------- public metrics
_COMMON = """
    Parameters
    ----------
    saliency : (H, W) array or tensor
        The model's map (leading axes of length 1 are squeezed).  ``mit`` resizes a map of
        another size to the fixation map (bilinear, with a warning); ``exact`` refuses it.
    fixations : GroundTruth, Fixations, (N, 2) array of x, y, or (H, W) binary / count map
        The image's fixations: 0-based coordinates with pixel centres at integers, rounded
        to pixels as the protocol rounds (``mit``: MATLAB, halves away from zero; ``exact``:
        numpy, halves to even).
    protocol : {"mit", "exact"}
    shape : (H, W), optional
        The image size where ``fixations`` does not carry it (default: the map's shape).
{extra}
    Returns
    -------
    float
        NaN (with a warning) when the image has no fixations or the map is not finite.
"""


def _doc(text: str, extra: str = "") -> str:
    """A metric's docstring: its description, the common parameters (and ``extra`` ones), the
    return value, then the description's References section moved to the end (numpy order)."""
    body, sep, refs = text.partition("\n\n    References\n")
    common = _COMMON.replace("{extra}", extra.rstrip("\n") + "\n" if extra else "")
    return body.rstrip() + "\n" + common + (("\n    References\n" + refs.rstrip() + "\n")
                                            if sep else "")


_RNG = """    rng : int, sequence of ints, SeedSequence or Generator
        Seed of the random draws; the metric has its own stream (:func:`metric_rng`).
"""
_SPLITS = _RNG + """    n_splits : int
        Random splits of negatives, averaged (100).
    step : float
        Threshold step of the ``mit`` ROC (0.1: thresholds ``0:0.1:1``).
"""


def auc_judd(saliency, fixations, protocol: str = "mit", **kwargs) -> float:
    return _one("auc_judd", saliency, fixations, protocol, kwargs)


auc_judd.__doc__ = _doc("""AUC-Judd: area under the ROC curve of the fixations against all pixels.

    ``mit`` (``AUC_Judd.m``): the map plus a uniform jitter in [0, 1e-7) to break ties (one
    draw per pixel, in the order of the map's values, ascending; within a run of equal values
    the fixated pixels first, each in row-major order: the same distribution as MATLAB's
    ``rand(size(map))``, drawn so that the sort the ``exact`` protocol needs serves here too);
    the thresholds are the jittered values at the fixated pixels
    (each pixel once); at the i-th highest threshold the true-positive rate is i / k and the
    false-positive rate (pixels above it - i) / (non-fixated pixels); trapezoid area with the
    end points (0, 0) and (1, 1).

    ``exact``: the exact ROC area of the map's values at every fixation (repeats counted)
    against the values of *all* pixels, ties scored 0.5 (pysaliency's ``AUC`` with uniform
    non-fixations): ``P(s_fix > s_pix) + 0.5 P(s_fix == s_pix)``.  Chance is 0.5 (a constant
    map scores exactly 0.5 in ``exact``; ``mit`` gives chance plus 1 / (2 k) from its ROC
    through the fixated pixels).

    References
    ----------
    Judd, Ehinger, Durand, Torralba, "Learning to predict where humans look", ICCV 2009.
    Bylinskii et al., TPAMI 2019 (the MIT code).  Kümmerer, Wallis, Bethge, ECCV 2018.""", _RNG)


def auc_borji(saliency, fixations, protocol: str = "mit", **kwargs) -> float:
    return _one("auc_borji", saliency, fixations, protocol, kwargs)


auc_borji.__doc__ = _doc("""AUC-Borji: area under the ROC curve of fixations against random pixels.

    ``mit`` (``AUC_Borji.m``): the map min-max normalised; for each of ``n_splits`` splits, as
    many pixels as there are fixated pixels are drawn uniformly with replacement as negatives;
    true- and false-positive rates at the thresholds ``0:step:1``, trapezoid area; the mean over
    the splits.

    ``exact``: for each split, as many uniformly drawn pixels as fixations (repeats counted);
    the exact ROC area with ties scored 0.5; the mean over the splits.

    References
    ----------
    Borji, Tavakoli, Sihite, Itti, "Analysis of scores, datasets, and models in visual saliency
    prediction", ICCV 2013.  Bylinskii et al., TPAMI 2019.""", _SPLITS)


def sauc(saliency, fixations, protocol: str = "mit", **kwargs) -> float:
    return _one("sauc", saliency, fixations, protocol, kwargs)


sauc.__doc__ = _doc("""Shuffled AUC: fixations against the fixations of *other* images.

    ``mit`` (``AUC_shuffled.m``): the map min-max normalised; for each of ``n_splits`` splits the
    negatives are ``min(k, m)`` pixels drawn without replacement from the ``m`` pixels fixated on
    other images (``other``; :func:`evaluate_batch` takes the union of 10 other images, as
    Borji's code); thresholds ``0:step:1``, trapezoid area, mean over the splits.

    ``exact``: the exact ROC area (ties 0.5) of the map at every fixation against the map at
    every fixation of the other images (pysaliency's ``AUC`` with shuffled non-fixations).

    References
    ----------
    Zhang, Tong, Marks, Shan, Cottrell, "SUN: a Bayesian framework for saliency using natural
    statistics", JoV 2008; Tatler, Baddeley, Gilchrist, Vision Research 2005.""",
                    _SPLITS + """    other : GroundTruth, fixations or dict protocol -> fixations
        The other images' fixations, in this image's pixel frame (required).
""")


def nss(saliency, fixations, protocol: str = "mit", **kwargs) -> float:
    return _one("nss", saliency, fixations, protocol, kwargs)


nss.__doc__ = _doc("""NSS: normalized scanpath saliency, the mean z-score of the map at fixations.

    The map is standardised, ``(s - mean(s)) / std(s)`` over all pixels, and averaged at the
    fixations.  ``mit`` (``NSS.m``): ``std`` with ddof=1 (MATLAB's ``std``), each fixated pixel
    once (the binary map).  ``exact``: ddof=0 (numpy's, pysaliency's), every fixation counted.
    A constant map scores 0 (MATLAB would give NaN).  Chance is 0; larger is better.

    References
    ----------
    Peters, Iyer, Itti, Koch, "Components of bottom-up gaze allocation in natural images",
    Vision Research 2005.""")


def cc(saliency, fixations, protocol: str = "mit", **kwargs) -> float:
    return _one("cc", saliency, fixations, protocol, kwargs)


cc.__doc__ = _doc("""CC: Pearson's correlation between the map and the fixation density.

    The density is the protocol's ground truth (:meth:`GroundTruth.density`): ``mit``, the
    binary fixation map blurred by :func:`mit_blur` (``CC.m``); ``exact``, the Gaussian density
    over every fixation (:func:`gaussian_density`).  ``sum(a * b) / sqrt(sum(a**2) sum(b**2))``
    of the centred maps; a constant map scores 0.  In [-1, 1]; larger is better.

    References
    ----------
    Le Meur, Le Callet, Barba, "Predicting visual fixations on video based on low-level visual
    features", Vision Research 2007.  Bylinskii et al., TPAMI 2019.""")


def kl(saliency, fixations, protocol: str = "mit", **kwargs) -> float:
    return _one("kl", saliency, fixations, protocol, kwargs)


kl.__doc__ = _doc("""KL: Kullback-Leibler divergence of the map from the fixation density.

    ``mit`` (``KLdiv.m``): ``q = s / sum(s)``, ``p = g / sum(g)`` (``g`` the blurred binary
    map), ``sum(p * log(eps + p / (q + eps)))`` with eps = 2.2204e-16; the map is *not*
    shifted (a negative map warns).  For a non-negative map it is computed as ``sum(p log p) -
    sum(p log(q + eps))``, which differs from that by at most ``eps * sum(q + eps)`` (about
    2.2e-16) plus rounding.

    ``exact``: ``q = s / sum(s)``, shifted to minimum 0 first only if the map has negative
    values (pysaliency's ``convert_saliency_map_to_density``), ``p`` the Gaussian density;
    ``sum(p * log((p + eps) / (q + eps)))``.  A constant map is the uniform distribution.

    References
    ----------
    Riche, Duvinage, Mancas, Gosselin, Dutoit, "Saliency and human fixations: state-of-the-art
    and study of comparison metrics", ICCV 2013.  Bylinskii et al., TPAMI 2019.""")


def sim(saliency, fixations, protocol: str = "mit", **kwargs) -> float:
    return _one("sim", saliency, fixations, protocol, kwargs)


sim.__doc__ = _doc("""SIM: histogram intersection ``sum(min(q, p))`` of map and fixation density.

    ``mit`` (``similarity.m``): both the map and the blurred binary map min-max normalised and
    divided by their sums.  ``exact`` (pysaliency's ``SIM``): the map divided by its sum, shifted
    to minimum 0 first only if it has negative values; ``p`` the Gaussian density.  In [0, 1]
    (1: identical); a constant map is the uniform distribution.

    References
    ----------
    Swain, Ballard, "Color indexing", IJCV 1991; Judd, Durand, Torralba, "A benchmark of
    computational models of saliency to predict human fixations", MIT tech. report 2012.""")


def ig(saliency, fixations, protocol: str = "mit", **kwargs) -> float:
    return _one("ig", saliency, fixations, protocol, kwargs)


ig.__doc__ = _doc("""IG: information gain over a baseline map, in bits per fixation.

    Both the map and the baseline are min-max normalised and divided by their sums (``s``,
    ``b``); ``mean(log2(eps + s) - log2(eps + b))`` at the fixations: ``mit`` (``InfoGain.m``)
    each fixated pixel once, ``exact`` every fixation.  0 for the baseline itself; larger is
    better.

    References
    ----------
    Kümmerer, Wallis, Bethge, "Information-theoretic model comparison unifies saliency
    metrics", PNAS 2015.""", """    baseline : (H, W) array, optional
        The reference map (default :func:`~neuroprobe.saliency.classical.centre_bias`).
""")


def emd(saliency, fixations, protocol: str = "mit", **kwargs) -> float:
    return _one("emd", saliency, fixations, protocol, kwargs)


emd.__doc__ = _doc("""EMD: earth mover's distance to the fixation density (needs POT).

    Both maps are downsampled by ``emd_scale`` (1/32, as the MIT ``EMD.m``), shifted to minimum
    0 and divided by their sums; the ground distance is the Euclidean distance between pixel
    centres of the small grid, in its pixels; solved exactly with POT's ``emd2``.  Lower is
    better.

    References
    ----------
    Rubner, Tomasi, Guibas, "The earth mover's distance as a metric for image retrieval", IJCV
    2000; Pele, Werman, ICCV 2009.""", """    emd_scale : float
        Downsampling factor (1/32).
""")


def _one(metric, saliency, fixations, protocol, kwargs) -> float:
    return evaluate_map(saliency, fixations, protocol, (metric,), **kwargs)[metric]


# --------------------------------------------------------------------------- evaluation
def evaluate_protocols(saliency, fixations, protocols=PROTOCOLS, metrics=METRICS, *,
                       baseline=None, other=None, rng=0, shape=None, workspace=None,
                       **options) -> dict[str, dict[str, float]]:
    """All requested metrics of one map in several protocols, sharing the work between them.

    Arguments as :func:`evaluate_map`; ``other`` may be a dict ``protocol -> fixations``.  The
    map is prepared once (its sort, extremes and moments serve every metric and protocol) and
    the ground truth's densities are cached in the :class:`GroundTruth`.  ``workspace``: a
    :class:`~neuroprobe.saliency._workspace.Workspace` the prepared map's arrays come from and
    go back to (a loop over images passes one; see that module).
    Returns ``{protocol: {metric: value}}``.
    """
    for p in protocols:
        _check_protocol(p)
    _check_metrics(metrics)
    if shape is None and hasattr(saliency, "shape"):
        shape = tuple(int(v) for v in saliency.shape)[-2:]
    gt = _as_ground_truth(fixations, shape)
    nan = {m: float("nan") for m in metrics}
    if _no_fixations(gt):
        return {p: dict(nan) for p in protocols}
    if baseline is not None and not isinstance(baseline, Map):
        b = np.asarray(baseline, dtype=np.float64)
        baseline = Map(b if b.shape == tuple(gt.shape) else resize(b, gt.shape))
    base = _base_seed(rng)
    out = {}
    prepared: dict = {}
    saliency = as_map_array(saliency)
    with blas_single_thread():
        try:
            for p in protocols:
                g = gt.at(p)
                sm = prepare(saliency, g, p, prepared, ws=workspace)
                if sm is None or len(g) == 0:
                    out[p] = dict(nan)
                    continue
                if sm.map.shape == saliency.shape and "shared" not in sm._c:
                    # one prepared map serves every protocol: one histogram of it answers
                    # AUC-Judd's ranks, one pass gives the sums of CC, NSS, KL and SIM
                    sm._c["shared"] = True
                    live = [q for q in protocols if len(gt.at(q))]
                    if "auc_judd" in metrics:
                        _judd_ranks(sm, [gt.at(q) for q in live], live)
                    _share_map_sums(sm, gt, live, metrics)
                oth = other.get(p) if isinstance(other, dict) else other
                out[p] = {m: _FUNCS[m](sm, g, p, baseline=baseline, other=oth,
                                       rng=_stream(base, p, m) if m in RANDOM_STREAMS else None,
                                       **options)
                          for m in metrics}
        finally:
            for sm in prepared.values():
                if sm is not None:
                    sm.close()
    return out


def evaluate_image(saliency, fixations, metrics=None, protocols=PROTOCOLS, **kwargs
                   ) -> dict[str, dict[str, float]]:
    """Every requested metric of one image's map in every requested protocol, at once.

    The image's ground truth (a :class:`GroundTruth`: fixated pixels of each protocol, the
    blurred densities of CC, SIM, KL and IG, and everything derived from them) is built once and
    shared by all metrics and protocols, as is the prepared map (AUC-Judd's ranks, the moments,
    the distributions); pass the same :class:`GroundTruth` to score several models of one image
    against one ground truth.  Keyword arguments as :func:`evaluate_map` (``baseline``,
    ``other``, ``rng``, ``shape``, ``n_splits``, ``step``, ``emd_scale``) and ``workspace``
    (:func:`evaluate_protocols`).

    ``metrics`` defaults to all of :data:`METRICS`, less ``sauc`` when ``other`` is not given.
    Returns ``{protocol: {metric: value}}``; equal to :func:`evaluate_map` per protocol.
    """
    if metrics is None:
        metrics = tuple(m for m in METRICS if kwargs.get("other") is not None or m != "sauc")
    return evaluate_protocols(saliency, fixations, tuple(protocols), tuple(metrics), **kwargs)


def _no_fixations(gt: GroundTruth) -> bool:
    if len(gt) == 0:
        warnings.warn(f"no fixations{' on ' + gt.image if gt.image else ''}; its scores are NaN",
                      RuntimeWarning, stacklevel=3)
        return True
    return False


def evaluate_map(saliency, fixations, protocol: str = "mit", metrics=None, *,
                 baseline=None, other=None, rng=0, shape=None, **options) -> dict[str, float]:
    """All requested metrics of one saliency map against one image's fixations.

    Parameters
    ----------
    saliency : (H, W) array or tensor
    fixations : GroundTruth, Fixations, (N, 2) array of x, y, or an (H, W) binary/count map
    protocol : "mit" or "exact"
    metrics : names from :data:`METRICS` (and ``"emd"`` with POT installed); default all of
        :data:`METRICS`, less ``sauc`` when ``other`` is not given
    baseline : (H, W) map for the information gain (default: :func:`~.classical.centre_bias`)
    other : fixations of other images in this image's frame (needed for ``sauc``)
    rng : seed, SeedSequence or Generator for the random parts (AUC-Judd jitter, AUC-Borji and
        sAUC splits); each random metric has its own stream (:func:`metric_rng`)
    shape : (H, W) where the fixations do not carry the image size
    **options : ``n_splits``, ``step`` (AUC-Borji, sAUC), ``emd_scale`` (EMD)

    Returns
    -------
    dict metric -> float (NaN where the image has no fixations or the map is not finite).
    """
    if metrics is None:
        metrics = tuple(m for m in METRICS if other is not None or m != "sauc")
    return evaluate_protocols(saliency, fixations, (protocol,), metrics, baseline=baseline,
                              other=other, rng=rng, shape=shape, **options)[protocol]


def evaluate_batch(maps, fixations, protocols=PROTOCOLS, metrics=METRICS, *, baseline=None,
                   seed: int = 0, n_other: int = 10, progress: bool = False,
                   **options) -> list[dict]:
    """Evaluate a batch of saliency maps against their images' fixations, in several protocols.

    Parameters
    ----------
    maps : sequence of (H, W) arrays, a (B, H, W) / (B, 1, H, W) array or tensor, or a callable
        ``i -> map`` (maps made on the fly, e.g. by a model)
    fixations : sequence of GroundTruth / Fixations (with ``size``) of the same length
    protocols : protocols to compute ("mit", "exact")
    metrics : metric names
    baseline : map, or callable ``shape -> map``, for the information gain (default centre bias)
    seed : the random parts of image ``i`` use ``default_rng([seed, i])``; reproducible
    n_other : other images per shuffled-AUC negative set in the ``mit`` protocol

    Returns
    -------
    list of dicts ``{"index", "image", "protocol", "n_fixations", <metric>: value}``, one per image
    and protocol.  The ground-truth densities are computed once per image and shared by the
    protocols and by every call that passes the same GroundTruth objects; those built here from
    other fixation records are released after their image, so memory stays bounded.
    """
    fixations = list(fixations)
    given = [isinstance(f, GroundTruth) for f in fixations]
    gts = ground_truths(fixations)
    if hasattr(maps, "detach"):
        maps = maps.detach().cpu().numpy()
    if isinstance(maps, np.ndarray) and maps.ndim == 4:
        maps = maps[:, 0]
    get = maps if callable(maps) else (lambda i: maps[i])
    n = len(gts)
    if not callable(maps) and len(maps) != n:
        raise UserError(f"{len(maps)} saliency maps for {n} fixation sets")
    _check_metrics(metrics)
    it = range(n)
    if progress:
        from ..utils import progress as bar

        it = bar(it, desc="saliency metrics", unit="img")
    base_cache: dict = {}
    with blas_single_thread():
        return _batch_loop(it, gts, given, get, metrics, protocols, baseline, base_cache, seed,
                           n_other, n, options)


def _batch_loop(it, gts, given, get, metrics, protocols, baseline, base_cache, seed, n_other, n,
                options) -> list[dict]:
    rows = []
    ws = Workspace()  # image-sized buffers reused from image to image (see _workspace)
    others = OtherFixations(gts) if "sauc" in metrics else None
    for i in it:
        gt = gts[i]
        if not given[i]:
            gt.lend(ws)  # ours: its densities may come from and go back to the workspace
        key = gt.shape
        if key not in base_cache:
            if baseline is None:
                from .classical import centre_bias

                b = centre_bias(key)
            else:
                b = baseline(key) if callable(baseline) else np.asarray(baseline, np.float64)
            if b.shape != key:
                b = resize(b, key)
            base_cache[key] = Map(b)
        other = None
        if others is not None:
            def make(i=i):
                return {p: others(i, p, n_other, rng=[seed, i, 1]) for p in protocols}
            # kept with the caller's ground truths (a validation loop passes them every epoch)
            other = _gt_get(gt, f"other_{n_other}_{seed}_{n}", make) if given[i] else make()
        res = evaluate_protocols(get(i), gt, protocols, metrics, baseline=base_cache[key],
                                 other=other, rng=np.random.default_rng([seed, i]),
                                 workspace=ws, **options)
        for p in protocols:
            rows.append({"index": i, "image": gt.image, "protocol": p, "n_fixations": len(gt),
                         **res[p]})
        if not given[i]:
            gt.release()  # ours: free its densities (the caller's objects keep their caches)
    return rows
