"""Ground truth of the saliency metrics: fixations as pixels, and the blurred fixation densities.

One :class:`GroundTruth` holds the fixations of one image in the forms both protocols need and
caches what is derived from them (densities, pixel indices), so that every metric, protocol and
model scored against that image shares one copy:

``mit``
    The binary fixation map (a pixel fixated twice counts once) blurred by :func:`mit_blur`, the
    Fourier-domain Gaussian of the MIT benchmark's ``antonioGaussian.m`` (8 cycles per image),
    clipped at 0.  Coordinates are rounded to pixels as MATLAB's ``round`` does (halves away
    from zero, on the 1-based coordinate): :func:`matlab_round`.
``exact``
    Every fixation counts: a sum of Gaussians (sigma in pixels, default :func:`mit_sigma` so that
    both protocols blur alike) over every fixation, normalised to sum 1
    (:func:`gaussian_density`).  Coordinates are rounded with numpy's ``round`` (halves to even).

Both blurs are separable and computed from the fixation list (rank-k products of cached 1-D
kernels) rather than by filtering an image; the leave-one-observer-out density subtracts the
held-out observer's blur from the image's (:func:`leave_out_density`).  Coordinates are 0-based
pixels with pixel centres at integers (:mod:`neuroprobe.saliency.fixations`).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ..errors import UserError
from . import _kernels
from ._blas import blas_single_thread
from ._workspace import Workspace, take

PROTOCOLS = ("mit", "exact")

__all__ = ["PROTOCOLS", "GroundTruth", "SaliencyShapeError", "mit_blur", "mit_sigma",
           "mit_transfer_size", "gaussian_density", "fixation_map", "matlab_round",
           "leave_out_density", "other_fixations", "OtherFixations", "ground_truths"]



class SaliencyShapeError(UserError):
    """A saliency map whose size differs from its fixation map where the protocol refuses it."""




def _check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown saliency protocol {protocol!r}", hint="use 'mit' or 'exact'")
    return protocol


def mit_transfer_size(shape: tuple[int, int]) -> int:
    """FFT size of ``antonioGaussian.m``: max side, made even, rounded up to a power of two."""
    n = max(shape)
    n = n + n % 2
    return int(2 ** math.ceil(math.log2(n)))


def mit_sigma(shape: tuple[int, int], cycles: float = 8.0) -> float:
    """Spatial sigma (pixels) equivalent to the MIT Fourier Gaussian for an image of ``shape``.

    The transfer function ``exp(-f**2 / s**2)`` with ``s = cycles / sqrt(log 2)`` and ``f`` in
    cycles per ``n`` pixels is a Gaussian of sigma ``n / (sqrt(2) * pi * s)`` pixels (about 24 px
    for ``n = 1024``).
    """
    n = mit_transfer_size(shape)
    s = cycles / math.sqrt(math.log(2.0))
    return n / (math.sqrt(2.0) * math.pi * s)


def _mit_kernel_1d(n: int, cycles: float) -> np.ndarray:
    """Circular spatial kernel (length n) of the 1-D factor of the MIT transfer function."""
    s = cycles / math.sqrt(math.log(2.0))
    f = np.fft.fftfreq(n, d=1.0 / n)  # 0, 1, ..., n/2-1, -n/2, ..., -1 (= fftshift of -n/2..)
    gf = np.exp(-(f ** 2) / s ** 2)
    return np.real(np.fft.ifft(gf))


def _circulant_block(h: np.ndarray, m: int, cols: np.ndarray) -> np.ndarray:
    """Rows 0..m-1 of the circulant matrix of ``h`` at the given columns: h[(r - c) mod n]."""
    n = len(h)
    r = np.arange(m)[:, None]
    return h[(r - cols[None, :]) % n]


@lru_cache(maxsize=8)
def _mit_circulant(size: int, n: int, cycles: float) -> np.ndarray:
    """The ``size x size`` corner of the circulant MIT blur matrix, transposed (row ``c`` is
    the kernel centred at pixel ``c``), cached per image side."""
    out = np.ascontiguousarray(_circulant_block(_mit_kernel_1d(n, cycles), size,
                                                np.arange(size)).T)
    out.flags.writeable = False
    return out


def mit_blur(fixmap: np.ndarray, cycles: float = 8.0) -> np.ndarray:
    """Blur a map as ``antonioGaussian.m`` of the MIT benchmark does.

    The map is zero-padded (bottom and right) to an ``n x n`` square (``n`` from
    :func:`mit_transfer_size`), multiplied in the Fourier domain by
    ``exp(-(fx**2 + fy**2) / s**2)`` with ``s = cycles / sqrt(log 2)`` and cropped back.  The
    transfer function is separable, so the result is computed exactly as ``Ky @ map @ Kx.T`` with
    the circulant kernels restricted to the image (cached per image side); for a sparse map
    (fixations) only the columns of fixated pixels are needed, which makes this much cheaper than
    the FFT.

    Parameters
    ----------
    fixmap : (H, W) array
        Binary fixation map (or any map).
    cycles : float
        Cut-off frequency in cycles per image (8 in the MIT benchmark).

    Returns
    -------
    (H, W) float64 array.
    """
    fixmap = np.asarray(fixmap, dtype=np.float64)
    rows, cols = np.nonzero(fixmap)
    return _mit_blur_points(fixmap.shape, rows, cols, fixmap[rows, cols], cycles, fixmap)


def _mit_blur_points(shape, rows, cols, weights, cycles: float = 8.0, dense=None,
                     out: np.ndarray | None = None) -> np.ndarray:
    """:func:`mit_blur` of the map with ``weights`` at pixels ``(rows, cols)`` (sorted row-major,
    each pixel once); ``dense`` is the map itself where the caller has it; ``out`` a buffer of
    ``H * W`` elements for the result."""
    h_, w_ = shape
    n = mit_transfer_size(shape)
    kyt = _mit_circulant(h_, n, float(cycles))
    kxt = _mit_circulant(w_, n, float(cycles))
    if len(rows) <= min(h_, w_) // 2:
        # rank-k sum of outer products of the kernels at the fixated rows and columns
        return _outer_sum(kyt, kxt, rows, cols, weights, _out2d(out, shape))
    if dense is None:
        dense = np.zeros(shape)
        dense[rows, cols] = weights
    return np.matmul(kyt.T @ dense, kxt, out=_out2d(out, shape))


def _outer_sum(ky: np.ndarray, kx: np.ndarray, rows: np.ndarray, cols: np.ndarray,
               weights: np.ndarray, out: np.ndarray | None,
               unit_sum: bool = False) -> np.ndarray | None:
    """``sum_i weights[i] * outer(ky[rows[i]], kx[cols[i]])``, as one matrix product.

    Fixations that share a row (or a column, whichever are fewer) are summed first, so the
    product's inner size is the number of distinct rows (about 105 for 140 fixated pixels of an
    OSIE image) rather than the number of fixated pixels: the same sum, a quarter fewer
    multiplications (rounding differs from the plain rank-k product by about 1e-16 of the
    peak).  The sums per row are :func:`_group_sum` (a few vectorised additions).
    ``unit_sum=True``: divided by its sum (None where that is not positive)."""
    ur, inv_r = np.unique(rows, return_inverse=True)
    uc, inv_c = np.unique(cols, return_inverse=True)
    if len(ur) <= len(uc):
        a, b = ky[ur], _group_sum(kx, cols, weights, inv_r)  # b: a fresh array
    else:
        a, b = _group_sum(ky, rows, weights, inv_c), kx[uc]  # kx[uc]: a fresh array
    if unit_sum:
        # the product's sum from its factors, sum_k sum(a[k]) sum(b[k]) (the same sum, other
        # rounding: about 1e-16 relative), so that the product comes out normalised instead
        # of being summed and divided afterwards (two passes over the image)
        total = float(a.sum(axis=1) @ b.sum(axis=1))
        if not total > 0:
            return None
        b /= total
    return np.matmul(a.T, b, out=out)


def _group_sum(k: np.ndarray, at: np.ndarray, weights: np.ndarray,
               group: np.ndarray) -> np.ndarray:
    """``out[g] = sum of weights[i] * k[at[i]]`` over the ``i`` with ``group[i] == g`` (groups
    numbered 0..G-1, each non-empty): ``np.add.reduceat`` over the rows sorted by group, with
    the same numbers.

    Groups are small (a row of an image holds one or two fixated pixels, rarely five), so the
    members are ranked (0 for the first) and each rank added to its groups in one vectorised
    step: about 3x faster than ``reduceat`` (0.6 ms per OSIE image).  ``reduceat`` adds the
    first row to the sum of the others (``x0 + ((x1 + x2) + x3)``), which is what is done here;
    groups of more than 8 (where ``reduceat`` unrolls its sum) go to ``reduceat`` itself."""
    order = np.argsort(group, kind="stable")
    g = group[order]
    starts = np.flatnonzero(np.diff(g, prepend=-1))
    rank = np.arange(len(g)) - starts[g]
    w = weights[order]
    rows = k[at[order]]
    if not np.all(w == 1.0):
        rows *= w[:, None]
    top = int(rank.max()) if len(rank) else 0
    if top >= 8:
        return np.add.reduceat(rows, starts, axis=0)
    out = rows[starts]
    if top == 0:
        return out
    first = np.flatnonzero(rank == 1)  # groups of two or more: their second rows
    rest = rows[first]
    slot = np.empty(len(starts), dtype=np.int64)
    slot[g[first]] = np.arange(len(first))
    for j in range(2, top + 1):
        sel = np.flatnonzero(rank == j)
        rest[slot[g[sel]]] += rows[sel]
    out[g[first]] += rest
    return out


def _out2d(out: np.ndarray | None, shape) -> np.ndarray | None:
    return None if out is None else out.reshape(shape)


@lru_cache(maxsize=16)
def _gauss_table(n: int, sigma: float) -> np.ndarray:
    """``exp(-d**2 / (2 sigma**2))`` for integer offsets ``d = -(n-1) .. n-1`` (tails < 1e-100
    flushed to zero), indexed by ``d + n - 1``."""
    d = np.arange(-(n - 1), n, dtype=np.float64)[:, None]
    g = np.exp(-(d ** 2) / (2 * sigma ** 2))[:, 0]
    # flush the far tails to zero: their products would be subnormal numbers, which are exact
    # enough to be irrelevant and slow every later pass over the map by two orders of magnitude
    g[g < 1e-100] = 0.0
    g.flags.writeable = False
    return g


def gaussian_density(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int],
                     sigma: float, weights: np.ndarray | None = None, *,
                     normalise: bool = True, out: np.ndarray | None = None) -> np.ndarray:
    """Fixation density: a sum of Gaussians (sigma in pixels) at pixels, normalised to sum 1.

    Equivalent to ``scipy.ndimage.gaussian_filter(counts, sigma, mode='constant', truncate=inf)``
    followed by division by the sum (mass falling outside the image is dropped before
    normalising).  Computed separably from the fixation list; for integer pixels the sum comes
    from the factors of the product and the product is normalised as it is formed (its sum is
    1 up to rounding, about 1e-16).  ``normalise=False`` returns the plain sum of Gaussians.
    ``out``: a buffer of ``H * W`` elements for the result.
    """
    h_, w_ = shape
    if len(rows) == 0:
        return np.full(shape, np.nan)
    rows = np.asarray(rows, dtype=np.float64)
    cols = np.asarray(cols, dtype=np.float64)
    if weights is None:
        weights = np.ones(len(rows))
    ri, ci = rows.astype(np.int64), cols.astype(np.int64)
    if np.array_equal(ri, rows) and np.array_equal(ci, cols):
        # integer pixels (the usual case): gather the exponentials from a table of offsets
        # (row j of the sliding window at h - 1 - r is the Gaussian centred at r), reversed
        # so that row r is the Gaussian centred at pixel r
        wy = np.lib.stride_tricks.sliding_window_view(_gauss_table(h_, float(sigma)), h_)[::-1]
        wx = np.lib.stride_tricks.sliding_window_view(_gauss_table(w_, float(sigma)), w_)[::-1]
        dens = _outer_sum(wy, wx, ri, ci, np.asarray(weights, dtype=np.float64),
                          _out2d(out, shape), unit_sum=normalise)
        if normalise:  # normalised by its factors' sums (None: no mass, uniform below)
            if dens is not None:
                return dens
            dens = np.empty(shape) if out is None else _out2d(out, shape)
            dens.fill(1.0 / (h_ * w_))
            return dens
    else:
        gy = np.exp(-((np.arange(h_)[None, :] - rows[:, None]) ** 2) / (2 * sigma ** 2))
        gx = np.exp(-((np.arange(w_)[None, :] - cols[:, None]) ** 2) / (2 * sigma ** 2))
        gy[gy < 1e-100] = 0.0
        gx[gx < 1e-100] = 0.0
        dens = np.matmul((gy * weights[:, None]).T, gx, out=_out2d(out, shape))
    if not normalise:
        return dens
    total = dens.sum()
    if total > 0:
        dens /= total
        return dens
    dens.fill(1.0 / (h_ * w_))
    return dens


def matlab_round(v) -> np.ndarray:
    """Pixel index of 0-based coordinates as MATLAB's ``round`` gives it on the 1-based ones.

    MATLAB rounds halves away from zero; on the 1-based coordinate ``v + 1`` (positive for every
    position inside the image) that is ``floor(v + 1 + 0.5)``, so the 0-based pixel is
    ``floor(v + 0.5)``: 2.5 -> 3 and 3.5 -> 4, where numpy's ``round`` (halves to even) gives
    2 and 4; -0.5 (the 1-based 0.5, which MATLAB rounds to pixel 1) -> 0.
    """
    return np.floor(np.asarray(v, dtype=np.float64) + 0.5).astype(np.int64)


def _to_pixels(x, y, shape, *, warn: bool = True,
               matlab: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Rounded (row, col) of coordinates, dropping those outside the image.

    ``matlab=False``: numpy's ``round`` (halves to even, the ``exact`` protocol);
    ``matlab=True``: :func:`matlab_round` (the ``mit`` protocol)."""
    if matlab:
        c, r = matlab_round(x), matlab_round(y)
    else:
        c = np.round(np.asarray(x, dtype=np.float64)).astype(np.int64)
        r = np.round(np.asarray(y, dtype=np.float64)).astype(np.int64)
    ok = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
    if warn and not ok.all():
        warnings.warn(f"{int((~ok).sum())} fixation(s) outside the {shape[1]}x{shape[0]} image "
                      "were dropped", RuntimeWarning, stacklevel=3)
    return r[ok], c[ok]


