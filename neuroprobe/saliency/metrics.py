"""Saliency metrics in two protocols: ``mit`` and ``exact``.

Published saliency numbers come from two families of code that disagree in their details, so
every function here takes ``protocol="mit"|"exact"`` and every table neuroprobe writes names the
protocol it used.

``mit``
    The MIT saliency benchmark's MATLAB code (Bylinskii, Judd, Oliva, Torralba, Durand, "What do
    different evaluation metrics tell us about saliency models?", TPAMI 2019; code
    ``github.com/cvzoya/saliency``).  Fixations enter as a *binary* map (a pixel fixated twice
    counts once); a saliency map of another size is resized to the fixation map (bilinear, with a
    warning); the continuous ground truth is the binary map blurred by :func:`mit_blur`, the
    Fourier-domain Gaussian at 8 cycles per image of ``antonioGaussian.m``.

    * AUC-Judd: a uniform jitter of at most 1e-7 breaks ties; thresholds at the saliency values of
      fixated pixels; negatives are the non-fixated pixels.
    * AUC-Borji: 100 splits, as many uniformly drawn pixels (with replacement) as fixated pixels,
      thresholds ``0:0.1:1`` on the min-max normalised map.
    * shuffled AUC: as AUC-Borji, but the negatives are drawn (without replacement) from the
      fixated pixels of other images (the union of ``n_other=10`` other images' binary maps).
    * NSS: z-score with ``std`` of MATLAB (ddof=1), mean at fixated pixels.
    * CC: Pearson correlation with the blurred binary map.
    * KL: both maps divided by their sums, ``sum(g * log(eps + g / (s + eps)))``, eps = 2.2204e-16.
    * SIM: both maps min-max normalised and divided by their sums, sum of the minima.
    * IG: both maps (model and baseline) min-max normalised and divided by their sums,
      ``mean(log2(eps + s) - log2(eps + b))`` at fixated pixels.

``exact``
    The conventions of the Tuebingen code (pysaliency; Kümmerer, Wallis, Bethge, "Saliency
    benchmarking made easy", ECCV 2018): a list of fixations where every fixation counts, exact
    ROC areas with ties scored 0.5, no resizing (maps of another size are refused).

    * AUC-Judd: positives are the map's values at every fixation, negatives are all pixels.
    * AUC-Borji: exact ROC against 100 splits of uniformly drawn pixels (as many as fixations).
    * shuffled AUC: exact ROC with the fixations of *all* other images as negatives.
    * NSS: z-score with ddof=0, mean over every fixation.
    * CC, KL, SIM: against the fixation density, a plain Gaussian (sigma in pixels, see
      :func:`gaussian_density`) over every fixation, normalised to sum 1.  KL is
      ``sum(g * log((g + eps) / (s + eps)))`` with the model map shifted to minimum 0 and
      normalised to sum 1.
    * IG: as in ``mit`` but averaged over every fixation.

Where the two definitions coincide (no pixel fixated twice, the same ground-truth density, a map
without ties) the two protocols agree; the tests check that.  EMD is available when the
optional package POT (``pip install pot``) is installed.

Speed (800x600 maps): everything is vectorised; ROC areas use one sort of the pixel values and
binary searches (no threshold loops); the blurred ground truths are separable products computed
from the fixation list (the MIT Fourier blur as products with cached circulant kernels, the
Gaussian from a cached table), cached per image and shared by all models and protocols, and
released by the batch loops once the image is done; the inter-observer baseline subtracts the
held-out observer's blur from the image's (:func:`leave_out_density`); OpenBLAS runs on one
thread inside the metric loops (:func:`blas_single_thread`).  Results equal a literal
implementation to about 1e-14 (the tests compare with brute-force and MATLAB-loop references).

Conventions shared by both protocols (and deliberately different from MATLAB, which returns NaN
through a division by zero): a constant map has NSS 0 and CC 0 and is treated as the uniform
distribution by KL, SIM and IG.  An image without fixations gives NaN with a warning; a map that
contains NaN or infinity gives NaN with a warning.  Fixations outside the image are dropped with a
warning.  Coordinates are 0-based pixels with pixel centres at integers
(:mod:`neuroprobe.saliency.fixations`); a fixation at ``(x, y)`` lies in pixel
``(round(y), round(x))``.
"""
from __future__ import annotations

