"""Centred kernel alignment (CKA) between two representations of the same images.

Linear CKA (Kornblith, Norouzi, Lee, Hinton, "Similarity of Neural Network Representations
Revisited", ICML 2019) compares two layers (or one layer of two model variants) by the
alignment of their centred Gram matrices::

    CKA(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)),   K = X X^T,  L = Y Y^T

for ``X`` (n x p1) and ``Y`` (n x p2) holding one row per image.  It is invariant to orthogonal
transforms and isotropic scaling of either representation, not to arbitrary invertible linear maps.

Two estimators of HSIC are provided:

* ``biased`` - the plug-in estimator ``tr(K H L H) / (n-1)^2`` (``H`` the centring matrix), as in
  Kornblith et al.  Biased upwards for small ``n``: two independent random representations give a
  CKA well above 0 when ``p`` is large compared with ``n``.
* ``unbiased`` - the U-statistic of Song, Smola, Gretton, Bedo, Borgwardt (JMLR 2012), used for CKA
  by Nguyen, Raghu, Kornblith (ICLR 2021): with ``K~``, ``L~`` the Gram matrices with zeroed
  diagonals, ``HSIC_u = [tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))``.
  Close to 0 for independent representations; needs ``n >= 4``.

Convolutional maps ``(n, C, H, W)`` are reduced to rows either by flattening (``"flatten"``, every
unit at every position is a feature) or by spatial averaging (``"mean"``).
"""
from __future__ import annotations

import numpy as np

__all__ = ["linear_cka", "gram", "hsic", "as_rows"]


def as_rows(x, reduce: str = "flatten") -> np.ndarray:
    """``(n, ...)`` activations -> ``(n, p)`` float64 rows (``reduce`` = flatten | mean)."""
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().float().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError("activations need a leading image dimension and at least one feature")
    if x.ndim > 2 and reduce == "mean":
        x = x.reshape(x.shape[0], x.shape[1], -1).mean(axis=2)
    elif reduce not in ("flatten", "mean"):
        raise ValueError(f"reduce must be 'flatten' or 'mean', not {reduce!r}")
    return x.reshape(x.shape[0], -1)


def gram(x: np.ndarray) -> np.ndarray:
    """Linear-kernel Gram matrix ``X X^T`` of ``(n, p)`` rows."""
    return x @ x.T


def hsic(k: np.ndarray, l: np.ndarray, unbiased: bool = False) -> float:
    """HSIC between two Gram matrices (see the module docstring for both estimators)."""
    n = k.shape[0]
    if k.shape != (n, n) or l.shape != (n, n):
        raise ValueError("Gram matrices must be square and of the same size")
    if not unbiased:
        kc = k - k.mean(axis=0, keepdims=True) - k.mean(axis=1, keepdims=True) + k.mean()
        lc = l - l.mean(axis=0, keepdims=True) - l.mean(axis=1, keepdims=True) + l.mean()
        return float((kc * lc).sum() / (n - 1) ** 2)
    if n < 4:
        raise ValueError("the unbiased HSIC estimator needs at least 4 images")
    kt = k.copy()
    lt = l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    ones_k = kt.sum(axis=1)
    ones_l = lt.sum(axis=1)
    term1 = float((kt * lt).sum())                      # tr(K~ L~), both symmetric
    term2 = float(ones_k.sum() * ones_l.sum()) / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * float(ones_k @ ones_l)      # 1' K~ L~ 1
    return (term1 + term2 - term3) / (n * (n - 3))


def linear_cka(x, y, *, unbiased: bool = False, reduce: str = "flatten") -> float:
    """Linear CKA between representations ``x`` and ``y`` of the same ``n`` images.

    Parameters
    ----------
    x, y : array or tensor, shape (n, ...)
        Activations, one row (or map) per image, in the same image order.
    unbiased : bool
        Use the unbiased HSIC estimator (Song et al. 2012) instead of the plug-in one.
    reduce : {"flatten", "mean"}
        How conv maps ``(n, C, H, W)`` become rows.

    Returns
    -------
    float
        CKA in [0, 1] for the biased estimator (the unbiased one can dip slightly below 0).
    """
    xr = as_rows(x, reduce)
    yr = as_rows(y, reduce)
    if xr.shape[0] != yr.shape[0]:
        raise ValueError(f"x and y must hold the same images (got {xr.shape[0]} and "
                         f"{yr.shape[0]} rows)")
    # centring the features makes the linear-kernel HSIC equal to the centred-Gram one
    xr = xr - xr.mean(axis=0, keepdims=True)
    yr = yr - yr.mean(axis=0, keepdims=True)
    k, l = gram(xr), gram(yr)
    num = hsic(k, l, unbiased)
    den = np.sqrt(max(hsic(k, k, unbiased), 0.0) * max(hsic(l, l, unbiased), 0.0))
    if den == 0:
        return float("nan")
    return float(num / den)
