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
    return np.take(a, lo, axis=axis) * (1 - w) + np.take(a, hi, axis=axis) * w


def resize_map(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a 2-D map (or ``(H, W, C)`` stack): area averaging when shrinking an axis,
    linear interpolation when growing it (pixel-centre aligned, like ``skimage.transform.resize``)."""
    h, w = a.shape[:2]
    oh, ow = int(shape[0]), int(shape[1])
    if (h, w) == (oh, ow):
        return a
    if ow > w:
        a = _interp_axis(a, ow, 1)
    elif ow < w:
        a = _area_axis(a, ow, 1)
    if oh > h:
        a = _interp_axis(a, oh, 0)
    elif oh < h:
        a = _area_axis(a, oh, 0)
    return a


def _area_axis(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Area-averaging downsampling along one axis (a sparse matrix product)."""
    from scipy import sparse

    m = _sparse_matrix(a.shape[axis], n_out)
    moved = np.moveaxis(a, axis, 0)
    rest = moved.shape[1:]
    out = m @ moved.reshape(moved.shape[0], -1)
    return np.moveaxis(np.asarray(out).reshape((n_out,) + rest), 0, axis)


@lru_cache(maxsize=64)
def _sparse_matrix(n_in: int, n_out: int):
    from scipy import sparse

    return sparse.csr_matrix(_resample_matrix(n_in, n_out))


def _normalise01(m: np.ndarray) -> np.ndarray:
    m = m - m.min()
    top = m.max()
    return m / top if top > 0 else np.zeros_like(m)


def _small_size(h: int, w: int, side: int = 64) -> tuple[int, int]:
    """Size with width ``side`` (height ``side`` for portrait images), aspect kept."""
    if w >= h:
        return max(1, round(h * side / w)), side
    return side, max(1, round(w * side / h))


# --------------------------------------------------------------------------- Itti-Koch-Niebur
_BURT = np.array([1, 4, 6, 4, 1], dtype=np.float64) / 16.0


def _reduce(a: np.ndarray) -> np.ndarray:
    """One level of the Gaussian pyramid: 5-tap Burt-Adelson filter [1 4 6 4 1]/16 (reflect
    borders), evaluated only at the kept samples, i.e. followed by decimation by 2."""
    for axis in (0, 1):
        n = a.shape[axis]
        pad = [(0, 0)] * a.ndim
        pad[axis] = (2, 2)
        p = np.pad(a, pad, mode="reflect" if n > 2 else "edge")
        m = (n + 1) // 2

        def tap(k):
            idx = [slice(None)] * a.ndim
            idx[axis] = slice(k, k + 2 * m - 1, 2)
            return p[tuple(idx)]

        a = (tap(0) + tap(4) + 4.0 * (tap(1) + tap(3)) + 6.0 * tap(2)) * (1.0 / 16.0)
    return a


def gaussian_pyramid(a: np.ndarray, levels: int = 9) -> list[np.ndarray]:
    """Dyadic Gaussian pyramid, level 0 = input (works on ``(H, W)`` or ``(H, W, C)``)."""
    out = [a]
    for _ in range(levels - 1):
        if min(out[-1].shape[:2]) < 2:
            out.append(out[-1])
        else:
            out.append(_reduce(out[-1]))
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


def _gabor_energy(level: np.ndarray, kernels) -> list[np.ndarray]:
    """Magnitude of the complex Gabor responses of one pyramid level (FFT, reflect padding)."""
    r = kernels[0].shape[0] // 2
    pad = np.pad(level, r, mode="reflect") if min(level.shape) > r else np.pad(level, r, "edge")
    sh = pad.shape
    f = np.fft.fft2(pad)
    out = []
    for k in kernels:
        kf = np.fft.fft2(k, s=sh)
        resp = np.fft.ifft2(f * kf)
        # kernel origin at (0, 0): output pixel p holds the response centred at p - r
        out.append(np.abs(resp[2 * r: 2 * r + level.shape[0], 2 * r: 2 * r + level.shape[1]]))
    return out


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
              return_maps: bool = False):
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
    return_maps : also return the conspicuity maps ``{"intensity", "colour", "orientation"}``
        (each resized to the image and normalised to max 1 when non-zero)

    Returns
    -------
    (H, W) map, or ``(map, dict)`` with ``return_maps=True``.
    """
    img = as_image(image).astype(np.float32)
    h, w = img.shape[:2]
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    inten = (r + g + b) / 3.0
    lit = inten > inten.max() / 10.0
    safe = np.where(lit, inten, 1.0)
    rn, gn, bn = (np.where(lit, ch / safe, 0.0) for ch in (r, g, b))
    R = np.maximum(rn - (gn + bn) / 2, 0)
    G = np.maximum(gn - (rn + bn) / 2, 0)
    B = np.maximum(bn - (rn + gn) / 2, 0)
    Y = np.maximum((rn + gn) / 2 - np.abs(rn - gn) / 2 - bn, 0)
    stack = np.stack([inten, R - G, B - Y], axis=2)
    pyr = [p.astype(np.float64) for p in gaussian_pyramid(stack, levels)]
    ipyr = [p[..., 0] for p in pyr]
    rgpyr = [p[..., 1] for p in pyr]
    bypyr = [p[..., 2] for p in pyr]
    level = min(map_level, len(pyr) - 1)
    shape = ipyr[level].shape

    i_maps = [itti_normalise(m) for _, m in _centre_surround(ipyr, centres, deltas)]
    c_maps = [itti_normalise(a) + itti_normalise(bm) for (_, a), (_, bm) in
              zip(_centre_surround(rgpyr, centres, deltas), _centre_surround(bypyr, centres, deltas))]
    kernels = _gabor_kernels()
    first = min(centres)
    gab = {lv: _gabor_energy(ipyr[lv], kernels) for lv in range(first, len(ipyr))}
    o_bar = np.zeros(shape)
    for t in range(len(kernels)):
        opyr = [None] * len(ipyr)
        for lv in gab:
            opyr[lv] = gab[lv][t]
        o_maps = [itti_normalise(m) for _, m in _centre_surround(opyr, centres, deltas)]
        o_bar += itti_normalise(_across_scale_sum(o_maps, shape))
    i_bar = _across_scale_sum(i_maps, shape)
    c_bar = _across_scale_sum(c_maps, shape)
    consp = {"intensity": itti_normalise(i_bar), "colour": itti_normalise(c_bar),
             "orientation": itti_normalise(o_bar)}
    sal = (consp["intensity"] + consp["colour"] + consp["orientation"]) / 3.0
    out = _normalise01(np.maximum(resize_map(sal, (h, w)), 0))
    if return_maps:
        return out, {k: _normalise01(np.maximum(resize_map(v, (h, w)), 0))
                     for k, v in consp.items()}
    return out


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
