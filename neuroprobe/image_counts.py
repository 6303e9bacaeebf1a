"""``image_counts.npz``: the per-image IoU counts a dissection run keeps for the bootstrap.

A paired bootstrap over images of detector counts (``neuroprobe compare --bootstrap``) needs,
for every unit ``u`` with its label ``l_u`` (the best label of units.csv), the counts that
make its IoU, image by image: intersection ``inter[b, u, l_u]``, activation
``act[b, u, c(l_u)]`` (under the run's denominator) and the label's pixels ``truth[b, l_u]``.
The dense ``units x labels x images`` table is far too big (512 units x 1,198 Broden labels x
63,305 images); this file holds only what the bootstrap uses:

* per layer, ``<layer>/label`` ``(U,)``: each unit's label id (0 = none);
* ``<layer>/image``, ``/unit``, ``/inter``, ``/act``: one entry per (image, unit) where the
  unit fires above its threshold and counts for its label's category (a unit fires in the top
  0.5 % of its activations, so in a fraction of the images);
* ``<layer>/truth_image``, ``/truth_label``, ``/truth``: one entry per (image, label) for the
  labels some unit of the layer carries;
* ``images``: the data-set indices of all images dissected (unreadable ones left out).

Summed over all images the entries give exactly the tallies behind units.csv, so a bootstrap
weight of one on every image reproduces the run's detector counts.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .errors import UserError
from .io import atomic_path

__all__ = ["FILE", "unit_label_ids", "write_image_counts", "read_image_counts"]

FILE = "image_counts.npz"


def unit_label_ids(iou: np.ndarray, labels, ties: str = "netdissect") -> np.ndarray:
    """Each unit's label id as :func:`neuroprobe.results.score_iou` chooses it: the best label
    of every category (the first of equal IoUs), then the category with the highest of those,
    ties to the later category (``ties="netdissect"``, NetDissect's rule) or the first one
    (``"first"``); 0 (no label) for a unit whose best IoU is 0, which units.csv leaves
    unlabelled."""
    iou = np.asarray(iou)
    units = iou.shape[0]
    cat_idx = labels.category_index()
    n_cats = len(labels.categories)
    best = np.zeros((n_cats, units), dtype=np.int64)
    score = np.zeros((n_cats, units))
    rows = np.arange(units)
    for ci in range(n_cats):
        cols = np.nonzero(cat_idx == ci)[0]
        if not len(cols):
            continue
        best[ci] = cols[np.argmax(iou[:, cols], axis=1)]
        score[ci] = iou[rows, best[ci]]
    if not n_cats:
        return np.zeros(units, dtype=np.int64)
    if ties == "netdissect":
        win = n_cats - 1 - np.argmax(score[::-1], axis=0)
    else:
        win = np.argmax(score, axis=0)
    return np.where(score[win, rows] > 0, best[win, rows], 0)


def write_image_counts(path, tables: dict) -> None:
    """``tables``: ``{layer: ImageCounts.table(...)}`` (atomically).  An ``.npz`` (a zip of
    ``.npy`` files, as ``np.savez_compressed`` writes it, read by ``np.load``) deflated at
    level 1: about 5x faster to write than the default level 6 and about 1.25x its size (4x
    smaller than not compressed)."""
    arrays = {"layers": np.array(list(tables), dtype=str)}
    images = None
    for layer, t in tables.items():
        images = t["images"] if images is None else np.union1d(images, t["images"])
        arrays.update({f"{layer}/{k}": v for k, v in t.items() if k != "images"})
    arrays["images"] = images if images is not None else np.zeros(0, dtype=np.int64)
    with atomic_path(Path(path)) as tmp:
        with zipfile.ZipFile(tmp, "w") as zf:
            for name, value in arrays.items():
                # a fixed date: equal counts give equal bytes
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                # this entry's level (Python 3.13 names it compress_level)
                setattr(info, "compress_level" if hasattr(info, "compress_level")
                        else "_compresslevel", 1)
                with zf.open(info, "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)


def read_image_counts(run_dir) -> dict:
    """``{"images": ..., layer: {name: array}}`` of a run folder's ``image_counts.npz``."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        raise UserError(f"run {run_dir} has no {FILE} (the per-image counts the bootstrap "
                        "resamples)", hint="dissect the model again with --score iou or both "
                        "and this version of neuroprobe into a new --out folder")
    with np.load(path, allow_pickle=False) as z:
        out = {"images": z["images"]}
        for layer in z["layers"].tolist():
            out[layer] = {k.split("/", 1)[1]: z[k] for k in z.files
                          if k.startswith(f"{layer}/")}
    return out