import ctypes
import glob
import math
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ..errors import UserError

PROTOCOLS = ("mit", "exact")
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


EPS = 2.2204e-16  # MATLAB eps, as used by the MIT benchmark code

__all__ = [
    "PROTOCOLS", "METRICS", "METRIC_NAMES", "metric_title", "GroundTruth", "mit_blur",
    "mit_sigma", "gaussian_density",
    "fixation_map", "auc_judd", "auc_borji", "sauc", "nss", "cc", "kl", "sim", "ig", "emd",
    "evaluate_map", "evaluate_batch", "has_emd", "leave_out_density",
]


class SaliencyShapeError(UserError):
    """A saliency map whose size differs from its fixation map where the protocol refuses it."""


# --------------------------------------------------------------------------- ground truth
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


def _mit_blur_points(shape, rows, cols, weights, cycles: float = 8.0, dense=None) -> np.ndarray:
    """:func:`mit_blur` of the map with ``weights`` at pixels ``(rows, cols)`` (sorted row-major,
    each pixel once); ``dense`` is the map itself where the caller has it."""
    h_, w_ = shape
    n = mit_transfer_size(shape)
    kyt = _mit_circulant(h_, n, float(cycles))
    kxt = _mit_circulant(w_, n, float(cycles))
    if len(rows) <= min(h_, w_) // 2:
        # rank-k sum of outer products of the kernels at the fixated rows and columns
        a = kyt[rows] * weights[:, None]
        return a.T @ kxt[cols]
    if dense is None:
        dense = np.zeros(shape)
        dense[rows, cols] = weights
    return kyt.T @ dense @ kxt


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
                     normalise: bool = True) -> np.ndarray:
    """Fixation density: a sum of Gaussians (sigma in pixels) at pixels, normalised to sum 1.

    Equivalent to ``scipy.ndimage.gaussian_filter(counts, sigma, mode='constant', truncate=inf)``
    followed by division by the sum (mass falling outside the image is dropped before
    normalising).  Computed separably from the fixation list.  ``normalise=False`` returns the
    plain sum of Gaussians.
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
        # (row j of the sliding window at h - 1 - r is the Gaussian centred at r)
        wy = np.lib.stride_tricks.sliding_window_view(_gauss_table(h_, float(sigma)), h_)
        wx = np.lib.stride_tricks.sliding_window_view(_gauss_table(w_, float(sigma)), w_)
        gy = wy[(h_ - 1) - ri]  # (k, H)
        gx = wx[(w_ - 1) - ci]  # (k, W)
    else:
        gy = np.exp(-((np.arange(h_)[None, :] - rows[:, None]) ** 2) / (2 * sigma ** 2))
        gx = np.exp(-((np.arange(w_)[None, :] - cols[:, None]) ** 2) / (2 * sigma ** 2))
        gy[gy < 1e-100] = 0.0
        gx[gx < 1e-100] = 0.0
    dens = (gy * weights[:, None]).T @ gx
    if not normalise:
        return dens
    total = dens.sum()
    if total > 0:
        dens /= total
        return dens
    return np.full(shape, 1.0 / (h_ * w_))


def _to_pixels(x, y, shape, *, warn: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Rounded (row, col) of coordinates, dropping those outside the image."""
    c = np.round(np.asarray(x, dtype=np.float64)).astype(np.int64)
    r = np.round(np.asarray(y, dtype=np.float64)).astype(np.int64)
    ok = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
    if warn and not ok.all():
        warnings.warn(f"{int((~ok).sum())} fixation(s) outside the {shape[1]}x{shape[0]} image "
                      "were dropped", RuntimeWarning, stacklevel=3)
    return r[ok], c[ok]


