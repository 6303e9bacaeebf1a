"""Independent brute-force references for the fidelity checks (issue #18).

Nothing here imports neuroprobe: these are straight re-statements of the published procedures,
written for clarity, not speed, and used by ``tests/test_fidelity.py`` and
``benchmarks/bench_fidelity.py`` to check the engine.

NetDissect (Bau et al., CVPR 2017; CSAILVision/NetDissect ``src/loadseg.py``,
``src/labelprobe.py``, ``src/makeresult.py``)
    :func:`read_broden` reads a Broden folder the way ``loadseg.SegmentationData`` does (rows
    kept by ``index_has_any_data``; primary category by ``primary_categories_per_index``: the
    largest ``c_<category>.csv`` coverage, ties to the later category); :func:`netdissect`
    thresholds every unit at the 0.995 quantile of its raw maps, upsamples each map bilinearly
    to the mask size, and tallies ``ti``, ``tg`` and ``count_act_with_labelcat`` image by
    image; ``iou = ti / (tc + tg - ti + 1e-20)``; per category ``pciou.argmax``; the best
    category by a stable ``argsort`` reversed; label 0 is named ``''``.

Region-NSS (He et al., CVPR 2019; the authors' demo notebook in SenHe/uavdvsm)
    :func:`region_nss_reference`: per image and unit, the map normalised by the unit's
    data-set min and max, upsampled bilinearly to the image size, z-scored with ``np.std``;
    for each annotated instance (the pixels of one label and one instance id), the mean z-score
    at the fixations inside it; per label the mean over all its fixated instances.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _entries(cell: str) -> list:
    out = []
    for e in (cell or "").split(";"):
        if not e:
            continue
        out.append(int(e) if re.fullmatch(r"\d+", e) else e)
    return out


def read_broden(root) -> dict:
    """NetDissect's view of a Broden folder: categories, label names, primary categories, and
    the kept rows (``{"image", "cells": {cat: [entries]}}``)."""
    root = Path(root)
    cats = [r["name"] for r in _rows(root / "category.csv")]
    labels = _rows(root / "label.csv")
    n_labels = max(int(r["number"]) for r in labels) + 1
    names = [""] * n_labels                     # build_dense_label_array: missing rows -> ''
    for r in labels:
        names[int(r["number"])] = r["name"] if int(r["number"]) else ""
    cover = np.zeros((n_labels, len(cats)))
    for ic, c in enumerate(cats):
        for r in _rows(root / f"c_{c}.csv"):
            if int(r["number"]) and int(r["code"]):
                cover[int(r["number"]), ic] = float(r["coverage"])
    primary = np.array([max((cover[i, ic], ic) for ic in range(len(cats)))[1]
                        for i in range(n_labels)])
    rows = []
    for r in _rows(root / "index.csv"):
        cells = {c: _entries(r[c]) for c in cats}
        if any(bool(e) for c in cats for e in cells[c]):          # index_has_any_data
            rows.append({"image": r["image"], "cells": cells, "sh": int(r["sh"]),
                         "sw": int(r["sw"])})
    return {"root": root, "categories": cats, "names": names, "primary": primary,
            "coverage": cover, "rows": rows}


def load_row(ds: dict, row: dict):
    """Image ``(3, H, W)`` float in [0, 1] and the label layers / scalars of one row."""
    root = ds["root"] / "images"
    img = np.asarray(Image.open(root / row["image"]).convert("RGB"), dtype=np.float32) / 255.0
    pixels, scalars = [], []
    for c in ds["categories"]:
        for e in row["cells"][c]:
            if isinstance(e, int):
                scalars.append(e)
            else:
                rgb = np.asarray(Image.open(root / e).convert("RGB")).astype(np.int64)
                pixels.append(rgb[..., 0] + 256 * rgb[..., 1])
    return torch.from_numpy(img).permute(2, 0, 1), pixels, scalars


@torch.no_grad()
def activations(ds: dict, forward) -> list[np.ndarray]:
    """``forward(images (1, 3, H, W)) -> (1, U, h, w)`` for every kept row, as float32 arrays."""
    return [forward(load_row(ds, row)[0][None])[0].float().numpy() for row in ds["rows"]]


def netdissect(ds: dict, acts: list[np.ndarray], quantile: float = 0.005) -> dict:
    """NetDissect's tallies, IoU and naming for one layer (see the module docstring)."""
    cats, primary = ds["categories"], ds["primary"]
    L, C = len(ds["names"]), len(cats)
    U = acts[0].shape[0]
    raw = np.concatenate([a.reshape(U, -1) for a in acts], axis=1)
    thr = np.quantile(raw, 1.0 - quantile, axis=1)
    labelcat = np.zeros((L, C))
    labelcat[np.arange(L), primary] = 1
    labelcat[0] = 0
    ti = np.zeros((U, L))
    tg = np.zeros(L)
    tc_cat = np.zeros((U, C))
    for row, a in zip(ds["rows"], acts):
        _, pixels, scalars = load_row(ds, row)
        sh, sw = row["sh"], row["sw"]
        up = F.interpolate(torch.from_numpy(a)[None], size=(sh, sw), mode="bilinear",
                           align_corners=False)[0].numpy()
        mask = up > thr[:, None, None]
        g = np.zeros(L)
        for p in pixels:
            cnt = np.bincount(p.ravel(), minlength=L)[:L].astype(float)
            cnt[0] = 0
            g += cnt
        for s in scalars:
            g[s] += sh * sw
        tg += g
        has_cat = (g @ labelcat) > 0                                 # count_act_with_labelcat
        for u in range(U):
            on = mask[u]
            n_on = on.sum()
            if not n_on:
                continue
            for p in pixels:
                cnt = np.bincount(p[on], minlength=L)[:L].astype(float)
                cnt[0] = 0
                ti[u] += cnt
            for s in scalars:
                if s:
                    ti[u, s] += n_on
            tc_cat[u] += n_on * has_cat
    tc = tc_cat @ labelcat.T
    iou = ti / (tc + tg[None] - ti + 1e-20)
    pciou = np.stack([iou * (primary == ci)[None] for ci in range(C)])   # (C, U, L)
    label_pciou = pciou.argmax(axis=2)
    score_pciou = np.take_along_axis(pciou, label_pciou[..., None], axis=2)[..., 0]
    bestcat = np.argsort(score_pciou, axis=0, kind="stable")[::-1][0]
    units = []
    for u in range(U):
        c = int(bestcat[u])
        units.append({"unit": u, "category": cats[c],
                      "label": ds["names"][label_pciou[c, u]], "score": score_pciou[c, u],
                      **{f"{cat}-label": ds["names"][label_pciou[ci, u]]
                         for ci, cat in enumerate(cats)},
                      **{f"{cat}-iou": score_pciou[ci, u] for ci, cat in enumerate(cats)}})
    return {"thresholds": thr, "iou": iou, "units": units, "ti": ti, "tg": tg, "tc": tc}


