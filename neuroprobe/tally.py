"""Per-batch counting for dissection: upsample, threshold, and count ``(unit, label)`` pairs.

Plain functions on tensors (any device); :class:`neuroprobe.stats.IoUTally` and
:class:`neuroprobe.stats.NSSTally` accumulate what they return.

No one-hot of the label set is ever built at mask resolution.  For IoU, only ``(image, unit)``
pairs whose raw map maximum exceeds the unit's threshold are upsampled at all -- bilinear
interpolation is a convex combination of raw values, so the upsampled map of any other pair has
no active pixel -- and the label ids under the active pixels are counted with ``bincount`` on
the key ``unit * L + label``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["upsample", "iou_counts", "label_counts", "region_nss", "fixation_pixels",
           "DENOMINATORS"]

#: How the activation count of a unit is restricted per category (see :func:`iou_counts`).
DENOMINATORS = ("netdissect", "lite", "all")

#: pairs upsampled at once (bounds the memory of a tally step: chunk x mask pixels floats)
PAIR_CHUNK = 512


def upsample(maps: torch.Tensor, size) -> torch.Tensor:
    """Bilinear upsampling of ``(..., h, w)`` maps to ``size`` with pixel centres aligned and
    edges clamped (``F.interpolate(..., mode="bilinear", align_corners=False)``), in float32."""
    shape = maps.shape
    x = maps.reshape(-1, 1, shape[-2], shape[-1]).float()
    if tuple(shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return x.reshape(*shape[:-2], *x.shape[-2:])


def _check_labels(layers: torch.Tensor, whole: torch.Tensor, num_labels: int) -> None:
    top = max(int(layers.max()) if layers.numel() else 0,
              int(whole.max()) if whole.numel() else 0)
    if top >= num_labels:
        raise ValueError(f"label id {top} is outside the label table (ids < {num_labels})")


def label_counts(layers: torch.Tensor, whole: torch.Tensor, num_labels: int) -> torch.Tensor:
    """``G[l]``: pixels labelled ``l`` in the batch; a whole-image label counts every pixel.

    Label ``0`` (unlabelled) is ignored.  A pixel carrying ``l`` in two label layers counts
    twice (each label layer is tallied on its own, as in NetDissect).
    """
    _check_labels(layers, whole, num_labels)
    hw = layers.shape[-1] * layers.shape[-2]
    pix = layers[layers > 0]
    out = torch.bincount(pix.reshape(-1), minlength=num_labels)
    w = whole[whole > 0]
    if w.numel():
        out = out + torch.bincount(w, minlength=num_labels) * hw
    return out[:num_labels]


def iou_counts(maps: torch.Tensor, thresholds: torch.Tensor, layers: torch.Tensor,
               whole: torch.Tensor, categories: torch.Tensor, category_of_label: torch.Tensor,
               num_labels: int, num_categories: int, denominator: str = "netdissect"):
    """Intersections and activation counts of one batch (Bau et al., CVPR 2017).

    Parameters
    ----------
    maps : (B, U, h, w) raw activation maps.
    thresholds : (U,) activation thresholds; a pixel is active where ``up(map) > threshold``.
    layers : (B, K, H, W) int64 global label ids at mask size (0 = unlabelled).
    whole : (B, n) int64 whole-image label ids (0 = padding).
    categories : (B, C) bool, which categories each image carries annotation for.
    category_of_label : (L,) int64 category index used for the denominator (-1 = none).
    denominator : str
        ``"netdissect"``: ``act[u, c]`` counts the unit's active pixels on images that carry
        category ``c`` (``categories[b, c]``), as NetDissect does.
        ``"lite"``: NetDissect-Lite's rule: image ``b`` counts for category ``c`` only where the
        unit's active pixels touch a label of ``c`` (a whole-image label is touched by any
        active pixel).
        ``"all"``: every active pixel counts (the unrestricted 2020 variant; ``C = 1``).

    Returns
    -------
    inter : (U, L) int64, active pixels of each unit carrying each label.
    act : (U, C) int64, active pixels per unit and category under the chosen rule.
    """
    if denominator not in DENOMINATORS:
        raise ValueError(f"denominator must be one of {DENOMINATORS}, got {denominator!r}")
    b, u = maps.shape[:2]
    k = layers.shape[1]
    size = layers.shape[-2:]
    p = size[0] * size[1]
    L, C = int(num_labels), int(num_categories)
    dev = maps.device
    _check_labels(layers, whole, L)
    inter = torch.zeros(u * L, dtype=torch.int64, device=dev)
    act = torch.zeros((u, C), dtype=torch.int64, device=dev)
    thresholds = thresholds.to(device=dev, dtype=torch.float32)
    hot = maps.flatten(2).amax(2).float() > thresholds[None]
    bi, ui = hot.nonzero(as_tuple=True)
    if not len(bi):
        return inter.view(u, L), act
    flat_layers = layers.reshape(b, k, p)
    cats = categories.to(dev)
    cat_of = category_of_label.to(dev)
    for s in range(0, len(bi), PAIR_CHUNK):
        cb, cu = bi[s: s + PAIR_CHUNK], ui[s: s + PAIR_CHUNK]
        up = upsample(maps[cb, cu], size).reshape(len(cb), p)
        on = up > thresholds[cu][:, None]
        cnt = on.sum(1)
        pi, pix = on.nonzero(as_tuple=True)
        touched = None
        if denominator == "lite":
            touched = torch.zeros(len(cb) * max(C, 1), dtype=torch.bool, device=dev)
        for layer in range(k):
            lab = flat_layers[cb[pi], layer, pix]
            keep = lab > 0
            lab_k, pi_k = lab[keep], pi[keep]
            inter += torch.bincount(cu[pi_k] * L + lab_k, minlength=u * L)
            if touched is not None:
                c = cat_of[lab_k]
                ok = c >= 0
                touched[pi_k[ok] * C + c[ok]] = True
        nz = cnt > 0
        for j in range(whole.shape[1]):
            lab = whole[cb, j].to(dev)
            m = (lab > 0) & nz
            if m.any():
                inter.index_add_(0, cu[m] * L + lab[m], cnt[m])
                if touched is not None:
                    c = cat_of[lab[m]]
                    ok = c >= 0
                    touched[torch.nonzero(m).squeeze(1)[ok] * C + c[ok]] = True
        if denominator == "netdissect":
            weight = cats[cb].to(torch.int64)
        elif denominator == "lite":
            weight = touched.view(len(cb), C).to(torch.int64)
        else:
            weight = torch.ones((len(cb), C), dtype=torch.int64, device=dev)
        act.index_add_(0, cu, cnt[:, None] * weight)
    return inter.view(u, L), act


def fixation_pixels(fixations: torch.Tensor, image_size, mask_size) -> torch.Tensor:
    """Flat mask-pixel index of each fixation.

    Fixations are ``(x, y)`` in 0-based image pixel coordinates (pixel centres at integers); a
    point lies in the mask pixel whose area contains it: ``floor((x + 0.5) * w / W)`` (pixel
    centres aligned), clamped to the mask.
    """
    H, W = image_size
    h, w = mask_size
    xy = fixations.to(torch.float64)
    mx = torch.floor((xy[:, 0] + 0.5) * w / W).clamp(0, w - 1).to(torch.int64)
    my = torch.floor((xy[:, 1] + 0.5) * h / H).clamp(0, h - 1).to(torch.int64)
    return my * w + mx


def region_nss(maps: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, layers: torch.Tensor,
               fixations, image_size, num_labels: int, ddof: int = 1):
    """Region-based NSS of every unit in one batch (He et al., CVPR 2019).

    For each image: each unit's map is normalised by the unit's data-set minimum and maximum
    (``lo``, ``hi``), upsampled bilinearly to mask size, and z-scored over the image (standard
    deviation with ``ddof``; a constant map scores 0).  For each label ``l`` present under at
    least one fixation, NSS(unit, image, l) is the mean z-score at the fixations inside the
    region of ``l`` (all pixels of ``l`` in that image; a fixation is inside when any label
    layer carries ``l`` at its mask pixel).  Whole-image labels are not regions and are skipped.

    Returns ``total`` (U, L) float64, the sum over regions of the unit's NSS, and ``regions``
    (L,) int64, the number of regions summed.
    """
    b, u = maps.shape[:2]
    size = layers.shape[-2:]
    p = size[0] * size[1]
    L = int(num_labels)
    dev = maps.device
    total = torch.zeros((u, L), dtype=torch.float64, device=dev)
    regions = torch.zeros(L, dtype=torch.int64, device=dev)
    lo = lo.to(dev, torch.float32)
    rng = hi.to(dev, torch.float32) - lo
    scale = torch.where(rng > 0, 1.0 / rng.clamp(min=1e-30), torch.zeros_like(rng))
    for i in range(b):
        fx = fixations[i] if fixations is not None else None
        if fx is None or len(fx) == 0:
            continue
        pix = fixation_pixels(fx, image_size, size).to(dev)
        labs = layers[i].reshape(layers.shape[1], p)[:, pix].to(dev)        # (K, N)
        present = labs[labs > 0].unique()
        if not len(present):
            continue
        if int(present.max()) >= L:
            raise ValueError(f"label id {int(present.max())} is outside the label table")
        norm = (maps[i].float() - lo[:, None, None]) * scale[:, None, None]
        flat = upsample(norm, size).reshape(u, p)
        mean = flat.mean(1, keepdim=True)
        std = flat.std(1, correction=ddof, keepdim=True)
        z = torch.where(std > 0, (flat[:, pix] - mean) / std.clamp(min=1e-30),
                        torch.zeros((u, len(pix)), device=dev))
        member = (labs[:, :, None] == present[None, None, :]).any(0).to(torch.float64)  # (N, R)
        nss = (z.double() @ member) / member.sum(0)[None]
        total[:, present] += nss
        regions[present] += 1
    return total, regions
