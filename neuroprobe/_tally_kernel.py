"""The CPU tally of one batch as one compiled loop (Numba): what :func:`neuroprobe.tally.
iou_counts` computes with tensor operations, without their temporaries.

Why (issue 20): on the CPU the tensor form of the tally (gathers of the cells around hot raw
pixels, ``nonzero``, ``bincount``, a renumbering for the per-image counts) cost about 150 ms
per batch of 32 images for ResNet-18 layer3 + layer4, on one core: a fifth of a dissection.
The loop below visits the same cells, evaluates the same bilinear values with the same float32
operations (two products and a sum along x, then two products and a sum along y, each rounded:
:func:`neuroprobe.tally.upsample`), and counts the labels under every active pixel straight
into the per-unit and per-(image, unit) tables.  Its counts are equal to the tensor path's,
entry for entry and in the same order (``tests/test_tally.py`` checks it on random maps with
values on and next to the thresholds).

Numba is imported only when a CPU tally first runs; where it is missing, the tensor path runs
(:func:`available`).
"""
from __future__ import annotations

import functools

import numpy as np
import torch

__all__ = ["available", "iou_counts_cpu"]


# The loops, as plain Python: :func:`_compiled` compiles them (Numba's ``cache=True`` keeps the
# machine code beside this file, so later processes load it instead of compiling again).

def _iou_loop(a, thr, margin, lay, whole, rs, re, wy0, wy1, cs, ce, wx0, wx1, W, L,
              per_image):
    """Count one group of images (see :func:`iou_counts_cpu`); also returns the largest
    label id found beyond the table (0: none)."""
    B, U, h, w = a.shape
    K = lay.shape[1]
    nw = whole.shape[1]
    cnt = np.zeros((B, U), np.int64)
    inter = np.zeros((U, L), np.int64)
    local = np.zeros(L, np.int64)
    touched = np.empty(L, np.int64)
    cap = 1024
    ip = np.empty(cap, np.int64)      # per-image entries: pair, label, count
    il = np.empty(cap, np.int64)
    iv = np.empty(cap, np.int64)
    n = 0
    bad = 0
    for b in range(B):
        for u in range(U):
            t = thr[u]
            mg = margin[u]
            m = a[b, u]
            na = 0
            nt = 0
            for r in range(h):
                r1 = r + 1 if r + 1 < h else r
                for c in range(w):
                    c1 = c + 1 if c + 1 < w else c
                    a00 = m[r, c]
                    a01 = m[r, c1]
                    a10 = m[r1, c]
                    a11 = m[r1, c1]
                    if not (a00 > mg or a01 > mg or a10 > mg or a11 > mg):
                        continue
                    for X in range(cs[c], ce[c]):
                        t0 = a00 * wx0[X] + a01 * wx1[X]
                        t1 = a10 * wx0[X] + a11 * wx1[X]
                        for Y in range(rs[r], re[r]):
                            v = t0 * wy0[Y] + t1 * wy1[Y]
                            if v > t:
                                na += 1
                                p = Y * W + X
                                for k in range(K):
                                    lab = lay[b, k, p]
                                    if lab > 0:
                                        if lab >= L:   # the caller raises
                                            bad = max(bad, lab)
                                            continue
                                        if local[lab] == 0:
                                            touched[nt] = lab
                                            nt += 1
                                        local[lab] += 1
            if na == 0:
                continue
            cnt[b, u] = na
            for j in range(nw):   # a whole-image label covers every active pixel
                lab = whole[b, j]
                if lab > 0:
                    if lab >= L:
                        bad = max(bad, lab)
                        continue
                    if local[lab] == 0:
                        touched[nt] = lab
                        nt += 1
                    local[lab] += na
            labs = np.sort(touched[:nt])
            if per_image and n + nt > cap:
                while n + nt > cap:
                    cap *= 2
                ip2 = np.empty(cap, np.int64)
                il2 = np.empty(cap, np.int64)
                iv2 = np.empty(cap, np.int64)
                ip2[:n] = ip[:n]
                il2[:n] = il[:n]
                iv2[:n] = iv[:n]
                ip, il, iv = ip2, il2, iv2
            pair = b * U + u
            for i in range(nt):
                lab = labs[i]
                v = local[lab]
                inter[u, lab] += v
                if per_image:
                    ip[n] = pair
                    il[n] = lab
                    iv[n] = v
                    n += 1
                local[lab] = 0
    return cnt, inter, ip[:n], il[:n], iv[:n], bad