def fixation_map(x, y, shape: tuple[int, int], counts: bool = False) -> np.ndarray:
    """Binary fixation map (``counts=True``: number of fixations per pixel) from coordinates."""
    r, c = _to_pixels(x, y, shape)
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
    The blurred densities are computed on first use and cached, so evaluating several models
    against one image costs one blur per protocol.

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
        return cls(shape, r, c, **kwargs)

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
            self._cache["uflat"] = np.unique(self.flat)
        return self._cache["uflat"]

    @property
    def unique_counts(self) -> np.ndarray:
        """Number of fixations at each pixel of :attr:`unique_flat`."""
        if "ucount" not in self._cache:
            u, cnt = np.unique(self.flat, return_counts=True)
            self._cache["uflat"] = u
            self._cache["ucount"] = cnt
        return self._cache["ucount"]

    def release(self) -> None:
        """Drop the cached image-sized arrays (densities and what is derived from them).

        A cached density costs ``8 * H * W`` bytes per array and several are kept per image
        (about 27 MB for 800x600), so a loop over a data set releases each image once all its
        models are scored; they are rebuilt on the next use."""
        for key in [k for k, v in self._cache.items()
                    if isinstance(v, np.ndarray) and v.size == self.shape[0] * self.shape[1]
                    or isinstance(v, tuple) and any(isinstance(a, np.ndarray) and a.ndim and
                                                    a.size > 1024 for a in v)]:
            del self._cache[key]

    def binary_map(self) -> np.ndarray:
        out = np.zeros(self.shape[0] * self.shape[1], dtype=bool)
        out[self.unique_flat] = True
        return out.reshape(self.shape)

    def density(self, protocol: str) -> np.ndarray:
        """The continuous ground truth of a protocol (cached)."""
        key = "dens_" + _check_protocol(protocol)
        if key not in self._cache:
            if self.density_map is not None:
                d = np.asarray(self.density_map, dtype=np.float64)
                if d.shape != tuple(self.shape):
                    raise SaliencyShapeError(f"density map {d.shape} differs from the fixation "
                                             f"map {tuple(self.shape)}")
                self._cache[key] = d
            elif len(self) == 0:
                self._cache[key] = np.full(self.shape, np.nan)
            elif protocol == "mit":
                # the Fourier filter rings slightly below zero far from fixations; clip as
                # storing the map as an image (as the benchmark does) would
                r, c = np.divmod(self.unique_flat, self.shape[1])
                d = _mit_blur_points(self.shape, r, c, np.ones(len(r)), self.cycles)
                self._cache[key] = np.maximum(d, 0.0, out=d)
            else:
                sigma = self.sigma if self.sigma is not None else mit_sigma(self.shape, self.cycles)
                # every fixation counts: each fixated pixel once, weighted by its count
                cnt = self.unique_counts
                r, c = np.divmod(self.unique_flat, self.shape[1])
                self._cache[key] = gaussian_density(r, c, self.shape, sigma,
                                                    weights=cnt.astype(np.float64))
        return self._cache[key]


def _raw_density(gt: GroundTruth, protocol: str) -> np.ndarray:
    """The ground truth before clipping / normalising (cached): ``mit``, the MIT blur of the
    binary map; ``exact``, the sum of Gaussians over every fixation."""
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


# --------------------------------------------------------------------------- map preparation
def _resize(smap: np.ndarray, shape) -> np.ndarray:
    from skimage.transform import resize

    return resize(smap, shape, order=1, mode="edge", anti_aliasing=True, preserve_range=True)


def _as_map_array(saliency) -> np.ndarray:
    """A 2-D float64 array from an array or tensor (leading axes of length 1 squeezed)."""
    smap = saliency
    if hasattr(smap, "detach"):
        smap = smap.detach().cpu().numpy()
    smap = np.asarray(smap, dtype=np.float64)
    smap = np.squeeze(smap) if smap.ndim > 2 else smap
    if smap.ndim != 2:
        raise UserError(f"a saliency map must be 2-D (H, W); got shape {tuple(smap.shape)}")
    return smap


