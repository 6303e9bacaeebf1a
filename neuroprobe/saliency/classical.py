"""Classical (non-learned) saliency models: plain functions ``image -> map``.

Every model takes an image ``(H, W, 3)`` (float in [0, 1]; uint8 is divided by 255; a grey
``(H, W)`` image is repeated to three channels) and returns a float64 map ``(H, W)`` of the same
size, non-negative, with maximum 1 (all zeros for an image without any structure).

* :func:`itti_koch` -- Itti, Koch, Niebur, "A model of saliency-based visual attention for rapid
  scene analysis", IEEE TPAMI 20(11), 1998.
* :func:`spectral_residual` -- Hou, Zhang, "Saliency detection: a spectral residual approach",
  CVPR 2007.
* :func:`image_signature` -- Hou, Harel, Koch, "Image signature: highlighting sparse salient
  regions", IEEE TPAMI 34(1), 2012.
* :func:`centre_bias` -- a Gaussian at the image centre (Tatler 2007; Judd et al., ICCV 2009 use
  it as their centre prior).

:data:`MODELS` maps the names used on the command line (``itti``, ``spectral``, ``signature``,
``centre``) to these functions; :func:`get_model` resolves a name.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import ndimage

from ..errors import UserError, suggest

__all__ = ["itti_koch", "spectral_residual", "image_signature", "centre_bias", "MODELS",
           "get_model", "as_image", "resize_map"]


# --------------------------------------------------------------------------- helpers
def as_image(image) -> np.ndarray:
    """``(H, W, 3)`` float64 in [0, 1] from float/uint8, grey or RGB(A), numpy or torch (3,H,W)."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
            image = np.moveaxis(image, 0, -1)
    img = np.asarray(image)
    if img.dtype == np.uint8:
        img = img.astype(np.float64) / 255.0
    else:
        img = img.astype(np.float64, copy=False)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise UserError(f"an image must be (H, W), (H, W, 3) or (H, W, 4); got {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    if img.shape[2] == 4:
        img = img[:, :, :3]
    if not np.isfinite(img).all():
        raise UserError("the image contains NaN or infinite values")
    return img


@lru_cache(maxsize=64)
def _resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` linear resampling: area averaging when shrinking, linear when growing.

    Pixel-centre aligned (like ``skimage.transform.resize``).  Resizing a 2-D map is then
    ``My @ map @ Mx.T``, two small matrix products.
    """
    m = np.zeros((n_out, n_in))
    scale = n_in / n_out
    if n_out < n_in:  # area: output pixel j covers input [j*scale, (j+1)*scale)
        for j in range(n_out):
            a, b = j * scale, (j + 1) * scale
            i0, i1 = int(math.floor(a)), int(math.ceil(b))
            for i in range(i0, min(i1, n_in)):
                m[j, i] = min(b, i + 1) - max(a, i)
        m /= m.sum(axis=1, keepdims=True)
    else:
        pos = (np.arange(n_out) + 0.5) * scale - 0.5
        pos = np.clip(pos, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        w = pos - lo
        m[np.arange(n_out), lo] += 1 - w
        m[np.arange(n_out), hi] += w
    return m


def _interp_axis(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Linear (pixel-centre aligned) upsampling along one axis with two-tap gathers."""
    n_in = a.shape[axis]
    pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    w = pos - lo
    shape = [1] * a.ndim
    shape[axis] = n_out
    w = w.reshape(shape)
    if a.dtype != np.float64:
        return np.take(a, lo, axis=axis) * (1 - w) + np.take(a, hi, axis=axis) * w
    out = np.take(a, lo, axis=axis)  # the same sum, without temporaries
    out *= 1 - w
    t = np.take(a, hi, axis=axis)
    t *= w
    out += t
    return out


def resize_map(a: np.ndarray, shape: tuple[int, int], axes: tuple[int, int] = (0, 1)
               ) -> np.ndarray:
    """Resize a 2-D map (or a stack whose rows/columns are ``axes``): area averaging when
    shrinking an axis, linear interpolation when growing it (pixel-centre aligned, like
    ``skimage.transform.resize``); columns first, then rows."""
    ya, xa = axes
    h, w = a.shape[ya], a.shape[xa]
    oh, ow = int(shape[0]), int(shape[1])
    if ow > w:
        a = _interp_axis(a, ow, xa)
    elif ow < w:
        a = _area_axis(a, ow, xa)
    if oh > h:
        a = _interp_axis(a, oh, ya)
    elif oh < h:
        a = _area_axis(a, oh, ya)
    return a


def _area_axis(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Area-averaging downsampling along one axis (a sparse matrix product)."""
    m = _sparse_matrix(a.shape[axis], n_out)
    moved = np.moveaxis(a, axis, 0)
    rest = moved.shape[1:]
    out = m @ moved.reshape(moved.shape[0], -1)
    return np.moveaxis(np.asarray(out).reshape((n_out,) + rest), 0, axis)


@lru_cache(maxsize=64)
def _sparse_matrix(n_in: int, n_out: int):
    from scipy import sparse

    return sparse.csr_matrix(_resample_matrix(n_in, n_out))


def _normalise01(m: np.ndarray, inplace: bool = False) -> np.ndarray:
    """``(m - min) / (max - min)``; zeros for a constant map (``inplace``: m is overwritten)."""
    if inplace:
        m -= m.min()
    else:
        m = m - m.min()
    top = m.max()
    if top > 0:
        if inplace:
            m /= top
            return m
        return m / top
    return np.zeros_like(m)


def _small_size(h: int, w: int, side: int = 64) -> tuple[int, int]:
    """Size with width ``side`` (height ``side`` for portrait images), aspect kept."""
    if w >= h:
        return max(1, round(h * side / w)), side
    return side, max(1, round(w * side / h))


# --------------------------------------------------------------------------- Itti-Koch-Niebur
_BURT = np.array([1, 4, 6, 4, 1], dtype=np.float64) / 16.0


def _five_tap(taps, out=None) -> np.ndarray:
    """``(t0 + t4 + 4 (t1 + t3) + 6 t2) / 16``, evaluated in that order with in-place
    temporaries."""
    acc = np.add(taps[0], taps[4], out=out)
    t = np.add(taps[1], taps[3])
    t *= 4.0
    acc += t
    np.multiply(taps[2], 6.0, out=t)
    acc += t
    acc *= 1.0 / 16.0
    return acc


def _reduce_axis(a: np.ndarray, axis: int) -> np.ndarray:
    """Burt-Adelson 5-tap filter with reflect borders at the even samples of one axis."""
    n = a.shape[axis]

    def sl(start, stop, step=1):
        idx = [slice(None)] * a.ndim
        idx[axis] = slice(start, stop, step)
        return tuple(idx)

    m = (n + 1) // 2
    if n < 8:  # short axes: pad (a small copy) and take the taps from the padded array
        pad = [(0, 0)] * a.ndim
        pad[axis] = (2, 2)
        p = np.pad(a, pad, mode="reflect" if n > 2 else "edge")
        return _five_tap([p[sl(k, k + 2 * m - 1, 2)] for k in range(5)])
    # interior outputs j = 1 .. m-2 read samples 2j-2 .. 2j+2 directly (no padded copy);
    # the first and last outputs come from reflect-padded five-sample slabs at the borders
    shape = list(a.shape)
    shape[axis] = m
    out = np.empty(shape, dtype=a.dtype)
    _five_tap([a[sl(k, k + 2 * (m - 2) - 1, 2)] for k in range(5)], out=out[sl(1, m - 1)])
    pad = [(0, 0)] * a.ndim
    pad[axis] = (2, 0)
    head = np.pad(a[sl(0, 3)], pad, mode="reflect")  # x[2], x[1], x[0], x[1], x[2]
    _five_tap([head[sl(k, k + 1)] for k in range(5)], out=out[sl(0, 1)])
    pad[axis] = (0, 2)
    tail = np.pad(a[sl(n - 5, n)], pad, mode="reflect")  # x[n-5 .. n-1], x[n-2], x[n-3]
    first = 2 * (m - 1) - 2 - (n - 5)  # slab index of sample 2(m-1) - 2
    _five_tap([tail[sl(first + k, first + k + 1)] for k in range(5)], out=out[sl(m - 1, m)])
    return out


def _reduce(a: np.ndarray, axes=(0, 1)) -> np.ndarray:
    """One level of the Gaussian pyramid: 5-tap Burt-Adelson filter [1 4 6 4 1]/16 (reflect
    borders), evaluated only at the kept samples, i.e. followed by decimation by 2 along
    ``axes`` (the image axes: ``(0, 1)`` for ``(H, W, C)``, ``(1, 2)`` for ``(C, H, W)``)."""
    for axis in axes:
        a = _reduce_axis(a, axis)
    return a


def gaussian_pyramid(a: np.ndarray, levels: int = 9, axes=(0, 1)) -> list[np.ndarray]:
    """Dyadic Gaussian pyramid, level 0 = input (``(H, W)`` or ``(H, W, C)``; ``axes=(1, 2)``
    for a channel-first ``(C, H, W)`` stack, which is faster for large images)."""
    out = [a]
    for _ in range(levels - 1):
        if min(out[-1].shape[axes[0]], out[-1].shape[axes[1]]) < 2:
            out.append(out[-1])
        else:
            out.append(_reduce(out[-1], axes))
    return out


@lru_cache(maxsize=16)
def _gabor_kernels(period: float = 7.0, sigma: float = 7.0 / 3.0, size: int = 13,
                   n_orient: int = 4) -> tuple[np.ndarray, ...]:
    """Complex Gabor kernels (quadrature pair as real and imaginary part), zero-mean real part."""
    r = size // 2
    y, x = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float64)
    out = []
    for k in range(n_orient):
        theta = k * math.pi / n_orient
        # orientation theta: the stripes run along theta, the carrier varies across it
        u = -x * math.sin(theta) + y * math.cos(theta)
        env = np.exp(-(x ** 2 + y ** 2) / (2 * sigma ** 2))
        even = env * np.cos(2 * math.pi * u / period)
        even -= env * (even.sum() / env.sum())  # remove the DC response
        odd = env * np.sin(2 * math.pi * u / period)
        kern = even + 1j * odd
        out.append(kern / np.abs(kern).sum())
    return tuple(out)


@lru_cache(maxsize=64)
def _gabor_spectra(shape: tuple[int, int], period: float = 7.0, sigma: float = 7.0 / 3.0,
                   size: int = 13, n_orient: int = 4) -> np.ndarray:
    """FFTs of the Gabor kernels zero-padded to ``shape``: ``(n_orient, H, W)`` complex."""
    kernels = _gabor_kernels(period, sigma, size, n_orient)
    out = np.stack([np.fft.fft2(k, s=shape) for k in kernels])
    out.flags.writeable = False
    return out


def _gabor_energy(level: np.ndarray, kernels=None, channel_first: bool = False) -> np.ndarray:
    """Magnitude of the complex Gabor responses of one pyramid level (FFT, reflect padding):
    ``(H, W, n_orient)`` (``(n_orient, H, W)`` with ``channel_first``), one channel per
    orientation of :func:`_gabor_kernels`."""
    default = kernels is None
    if default:
        kernels = _gabor_kernels()
    r = kernels[0].shape[0] // 2
    pad = np.pad(level, r, mode="reflect") if min(level.shape) > r else np.pad(level, r, "edge")
    spectra = _gabor_spectra(pad.shape) if default else \
        np.stack([np.fft.fft2(k, s=pad.shape) for k in kernels])
    resp = np.fft.ifft2(np.fft.fft2(pad)[None] * spectra, axes=(-2, -1))
    # kernel origin at (0, 0): output pixel p holds the response centred at p - r
    resp = resp[:, 2 * r: 2 * r + level.shape[0], 2 * r: 2 * r + level.shape[1]]
    energy = np.abs(resp)
    return energy if channel_first else np.moveaxis(energy, 0, -1)


def itti_normalise(m: np.ndarray, top: float = 1.0) -> np.ndarray:
    """The map normalisation operator N(.) of Itti, Koch & Niebur (1998).

    1. scale the map to the fixed range [0, ``top``];
    2. find the global maximum M (= ``top``) and the mean m̄ of all *other* local maxima
       (3x3 neighbourhood maxima above ``top / 10``, the threshold of Itti's implementation);
    3. multiply the map by ``(M - m̄)**2``.

    A map with one strong peak keeps its strength; a map with many comparable peaks is suppressed.
    A numerically flat map (range below 1e-10, i.e. FFT round-off of a constant feature) is zero.
    """
    m = m - m.min()
    hi = m.max()
    if not hi > 1e-10:  # numerically flat (feature values are O(1) for images in [0, 1])
        return np.zeros_like(m)
    m = m * (top / hi)
    peaks = (m == ndimage.maximum_filter(m, size=3, mode="constant", cval=-1.0)) & (m > top / 10)
    vals = m[peaks]
    if vals.size > 1:
        # drop one instance of the global maximum
        vals = np.delete(vals, int(np.argmax(vals)))
        mbar = vals.mean()
    else:
        mbar = 0.0
    return m * (top - mbar) ** 2


def _itti_normalise_stack(m: np.ndarray, top: float = 1.0) -> np.ndarray:
    """:func:`itti_normalise` applied to each map of a ``(C, H, W)`` stack at once (the same
    operations map by map, so the same numbers)."""
    m = m - m.min(axis=(1, 2), keepdims=True)
    hi = m.max(axis=(1, 2), keepdims=True)
    flat = ~(hi > 1e-10)
    m *= top / np.where(flat, 1.0, hi)
    peaks = m == _max3x3(m)
    peaks &= m > top / 10
    gain = np.empty((m.shape[0], 1, 1))
    for ch in range(m.shape[0]):
        if flat[ch, 0, 0]:
            gain[ch] = 0.0
            continue
        vals = m[ch][peaks[ch]]
        if vals.size > 1:
            vals = np.delete(vals, int(np.argmax(vals)))
            mbar = vals.mean()
        else:
            mbar = 0.0
        gain[ch] = (top - mbar) ** 2
    m *= gain
    return m


def _max3x3(m: np.ndarray) -> np.ndarray:
    """3x3 maximum filter of each map of a ``(C, H, W)`` stack, outside the map counting as -1
    (``ndimage.maximum_filter(m, (1, 3, 3), mode="constant", cval=-1)``, by shifted maxima)."""
    p = np.pad(m, ((0, 0), (1, 1), (1, 1)), constant_values=-1.0)
    r = np.maximum(p[:, :, :-2], p[:, :, 1:-1])
    np.maximum(r, p[:, :, 2:], out=r)
    c = np.maximum(r[:, :-2], r[:, 1:-1])
    np.maximum(c, r[:, 2:], out=c)
    return c


def _resize_stack(a: np.ndarray, shape) -> np.ndarray:
    """:func:`resize_map` of each map of a ``(C, H, W)`` stack (same operations, same order)."""
    return resize_map(a, shape, axes=(1, 2))


def _centre_surround(pyr, centres=(2, 3, 4), deltas=(3, 4)) -> list[tuple[int, np.ndarray]]:
    """|F(c) - interp(F(s))| for c in centres, s = c + delta (Itti's across-scale difference)."""
    out = []
    for c in centres:
        for d in deltas:
            s = c + d
            if s >= len(pyr):
                continue
            out.append((c, np.abs(pyr[c] - resize_map(pyr[s], pyr[c].shape))))
    return out


def _across_scale_sum(maps: list[np.ndarray], shape) -> np.ndarray:
    acc = np.zeros(shape)
    for m in maps:
        acc += resize_map(m, shape)
    return acc


def itti_koch(image, *, levels: int = 9, centres=(2, 3, 4), deltas=(3, 4), map_level: int = 4,
              blur_sigma: float = 0.0, return_maps: bool = False):
    """Itti-Koch-Niebur (1998) saliency.

    Follows the paper step by step:

    * 9-level dyadic Gaussian pyramids (5-tap Burt-Adelson filter) of intensity
      ``I = (r + g + b) / 3`` and of the opponent colour maps;
    * colour: ``r, g, b`` divided by ``I`` where ``I > max(I) / 10`` (zero elsewhere), broadly tuned
      ``R = r - (g + b)/2``, ``G = g - (r + b)/2``, ``B = b - (r + g)/2``,
      ``Y = (r + g)/2 - |r - g|/2 - b`` with negative values set to zero; double-opponent
      features from ``RG = R - G`` and ``BY = B - Y`` (implemented, as in Walther & Koch's
      Saliency Toolbox, as the centre-surround difference of the RG and BY pyramids);
    * orientation: Gabor energy (quadrature pair, period 7 px, sigma 7/3 px) at 0, 45, 90 and
      135 degrees on each intensity pyramid level;
    * centre-surround differences ``|F(c) - F(s)|`` at centres ``c in {2, 3, 4}`` and surrounds
      ``s = c + 3, c + 4`` (42 feature maps);
    * the normalisation N(.) (:func:`itti_normalise`); conspicuity maps by across-scale addition at
      level 4: ``I = (+) N(I(c,s))``, ``C = (+) [N(RG(c,s)) + N(BY(c,s))]``,
      ``O = sum_theta N((+) N(O(c,s,theta)))``;
    * saliency ``S = (N(I) + N(C) + N(O)) / 3``, resized (bilinear) to the image and scaled to
      a maximum of 1.

    Parameters
    ----------
    image : (H, W, 3) float in [0, 1]
    blur_sigma : standard deviation (pixels of the image) of an optional Gaussian blur of the
        final map (0: none, the model as published)
    return_maps : also return the conspicuity maps ``{"intensity", "colour", "orientation"}``
        (each resized to the image and normalised to max 1 when non-zero)

    Notes
    -----
    On natural images this model scores below a plain centre-bias map under metrics that reward
    the centre bias of observers (all 700 OSIE images, mit protocol: AUC-Judd 0.702 against
    0.738 for :func:`centre_bias`, NSS 0.79 against 0.84), and well above it under the shuffled
    AUC, which discounts that bias (0.643 against 0.502).  That is the model, not a fault: it has no centre prior, and N(.)
    deliberately makes the map sparse (a few peaks at the winning conspicuity maps), so most
    fixations away from those peaks land on near-zero saliency.  Published leaderboards that
    show higher Itti-Koch figures use a re-implementation whose output is blurred and optimised
    for a centre bias per data set (the MIT benchmark, Bylinskii et al. 2019; its original-code
    entry scores far lower).  A blur helps little here: on 100 OSIE images ``blur_sigma`` 0, 10,
    20, 30, 45 px gave AUC-Judd 0.708, 0.713, 0.717, 0.718, 0.713 and NSS 0.77, 0.79, 0.79, 0.78,
    0.73 (mit protocol).

    The arithmetic runs on stacks of all seven feature maps at once (one pyramid of the three
    channel-first images, one batched FFT for the four Gabor orientations, one N(.) over the
    stack), in the operation order of the per-map formulas, so the maps equal those of a
    map-by-map implementation bit for bit.

    Returns
    -------
    (H, W) map, or ``(map, dict)`` with ``return_maps=True``.
    """
    st, (h, w) = _itti_features(image)
    consp = _itti_conspicuity(st, levels, centres, deltas, map_level)
    sal = (consp["intensity"] + consp["colour"] + consp["orientation"]) / 3.0
    out = resize_map(sal, (h, w))
    out = _normalise01(np.maximum(out, 0, out=out if out is not sal else None), inplace=True)
    if blur_sigma:
        out = _normalise01(ndimage.gaussian_filter(out, blur_sigma, mode="nearest"))
    if return_maps:
        return out, {k: _normalise01(np.maximum(resize_map(v, (h, w)), 0))
                     for k, v in consp.items()}
    return out


def _itti_features(image) -> tuple[np.ndarray, tuple[int, int]]:
    """The feature planes of :func:`itti_koch`: a ``(3, H, W)`` float32 stack of intensity,
    ``RG = R - G`` and ``BY = B - Y`` (the formulas of its docstring), and the image's size."""
    planes = _planes32(image)  # (3, H, W) float32, our own copy
    h, w = planes.shape[1:]
    # the features (intensity, RG, BY) go straight into one (3, H, W) stack; the arithmetic
    # is that of the formulas in the docstring, in the same order, with in-place temporaries
    st = np.empty_like(planes)
    inten = st[0]
    np.add(planes[0], planes[1], out=inten)
    inten += planes[2]
    inten /= 3.0
    lit = inten > inten.max() / 10.0
    # hue normalised by the intensity where it exceeds a tenth of its maximum, zero elsewhere
    np.divide(planes, inten, out=planes, where=lit)
    np.copyto(planes, 0.0, where=~lit)
    rn, gn, bn = planes
    t1 = np.add(gn, bn)  # R = max(rn - (gn + bn)/2, 0)
    t1 /= 2
    np.subtract(rn, t1, out=t1)
    np.maximum(t1, 0, out=t1)
    t2 = np.add(rn, bn)  # G = max(gn - (rn + bn)/2, 0)
    t2 /= 2
    np.subtract(gn, t2, out=t2)
    np.maximum(t2, 0, out=t2)
    np.subtract(t1, t2, out=st[1])  # RG = R - G
    half = np.add(rn, gn, out=t1)  # (rn + gn)/2
    half /= 2
    np.subtract(bn, half, out=t2)  # B = max(bn - (rn + gn)/2, 0)
    np.maximum(t2, 0, out=t2)
    t3 = np.subtract(rn, gn)  # Y = max((rn + gn)/2 - |rn - gn|/2 - bn, 0)
    np.abs(t3, out=t3)
    t3 /= 2
    np.subtract(half, t3, out=t3)
    t3 -= bn
    np.maximum(t3, 0, out=t3)
    np.subtract(t2, t3, out=st[2])  # BY = B - Y
    return st, (int(h), int(w))


def _itti_conspicuity(st: np.ndarray, levels: int, centres, deltas,
                      map_level: int) -> dict[str, np.ndarray]:
    """The normalised conspicuity maps ``{"intensity", "colour", "orientation"}`` of
    :func:`itti_koch` at ``map_level``, from the feature stack of :func:`_itti_features`."""
    # channel-first pyramid and feature stacks (each map contiguous)
    cpyr = gaussian_pyramid(st, levels, axes=(1, 2))
    first = min(centres)
    level = min(map_level, len(cpyr) - 1)
    # features per level: intensity, RG, BY, then Gabor energy at each orientation
    feats = {}
    for lv in range(first, len(cpyr)):
        lvl = cpyr[lv].astype(np.float64)
        feats[lv] = np.concatenate([lvl, _gabor_energy(lvl[0], channel_first=True)])
    shape = cpyr[level].shape[1:]
    n_orient = feats[first].shape[0] - 3
    # centre-surround differences of all seven features at once, each normalised by N(.);
    # the colour maps of a pair are N(RG) + N(BY)
    acc = np.zeros((2 + n_orient,) + shape)
    for c in centres:
        for d in deltas:
            s_ = c + d
            if s_ >= len(cpyr) or c not in feats:
                continue
            cs = feats[c] - _resize_stack(feats[s_], feats[c].shape[1:])
            nm = _itti_normalise_stack(np.abs(cs, out=cs))
            nm[2] += nm[1]  # N(BY) + N(RG), as N(RG) + N(BY) (addition commutes exactly)
            acc += _resize_stack(nm[[0] + list(range(2, nm.shape[0]))], shape)  # across scales
    o_bar = np.zeros(shape)
    for t in range(n_orient):
        o_bar += itti_normalise(acc[2 + t])
    return {"intensity": itti_normalise(acc[0]), "colour": itti_normalise(acc[1]),
            "orientation": itti_normalise(o_bar)}


_LUT32 = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)


def _planes32(image) -> np.ndarray:
    """The image as ``(3, H, W)`` float32 planes, exactly ``as_image(image).astype(float32)``
    (uint8 through a 256-entry table, which skips the float64 copy of the image)."""
    arr = image if isinstance(image, np.ndarray) else None
    if arr is not None and arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] in (3, 4):
        return np.take(_LUT32, np.ascontiguousarray(np.moveaxis(arr[:, :, :3], -1, 0)))
    return np.ascontiguousarray(np.moveaxis(as_image(image).astype(np.float32), -1, 0))


# --------------------------------------------------------------------------- spectral methods
def spectral_residual(image, *, width: int = 64, avg_size: int = 3, sigma: float = 2.5) -> np.ndarray:
    """Spectral residual saliency (Hou & Zhang 2007).

    The grey image is resized to ``width`` pixels (64 in the paper, aspect kept); its log
    amplitude spectrum ``L`` minus the ``avg_size x avg_size`` local average of ``L`` is the
    spectral residual ``R``; ``|IFFT(exp(R + i P))|**2`` with the original phase ``P`` is smoothed
    by a Gaussian (``sigma`` = 2.5 px at the small scale, as in the authors' published MATLAB code,
    ``fspecial('gaussian', [10 10], 2.5)``; the paper's text quotes sigma = 8), resized back to the
    image and scaled to max 1.
    """
    img = as_image(image)
    h, w = img.shape[:2]
    small = resize_map(img.mean(axis=2), _small_size(h, w, width))
    f = np.fft.fft2(small)
    log_amp = np.log(np.abs(f) + 1e-12)
    phase = np.angle(f)
    residual = log_amp - ndimage.uniform_filter(log_amp, size=avg_size, mode="nearest")
    sal = np.abs(np.fft.ifft2(np.exp(residual + 1j * phase))) ** 2
    sal = ndimage.gaussian_filter(sal, sigma, mode="nearest")
    return _normalise01(np.maximum(resize_map(sal, (h, w)), 0))


def image_signature(image, *, width: int = 64, sigma_frac: float = 0.05,
                    colour_space: str = "lab") -> np.ndarray:
    """Image signature saliency (Hou, Harel & Koch 2012).

    At ``width`` pixels (64 in the paper), for each channel (CIE Lab by default, the paper's best
    variant; ``"rgb"`` or ``"grey"`` also possible) the *image signature* ``sign(DCT(x))`` is
    transformed back, ``x̄ = IDCT(sign(DCT(x)))``; the saliency map is ``g * sum_c x̄_c ∘ x̄_c``
    with a Gaussian ``g`` of sigma ``sigma_frac * width`` (0.05 of the width), resized back and
    scaled to max 1.
    """
    from scipy.fft import dctn, idctn

    img = as_image(image)
    h, w = img.shape[:2]
    small = resize_map(img, _small_size(h, w, width))
    if colour_space == "lab":
        from skimage.color import rgb2lab

        chans = rgb2lab(np.clip(small, 0, 1))
    elif colour_space == "rgb":
        chans = small
    elif colour_space == "grey":
        chans = small.mean(axis=2, keepdims=True)
    else:
        raise UserError(f"unknown colour space {colour_space!r}", hint="use lab, rgb or grey")
    sal = np.zeros(small.shape[:2])
    for c in range(chans.shape[2]):
        xbar = idctn(np.sign(dctn(chans[..., c], norm="ortho")), norm="ortho")
        sal += xbar * xbar
    sal = ndimage.gaussian_filter(sal, sigma_frac * max(small.shape[:2]), mode="nearest")
    return _normalise01(np.maximum(resize_map(sal, (h, w)), 0))


def centre_bias(image, *, sigma_frac: float | tuple[float, float] = 0.25) -> np.ndarray:
    """A Gaussian at the image centre: ``exp(-(dy**2/(2 sy**2) + dx**2/(2 sx**2)))``.

    ``sigma_frac`` is the standard deviation as a fraction of the height and width (one value for
    both, or ``(fy, fx)``).  The image content is ignored, only its size is used; an ``(H, W)``
    shape tuple is accepted in place of an image.
    """
    if isinstance(image, tuple) and len(image) == 2:
        h, w = image
    else:
        h, w = np.asarray(image).shape[:2] if not hasattr(image, "shape") else image.shape[:2]
    fy, fx = (sigma_frac, sigma_frac) if np.isscalar(sigma_frac) else sigma_frac
    y = (np.arange(h) - (h - 1) / 2.0) / (fy * h)
    x = (np.arange(w) - (w - 1) / 2.0) / (fx * w)
    return np.exp(-0.5 * y[:, None] ** 2) * np.exp(-0.5 * x[None, :] ** 2)


MODELS = {
    "itti": itti_koch,
    "spectral": spectral_residual,
    "signature": image_signature,
    "centre": centre_bias,
}
_ALIASES = {"itti_koch": "itti", "ittikoch": "itti", "spectral_residual": "spectral", "sr": "spectral",
            "image_signature": "signature", "center": "centre", "centre_bias": "centre",
            "center_bias": "centre"}


def get_model(name: str):
    """The classical model function registered under ``name`` (aliases such as ``center``)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in MODELS:
        raise UserError(f"unknown classical saliency model {name!r}",
                        hint=suggest(name, list(MODELS) + list(_ALIASES), "model"))
    return MODELS[key]


def is_classical(name: str) -> bool:
    return _ALIASES.get(name.lower(), name.lower()) in MODELS