def _label_loop(lay, whole, L):
    """The label counts ``(B, L)`` of one group of images (see
    :func:`image_label_counts_cpu`) and a label id beyond the table (0: none)."""
    B, K, P = lay.shape
    out = np.zeros((B, L), np.int64)
    top = 0
    for b in range(B):
        row = out[b]
        for k in range(K):
            for p in range(P):
                lab = lay[b, k, p]
                if lab > 0:
                    if lab >= L:
                        return out, lab   # the caller raises
                    row[lab] += 1
        for j in range(whole.shape[1]):
            lab = whole[b, j]
            if lab > 0:
                if lab >= L:
                    return out, lab
                row[lab] += P   # a whole-image label covers every pixel
    return out, top


@functools.lru_cache(maxsize=1)
def _compiled():
    """The compiled loops ``(iou, labels)``, or ``None`` where Numba cannot be imported or
    compile here."""
    try:
        import numba
    except Exception:   # not installed, or built for another NumPy: the tensor path runs
        return None
    if numba.config.DISABLE_JIT:   # (NUMBA_DISABLE_JIT=1: the loops would run in Python)
        return None
    # fastmath off (the default): no reassociation, no fused multiply-add, so every product
    # and sum is rounded to float32 exactly as torch's separate elementwise kernels round it
    jit = numba.njit(cache=True, nogil=True, boundscheck=False)
    iou, labels = jit(_iou_loop), jit(_label_loop)
    try:   # compile (or load from Numba's cache) now: a failure here means the tensor path
        one = np.ones(1, np.int64)
        iou(np.ones((1, 1, 1, 1), np.float32), np.zeros(1, np.float32),
            np.zeros(1, np.float32), np.ones((1, 1, 1), np.int16), np.zeros((1, 0), np.int64),
            one * 0, one, np.ones(1, np.float32), np.zeros(1, np.float32), one * 0, one,
            np.ones(1, np.float32), np.zeros(1, np.float32), 1, 2, True)
        labels(np.ones((1, 1, 1), np.int16), np.zeros((1, 0), np.int64), 2)
    except Exception:   # pragma: no cover - a Numba that cannot compile here
        return None
    return iou, labels


def available() -> bool:
    """Whether the compiled CPU tally can run here (Numba importable)."""
    return _compiled() is not None


def _spans(n: int, parts: int) -> list:
    """``parts`` contiguous ``(start, end)`` spans covering ``range(n)`` (none empty)."""
    parts = max(1, min(int(parts), n))
    edges = [n * k // parts for k in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


@functools.lru_cache(maxsize=1)
def _pool():
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=8, thread_name_prefix="neuroprobe-tally")


def _map(fn, spans):
    """``[fn(start, end)]`` for every span, side by side in threads (the loops release the
    GIL) where there are several."""
    if len(spans) == 1:
        return [fn(*spans[0])]
    return list(_pool().map(lambda se: fn(*se), spans))