def _prepare(saliency, gt: GroundTruth, protocol: str, cache: dict | None = None) -> _Map | None:
    """The float64 map of the ground truth's shape as a :class:`_Map`, or None (NaN result)
    with a warning.  ``cache`` shares the prepared map between the protocols of one call."""
    smap = _as_map_array(saliency)
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
        smap = _resize(smap, gt.shape)
    sm = _Map(smap)
    if not (math.isfinite(sm.lo) and math.isfinite(sm.hi)):  # min/max propagate NaN
        warnings.warn(f"saliency map{' of ' + gt.image if gt.image else ''} contains NaN or "
                      "infinity; its scores are NaN", RuntimeWarning, stacklevel=3)
        sm = None
    if cache is not None:
        cache[same] = sm
    return sm


def _no_fixations(gt: GroundTruth) -> bool:
    if len(gt) == 0:
        warnings.warn(f"no fixations{' on ' + gt.image if gt.image else ''}; its scores are NaN",
                      RuntimeWarning, stacklevel=3)
        return True
    return False


class _Map:
    """A prepared saliency map with the derived quantities several metrics share (computed once).

    The minimum and maximum are found once; the min-max normalised map (AUC-Borji, sAUC) is
    only formed at the pixels those metrics sample.  Image-sized temporaries go to one reused
    work array (:attr:`scratch`): allocating a fresh 800x600 float64 array costs about as much
    as a pass over it (the kernel maps and zeroes its pages).
    """

    def __init__(self, smap: np.ndarray):
        self.map = smap
        self.flat = smap.ravel()
        self._c: dict = {}

    def get(self, key, fn):
        if key not in self._c:
            self._c[key] = fn()
        return self._c[key]

    @property
    def lo(self) -> float:
        return self.get("lo", lambda: float(self.flat.min()))

    @property
    def hi(self) -> float:
        return self.get("hi", lambda: float(self.flat.max()))

    @property
    def dist(self):  # shifted to min 0, sum 1 (uniform if constant)
        return self.get("dist", lambda: _as_distribution(self.flat))

    @property
    def mean(self):
        return self.get("mean", lambda: float(self.flat.mean()))

    @property
    def centred(self):
        return self.get("centred", lambda: self.flat - self.mean)

    @property
    def ss(self):  # sum of squared deviations
        return self.get("ss", lambda: _dot(self.centred, self.centred))

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
        return self.get("scratch", lambda: np.empty_like(self.flat))


def _as_distribution(v: np.ndarray) -> np.ndarray:
    """Shift to minimum 0 and divide by the sum; a constant map becomes uniform."""
    v = v - v.min()
    total = v.sum()
    if total > 0:
        v /= total  # v is a fresh array here
        return v
    return np.full_like(v, 1.0 / v.size)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Inner product of two flat float64 arrays."""
    return float(a @ b)


# OpenBLAS starts a thread per core for a long inner product or a mid-sized matrix product; on a
# loaded machine (more runnable processes than cores) those threads wait for each other and an
# 800x600 inner product takes 30 times longer than on one thread.  The metric loop is
# single-threaded by nature, so :func:`blas_single_thread` pins OpenBLAS to one thread for its
# duration (as threadpoolctl would, which is not a dependency).
_BLAS_FUNCS: list | None = None


def _openblas_thread_funcs() -> list:
    global _BLAS_FUNCS
    if _BLAS_FUNCS is not None:
        return _BLAS_FUNCS
    funcs = []
    paths = set()
    try:
        with open("/proc/self/maps") as fh:
            paths = {ln.split()[-1] for ln in fh if "openblas" in ln.lower() and "/" in ln}
    except OSError:
        libdir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
        paths = set(glob.glob(os.path.join(libdir, "*openblas*")))
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_", "64_"), ("", "64_"), ("", "")):
            get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
            put = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                get.restype = ctypes.c_int
                put.argtypes = [ctypes.c_int]
                funcs.append((get, put))
                break
    _BLAS_FUNCS = funcs
    return funcs


@contextmanager
def blas_single_thread():
    """Run the block with OpenBLAS on one thread (restored afterwards); a no-op without it."""
    try:
        funcs = _openblas_thread_funcs()
        saved = [(put, get()) for get, put in funcs]
    except Exception:  # pragma: no cover - an unusual BLAS build; run as is
        saved = []
    try:
        for put, _ in saved:
            put(1)
        yield
    finally:
        for put, n in saved:
            put(n)


def _gt_get(gt: GroundTruth, key, fn):
    if key not in gt._cache:
        gt._cache[key] = fn()
    return gt._cache[key]


# --------------------------------------------------------------------------- ROC helpers
def _auc_exact(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(pos > neg) + 0.5 P(pos == neg), exactly (the ROC area with ties scored 0.5).

    The negatives are sorted once (a vectorised sort is far faster than locating every negative
    among the positives); each positive then finds its count of smaller and equal negatives with
    two binary searches.
    """
    srt = np.sort(neg)
    less = np.searchsorted(srt, pos, side="left")
    leq = np.searchsorted(srt, pos, side="right")
    return float((less.sum() + 0.5 * (leq - less).sum()) / (len(pos) * len(neg)))


