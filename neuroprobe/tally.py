"""Per-batch counting for dissection: upsample, threshold, and count ``(unit, label)`` pairs.

Plain functions on tensors (any device); :class:`neuroprobe.stats.IoUTally` and
:class:`neuroprobe.stats.NSSTally` accumulate what they return.

No one-hot of the label set is ever built at mask resolution, and no activation map is upsampled
in full for IoU: bilinear interpolation is a convex combination of the four raw values around a
pixel, so only the cells of the upsampled map with a raw corner above the unit's threshold can
hold active pixels (for a threshold at the top 0.5 %, a few percent of the cells).  Those cells
are evaluated, and the label ids under their active pixels are counted with ``bincount`` on the
key ``unit * L + label``.

Host memory between batches: :func:`neuroprobe.utils.release_heap` hands the C heap's free
pages back to the system (glibc ``malloc_trim``).  The engine calls it after every CPU batch that
ran a forward pass, so that the peak resident memory of a run is what one batch needs, not what the heap has
fragmented into.  A tally batch read from the spool has small temporaries (bounded by
:data:`CELL_VALUES`), so there the heap is trimmed only once it holds more than 64 MiB free
(over thousands of batches it would otherwise creep up, ~100 MiB in 500 batches).
"""
from __future__ import annotations

import functools

import torch

from . import _tally_kernel as _kernel

__all__ = ["upsample", "active_pixels", "iou_counts", "label_counts", "image_label_counts",
           "present_categories", "region_nss", "fixation_pixels", "interpolation_matrix",
           "labelled_categories",
           "DENOMINATORS", "NSS_RESOLUTIONS", "NSS_REGIONS"]

#: How the activation count of a unit is restricted per category (see :func:`iou_counts`).
DENOMINATORS = ("netdissect", "annotated", "lite", "all")
#: where region-NSS z-scores a unit's map (see :func:`region_nss`)
NSS_RESOLUTIONS = ("image", "mask")
#: what a region of region-NSS is (see :func:`region_nss`)
NSS_REGIONS = ("instance", "label")

#: hot cells evaluated at once on the CPU, 4x on a GPU (bounds the memory of a tally step)
CELL_CHUNK = 1 << 16
#: on the CPU, also at most this many upsampled values per chunk of hot cells: each float32
#: temporary of a chunk then takes at most 4 MiB, whatever the upsampling factor (a cell of a
#: 7 px map upsampled to 112 px holds 256 pixels, one of a 56 px map 4)
CELL_VALUES = 1 << 20


@functools.lru_cache(maxsize=64)
def _axis(n_in: int, n_out: int, device: str = "cpu"):
    """Source indices and weights of linear interpolation along one axis, pixel centres
    aligned and edges clamped (the ``align_corners=False`` rule of PyTorch and OpenCV):
    ``src = max(0, (dst + 0.5) * n_in / n_out - 0.5)``, ``i0 = floor(src)``,
    ``i1 = min(i0 + 1, n_in - 1)``, ``w1 = src - i0``, ``w0 = 1 - w1``."""
    scale = torch.tensor(n_in, dtype=torch.float32) / n_out
    src = torch.clamp(scale * (torch.arange(n_out, dtype=torch.float32) + 0.5) - 0.5, min=0)
    i0 = src.to(torch.int64).clamp(max=n_in - 1)
    w1 = torch.clamp(src - i0.to(torch.float32), 0, 1)
    i1 = torch.clamp(i0 + 1, max=n_in - 1)
    dev = torch.device(device)
    return i0.to(dev), i1.to(dev), (1 - w1).to(dev), w1.to(dev)