def fixation_map(x, y, shape: tuple[int, int], counts: bool = False,
                 protocol: str = "exact") -> np.ndarray:
    """Binary fixation map (``counts=True``: number of fixations per pixel) from coordinates.

    Coordinates are rounded to pixels as ``protocol`` rounds them: numpy's ``round`` for
    ``exact``, :func:`matlab_round` for ``mit``."""
    r, c = _to_pixels(x, y, shape, matlab=_check_protocol(protocol) == "mit")
    out = np.zeros(shape, dtype=np.int64 if counts else bool)
    if counts:
        np.add.at(out, (r, c), 1)
    else:
        out[r, c] = True
    return out


@dataclass
class GroundTruth:
    """The fixations of one image in the forms both protocols need, computed once and reused.

    Build with :meth:`from_fixations` (coordinates) or :meth:`from_map` (a binary or count map).
    The blurred densities and everything derived from them are computed on first use and cached,
    so evaluating several metrics, protocols and models against one image costs one blur per
    protocol; :meth:`release` frees them.

    The two protocols round coordinates to pixels differently (numpy's halves-to-even for
    ``exact``, MATLAB's halves-away-from-zero for ``mit``).  Where that changes a pixel,
    :meth:`from_fixations` keeps the ``mit`` pixels in a second ground truth, :meth:`at` returns
    the one of a protocol, and :meth:`density` of ``mit`` is that one's; otherwise both protocols
    share this object.

    Attributes
    ----------
    shape : (H, W)
    rows, cols : int arrays
        Pixel of every fixation (repeats kept; the ``exact`` protocol uses these).
    sigma : float or None
        Sigma (pixels) of the ``exact`` density; None -> :func:`mit_sigma` of the shape, so that
        both protocols blur alike.
    cycles : float
        Cut-off of the ``mit`` blur (cycles per image).
    density_map : (H, W) array or None
        A continuous ground truth to use in both protocols instead of blurring the fixations (for
        example the fixation maps distributed with SALICON or MIT1003).
    """

    shape: tuple[int, int]
    rows: np.ndarray
    cols: np.ndarray
    sigma: float | None = None
    cycles: float = 8.0
    image: str = ""
    density_map: np.ndarray | None = field(default=None, repr=False)
    _cache: dict = field(default_factory=dict, repr=False)
    _mit: GroundTruth | None = field(default=None, repr=False, compare=False)
    _ws: Workspace | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_fixations(cls, fixations, shape: tuple[int, int] | None = None, **kwargs):
        """From a :class:`~neuroprobe.saliency.fixations.Fixations` or an ``(N, 2)`` x, y array."""
        if hasattr(fixations, "x") and hasattr(fixations, "y"):
            x, y = fixations.x, fixations.y
            shape = shape or getattr(fixations, "size", None)
            kwargs.setdefault("image", getattr(fixations, "image", ""))
        else:
            xy = np.asarray(fixations, dtype=np.float64).reshape(-1, 2)
            x, y = xy[:, 0], xy[:, 1]
        if shape is None:
            raise UserError("the image size of the fixations is unknown",
                            hint="pass shape=(height, width)")
        shape = (int(shape[0]), int(shape[1]))
        r, c = _to_pixels(x, y, shape)
        gt = cls(shape, r, c, **kwargs)
        rm, cm = _to_pixels(x, y, shape, warn=False, matlab=True)
        if not (np.array_equal(r, rm) and np.array_equal(c, cm)):
            gt._mit = cls(shape, rm, cm, **kwargs)
        return gt

    @classmethod
    def from_map(cls, fixmap, **kwargs):
        """From a binary or count map (a count of 2 at a pixel is two fixations)."""
        fixmap = np.asarray(fixmap)
        if fixmap.dtype == bool:
            fixmap = fixmap.astype(np.int64)
        counts = np.round(fixmap).astype(np.int64)
        r, c = np.nonzero(counts > 0)
        reps = counts[r, c]
        return cls(tuple(fixmap.shape), np.repeat(r, reps), np.repeat(c, reps), **kwargs)

    def __len__(self):
        return len(self.rows)

    def at(self, protocol: str) -> GroundTruth:
        """The ground truth with the pixels of ``protocol`` (this object where they agree)."""
        return self._mit if protocol == "mit" and self._mit is not None else self

    @property
    def flat(self) -> np.ndarray:
        """Flat pixel index of every fixation (repeats kept)."""
        if "flat" not in self._cache:
            self._cache["flat"] = self.rows * self.shape[1] + self.cols
        return self._cache["flat"]

    @property
    def unique_flat(self) -> np.ndarray:
        """Flat pixel indices of the fixated pixels (each once), as the MIT binary map."""
        if "uflat" not in self._cache:
            self._unique()
        return self._cache["uflat"]

    @property
    def unique_counts(self) -> np.ndarray:
        """Number of fixations at each pixel of :attr:`unique_flat`."""
        if "ucount" not in self._cache:
            self._unique()
        return self._cache["ucount"]

    def _unique(self) -> None:
        u, cnt = np.unique(self.flat, return_counts=True)
        self._cache["uflat"] = u
        self._cache["ucount"] = cnt

    def release(self) -> None:
        """Drop the cached image-sized arrays (densities and what is derived from them).

        A cached density costs ``8 * H * W`` bytes per array and several are kept per image
        (about 27 MB for 800x600), so a loop over a data set releases each image once all its
        models are scored; they are rebuilt on the next use.  A ground truth lent a workspace
        (:meth:`lend`) gives its image-sized arrays back to it."""
        dropped = []
        for key in [k for k, v in self._cache.items()
                    if isinstance(v, np.ndarray) and v.size == self.shape[0] * self.shape[1]
                    or isinstance(v, tuple) and any(isinstance(a, np.ndarray) and a.ndim and
                                                    a.size > 1024 for a in v)]:
            dropped.append(self._cache.pop(key))
        if self._ws is not None:
            self._ws.give(d for d in dropped if isinstance(d, np.ndarray))
        if self._mit is not None:
            self._mit.release()

    def lend(self, ws: Workspace | None) -> GroundTruth:
        """Take the image-sized arrays of this ground truth from ``ws`` and give them back on
        :meth:`release`: only for a ground truth whose arrays no one else holds (one an
        evaluation loop built itself).  Returns self."""
        self._ws = ws
        if self._mit is not None:
            self._mit._ws = ws
        return self

    def _buf(self) -> np.ndarray:
        """A buffer of ``H * W`` elements for a cached array (from the workspace if lent)."""
        return take(self._ws, self.shape[0] * self.shape[1])

    def binary_map(self) -> np.ndarray:
        out = np.zeros(self.shape[0] * self.shape[1], dtype=bool)
        out[self.unique_flat] = True
        return out.reshape(self.shape)

    def density(self, protocol: str) -> np.ndarray:
        """The continuous ground truth of a protocol (cached): ``mit``, the MIT blur of the binary
        map, clipped at 0; ``exact``, the Gaussian density of every fixation, sum 1."""
        if _check_protocol(protocol) == "mit" and self._mit is not None:
            return self._mit.density(protocol)
        key = "dens_" + protocol
        if key not in self._cache:
            self._cache[key] = self._make_density(protocol)
        return self._cache[key]

    def _make_density(self, protocol: str) -> np.ndarray:
        if self.density_map is not None:
            d = np.asarray(self.density_map, dtype=np.float64)
            if d.shape != tuple(self.shape):
                raise SaliencyShapeError(f"density map {d.shape} differs from the fixation "
                                         f"map {tuple(self.shape)}")
            return d
        if len(self) == 0:
            return np.full(self.shape, np.nan)
        r, c = np.divmod(self.unique_flat, self.shape[1])
        if protocol == "mit":
            # the Fourier filter rings slightly below zero far from fixations; clip as storing
            # the map as an image (as the benchmark does) would
            d = _mit_blur_points(self.shape, r, c, np.ones(len(r)), self.cycles, out=self._buf())
            total, lo = _clip_sum(d.ravel())
            self._cache["total_mit"], self._cache["min_mit"] = total, lo
            return d
        # every fixation counts: each fixated pixel once, weighted by its count
        return gaussian_density(r, c, self.shape, _gt_sigma(self),
                                weights=self.unique_counts.astype(np.float64), out=self._buf())