def _auc_exact_sorted(pos: np.ndarray, srt: np.ndarray) -> float:
    """:func:`_auc_exact` with the negatives already sorted in ascending order."""
    less = np.searchsorted(srt, pos, side="left")
    leq = np.searchsorted(srt, pos, side="right")
    return float((less.sum() + 0.5 * (leq - less).sum()) / (len(pos) * len(srt)))


def _auc_exact_splits(pos: np.ndarray, negs: np.ndarray) -> np.ndarray:
    """:func:`_auc_exact` for several small negative sets at once: ``negs`` (S, M) -> (S,)."""
    u, cnt = np.unique(pos, return_counts=True)
    k = len(pos)
    cum = np.concatenate([[0], np.cumsum(cnt)])
    cnt_ext = np.concatenate([cnt, [0]])
    u_ext = np.concatenate([u, [np.inf]])
    idx = np.searchsorted(u, negs, side="left")
    eq = u_ext[idx] == negs
    ceq = np.where(eq, cnt_ext[idx], 0)
    score = (k - cum[idx]) - 0.5 * ceq
    return score.mean(axis=1) / k


def _trapz(x, y, axis=-1):
    fn = getattr(np, "trapezoid", None) or np.trapz
    return fn(y, x, axis=axis)


def _auc_thresholds(sth: np.ndarray, neg: np.ndarray, step: float = 0.1) -> np.ndarray:
    """MIT ROC at thresholds ``0:step:1`` for one or several splits of negatives.

    ``sth``: (K,) positives; ``neg``: (M, S) negatives per split.  Returns (S,) areas.  The
    MATLAB code stops the thresholds at the split's maximum; thresholds above it only add the
    point (0, 0) again, which leaves the area unchanged, so a fixed ``0:step:1`` is exact.
    """
    th = np.arange(0, int(round(1 / step)) + 1)[::-1] * step
    tp = (sth[None, :] >= th[:, None]).mean(axis=1)  # (T,)
    fp = (neg[None, :, :] >= th[:, None, None]).mean(axis=1)  # (T, S)
    s = neg.shape[1]
    tp = np.concatenate([[0.0], tp, [1.0]])
    tp = np.broadcast_to(tp[:, None], (len(tp), s))
    fp = np.concatenate([np.zeros((1, s)), fp, np.ones((1, s))], axis=0)
    return _trapz(fp, tp, axis=0)


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