@functools.lru_cache(maxsize=64)
def _cells(n_in: int, n_out: int, device: str = "cpu"):
    """Output positions grouped by their first source index (the "cell" they lie in):
    ``pos (n_in, m)`` (padded with 0) and their weights ``w0, w1`` ``(n_in, m)`` float32,
    ``nan`` at the padding (a value computed with them is ``nan``, never above a
    threshold, so the padding needs no mask)."""
    i0, _, w0, w1 = (t.cpu() for t in _axis(n_in, n_out))
    m = int(torch.bincount(i0, minlength=n_in).max())
    pos = torch.zeros((n_in, m), dtype=torch.int64)
    valid = torch.zeros((n_in, m), dtype=torch.bool)
    for c in range(n_in):
        idx = torch.nonzero(i0 == c).squeeze(1)
        pos[c, : len(idx)] = idx
        valid[c, : len(idx)] = True
    nan = torch.tensor(float("nan"))
    dev = torch.device(device)
    return (pos.to(dev), torch.where(valid, w0[pos], nan).to(dev),
            torch.where(valid, w1[pos], nan).to(dev))


@functools.lru_cache(maxsize=64)
def _ranges(n_in: int, n_out: int):
    """:func:`_axis` for the compiled CPU tally, as NumPy arrays ``(start, end, w0, w1)``:
    the output positions ``start[i]:end[i]`` have first source index ``i`` (they are
    contiguous: the first source index never decreases along the axis)."""
    import numpy as np

    i0, _, w0, w1 = (t.cpu().numpy() for t in _axis(n_in, n_out))
    src = np.arange(n_in)
    return (np.searchsorted(i0, src, side="left").astype(np.int64),
            np.searchsorted(i0, src, side="right").astype(np.int64),
            np.ascontiguousarray(w0, np.float32), np.ascontiguousarray(w1, np.float32))