def _clip_sum(d: np.ndarray, block: int = 32768, compiled: bool = True) -> tuple[float, float]:
    """Clip a flat array at 0 in place, block by block, returning its sum and minimum (after
    clipping) from the same pass; compiled where Numba is available (the same numbers: the
    blocks' sums are numpy's pairwise sums, reproduced)."""
    kern = _kernels.compiled() if compiled else None
    if kern is not None and d.flags.c_contiguous and d.flags.writeable and d.ndim == 1:
        total, lo = kern.clip_sum(d, block)
        return float(total), float(lo)
    total, lo = 0.0, np.inf
    for a in range(0, d.size, block):
        blk = np.maximum(d[a:a + block], 0.0, out=d[a:a + block])
        total += float(blk.sum())
        lo = min(lo, float(blk.min()))
    return total, lo


def _gt_get(gt: GroundTruth, key, fn):
    """``gt``'s cached value under ``key``, computed by ``fn()`` on first use."""
    if key not in gt._cache:
        gt._cache[key] = fn()
    return gt._cache[key]


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _raw_density(gt: GroundTruth, protocol: str) -> np.ndarray:
    """The ground truth before clipping / normalising (cached): ``mit``, the MIT blur of the
    binary map; ``exact``, the sum of Gaussians over every fixation."""
    gt = gt.at(protocol)

    def make():
        r, c = np.divmod(gt.unique_flat, gt.shape[1])
        if protocol == "mit":
            return _mit_blur_points(gt.shape, r, c, np.ones(len(r)), gt.cycles)
        return gaussian_density(r, c, gt.shape, _gt_sigma(gt),
                                weights=gt.unique_counts.astype(np.float64), normalise=False)

    return _gt_get(gt, "raw_" + protocol, make)