# --------------------------------------------------------------------------- metrics
def _m_auc_judd(sm: _Map, gt, protocol, rng, **_):
    flat = sm.flat
    if protocol == "exact":
        srt = sm.scratch
        srt[:] = flat
        srt.sort()
        return _auc_exact_sorted(flat[gt.flat], srt)
    # MIT: jitter, thresholds at fixated values, negatives = non-fixated pixels
    jittered = _rng(rng).random(out=sm.scratch)
    jittered /= 1e7
    jittered += flat  # = flat + rand / 1e7, in place
    th = np.sort(jittered[gt.unique_flat])[::-1]  # descending, i = 1..k
    k, n = len(th), flat.size
    if n == k:
        return float("nan")
    jittered.sort()
    # pixels >= each threshold: one sort and k binary searches replace MATLAB's threshold loop
    ge = n - np.searchsorted(jittered, th, side="left")
    i = np.arange(1, k + 1)
    tp = np.concatenate([[0.0], i / k, [1.0]])
    fp = np.concatenate([[0.0], (ge - i) / (n - k), [1.0]])
    return float(_trapz(fp, tp))


def _m_auc_borji(sm: _Map, gt, protocol, rng, n_splits=100, step=0.1, **_):
    rng = _rng(rng)
    if protocol == "mit":
        sth = sm.minmax_at(gt.unique_flat)
        r = rng.integers(0, sm.flat.size, size=(len(sth), n_splits))
        return float(_auc_thresholds(sth, sm.minmax_at(r), step).mean())
    flat = sm.flat
    pos = flat[gt.flat]
    r = rng.integers(0, flat.size, size=(n_splits, len(pos)))
    return float(_auc_exact_splits(pos, flat[r]).mean())


def _m_sauc(sm: _Map, gt, protocol, rng, other=None, n_splits=100, step=0.1, **_):
    if other is None:
        raise UserError("the shuffled AUC needs the fixations of other images (other=)")
    other = other if isinstance(other, GroundTruth) else _as_ground_truth(other, gt.shape)
    if other.shape != gt.shape:
        raise UserError("other-image fixations must be given in this image's pixel frame")
    if len(other) == 0:
        warnings.warn("no other-image fixations for the shuffled AUC; NaN", RuntimeWarning)
        return float("nan")
    if protocol == "exact":
        return _auc_exact(sm.flat[gt.flat], sm.flat[other.flat])
    rng = _rng(rng)
    sth = sm.minmax_at(gt.unique_flat)
    ind = other.unique_flat
    m = min(len(sth), len(ind))
    keys = rng.random((len(ind), n_splits))
    # the first m of a random permutation per split (MATLAB: randperm); only the set matters
    # to the ROC, so a partition (linear time) gives what a full argsort would
    picks = (np.argpartition(keys, m - 1, axis=0)[:m] if m < len(ind)
             else np.broadcast_to(np.arange(m)[:, None], (m, n_splits)))
    return float(_auc_thresholds(sth, sm.minmax_at(ind[picks]), step).mean())


def _m_nss(sm: _Map, gt, protocol, **_):
    ddof = 1 if protocol == "mit" else 0
    n = sm.flat.size
    if n - ddof <= 0 or sm.constant:
        return 0.0
    sd = math.sqrt(sm.ss / (n - ddof))
    at = gt.unique_flat if protocol == "mit" else gt.flat
    return float((sm.flat[at].mean() - sm.mean) / sd)


def _m_cc(sm: _Map, gt, protocol, **_):
    d = gt.density(protocol).ravel()
    mean = _gt_get(gt, "mean_" + protocol, lambda: d.mean())
    g = np.subtract(d, mean, out=sm.scratch)  # the centred ground truth, in the work array
    gss = _gt_get(gt, "gss_" + protocol, lambda: _dot(g, g))
    den = math.sqrt(sm.ss * gss)
    return _dot(sm.centred, g) / den if den > 0 and not sm.constant else 0.0


def _gt_sum1_mit(gt):
    """The mit ground truth divided by its sum (KL)."""
    return _gt_get(gt, "sum1_mit", lambda: (lambda d: d / d.sum())(gt.density("mit").ravel()))


def _gt_dist(gt, protocol):
    def make():
        d = gt.density(protocol).ravel()
        if protocol == "mit" and d.min() == 0:
            # shifting by a minimum of 0 changes nothing: the distribution is the map over its
            # sum, which KL has already computed (the same operations, the same numbers)
            return _gt_sum1_mit(gt)
        return _as_distribution(d)

    return _gt_get(gt, "dist_" + protocol, make)


