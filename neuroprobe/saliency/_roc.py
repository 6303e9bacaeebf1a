"""ROC areas of the saliency metrics: exact (ties scored 0.5) and at fixed thresholds (MIT).

Every area is computed from sorted values and binary searches, never a loop over thresholds:
:func:`auc_exact` is ``P(pos > neg) + 0.5 P(pos == neg)`` (the Mann-Whitney statistic, the area
under the ROC with ties scored 0.5; Kuemmerer et al. 2018), :func:`auc_thresholds` the MATLAB
trapezoid over the thresholds ``0:step:1`` of the MIT benchmark's ``AUC_Borji.m`` and
``AUC_shuffled.m`` (Bylinskii et al., TPAMI 2019).
"""
from __future__ import annotations

import numpy as np

__all__ = ["auc_exact", "auc_exact_sorted", "auc_exact_splits", "auc_threshold_counts",
           "auc_thresholds", "thresholds", "trapz"]


def auc_exact(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(pos > neg) + 0.5 P(pos == neg), exactly (the ROC area with ties scored 0.5).

    The negatives are sorted once (a vectorised sort is far faster than locating every negative
    among the positives); each positive then finds its count of smaller and equal negatives with
    two binary searches.
    """
    srt = np.sort(neg)
    less = np.searchsorted(srt, pos, side="left")
    leq = np.searchsorted(srt, pos, side="right")
    return float((less.sum() + 0.5 * (leq - less).sum()) / (len(pos) * len(neg)))


def auc_exact_sorted(pos: np.ndarray, srt: np.ndarray) -> float:
    """:func:`auc_exact` with the negatives already sorted in ascending order (an array, or
    any object with ``searchsorted`` and ``size`` as :class:`~._ranks.PartialSort`)."""
    less = srt.searchsorted(pos, side="left")
    leq = srt.searchsorted(pos, side="right")
    return float((less.sum() + 0.5 * (leq - less).sum()) / (len(pos) * srt.size))


def auc_exact_splits(pos: np.ndarray, negs: np.ndarray) -> np.ndarray:
    """:func:`auc_exact` for several small negative sets at once: ``negs`` (S, M) -> (S,).

    Each set is sorted first: its score is a mean over its negatives, whose order does not
    matter (every term is a multiple of 0.5, so the sums are exact in any order), and numpy's
    binary searches run about twice as fast on ascending keys."""
    negs = np.sort(negs, axis=1)
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


def trapz(x, y, axis=-1):
    fn = getattr(np, "trapezoid", None) or np.trapz
    return fn(y, x, axis=axis)


def thresholds(step: float = 0.1) -> np.ndarray:
    """The MIT ROC thresholds ``0:step:1``, descending."""
    return np.arange(0, int(round(1 / step)) + 1)[::-1] * step


def auc_thresholds(sth: np.ndarray, neg: np.ndarray, step: float = 0.1) -> np.ndarray:
    """MIT ROC at thresholds ``0:step:1`` for one or several splits of negatives.

    ``sth``: (K,) positives; ``neg``: (M, S) negatives per split.  Returns (S,) areas.  The
    MATLAB code stops the thresholds at the split's maximum; thresholds above it only add the
    point (0, 0) again, which leaves the area unchanged, so a fixed ``0:step:1`` is exact.
    """
    th = thresholds(step)
    fp = (neg[None, :, :] >= th[:, None, None]).mean(axis=1)  # (T, S)
    return _auc_rates(sth, fp, th)


def auc_threshold_counts(sth: np.ndarray, counts: np.ndarray, m: int,
                         step: float = 0.1) -> np.ndarray:
    """:func:`auc_thresholds` from the counts of negatives at or above each threshold
    (``counts`` (T, S) of ``m`` negatives per split, thresholds :func:`thresholds`): the
    false-positive rates ``counts / m`` are the means of the comparisons, the same numbers."""
    th = thresholds(step)
    return _auc_rates(sth, counts / m, th)


def _auc_rates(sth: np.ndarray, fp: np.ndarray, th: np.ndarray) -> np.ndarray:
    tp = (sth[None, :] >= th[:, None]).mean(axis=1)  # (T,)
    s = fp.shape[1]
    tp = np.concatenate([[0.0], tp, [1.0]])
    tp = np.broadcast_to(tp[:, None], (len(tp), s))
    fp = np.concatenate([np.zeros((1, s)), fp, np.ones((1, s))], axis=0)
    return trapz(fp, tp, axis=0)