def _gt_sigma(gt: GroundTruth) -> float:
    return gt.sigma if gt.sigma is not None else mit_sigma(gt.shape, gt.cycles)


def leave_out_density(gt: GroundTruth, held: GroundTruth, protocol: str) -> np.ndarray:
    """The ground truth of the fixations of ``gt`` that are *not* in ``held`` (a subset of them,
    e.g. one observer's), as ``GroundTruth(rest).density(protocol)`` would give it.

    Both blurs are linear, so the density of the rest is the (cached) blur of all fixations
    minus the blur of the held-out part: ``exact``, the Gaussians of the held fixations;
    ``mit``, the blurred pixels that only the held-out part fixated (the binary map of the rest
    keeps every pixel another observer fixated too).  A leave-one-out loop over ``k`` observers
    then costs one full blur and ``k`` small ones instead of ``k`` full blurs; the result equals
    the direct computation up to rounding (about 1e-16 of the peak).
    """
    _check_protocol(protocol)
    with blas_single_thread():
        return _leave_out_density(gt, held, protocol)


def _leave_out_density(gt: GroundTruth, held: GroundTruth, protocol: str) -> np.ndarray:
    if held.shape != gt.shape:
        raise UserError("held-out fixations must be in the image's pixel frame")
    gt, held = gt.at(protocol), held.at(protocol)
    n_pix = gt.shape[0] * gt.shape[1]
    cnt_all = np.bincount(gt.flat, minlength=n_pix)
    cnt_held = np.bincount(held.flat, minlength=n_pix)
    u = held.unique_flat
    if np.any(cnt_held[u] > cnt_all[u]):
        raise UserError("the held-out fixations are not a subset of the image's fixations")
    if len(held) == len(gt):
        return np.full(gt.shape, np.nan)
    if protocol == "mit":
        only = u[cnt_all[u] == cnt_held[u]]  # pixels no other observer fixated
        out = _raw_density(gt, "mit").copy()
        if len(only):
            r, c = np.divmod(only, gt.shape[1])
            out -= _mit_blur_points(gt.shape, r, c, np.ones(len(r)), gt.cycles)
        return np.maximum(out, 0.0, out=out)
    r, c = np.divmod(u, gt.shape[1])
    part = gaussian_density(r, c, gt.shape, _gt_sigma(gt),
                            weights=held.unique_counts.astype(np.float64), normalise=False)
    out = np.subtract(_raw_density(gt, "exact"), part, out=part)
    np.maximum(out, 0.0, out=out)  # rounding below zero where the rest has no mass
    total = out.sum()
    if total > 0:
        out /= total
        return out
    return np.full(gt.shape, 1.0 / n_pix)