def _m_kl(sm: _Map, gt, protocol, **_):
    if protocol == "mit":
        flat = sm.flat
        if sm.lo < 0:
            warnings.warn("negative saliency values: the mit KL divides the raw map by its sum; "
                          "shift the map to non-negative values", RuntimeWarning, stacklevel=3)

        p = _gt_sum1_mit(gt)
        r = sm.scratch  # r = eps + p / (q + eps), q = map / sum(map), without temporaries
        if sm.constant:
            r.fill(1.0 / flat.size)
        else:
            np.divide(flat, flat.sum(), out=r)
        r += EPS
        np.divide(p, r, out=r)
        r += EPS
        return _dot(p, np.log(r, out=r))  # sum(p * log(eps + p / (q + eps)))
    # sum(p * log((p + eps) / (q + eps))) = sum(p * log(p + eps)) - sum(p * log(q + eps)): the
    # first sum belongs to the image (cached), the second needs one pass in the work array
    p = _gt_dist(gt, protocol)
    r = sm.scratch

    def entropy_term():
        np.add(p, EPS, out=r)
        return _dot(p, np.log(r, out=r))

    own = _gt_get(gt, "plogp_" + protocol, entropy_term)
    np.add(sm.dist, EPS, out=r)
    return own - _dot(p, np.log(r, out=r))


def _m_sim(sm: _Map, gt, protocol, **_):
    return float(np.minimum(sm.dist, _gt_dist(gt, protocol), out=sm.scratch).sum())


def _m_ig(sm: _Map, gt, protocol, baseline=None, **_):
    if baseline is None:
        from .classical import centre_bias

        baseline = centre_bias(gt.shape)
    if not isinstance(baseline, _Map):
        b = np.asarray(baseline, dtype=np.float64)
        if b.shape != tuple(gt.shape):
            b = _resize(b, gt.shape)
        baseline = _Map(b)
    at = gt.unique_flat if protocol == "mit" else gt.flat
    return float(np.mean(np.log2(EPS + sm.dist[at]) - np.log2(EPS + baseline.dist[at])))


def has_emd() -> bool:
    """True when the optional optimal-transport package POT is importable."""
    try:
        import ot  # noqa: F401
    except ImportError:
        return False
    return True


def _m_emd(sm: _Map, gt, protocol, emd_scale=1 / 32, **_):
    """Earth mover's distance on maps downsampled by ``emd_scale`` (the MIT code uses 1/32).

    Both maps are made distributions (sum 1); the ground distance is the Euclidean distance
    between pixel centres of the downsampled grid, in downsampled pixels; solved exactly with POT.
    """
    if not has_emd():
        raise UserError("the EMD metric needs the optional package POT", hint="pip install pot")
    import ot

    h_, w_ = gt.shape
    small = (max(1, round(h_ * emd_scale)), max(1, round(w_ * emd_scale)))
    a = _as_distribution(_resize(sm.map, small).ravel())
    b = _as_distribution(_resize(np.nan_to_num(gt.density(protocol)), small).ravel())
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


