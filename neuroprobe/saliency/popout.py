"""Synthetic pop-out search arrays and the metrics of P3 (Kotseruba, Wloka, Rasouli, Tsotsos,
"Do saliency models detect odd-one-out targets? New datasets and evaluations", BMVC 2019).

A search array is a 7x7 grid of oriented bars on a uniform background with small positional
jitter; one bar (the target, at grid position 1..49, row by row) differs from the identical
distractors in exactly one feature -- ``colour`` (hue), ``orientation`` or ``size`` -- by a graded
amount.  Every array comes with a binary target mask, a distractor mask and a metadata record;
generation is deterministic given ``(seed, index)``.

Metrics (functions of a saliency map and the masks):

* :func:`gsi` -- global saliency index ``(S_t - S_d) / (S_t + S_d)`` from the mean saliency inside
  the target and the distractor masks (map min-max normalised first); 1 is perfect, 0 no
  preference, -1 the distractors win.
* :func:`fixations_to_target` -- repeated arg-max with inhibition of return (a disc of half a
  grid cell is suppressed after each fixation) until a fixation lands on the target (within a
  quarter cell of its mask), at most 100 fixations.
* :func:`max_saliency_ratios` -- ``max(S in target) / max(S in distractors)`` and
  ``max(S in target) / max(S in background)``; above 1 means the target is the peak.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from .classical import resize_map

FEATURES = ("colour", "orientation", "size")
#: Graded target-distractor differences per feature (hue degrees, angle degrees, size ratio).
LEVELS = {
    "colour": (10.0, 20.0, 40.0, 60.0, 90.0, 180.0),
    "orientation": (10.0, 20.0, 30.0, 45.0, 60.0, 90.0),
    "size": (1.1, 1.25, 1.5, 1.75, 2.0, 2.5),
}
UNITS = {"colour": "hue difference (deg)", "orientation": "orientation difference (deg)",
         "size": "size ratio"}

__all__ = ["FEATURES", "LEVELS", "SearchArray", "make_array", "generate", "gsi",
           "fixations_to_target", "max_saliency_ratios", "score_array"]


@dataclass
class SearchArray:
    """One search array: image ``(H, W, 3)`` in [0, 1], boolean masks and metadata."""

    image: np.ndarray
    target_mask: np.ndarray
    distractor_mask: np.ndarray
    meta: dict = field(default_factory=dict)


def _hsv(h_deg: float, s: float, v: float) -> tuple[float, float, float]:
    return colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, s, v)


def _bar_polygon(cx, cy, length, width, angle_deg):
    a = math.radians(angle_deg)
    ux, uy = math.cos(a), -math.sin(a)  # along the bar (image y points down)
    vx, vy = -uy, ux
    hl, hw = length / 2, width / 2
    pts = [(cx + sx * hl * ux + sy * hw * vx, cy + sx * hl * uy + sy * hw * vy)
           for sx, sy in ((1, 1), (1, -1), (-1, -1), (-1, 1))]
    return np.array([p[1] for p in pts]), np.array([p[0] for p in pts])  # rows, cols


def make_array(feature: str, difference: float, seed: int = 0, *, size: int = 448,
               grid: int = 7, jitter: float = 0.1, target_position: int | None = None,
               background=(0.5, 0.5, 0.5)) -> SearchArray:
    """Draw one search array.

    Parameters
    ----------
    feature : "colour", "orientation" or "size"
    difference : hue difference in degrees (colour), orientation difference in degrees
        (orientation) or the target/distractor size ratio (size)
    seed : everything random (target position, jitter, base hue, base orientation) follows it
    size : image side in pixels (square)
    grid : items per row and column (7 in P3)
    jitter : maximum positional jitter as a fraction of the cell size
    target_position : 1..grid*grid (row by row); random when None

    Returns
    -------
    :class:`SearchArray`
    """
    from skimage.draw import polygon

    if feature not in FEATURES:
        raise UserError(f"unknown pop-out feature {feature!r}", hint="use " + ", ".join(FEATURES))
    rng = np.random.default_rng(seed)
    cell = size / grid
    n = grid * grid
    pos = int(rng.integers(1, n + 1)) if target_position is None else int(target_position)
    if not 1 <= pos <= n:
        raise UserError(f"target position {pos} outside 1..{n}")
    base_hue = float(rng.uniform(0, 360))
    base_angle = float(rng.choice([0.0, 45.0, 90.0, 135.0])) if feature != "orientation" \
        else float(rng.uniform(0, 180))
    length, width = 0.55 * cell, 0.18 * cell
    dcol = _hsv(base_hue, 0.8, 0.9)
    tcol, tangle, tscale = dcol, base_angle, 1.0
    if feature == "colour":
        tcol = _hsv(base_hue + difference, 0.8, 0.9)
    elif feature == "orientation":
        tangle = base_angle + difference
    else:
        tscale = float(difference)
        length, width = length / math.sqrt(tscale), width / math.sqrt(tscale)  # keep both in cell
    img = np.empty((size, size, 3))
    img[:] = background
    tmask = np.zeros((size, size), bool)
    dmask = np.zeros((size, size), bool)
    offsets = rng.uniform(-jitter, jitter, size=(n, 2)) * cell
    centres = []
    for k in range(n):
        r, c = divmod(k, grid)
        cx = (c + 0.5) * cell + offsets[k, 0]
        cy = (r + 0.5) * cell + offsets[k, 1]
        centres.append((cx, cy))
        is_t = k + 1 == pos
        sc = tscale if is_t else 1.0
        rows, cols = _bar_polygon(cx, cy, length * sc, width * sc, tangle if is_t else base_angle)
        rr, cc = polygon(rows, cols, shape=(size, size))
        img[rr, cc] = tcol if is_t else dcol
        (tmask if is_t else dmask)[rr, cc] = True
    tr, tc = divmod(pos - 1, grid)
    meta = {
        "feature": feature, "difference": float(difference), "seed": int(seed), "size": size,
        "grid": grid, "cell": cell, "target_position": pos, "target_row": tr, "target_col": tc,
        "target_x": centres[pos - 1][0], "target_y": centres[pos - 1][1],
        "background": "#%02x%02x%02x" % tuple(int(round(255 * v)) for v in background),
        "target_colour": "#%02x%02x%02x" % tuple(int(round(255 * v)) for v in tcol),
        "distractor_colour": "#%02x%02x%02x" % tuple(int(round(255 * v)) for v in dcol),
        "target_orientation": tangle % 180, "distractor_orientation": base_angle % 180,
        "target_length": length * tscale, "distractor_length": length,
        "target_width": width * tscale, "distractor_width": width, "shape": "bar",
    }
    return SearchArray(img, tmask, dmask, meta)


def generate(n: int, features=FEATURES, levels: dict | None = None, seed: int = 0, **kwargs):
    """``n`` arrays cycling through features and their difference levels (deterministic).

    Array ``i`` has feature ``features[i % F]``, level ``levels[feature][(i // F) % L]`` and seed
    ``seed * 1_000_003 + i``; it is independent of ``n`` (a longer run extends a shorter one).
    Yields :class:`SearchArray`.
    """
    levels = {**LEVELS, **(levels or {})}
    feats = list(features)
    for f in feats:
        if f not in FEATURES:
            raise UserError(f"unknown pop-out feature {f!r}", hint="use " + ", ".join(FEATURES))
    for i in range(n):
        f = feats[i % len(feats)]
        lv = levels[f][(i // len(feats)) % len(levels[f])]
        arr = make_array(f, lv, seed=seed * 1_000_003 + i, **kwargs)
        arr.meta["index"] = i
        yield arr


# --------------------------------------------------------------------------- metrics
def _norm(smap) -> np.ndarray:
    s = np.asarray(smap, dtype=np.float64)
    if not np.isfinite(s).all():
        raise UserError("the saliency map contains NaN or infinite values")
    s = s - s.min()
    top = s.max()
    return s / top if top > 0 else s


def _check(smap, *masks):
    for m in masks:
        if m.shape != np.shape(smap):
            raise UserError(f"saliency map {np.shape(smap)} and mask {m.shape} differ in size")
        if not m.any():
            raise UserError("an empty target or distractor mask")


def gsi(smap, target_mask, distractor_mask) -> float:
    """Global saliency index ``(S_t - S_d) / (S_t + S_d)`` (mean saliency in the masks)."""
    _check(smap, target_mask, distractor_mask)
    s = _norm(smap)
    st, sd = s[target_mask].mean(), s[distractor_mask].mean()
    return float((st - sd) / (st + sd)) if st + sd > 0 else float("nan")


def fixations_to_target(smap, target_mask, *, ior_radius: float, hit_radius: float = 0.0,
                        max_fixations: int = 100) -> tuple[int, bool]:
    """Fixations made by repeated arg-max with inhibition of return until the target is hit.

    After each fixation a disc of ``ior_radius`` pixels around it is set to the minimum.  A
    fixation hits when it lies within ``hit_radius`` pixels of the target mask.

    Returns
    -------
    (count, found): count is the number of fixations up to and including the hit, or
    ``max_fixations`` when the target was not found (found False).
    """
    from scipy import ndimage

    _check(smap, target_mask)
    s = _norm(smap).copy()
    h, w = s.shape
    dist = ndimage.distance_transform_edt(~target_mask) if hit_radius > 0 else None
    yy, xx = np.ogrid[:h, :w]
    for k in range(1, max_fixations + 1):
        flat = int(np.argmax(s))
        r, c = divmod(flat, w)
        if target_mask[r, c] or (dist is not None and dist[r, c] <= hit_radius):
            return k, True
        s[(yy - r) ** 2 + (xx - c) ** 2 <= ior_radius ** 2] = -1.0
    return max_fixations, False


def max_saliency_ratios(smap, target_mask, distractor_mask) -> tuple[float, float]:
    """``(max target / max distractors, max target / max background)`` of the normalised map."""
    _check(smap, target_mask, distractor_mask)
    s = _norm(smap)
    bg = ~(target_mask | distractor_mask)
    mt, md = s[target_mask].max(), s[distractor_mask].max()
    mb = s[bg].max() if bg.any() else float("nan")
    return (float(mt / md) if md > 0 else float("inf") if mt > 0 else float("nan"),
            float(mt / mb) if mb > 0 else float("inf") if mt > 0 else float("nan"))


def score_array(smap, arr: SearchArray, max_fixations: int = 100) -> dict:
    """All pop-out metrics of one map on one array (IOR half a cell, hit within a quarter cell)."""
    smap = np.asarray(smap, dtype=np.float64)
    if smap.shape != arr.target_mask.shape:
        smap = resize_map(smap, arr.target_mask.shape)
    cell = arr.meta["cell"]
    n, found = fixations_to_target(smap, arr.target_mask, ior_radius=cell / 2,
                                   hit_radius=cell / 4, max_fixations=max_fixations)
    msr_d, msr_b = max_saliency_ratios(smap, arr.target_mask, arr.distractor_mask)
    return {"gsi": gsi(smap, arr.target_mask, arr.distractor_mask), "fixations": n,
            "found": found, "msr_distractor": msr_d, "msr_background": msr_b}