def region_nss_reference(maps: list[np.ndarray], layers: list[np.ndarray],
                         instances: list[np.ndarray | None], fixations: list[np.ndarray],
                         image_size, num_labels: int) -> np.ndarray:
    """He et al.'s region-NSS per (unit, label), brute force (nan: no fixated region).

    ``maps[i]`` raw ``(U, h, w)``; ``layers[i]`` ``(K, mh, mw)`` label ids; ``instances[i]`` the
    same shape (or None: one region per label); ``fixations[i]`` ``(N, 2)`` ``(x, y)`` in image
    pixels.  A fixation lies in image pixel ``floor(x + 0.5)`` and in mask pixel
    ``floor((x + 0.5) mw / W)``.
    """
    U = maps[0].shape[0]
    H, W = image_size
    lo = np.min([m.reshape(U, -1).min(1) for m in maps], axis=0)
    hi = np.max([m.reshape(U, -1).max(1) for m in maps], axis=0)
    total = np.zeros((U, num_labels))
    count = np.zeros(num_labels)
    for a, lay, inst, fx in zip(maps, layers, instances, fixations):
        if fx is None or len(fx) == 0:
            continue
        mh, mw = lay.shape[-2:]
        norm = (a - lo[:, None, None]) / np.where(hi > lo, hi - lo, 1)[:, None, None]
        up = F.interpolate(torch.from_numpy(norm).double()[None], size=(H, W), mode="bilinear",
                           align_corners=False)[0].numpy()
        z = np.zeros_like(up)
        for u in range(U):
            s = up[u].std()
            if s > 0:
                z[u] = (up[u] - up[u].mean()) / s
        x, y = fx[:, 0].astype(np.float64), fx[:, 1].astype(np.float64)
        ix = np.clip(np.floor(x + 0.5), 0, W - 1).astype(int)
        iy = np.clip(np.floor(y + 0.5), 0, H - 1).astype(int)
        mx = np.clip(np.floor((x + 0.5) * mw / W), 0, mw - 1).astype(int)
        my = np.clip(np.floor((y + 0.5) * mh / H), 0, mh - 1).astype(int)
        ids = np.zeros_like(lay) if inst is None else inst
        regions = set()
        for k in range(lay.shape[0]):
            for lab, i in zip(lay[k][my, mx], ids[k][my, mx]):
                if lab > 0:
                    regions.add((int(lab), int(i)))
        for lab, i in sorted(regions):
            inside = np.zeros(len(fx), bool)
            for k in range(lay.shape[0]):
                inside |= (lay[k][my, mx] == lab) & (ids[k][my, mx] == i)
            total[:, lab] += z[:, iy[inside], ix[inside]].mean(1)
            count[lab] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
