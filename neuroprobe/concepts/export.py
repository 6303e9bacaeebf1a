"""Write a concept set to disk in the Broden format (Bau et al., "Network Dissection", CVPR 2017).

The folder is exactly what NetDissect's ``broden1_224`` holds (see ``reference.md`` §3)::

    index.csv      image,split,ih,iw,sh,sw,color,object,material,part,scene,texture
    category.csv   name,first,last,count,frequency
    label.csv      number,name,category,frequency,coverage,syns
    c_<cat>.csv    code,number,name,frequency,coverage
    images/<set>/<stem>.jpg, <stem>_object.png, <stem>_part_1.png, <stem>_color.png ...

* Pixel label layers are RGB PNGs at mask size with global label ``R + 256 * G`` (B = 0); a
  category cell lists the layer files of that category (``;``-separated), whole-image labels
  (scene, texture) are integers in their cells.  A cell is empty when the image carries no
  annotation of that category.
* ``index.csv`` has the Broden columns in Broden order (``material`` stays empty unless the data
  has such a category) followed by any further category of the data set; ``category.csv`` lists
  the data set's categories in that column order.  ``first``/``last`` are the smallest and
  largest global label number of the category, ``count`` its number of labels and
  ``frequency`` the number of images annotated with it.
* ``label.csv``: ``frequency`` = number of images in which the label occurs, ``coverage`` = summed
  fraction of the image it covers (in image units), ``category`` = ``cat(count)`` with the image
  count (``cat(0)`` for a label that does not occur).  ``c_<cat>.csv`` numbers the category's
  labels densely from 1 in global-number order.
* ``split``: a fixed 70/30 train/val split by index (``index % 10 < 7`` is train).
* Extra files, ignored by Broden readers: ``fixations.csv`` (``image,observer,x,y``, 0-based image
  pixels) when the data set has fixations, and ``export.json`` (configuration and versions).

The folder is written under a temporary name next to ``out_dir`` and renamed at the end, so a
crash never leaves a half-written export.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..io import write_json
from ..utils import progress, versions

log = logging.getLogger(__name__)

BRODEN_COLUMNS = ("color", "object", "material", "part", "scene", "texture")


def _layer_category(ds, layer: np.ndarray) -> str | None:
    """The category of most of a layer's labelled pixels (None for an empty layer)."""
    ids, counts = np.unique(layer[layer > 0], return_counts=True)
    if ids.size == 0:
        return None
    votes: dict[str, int] = {}
    for i, c in zip(ids, counts):
        cat = ds.labels.category(int(i))
        votes[cat] = votes.get(cat, 0) + int(c)
    return max(votes, key=votes.get)


def _encode(labels: np.ndarray) -> np.ndarray:
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 65535:
        raise UserError("Broden label ids must lie in 0..65535")
    out = np.zeros(labels.shape + (3,), dtype=np.uint8)
    out[..., 0] = labels % 256
    out[..., 1] = labels // 256
    return out


def _save(image, path: Path, fmt: str, **kwargs) -> None:
    """Encode in memory, write in one call (PIL's own file writing is several times slower)."""
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    with open(path, "wb") as fh:
        fh.write(buf.getbuffer())


def _write_one(ds, index: int, folder: Path, prefix: str, quality: int, size: int):
    """Write image ``index`` and its label PNGs; return its index row, tallies and fixations."""
    from PIL import Image

    item = ds[index]
    stem = f"{prefix}/{index:06d}"
    img = item["image"].permute(1, 2, 0).numpy()
    rgb = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    _save(Image.fromarray(rgb), folder / f"{stem}.jpg", "JPEG", quality=quality)
    layers = item["layers"].numpy()
    cells: dict[str, list[str]] = {}
    per_cat_count: dict[str, int] = {}
    counts = np.zeros(size, dtype=np.int64)
    npix = layers.shape[1] * layers.shape[2] if layers.ndim == 3 else 1
    for k in range(layers.shape[0]):
        cat = _layer_category(ds, layers[k])
        if cat is None:
            continue
        per_cat_count[cat] = per_cat_count.get(cat, 0) + 1
        name = f"{stem}_{cat}.png" if cat != "part" else f"{stem}_part_{per_cat_count[cat]}.png"
        if cat != "part" and per_cat_count[cat] > 1:
            name = f"{stem}_{cat}_{per_cat_count[cat]}.png"
        _save(Image.fromarray(_encode(layers[k]), "RGB"), folder / name, "PNG", compress_level=1)
        cells.setdefault(cat, []).append(name)
        counts += np.bincount(layers[k].reshape(-1), minlength=size)[:size]
    whole = [int(w) for w in item["whole"] if int(w) > 0]
    for w in whole:
        cells.setdefault(ds.labels.category(w), []).append(str(w))
    cover = counts.astype(np.float64) / npix
    for w in whole:
        cover[w] += 1.0
    fix = []
    if item.get("fixations") is not None:
        obs = item["observers"].tolist() if item.get("observers") is not None else \
            [0] * len(item["fixations"])
        fix = [(f"{stem}.jpg", o, float(x), float(y))
               for o, (x, y) in zip(obs, item["fixations"].tolist())]
    row = {"image": f"{stem}.jpg", "split": "train" if index % 10 < 7 else "val",
           "ih": rgb.shape[0], "iw": rgb.shape[1], "sh": layers.shape[1], "sw": layers.shape[2],
           **{c: ";".join(v) for c, v in cells.items()}}
    return row, cover, fix