def _as_ground_truth(fixations, shape) -> GroundTruth:
    if isinstance(fixations, GroundTruth):
        return fixations
    if hasattr(fixations, "x") and hasattr(fixations, "y"):
        size = getattr(fixations, "size", None)
        return GroundTruth.from_fixations(fixations, size or shape)
    arr = np.asarray(fixations)
    if arr.ndim == 2 and (arr.dtype == bool or (arr.shape == tuple(shape) and arr.shape[1] != 2)):
        return GroundTruth.from_map(arr)
    return GroundTruth.from_fixations(arr, shape)


def other_fixations(gts: list[GroundTruth], i: int, protocol: str, n_other: int = 10,
                    rng=0) -> GroundTruth:
    """Fixations of other images, rescaled into image ``i``'s frame, for the shuffled AUC.

    ``mit``: the union of ``n_other`` randomly chosen other images (as in Borji's code);
    ``exact``: all other images, every fixation counted (as pysaliency).  Each image's pixels
    are those of the protocol (:meth:`GroundTruth.at`); another image size is mapped by pixel
    centres and rounded as the protocol rounds.
    """
    target = gts[i].at(protocol)
    rnd = matlab_round if protocol == "mit" else (lambda v: np.round(v).astype(np.int64))
    others = [j for j in range(len(gts)) if j != i]
    if protocol == "mit" and len(others) > n_other:
        others = sorted(_rng(rng).choice(others, size=n_other, replace=False).tolist())
    rows, cols = [], []
    for j in others:
        g = gts[j].at(protocol)
        if g.shape == target.shape:
            rows.append(g.rows)
            cols.append(g.cols)
            continue
        sy, sx = target.shape[0] / g.shape[0], target.shape[1] / g.shape[1]
        r = rnd((g.rows + 0.5) * sy - 0.5)
        c = rnd((g.cols + 0.5) * sx - 0.5)
        rows.append(np.clip(r, 0, target.shape[0] - 1))
        cols.append(np.clip(c, 0, target.shape[1] - 1))
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    return GroundTruth(target.shape, rows, cols)