def _take(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t.reshape(-1)[index]`` (``index_select`` of the flat tensor: on the CPU several times
    faster than advanced indexing)."""
    return t.reshape(-1).index_select(0, index)


def upsample(maps: torch.Tensor, size) -> torch.Tensor:
    """Bilinear upsampling of ``(..., h, w)`` maps to ``size`` in float32.

    Pixel centres are aligned and edges clamped, the definition of
    ``F.interpolate(mode="bilinear", align_corners=False)``; neuroprobe evaluates it as
    ``(a00 wx0 + a01 wx1) wy0 + (a10 wx0 + a11 wx1) wy1`` with separate IEEE operations (no
    fused multiply-add), so that :func:`iou_counts`, which evaluates only the cells around hot
    raw pixels, sees exactly the same values on every device.  It differs from PyTorch's
    kernel by at most a few ulp.
    """
    shape = maps.shape
    x = maps.reshape(-1, shape[-2], shape[-1]).float()
    H, W = int(size[0]), int(size[1])
    y0, y1, wy0, wy1 = _axis(shape[-2], H, str(x.device))
    x0, x1, wx0, wx1 = _axis(shape[-1], W, str(x.device))
    r0, r1 = x[:, y0, :], x[:, y1, :]
    t0 = r0[:, :, x0] * wx0 + r0[:, :, x1] * wx1
    t1 = r1[:, :, x0] * wx0 + r1[:, :, x1] * wx1
    out = t0 * wy0[:, None] + t1 * wy1[:, None]
    return out.reshape(*shape[:-2], H, W)


def active_pixels(maps: torch.Tensor, thresholds: torch.Tensor, size):
    """Active pixels ``upsample(map) > threshold`` of every (image, unit), as index triples.

    Only the cells of the upsampled map that have a raw corner above the threshold are
    evaluated (an upsampled value is a convex combination of its four raw corners, so no other
    pixel can be active; a margin of a few ulp keeps this exact under rounding).  In such a
    cell the two raw rows are first interpolated along x (``t0``, ``t1``, the first operations
    of :func:`upsample`); a pixel of column ``x`` is a convex combination of ``t0[x]`` and
    ``t1[x]``, so only the columns with one of them above the threshold (less the margin) are
    interpolated along y.  The values compared are those of :func:`upsample`, bit for bit.

    Returns ``(b, u, p)``: image, unit and flat mask pixel of every active pixel (in the order
    of the hot cells, then column, then row of the cell).
    """
    b_, u_, h, w = maps.shape
    H, W = int(size[0]), int(size[1])
    dev = maps.device
    a = maps.float().contiguous()
    thr = thresholds.to(device=dev, dtype=torch.float32)
    margin = thr - (thr.abs() * 1e-6 + 1e-30)
    hot = a > margin[None, :, None, None]
    grown = hot.clone()
    grown[:, :, :-1] |= hot[:, :, 1:]          # the row below (the last row is clamped)
    hot = grown.clone()
    hot[:, :, :, :-1] |= grown[:, :, :, 1:]    # the column right
    del grown
    cells = hot.reshape(-1).nonzero().squeeze(1)      # flat ((b * U + u) * h + r) * w + c
    del hot
    rpos, wy0, wy1 = _cells(h, H, str(dev))
    cpos, wx0, wx1 = _cells(w, W, str(dev))
    mr, mc = rpos.shape[1], cpos.shape[1]
    out_b, out_u, out_p = [], [], []
    if dev.type == "cpu":   # bounded temporaries: host memory is what a CPU run runs short of
        chunk = min(CELL_CHUNK, max(1, CELL_VALUES // (mr * mc)))
    else:
        chunk = 4 * CELL_CHUNK   # fewer launches on a GPU
    emb = torch.nn.functional.embedding   # rows of a small table: the fastest gather
    for s in range(0, len(cells), chunk):
        flat = cells[s: s + chunk]
        c = flat % w
        r = (flat // w) % h
        bu = flat // (h * w)                    # b * U + u
        u = bu % u_
        down = (r < h - 1).to(flat.dtype) * w   # the clamped neighbours
        right = (c < w - 1).to(flat.dtype)
        a00, a01 = _take(a, flat), _take(a, flat + right)
        a10, a11 = _take(a, flat + down), _take(a, flat + down + right)
        x0, x1 = emb(c, wx0), emb(c, wx1)
        t0 = a00[:, None] * x0 + a01[:, None] * x1                   # (n, mc)
        t1 = a10[:, None] * x0 + a11[:, None] * x1
        del x0, x1
        col = torch.maximum(t0, t1) > margin.index_select(0, u)[:, None]
        kf = col.reshape(-1).nonzero().squeeze(1)                     # flat (cell, column)
        del col
        ki = kf // mc
        rk = r.index_select(0, ki)
        # the IEEE operations of upsample() (two products, one sum) on those columns only
        val = _take(t0, kf)[:, None] * emb(rk, wy0)                   # (k, mr)
        val += _take(t1, kf)[:, None] * emb(rk, wy1)
        del t0, t1
        on = val > thr.index_select(0, u.index_select(0, ki))[:, None]
        del val
        g = on.reshape(-1).nonzero().squeeze(1)                       # flat (column, row)
        del on
        kk = g // mr
        cell = ki.index_select(0, kk)
        pair = bu.index_select(0, cell)
        out_b.append(pair // u_)
        out_u.append(pair % u_)
        out_p.append(_take(rpos, rk.index_select(0, kk) * mr + g % mr) * W
                     + _take(cpos, c.index_select(0, cell) * mc + _take(kf, kk) % mc))
    if not out_b:
        empty = torch.zeros(0, dtype=torch.int64, device=dev)
        return empty, empty, empty
    return torch.cat(out_b), torch.cat(out_u), torch.cat(out_p)


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


def image_label_counts(layers: torch.Tensor, whole: torch.Tensor,
                       num_labels: int, threads: int = 1) -> torch.Tensor:
    """``G[b, l]``: :func:`label_counts` of every image ``b`` on its own, ``(B, L)``.

    Raises ``ValueError`` for a label id outside the table (``>= num_labels``).  On the CPU
    with Numba, one compiled loop counts them (``threads``: image groups side by side)."""
    if layers.device.type == "cpu" and _kernel.available():   # one loop, no temporaries
        out, top = _kernel.image_label_counts_cpu(layers, whole, num_labels, threads)
        if top:
            _check_labels(layers, whole, num_labels)   # (raises, naming the largest id)
        return out
    _check_labels(layers, whole, num_labels)
    B, L = layers.shape[0], int(num_labels)
    flat = layers.reshape(B, -1)
    offset = torch.arange(B, device=flat.device)[:, None] * L
    # label 0 (unlabelled; negative ids are ignored like it) is counted too, in column 0, and
    # dropped: cheaper than selecting the labelled pixels
    out = torch.bincount((flat.long().clamp_(min=0) + offset).reshape(-1), minlength=B * L)
    on = whole > 0
    if on.any():
        wkeys = (whole.long() + offset.to(whole.device))[on]
        out = out + torch.bincount(wkeys, minlength=B * L).to(out.device) \
            * (layers.shape[-1] * layers.shape[-2])
    out = out.view(B, L)
    out[:, 0] = 0
    return out


def labelled_categories(layers: torch.Tensor, whole: torch.Tensor,
                        category_of_label: torch.Tensor, num_categories: int) -> torch.Tensor:
    """``(B, C)`` bool: image ``b`` holds a label (pixel or whole-image, label 0 excluded) whose
    primary category is ``c``.

    This is NetDissect's rule for the images on which a unit's activation counts for category
    ``c`` (``count_act_with_labelcat`` in NetDissect's ``src/makeresult.py``: the image's label
    counts ``c1[0, 1:]`` times the one-hot ``labelcat`` of the primary categories, with
    ``labelcat[0, :] = 0``, then ``> 0``).  Label ids outside ``category_of_label`` are
    ignored.  :func:`present_categories` gives the same from :func:`image_label_counts`.
    """
    B = layers.shape[0]
    dev = layers.device
    cat_of = category_of_label.to(dev)
    L = len(cat_of)
    present = torch.zeros((B, L + 1), dtype=torch.bool, device=dev)
    ids = torch.cat([layers.reshape(B, -1), whole.to(dev).reshape(B, -1)], dim=1).long()
    ids = torch.where((ids > 0) & (ids < L), ids, torch.full_like(ids, L))   # L = "none"
    present.scatter_(1, ids, True)
    return _present_categories(present[:, :L], cat_of, num_categories)


def present_categories(truth: torch.Tensor, category_of_label: torch.Tensor,
                       num_categories: int) -> torch.Tensor:
    """:func:`labelled_categories` from the images' label counts ``truth`` ``(B, L)``
    (:func:`image_label_counts`): a label is in an image where its count is above 0."""
    return _present_categories(truth > 0, category_of_label.to(truth.device), num_categories)


def _present_categories(present: torch.Tensor, cat_of: torch.Tensor,
                        num_categories: int) -> torch.Tensor:
    """``(B, C)``: some label of primary category ``c`` is ``present`` ``(B, L)`` (label 0
    and labels without a category excluded)."""
    B, C = present.shape[0], int(num_categories)
    has = torch.zeros((B, C + 1), dtype=torch.bool, device=present.device)
    b, lab = present[:, 1:].nonzero(as_tuple=True)
    c = cat_of.clamp(min=-1)[lab + 1]
    has[b, torch.where(c >= 0, c, C)] = True
    return has[:, :C]


def iou_counts(maps: torch.Tensor, thresholds: torch.Tensor, layers: torch.Tensor,
               whole: torch.Tensor, categories: torch.Tensor, category_of_label: torch.Tensor,
               num_labels: int, num_categories: int, denominator: str = "netdissect",
               per_image: bool = False, truth: torch.Tensor | None = None,
               kernel: bool | None = None, threads: int = 1):
    """Intersections and activation counts of one batch (Bau et al., CVPR 2017).

    Parameters
    ----------
    maps : (B, U, h, w) raw activation maps.
    thresholds : (U,) activation thresholds; a pixel is active where ``up(map) > threshold``.
    layers : (B, K, H, W) integer global label ids at mask size (0 = unlabelled).
    whole : (B, n) integer whole-image label ids (0 = padding).
    categories : (B, C) bool, which categories each image carries annotation for (used by the
        ``"annotated"`` rule only).
    category_of_label : (L,) int64 category index used for the denominator (-1 = none).
    denominator : str
        ``"netdissect"``: ``act[u, c]`` counts the unit's active pixels on the images that hold
        a label whose primary category is ``c`` (:func:`labelled_categories`), NetDissect's
        ``count_act_with_labelcat``.
        ``"annotated"``: on the images whose ``categories`` flag for ``c`` is set (for Broden:
        the image's ``index.csv`` cell for ``c`` is not empty); neuroprobe's former rule,
        kept as an option.  It differs from NetDissect where a label of category ``c`` sits only
        in another category's mask (a material label in an object mask).
        ``"lite"``: NetDissect-Lite's rule: image ``b`` counts for category ``c`` only where the
        unit's active pixels touch a label of ``c`` (a whole-image label is touched by any
        active pixel).
        ``"all"``: every active pixel counts (the unrestricted 2020 variant; ``C = 1``).

    per_image : bool
        Also return the counts of every image (see below).
    truth : (B, L), optional
        :func:`image_label_counts` of the batch, when the caller has it already (several
        layers tallied on the same labels); computed here otherwise.
    kernel : bool, optional
        Count with the compiled CPU loop of :mod:`neuroprobe._tally_kernel` (``True``) or with
        tensor operations (``False``).  Default: the loop for CPU tensors where Numba is
        installed, except under the ``"lite"`` rule.  Both give the same counts in the same
        order.
    threads : int
        Threads of the compiled loop (groups of images counted side by side; the counts do not
        depend on it).

    Returns
    -------
    inter : (U, L) int64, active pixels of each unit carrying each label.
    act : (U, C) int64, active pixels per unit and category under the chosen rule.
    images : only with ``per_image``: the same counts per image, sparse: ``pair`` (flat
        ``b * U + u`` of every (image, unit) with an active pixel) and ``active`` (its active
        pixels); ``inter_pair``, ``inter_label``, ``inter`` (the nonzero per-image
        intersections), ``truth`` ``(B, L)`` (:func:`image_label_counts`) and, for the
        ``"netdissect"`` and ``"annotated"`` rules, ``categories`` ``(B, C)``: the category
        flags of each image that rule counted on.  ``act`` of image ``b`` follows from them.
    """
    if denominator not in DENOMINATORS:
        raise ValueError(f"denominator must be one of {DENOMINATORS}, got {denominator!r}")
    B, U = maps.shape[:2]
    k = layers.shape[1]
    P = layers.shape[-2] * layers.shape[-1]
    L, C = int(num_labels), int(num_categories)
    dev = maps.device
    cat_of = category_of_label.to(dev)
    whole = whole.to(dev)
    if truth is None:   # (a given truth comes from image_label_counts, which checked them)
        _check_labels(layers, whole, L)
    can = dev.type == "cpu" and denominator != "lite" and _kernel.available()
    if kernel and not can:
        raise ValueError("the compiled tally counts CPU tensors under the netdissect, "
                         "annotated and all rules, with Numba installed")
    if can if kernel is None else kernel:
        return _iou_counts_kernel(maps, thresholds, layers, whole, categories, cat_of, L, C,
                                  denominator, per_image, truth, threads)
    bi, ui, pix = active_pixels(maps, thresholds, layers.shape[-2:])
    pair = bi * U + ui
    cnt = torch.bincount(pair, minlength=B * U)                       # active pixels per pair
    # the label under every active pixel in every label layer (0: none; counted in column 0,
    # which is dropped)
    base = bi * (k * P) + pix
    flat = layers.to(dev).reshape(-1)
    labs = torch.cat([flat.index_select(0, base + j * P) for j in range(k)]).long() if k \
        else torch.zeros(0, dtype=torch.int64, device=dev)
    on = (cnt > 0).view(B, U)
    wb, wu, wl, wc = [], [], [], []                                   # whole-image labels
    for j in range(whole.shape[1]):
        m = on & (whole[:, j] > 0)[:, None]
        if m.any():
            b, u = m.nonzero(as_tuple=True)
            wb.append(b)
            wu.append(u)
            wl.append(whole[b, j])
            wc.append(cnt[b * U + u])
    if per_image:
        images = _image_counts(cnt, pair.repeat(k), labs, wb, wu, wl, wc, U, L)
        inter = images.pop("_inter")
    else:
        inter = torch.bincount(ui.repeat(k) * L + labs, minlength=U * L)
        for b, u, lab, c in zip(wb, wu, wl, wc):
            inter.index_add_(0, u * L + lab, c)
        inter = inter.view(U, L)
        inter[:, 0] = 0
    cnt = cnt.view(B, U)
    if denominator == "lite":
        act = _lite_act(cnt, pair.repeat(k), labs, wb, wu, wl, cat_of, C)
        flags = None
    else:
        act, flags, truth = _act(denominator, cnt, truth, categories, cat_of, layers, whole,
                                 L, C)
    return _result(inter, act, flags, images if per_image else None, layers, whole, L, truth)


def _act(denominator, cnt, truth, categories, cat_of, layers, whole, L, C):
    """``(act, flags, truth)`` of the ``"netdissect"``, ``"annotated"`` and ``"all"`` rules
    from the active pixels ``cnt`` ``(B, U)`` of every (image, unit): ``act`` ``(U, C)``, the
    images' ``(B, C)`` category flags the rule counts on (``None`` for ``"all"``) and the
    batch's label counts (computed here where the rule needs them and none were given)."""
    flags = None
    if denominator == "netdissect":
        if truth is None:
            truth = image_label_counts(layers, whole, L)
        flags = present_categories(truth, cat_of, C)
    elif denominator == "annotated":
        flags = categories.to(cnt.device)
    if flags is not None:
        act = (cnt.t().to(torch.float64) @ flags.to(torch.float64)).round().to(torch.int64)
    else:
        act = cnt.sum(0)[:, None].expand(cnt.shape[1], C).clone()
    return act, flags, truth


def _result(inter, act, flags, images, layers, whole, L, truth):
    """What :func:`iou_counts` returns: ``(inter, act)``, and the per-image counts completed by
    the batch's label counts and the rule's category flags where ``images`` is given."""
    if images is None:
        return inter, act
    images["truth"] = image_label_counts(layers, whole, L) if truth is None else truth
    if flags is not None:   # the images' flags the rule counted on
        images["categories"] = flags
    return inter, act, images


def _iou_counts_kernel(maps, thresholds, layers, whole, categories, cat_of, L, C,
                       denominator, per_image, truth, threads):
    """:func:`iou_counts` on the CPU with the compiled loop of :mod:`neuroprobe._tally_kernel`
    (not the ``"lite"`` rule, which needs every active pixel's labels)."""
    B, U = maps.shape[:2]
    thr = thresholds.to(dtype=torch.float32)
    margin = thr - (thr.abs() * 1e-6 + 1e-30)   # the bound of active_pixels
    h, w = maps.shape[-2:]
    H, W = layers.shape[-2:]
    cnt, inter, ip, il, iv = _kernel.iou_counts_cpu(maps, thr, margin, layers, whole, L,
                                                    per_image, _ranges(h, int(H)),
                                                    _ranges(w, int(W)), threads)
    images = None
    if per_image:
        flat = cnt.view(-1)
        pairs = flat.nonzero().squeeze(1)
        images = {"pair": pairs, "active": flat.index_select(0, pairs), "inter_pair": ip,
                  "inter_label": il, "inter": iv}
    act, flags, truth = _act(denominator, cnt, truth, categories, cat_of, layers, whole, L, C)
    return _result(inter, act, flags, images, layers, whole, L, truth)


def _lite_act(cnt, pair, labs, wb, wu, wl, cat_of, C):
    """``act`` under NetDissect-Lite's rule: image ``b`` counts the unit's active pixels for
    category ``c`` where they touch a label of ``c``."""
    B, U = cnt.shape
    touched = torch.zeros(B * U * C, dtype=torch.bool, device=cnt.device)
    pairs = torch.cat([pair] + [b * U + u for b, u in zip(wb, wu)])
    c = cat_of.index_select(0, torch.cat([labs] + wl))
    ok = (torch.cat([labs] + wl) > 0) & (c >= 0)
    touched[pairs[ok] * C + c[ok]] = True
    return (cnt[:, :, None] * touched.view(B, U, C)).sum(0)


#: at most this many (active pair, label) bins are counted densely by :func:`_image_counts`
IMAGE_BINS = 1 << 22


def _image_counts(cnt, pair, labs, wb, wu, wl, wc, U: int, L: int) -> dict:
    """The per-image part of :func:`iou_counts`: counts of the keys ``(pair, label)`` of the
    active pixels (``pair``, ``labs``: one pixel each) and of the whole-image labels (``wb``,
    ``wu``, ``wl``: image, unit, label, weight ``wc``: the pair's active pixels).  The pairs
    are renumbered over the active ones first, so the dense count has ``active pairs * L``
    bins (a sort where even that is too many).  Also returns the batch's ``inter`` ``(U, L)``
    under ``_inter``: the sum of the per-image counts over the images."""
    dev = cnt.device
    pairs = cnt.nonzero().squeeze(1)
    slot = torch.full_like(cnt, -1)
    slot[pairs] = torch.arange(len(pairs), device=dev)
    key = slot.index_select(0, pair) * L + labs
    wkeys = [slot.index_select(0, b * U + u) * L + lab for b, u, lab in zip(wb, wu, wl)]
    if len(pairs) * L <= IMAGE_BINS:
        acc = torch.bincount(key, minlength=len(pairs) * L)
        for wk, c in zip(wkeys, wc):
            acc.index_add_(0, wk, c)
        acc = acc.view(len(pairs), L)
        acc[:, 0] = 0                          # label 0: unlabelled
        inter = torch.zeros((U, L), dtype=torch.int64, device=dev)
        inter.index_add_(0, pairs % U, acc)
        nz = acc.view(-1).nonzero().squeeze(1)
        values = acc.view(-1).index_select(0, nz)
    else:
        keep = labs > 0
        k = torch.cat([key[keep]] + wkeys)
        w = torch.cat([torch.ones(int(keep.sum()), dtype=torch.int64, device=dev)] + wc)
        nz, inverse = torch.unique(k, return_inverse=True)
        values = torch.zeros(len(nz), dtype=torch.int64, device=dev).index_add_(0, inverse, w)
        inter = torch.zeros(U * L, dtype=torch.int64, device=dev)
        inter.index_add_(0, (pairs[nz // L] % U) * L + nz % L, values)
        inter = inter.view(U, L)
    return {"pair": pairs, "active": cnt[pairs], "inter_pair": pairs[nz // L],
            "inter_label": nz % L, "inter": values, "_inter": inter}


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


def interpolation_matrix(n_in: int, n_out: int, device="cpu", dtype=torch.float64):
    """``(n_out, n_in)`` matrix ``R`` of bilinear upsampling along one axis (``up = Ry A Rx^T``),
    pixel centres aligned and edges clamped (the rule of :func:`upsample`), its weights
    computed in float64 (as ``F.interpolate`` does for float64 input)."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = src.floor().to(torch.int64).clamp(max=n_in - 1)
    w1 = (src - i0.to(torch.float64)).clamp(0, 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    r = torch.zeros((n_out, n_in), dtype=torch.float64)
    rows = torch.arange(n_out)
    r.index_put_((rows, i0), 1 - w1, accumulate=True)
    r.index_put_((rows, i1), w1, accumulate=True)
    return r.to(device=device, dtype=dtype)


def region_nss(maps: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, layers: torch.Tensor,
               fixations, image_size, num_labels: int, ddof: int = 1, *,
               resolution: str = "mask", instances: torch.Tensor | None = None,
               regions: str = "instance"):
    """Region-based NSS of every unit in one batch (He et al., CVPR 2019).

    For each image: each unit's map is normalised by the unit's data-set minimum and maximum
    (``lo``, ``hi``), upsampled bilinearly (:func:`upsample`) to the **image** size
    (``resolution="image"``, the study's definition) or to the mask size (``"mask"``, a faster
    approximation), and z-scored over all its pixels (standard deviation with ``ddof``; the
    authors' demo code uses ``np.std``, ``ddof=0``; a constant map scores 0).  A fixation
    ``(x, y)`` reads the z-scored map at the pixel that contains it (:func:`fixation_pixels`
    at the scoring resolution) and lies in the regions that cover its mask pixel.

    A *region* is one annotated instance: the pixels of one label carrying one instance id
    (``instances``, same shape as ``layers``, ids unique within an image, 0 = no instance
    known).  The authors' demo selects each instance with ``mask == r``, so two people in an
    image are two regions.  Pixels without an instance id form one region per label (all
    pixels of that label in the image), which is also what ``regions="label"`` (merge all
    instances of a label) makes of every pixel.  NSS(unit, region) is the mean z-score at the
    fixations inside the region; only regions holding at least one fixation are scored.
    Whole-image labels are not regions and are skipped.

    The upsampled map is never materialised: with the interpolation matrices ``Ry``, ``Rx``
    (``up = Ry A Rx^T``) its sum is ``ry^T A rx`` (``ry = Ry^T 1``), its sum of squares
    ``<A, (Ry^T Ry) A (Rx^T Rx)>`` and its value at a fixation ``Ry[y] A Rx[x]^T``, all in
    float64: memory is ``O(U (h w + N))`` per image whatever the image size.

    Returns ``total`` (U, L) float64, the sum over regions of the unit's NSS, and ``count``
    (L,) int64, the number of regions summed per label (their mean is the region-NSS of the
    label: per region, then the mean over the label's regions).
    """
    if resolution not in NSS_RESOLUTIONS:
        raise ValueError(f"resolution must be one of {NSS_RESOLUTIONS}, got {resolution!r}")
    if regions not in NSS_REGIONS:
        raise ValueError(f"regions must be one of {NSS_REGIONS}, got {regions!r}")
    b, u, h, w = maps.shape
    mh, mw = layers.shape[-2:]
    H, W = (int(image_size[0]), int(image_size[1])) if resolution == "image" else (mh, mw)
    p = H * W
    L = int(num_labels)
    dev = maps.device
    total = torch.zeros((u, L), dtype=torch.float64, device=dev)
    count = torch.zeros(L, dtype=torch.int64, device=dev)
    lo = lo.to(dev, torch.float64)
    rng = hi.to(dev, torch.float64) - lo
    scale = torch.where(rng > 0, 1.0 / rng.clamp(min=1e-300), torch.zeros_like(rng))
    ry, rx = interpolation_matrix(h, H, dev), interpolation_matrix(w, W, dev)
    gy, gx = ry.t() @ ry, rx.t() @ rx
    sy, sx = ry.sum(0), rx.sum(0)
    use_inst = instances is not None and regions == "instance"
    for i in range(b):
        fx = fixations[i] if fixations is not None else None
        if fx is None or len(fx) == 0:
            continue
        mpix = fixation_pixels(fx, image_size, (mh, mw)).to(dev)
        labs = layers[i].reshape(layers.shape[1], mh * mw)[:, mpix].to(dev).long()   # (K, N)
        if use_inst:
            inst = instances[i].reshape(instances.shape[1], mh * mw)[:, mpix].to(dev).long()
        else:
            inst = torch.zeros_like(labs)
        inside = labs > 0
        if not inside.any():
            continue
        top = int(labs.max())
        if top >= L:
            raise ValueError(f"label id {top} is outside the label table")
        key = labs * (int(inst.max()) + 1) + inst                      # region = (label, id)
        keys = key[inside].unique()                                     # (R,)
        region_label = keys // (int(inst.max()) + 1)
        a = (maps[i].double() - lo[:, None, None]) * scale[:, None, None]   # (U, h, w)
        s1 = torch.einsum("h,uhw,w->u", sy, a, sx)
        s2 = (a * (gy @ a @ gx)).sum((1, 2))
        mean = s1 / p
        var = ((s2 - s1 * mean) / (p - ddof)).clamp(min=0)
        std = var.sqrt()
        pix = fixation_pixels(fx, image_size, (H, W)).to(dev)
        at = torch.einsum("nh,uhw,nw->un", ry[pix // W], a, rx[pix % W])    # (U, N)
        ok = std > 1e-12 * (mean.abs() + 1e-300)
        z = torch.where(ok[:, None], (at - mean[:, None]) / torch.where(ok, std, 1.0)[:, None],
                        torch.zeros_like(at))
        member = ((key[:, :, None] == keys[None, None, :]) & inside[:, :, None]).any(0)
        member = member.to(torch.float64)                               # (N, R)
        nss = (z @ member) / member.sum(0)[None]                        # (U, R)
        total.index_add_(1, region_label, nss)
        count += torch.bincount(region_label, minlength=L)
    return total, count