def evaluate_protocols(saliency, fixations, protocols=PROTOCOLS, metrics=METRICS, *,
                       baseline=None, other=None, rng=0, shape=None,
                       **options) -> dict[str, dict[str, float]]:
    """All requested metrics of one map in several protocols, sharing the work between them.

    Arguments as :func:`evaluate_map`; ``other`` may be a dict ``protocol -> fixations``.
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
    if baseline is not None and not isinstance(baseline, _Map):
        b = np.asarray(baseline, dtype=np.float64)
        baseline = _Map(b if b.shape == tuple(gt.shape) else _resize(b, gt.shape))
    seed = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    out = {}
    prepared: dict = {}
    saliency = _as_map_array(saliency)
    with blas_single_thread():
        for p in protocols:
            sm = _prepare(saliency, gt, p, prepared)
            if sm is None:
                out[p] = dict(nan)
                continue
            oth = other.get(p) if isinstance(other, dict) else other
            # each protocol draws from its own stream so adding a protocol does not change another
            prng = np.random.default_rng(seed.bit_generator.seed_seq.spawn(1)[0]) \
                if hasattr(seed.bit_generator, "seed_seq") else seed
            out[p] = {m: _FUNCS[m](sm, gt, p, rng=prng, baseline=baseline, other=oth, **options)
                      for m in metrics}
    return out


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
    rng : seed or Generator for the random parts (AUC-Judd jitter, AUC-Borji and sAUC splits)

    Returns
    -------
    dict metric -> float (NaN where the image has no fixations or the map is not finite).
    """
    if metrics is None:
        metrics = tuple(m for m in METRICS if other is not None or m != "sauc")
    return evaluate_protocols(saliency, fixations, (protocol,), metrics, baseline=baseline,
                              other=other, rng=rng, shape=shape, **options)[protocol]


def _single(metric):
    def fn(saliency, fixations, protocol: str = "mit", **kwargs) -> float:
        return evaluate_map(saliency, fixations, protocol, (metric,), **kwargs)[metric]

    fn.__name__ = metric
    fn.__qualname__ = metric
    fn.__doc__ = (f"``{metric}`` of one saliency map; see the module docstring for the "
                  "definitions in each protocol.  Arguments as :func:`evaluate_map`.")
    return fn


auc_judd = _single("auc_judd")
auc_borji = _single("auc_borji")
sauc = _single("sauc")
nss = _single("nss")
cc = _single("cc")
kl = _single("kl")
sim = _single("sim")
ig = _single("ig")
emd = _single("emd")


def other_fixations(gts: list[GroundTruth], i: int, protocol: str, n_other: int = 10,
                    rng=0) -> GroundTruth:
    """Fixations of other images, rescaled into image ``i``'s frame, for the shuffled AUC.

    ``mit``: the union of ``n_other`` randomly chosen other images (as in Borji's code);
    ``exact``: all other images, every fixation counted (as pysaliency).
    """
    target = gts[i]
    others = [j for j in range(len(gts)) if j != i]
    if protocol == "mit" and len(others) > n_other:
        others = sorted(_rng(rng).choice(others, size=n_other, replace=False).tolist())
    rows, cols = [], []
    for j in others:
        g = gts[j]
        if g.shape == target.shape:
            rows.append(g.rows)
            cols.append(g.cols)
            continue
        sy, sx = target.shape[0] / g.shape[0], target.shape[1] / g.shape[1]
        r = np.round((g.rows + 0.5) * sy - 0.5).astype(np.int64)
        c = np.round((g.cols + 0.5) * sx - 0.5).astype(np.int64)
        rows.append(np.clip(r, 0, target.shape[0] - 1))
        cols.append(np.clip(c, 0, target.shape[1] - 1))
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    return GroundTruth(target.shape, rows, cols)


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
    for i in it:
        gt = gts[i]
        key = gt.shape
        if key not in base_cache:
            if baseline is None:
                from .classical import centre_bias

                b = centre_bias(key)
            else:
                b = baseline(key) if callable(baseline) else np.asarray(baseline, np.float64)
            if b.shape != key:
                b = _resize(b, key)
            base_cache[key] = _Map(b)
        other = None
        if "sauc" in metrics:
            other = _gt_get(gt, f"other_{n_other}_{seed}_{n}", lambda: {
                p: other_fixations(gts, i, p, n_other, rng=[seed, i, 1]) for p in protocols})
        res = evaluate_protocols(get(i), gt, protocols, metrics, baseline=base_cache[key],
                                 other=other, rng=np.random.default_rng([seed, i]), **options)
        for p in protocols:
            rows.append({"index": i, "image": gt.image, "protocol": p, "n_fixations": len(gt),
                         **res[p]})
        if not given[i]:
            gt.release()  # ours: free its densities (the caller's objects keep their caches)
    return rows