def iou_counts_cpu(maps: torch.Tensor, thresholds: torch.Tensor, margin: torch.Tensor,
                   layers: torch.Tensor, whole: torch.Tensor, num_labels: int,
                   per_image: bool, rows: tuple, cols: tuple, threads: int = 1):
    """Active pixels per (image, unit), intersections per (unit, label) and, with
    ``per_image``, the nonzero intersections of every (image, unit, label) in the order
    (pair, label) of :func:`neuroprobe.tally._image_counts`.

    ``maps`` ``(B, U, h, w)`` float32 on the CPU; ``thresholds``, ``margin`` ``(U,)`` float32
    (the threshold and the lower bound of a hot raw value, as :func:`neuroprobe.tally.
    active_pixels` computes them); ``layers`` ``(B, K, H, W)`` integer label ids, ``whole``
    ``(B, n)``; ``rows``, ``cols``: the interpolation along each axis as NumPy arrays
    ``(start, end, w0, w1)``: output positions ``start[i]:end[i]`` have first source index
    ``i``, their weights are ``w0``, ``w1`` (float32).  ``threads``: the images are split into
    that many contiguous groups counted side by side; the counts are joined in image order, so
    the result does not depend on it.  Returns torch tensors ``cnt`` ``(B, U)``, ``inter``
    ``(U, L)`` (column 0 zero) and ``(pair, label, count)`` int64 vectors (empty without
    ``per_image``).
    """
    kernel = _compiled()[0]
    B, U = maps.shape[:2]
    W = int(layers.shape[-1])
    rs, re, wy0, wy1 = rows
    cs, ce, wx0, wx1 = cols
    a = maps.detach().float().contiguous().numpy()
    thr = thresholds.float().contiguous().numpy()
    mg = margin.float().contiguous().numpy()
    lay, wh = _labels(layers, whole)

    def part(s, e):
        return kernel(a[s:e], thr, mg, lay[s:e], wh[s:e], rs, re, wy0, wy1, cs, ce, wx0, wx1,
                      W, int(num_labels), bool(per_image))

    spans = _spans(B, threads)
    parts = _map(part, spans)
    bad = max(int(p[5]) for p in parts)
    if bad:
        raise ValueError(f"label id {bad} is outside the label table (ids < {num_labels})")
    if len(parts) == 1:
        return tuple(torch.from_numpy(x) for x in parts[0][:5])
    cnt = np.concatenate([p[0] for p in parts])
    inter = parts[0][1]
    for p in parts[1:]:
        inter += p[1]
    # a group's pairs are numbered from its first image
    pair = np.concatenate([p[2] + s * U for p, (s, _) in zip(parts, spans)])
    label = np.concatenate([p[3] for p in parts])
    count = np.concatenate([p[4] for p in parts])
    return tuple(torch.from_numpy(x) for x in (cnt, inter, pair, label, count))


def _labels(layers: torch.Tensor, whole: torch.Tensor):
    """``(B, K, H * W)`` label ids (in their own integer type where the loop takes it) and
    ``(B, n)`` int64 whole-image labels, as NumPy arrays."""
    B, K = layers.shape[:2]
    lay = layers.reshape(B, K, layers.shape[-2] * layers.shape[-1])   # (K may be 0)
    if lay.dtype not in (torch.int16, torch.int32, torch.int64, torch.uint8):
        lay = lay.long()
    wh = whole.reshape(B, -1) if whole.numel() else whole.new_zeros((B, 0))
    return lay.contiguous().numpy(), wh.long().contiguous().numpy()


def image_label_counts_cpu(layers: torch.Tensor, whole: torch.Tensor, num_labels: int,
                           threads: int = 1):
    """:func:`neuroprobe.tally.image_label_counts` of CPU tensors in one loop: ``(counts, top)``
    where ``top`` is 0, or a label id found that is not below ``num_labels`` (the counts are
    then incomplete, and the caller raises).  ``threads``: image groups counted side by side."""
    lay, wh = _labels(layers, whole)
    fn = _compiled()[1]
    parts = _map(lambda s, e: fn(lay[s:e], wh[s:e], int(num_labels)),
                 _spans(len(lay), threads))
    out = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
    top = max(int(p[1]) for p in parts)
    return torch.from_numpy(out), top