def _one_thread():
    """Pool initializer: one torch thread per worker process (``workers`` processes each
    starting one thread per core would oversubscribe the machine)."""
    torch.set_num_threads(1)


def _chunk(args):
    ds, lo, hi, folder, prefix, quality, size = args
    return [_write_one(ds, i, Path(folder), prefix, quality, size) for i in range(lo, hi)]


def export_broden(dataset, out_dir, n: int | None = None, *, quality: int = 95,
                  workers: int = 1) -> Path:
    """Write the first ``n`` images of ``dataset`` as a Broden-format folder ``out_dir``.

    Parameters
    ----------
    dataset : ConceptDataset
        Any concept source.  A synthetic world with fewer than ``n`` images is widened to ``n``
        (its images are functions of ``(seed, index)``).
    out_dir : path
        The folder to create; it must not exist or be empty.
    n : int, optional
        Number of images (default: all).
    quality : int
        JPEG quality of the images.
    workers : int
        Processes that draw and encode images in parallel (the output does not depend on it).

    Returns
    -------
    Path of the written folder.
    """
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"export folder {out} already exists and is not empty",
                        hint="choose a new --out folder or remove the old one")
    n = len(dataset) if n is None else int(n)
    if n < 1:
        raise UserError(f"export needs n >= 1 images, got {n}")
    if n > len(dataset):
        if hasattr(dataset, "with_size"):
            dataset = dataset.with_size(n)
        else:
            raise UserError(f"concept set {dataset.name!r} has only {len(dataset)} images, "
                            f"cannot export {n}", hint=f"use --n {len(dataset)} or fewer")
    labels = dataset.labels
    size = labels.max_id + 1
    cats = list(dataset.categories)
    columns = [c for c in BRODEN_COLUMNS] + [c for c in cats if c not in BRODEN_COLUMNS]
    cat_order = [c for c in columns if c in cats]
    prefix = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in dataset.name) or "images"

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        (tmp / "images" / prefix).mkdir(parents=True)
        rows, fixations = [], []
        freq = np.zeros(size, dtype=np.int64)
        cover = np.zeros(size, dtype=np.float64)
        cat_freq = {c: 0 for c in cats}

        def consume(result):
            row, cov, fix = result
            rows.append(row)
            freq[:] += cov > 0
            cover[:] += cov
            fixations.extend(fix)
            for c in cats:
                if row.get(c):
                    cat_freq[c] += 1

        bar = progress(total=n, desc="export", unit="img")
        if workers <= 1:
            for i in range(n):
                consume(_write_one(dataset, i, tmp / "images", prefix, quality, size))
                bar.update(1)
        else:
            step = max(1, min(256, n // (4 * workers) or 1))
            jobs = [(dataset, lo, min(lo + step, n), str(tmp / "images"), prefix, quality, size)
                    for lo in range(0, n, step)]
            with ProcessPoolExecutor(max_workers=workers, initializer=_one_thread) as pool:
                for chunk in pool.map(_chunk, jobs):
                    for result in chunk:
                        consume(result)
                    bar.update(len(chunk))
        bar.close()

        _write_csv(tmp / "index.csv", ["image", "split", "ih", "iw", "sh", "sw"] + columns,
                   [[r["image"], r["split"], r["ih"], r["iw"], r["sh"], r["sw"]]
                    + [r.get(c, "") for c in columns] for r in rows])
        label_rows = [[0, "-", "", 0, 0, ""]]
        for lab in labels:
            if lab.id:
                label_rows.append([lab.id, lab.name, f"{lab.category}({int(freq[lab.id])})",
                                   int(freq[lab.id]), f"{cover[lab.id]:.6g}", ""])
        _write_csv(tmp / "label.csv", ["number", "name", "category", "frequency", "coverage",
                                       "syns"], label_rows)
        cat_rows = []
        for c in cat_order:
            members = labels.labels_of(c)
            ids = [lab.id for lab in members]
            cat_rows.append([c, min(ids, default=0), max(ids, default=0), len(ids), cat_freq[c]])
            _write_csv(tmp / f"c_{c}.csv", ["code", "number", "name", "frequency", "coverage"],
                       [[k + 1, lab.id, lab.name, int(freq[lab.id]), f"{cover[lab.id]:.6g}"]
                        for k, lab in enumerate(members)])
        _write_csv(tmp / "category.csv", ["name", "first", "last", "count", "frequency"],
                   cat_rows)
        if fixations:
            _write_csv(tmp / "fixations.csv", ["image", "observer", "x", "y"],
                       [[im, o, f"{x:.3f}", f"{y:.3f}"] for im, o, x, y in fixations])
        write_json(tmp / "export.json", {"format": "broden", "n": n, "quality": quality,
                                         "dataset": dataset.config(), "versions": versions()})
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(f"wrote {n} images in the Broden format to {out}")
    return out


def _write_csv(path: Path, header: list, rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