class OtherFixations:
    """:func:`other_fixations` for every image of one list, from one concatenation.

    Where all images have one size, the fixations of all images are concatenated once per
    protocol and image ``i``'s "all other images" is that array less its own segment (the same
    fixations in the same order as :func:`other_fixations` gives), instead of a loop over the
    other images for every image.  Otherwise, and for the ``mit`` draw of ``n_other`` images,
    it calls :func:`other_fixations`.
    """

    def __init__(self, gts: list[GroundTruth]):
        self.gts = gts
        self._all: dict = {}
        shapes = {tuple(g.shape) for g in gts}
        self.shape = shapes.pop() if len(shapes) == 1 else None

    def _concat(self, protocol: str):
        if protocol not in self._all:
            parts = [g.at(protocol) for g in self.gts]
            off = np.concatenate([[0], np.cumsum([len(g) for g in parts])])
            rows = np.concatenate([g.rows for g in parts]).astype(np.int64, copy=False)
            cols = np.concatenate([g.cols for g in parts]).astype(np.int64, copy=False)
            self._all[protocol] = rows, cols, off
        return self._all[protocol]

    def __call__(self, i: int, protocol: str, n_other: int = 10, rng=0) -> GroundTruth:
        n = len(self.gts)
        if self.shape is None or (protocol == "mit" and n - 1 > n_other):
            return other_fixations(self.gts, i, protocol, n_other, rng=rng)
        rows, cols, off = self._concat(protocol)
        a, b = off[i], off[i + 1]
        return GroundTruth(self.shape, np.concatenate([rows[:a], rows[b:]]),
                           np.concatenate([cols[:a], cols[b:]]))


def ground_truths(fixations, shapes=None, **kwargs) -> list[GroundTruth]:
    """:class:`GroundTruth` for each image (``shapes`` where the fixations carry no size)."""
    out = []
    for i, f in enumerate(fixations):
        if isinstance(f, GroundTruth):
            out.append(f)
        else:
            shape = shapes[i] if shapes is not None else getattr(f, "size", None)
            out.append(GroundTruth.from_fixations(f, shape, **kwargs))
    return out

