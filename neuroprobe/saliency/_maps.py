"""Saliency maps prepared once for all metrics and protocols of one call.

:func:`prepare` turns an array or tensor into a :class:`Map` of the ground truth's size (resized
in the ``mit`` protocol, refused in ``exact``) and checks it is finite; :class:`Map` computes
each quantity several metrics share (extremes, mean, centred map, distributions, sorted values)
once, on first use.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from ..errors import UserError
from ._workspace import Workspace, take
from .groundtruth import GroundTruth, SaliencyShapeError

#: MATLAB's eps, as the MIT benchmark code adds it (KL, IG).
EPS = 2.2204e-16

__all__ = ["Map", "prepare", "as_distribution", "as_density", "resize", "as_map_array", "dot",
           "block_sum"]


def resize(smap: np.ndarray, shape) -> np.ndarray:
    """Bilinear resize (edge mode, anti-aliased, range preserved), as the ``mit`` protocol does."""
    from skimage.transform import resize as sk_resize

    return sk_resize(smap, shape, order=1, mode="edge", anti_aliasing=True, preserve_range=True)


def as_map_array(saliency) -> np.ndarray:
    """A 2-D float64 array from an array or tensor (leading axes of length 1 squeezed)."""
    smap = saliency
    if hasattr(smap, "detach"):
        smap = smap.detach().cpu().numpy()
    smap = np.asarray(smap, dtype=np.float64)
    smap = np.squeeze(smap) if smap.ndim > 2 else smap
    if smap.ndim != 2:
        raise UserError(f"a saliency map must be 2-D (H, W); got shape {tuple(smap.shape)}")
    return smap


def prepare(saliency, gt: GroundTruth, protocol: str, cache: dict | None = None, *,
            sort: bool = False, ws: Workspace | None = None) -> Map | None:
    """The float64 map of the ground truth's shape as a :class:`Map`, or None (NaN result)
    with a warning.  ``cache`` shares the prepared map between the protocols of one call;
    ``sort=True`` sorts its values at once (the extremes then come free; AUC-Judd sorts only
    where :mod:`._ranks` cannot answer);
    ``ws``: the workspace its arrays come from (:meth:`Map.close` gives them back)."""
    smap = as_map_array(saliency)
    same = smap.shape == tuple(gt.shape)
    if cache is not None and same in cache:
        return cache[same]
    if not same:
        if protocol == "exact":
            raise SaliencyShapeError(
                f"saliency map {smap.shape[1]}x{smap.shape[0]} differs from the fixation map "
                f"{gt.shape[1]}x{gt.shape[0]}{' of ' + gt.image if gt.image else ''}",
                hint="the exact protocol does not resize: resize the map yourself or use "
                "protocol='mit'")
        warnings.warn(f"saliency map {smap.shape[1]}x{smap.shape[0]} resized to the fixation map "
                      f"{gt.shape[1]}x{gt.shape[0]} (mit protocol)", RuntimeWarning, stacklevel=3)
        smap = resize(smap, gt.shape)
    sm = Map(smap, ws)
    if sort:
        sm.sorted  # noqa: B018 - computed now: it also gives the extremes
    # a finite sum means finite values (NaN and infinity propagate into it) and is needed by
    # most metrics anyway; only where it is not finite (also when finite values overflow it)
    # are the extremes looked at, which min and max propagate NaN into
    if not math.isfinite(sm.total) and not (math.isfinite(sm.lo) and math.isfinite(sm.hi)):
        warnings.warn(f"saliency map{' of ' + gt.image if gt.image else ''} contains NaN or "
                      "infinity; its scores are NaN", RuntimeWarning, stacklevel=3)
        sm.close()
        sm = None
    if cache is not None:
        cache[same] = sm
    return sm


class Map:
    """A prepared saliency map with the derived quantities several metrics share (computed once).

    The extremes come from the sorted values where those exist (AUC-Judd's fallback), from
    one pass each otherwise; the min-max normalised map (AUC-Borji, sAUC) is only formed at the
    pixels those metrics sample.  Image-sized temporaries go to one reused work array
    (:attr:`scratch`): allocating a fresh 800x600 float64 array costs about as much as a pass
    over it (the kernel maps and zeroes its pages); with a :class:`Workspace` every one of them
    comes from it and :meth:`close` gives them back.
    """

    def __init__(self, smap: np.ndarray, ws: Workspace | None = None):
        self.map = smap
        self.flat = smap.ravel()
        self._c: dict = {}
        self._ws = ws
        self._own: list = []  # the buffers this map took

    def _buf(self) -> np.ndarray:
        b = take(self._ws, self.flat.size)
        self._own.append(b)
        return b

    def close(self) -> None:
        """Give the map's buffers back to its workspace; the map must not be used after."""
        if self._ws is not None:
            self._ws.give(self._own)
        self._own = []
        self._c.clear()

    def get(self, key, fn):
        if key not in self._c:
            self._c[key] = fn()
        return self._c[key]

    @property
    def sorted(self) -> np.ndarray:
        """The map's values in ascending order (NaN last)."""
        def make():
            out = self._buf()
            np.copyto(out, self.flat)
            out.sort()  # the same quicksort as np.sort, in a reused buffer
            return out
        return self.get("sorted", make)

    @property
    def lo(self) -> float:
        if "sorted" in self._c:
            return self.get("lo", lambda: _sorted_min(self.sorted))
        if "lo" not in self._c:
            self._extremes()
        return self._c["lo"]

    @property
    def hi(self) -> float:
        if "sorted" in self._c:
            return self.get("hi", lambda: float(self.sorted[-1]))
        if "hi" not in self._c:
            self._extremes()
        return self._c["hi"]

    def _extremes(self) -> None:
        """Minimum and maximum in one pass, block by block (each block is read from memory
        once; min and max are exact, so the same numbers as two whole-array passes)."""
        lows, highs = [], []
        for a in range(0, self.flat.size, BLOCK):
            blk = self.flat[a:a + BLOCK]
            lows.append(blk.min())
            highs.append(blk.max())
        # np.min / np.max of the blocks' extremes propagate NaN as the whole-array ones do
        self._c.setdefault("lo", float(np.min(lows)))
        self._c.setdefault("hi", float(np.max(highs)))

    @property
    def dist(self) -> np.ndarray:
        """Shifted to minimum 0 and divided by the sum (uniform if constant): the ``mit`` SIM
        (min-max normalised, then divided by the sum, is the same map) and IG."""
        if self.lo == 0:  # nothing to shift: the map over its sum, the same numbers
            return self.get("dist", lambda: as_density(self.flat, 0.0, self.total,
                                                       out=self._buf()))
        return self.get("dist", lambda: as_distribution(self.flat, self.lo, out=self._buf()))

    def dist_at(self, index) -> np.ndarray:
        """``dist[index]`` without forming the whole of :attr:`dist` where the minimum is 0
        (then it is the map over its sum: the same divisions, the same numbers)."""
        if "dist" not in self._c and self.lo == 0 and self.total > 0:
            return self.flat[index] / self.total
        return self.dist[index]

    @property
    def density(self) -> np.ndarray:
        """Divided by the sum, shifted to minimum 0 only when it has negative values (as
        pysaliency's ``convert_saliency_map_to_density``): the ``exact`` SIM and KL."""
        if self.lo <= 0:
            return self.dist  # a minimum of 0: shifting changes nothing, one array serves both
        return self.get("density", lambda: as_density(self.flat, self.lo, self.total,
                                                      out=self._buf()))

    @property
    def total(self) -> float:
        return self.get("total", lambda: float(self.flat.sum()))

    @property
    def mean(self) -> float:
        # numpy's mean is the same pairwise sum divided by the count: the same number, one pass
        return self.get("mean", lambda: self.total / self.flat.size)

    @property
    def centred(self) -> np.ndarray:
        """The map less its mean (with :attr:`centred_sum` and :attr:`ss`, one blocked pass)."""
        if "centred" not in self._c:
            self._moments()
        return self._c["centred"]

    @property
    def centred_sum(self) -> float:
        """Sum of the centred map (0 up to rounding)."""
        if "csum" not in self._c:
            self._moments()
        return self._c["csum"]

    @property
    def ss(self) -> float:
        """Sum of squared deviations from the mean."""
        if "ss" not in self._c:
            self._moments()
        return self._c["ss"]

    def _moments(self) -> None:
        """The centred map, its sum and its sum of squares, block by block (each block is
        summed while it is in cache)."""
        c = self._buf()
        csum = ss = 0.0
        for a in range(0, c.size, BLOCK):
            blk = np.subtract(self.flat[a:a + BLOCK], self.mean, out=c[a:a + BLOCK])
            csum += float(blk.sum())
            ss += dot(blk, blk)
        self._c.update(centred=c, csum=csum, ss=ss)

    @property
    def constant(self) -> bool:
        return self.lo == self.hi

    def minmax_at(self, index) -> np.ndarray:
        """The min-max normalised map ``(map - min) / (max - min)`` at the given flat indices
        (zeros for a constant map); only these values are ever needed, so the full normalised
        map is never formed."""
        if self.hi > self.lo:
            return (self.flat[index] - self.lo) / (self.hi - self.lo)
        return np.zeros(np.shape(index))

    @property
    def scratch(self) -> np.ndarray:
        """A work array of the map's size, reused by the metrics (its content is undefined)."""
        return self.get("scratch", self._buf)


def _sorted_min(srt: np.ndarray) -> float:
    """The minimum from sorted values: NaN sorts last, so a NaN anywhere must be looked for."""
    lo = float(srt[0])
    return float("nan") if math.isnan(float(srt[-1])) else lo


def as_distribution(v: np.ndarray, lo: float | None = None,
                    out: np.ndarray | None = None) -> np.ndarray:
    """Shift to minimum 0 and divide by the sum; a constant map becomes uniform.  ``lo``: the
    minimum of ``v`` where the caller knows it; ``out``: a buffer of ``v``'s size for the
    result."""
    v = np.subtract(v, v.min() if lo is None else lo, out=_like(out, v))
    total = v.sum()
    if total > 0:
        v /= total  # v is a fresh array here
        return v
    v.fill(1.0 / v.size)
    return v


def as_density(v: np.ndarray, lo: float | None = None, total: float | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
    """Divide by the sum, shifting to minimum 0 first only where the minimum is negative
    (pysaliency's ``convert_saliency_map_to_density`` with ``minimum_value=0``); a map whose sum
    is 0 becomes uniform.  ``lo`` and ``total``: the minimum and sum where the caller knows them;
    ``out``: a buffer of ``v``'s size for the result."""
    lo = float(v.min()) if lo is None else lo
    if lo < 0:
        return as_distribution(v, lo, out)
    total = v.sum() if total is None else total
    out = _like(out, v)
    if total > 0:
        return np.divide(v, total, out=out)
    out.fill(1.0 / v.size)
    return out


def _like(out: np.ndarray | None, v: np.ndarray) -> np.ndarray:
    """``out`` shaped as ``v`` (a new array without one)."""
    return np.empty(v.shape) if out is None else out.reshape(v.shape)


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """Inner product of two flat float64 arrays."""
    return float(a @ b)


#: Elements per block of :func:`block_sum` (256 KiB of float64: the blocks of a chain of
#: operations stay in the core's cache instead of streaming each image-sized temporary through
#: memory, about 1.6x faster on the project's shared machine).
BLOCK = 32768


def block_sum(fn, *arrays: np.ndarray) -> float:
    """``sum(fn(*blocks, work))`` over consecutive blocks of equally long flat arrays.

    ``fn`` gets the arrays' slices of one block and a work array of the block's length, and
    returns that block's part of the sum (a dot product, a sum).  The element-wise results are
    those of the whole-array operations; only the reduction is summed block by block (its
    rounding differs from one whole-array reduction by about 1e-16 of the result)."""
    n = arrays[0].size
    work = np.empty(min(n, BLOCK))
    total = 0.0
    for a in range(0, n, BLOCK):
        b = min(n, a + BLOCK)
        total += float(fn(*(x[a:b] for x in arrays), work[: b - a]))
    return total
