"""A Broden-format folder that exercises NetDissect's data rules (issue #18).

:func:`make_broden` writes random scenes in the exact ``broden1_224`` layout (see
``reference.md`` section 3) with the cases where neuroprobe's former rules and NetDissect's
differ:

* label ``glass`` (material by its ``c_material.csv`` coverage, object by its ``label.csv``
  count) and label ``panel`` (equal coverage in ``c_object.csv`` and ``c_part.csv``: a tie that
  NetDissect gives to the later category, part);
* material labels painted into object masks of images whose material cell is empty;
* rows without any label (dropped by NetDissect) and rows whose only entry is scene ``0``;
* images (each a smooth colour field) whose pixels follow their labels, so that units of a
  random network respond to labels.

No neuroprobe import: the tests use it to build data for the engine and for the independent
references in :mod:`benchmarks.references`.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = ["color", "object", "part", "material", "scene", "texture"]
# number, name, label.csv category cell, {category: c_<category>.csv coverage}
LABELS = [
    (1, "red", "color(40)", {"color": 5.0}),
    (2, "green", "color(40)", {"color": 4.0}),
    (3, "blue", "color(40)", {"color": 3.0}),
    (4, "car", "object(30)", {"object": 2.0}),
    (5, "person", "object(30)", {"object": 2.5}),
    (6, "table", "object(20);material(1)", {"object": 1.5, "material": 0.1}),
    (7, "panel", "object(5);part(5)", {"object": 2.0, "part": 2.0}),   # tie: part
    (8, "wheel", "part(20)", {"part": 0.8}),
    (9, "head", "part(25)", {"part": 0.9}),
    (10, "wood", "material(20)", {"material": 1.2}),
    (11, "glass", "object(9);material(2)", {"object": 1.0, "material": 3.0}),  # material
    (12, "food", "material(15)", {"material": 0.7}),
    (13, "street", "scene(10)", {"scene": 4.0}),
    (14, "kitchen", "scene(10)", {"scene": 3.0}),
    (15, "striped", "texture(10)", {"texture": 2.0}),
    (16, "dotted", "texture(10)", {"texture": 1.0}),
]
COLOURS = {1: (200, 40, 40), 2: (40, 180, 60), 3: (40, 60, 200)}
OBJECTS, PARTS, MATERIALS = (4, 5, 6, 7, 11), (7, 8, 9), (10, 11, 12)


def _csv(path: Path, header, rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def _png(path: Path, labels: np.ndarray) -> None:
    rgb = np.zeros(labels.shape + (3,), np.uint8)
    rgb[..., 0] = labels % 256
    rgb[..., 1] = labels // 256
    Image.fromarray(rgb, "RGB").save(path)


def _rect(rng, h, w, lo=0.2, hi=0.6):
    bh, bw = (max(1, int(rng.uniform(lo, hi) * s)) for s in (h, w))
    y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    return slice(y, y + bh), slice(x, x + bw)


def make_broden(root, n: int = 40, size: int = 64, seed: int = 0) -> Path:
    """Write ``n`` rows (images ``size`` px, masks ``size // 2``) into the new folder ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "images" / "gen").mkdir(parents=True)
    _csv(root / "category.csv", ["name", "first", "last", "count", "frequency"],
         [[c, 0, 0, 1, n] for c in CATEGORIES])
    _csv(root / "label.csv", ["number", "name", "category", "frequency", "coverage", "syns"],
         [[i, nm, cell, 10, f"{sum(cov.values()):.3f}", ""] for i, nm, cell, cov in LABELS])
    for c in CATEGORIES:
        members = [(i, nm, cov[c]) for i, nm, _, cov in LABELS if c in cov]
        _csv(root / f"c_{c}.csv", ["code", "number", "name", "frequency", "coverage"],
             [[0, 0, "-", 0, 0]] + [[k + 1, i, nm, 10, f"{v:.3f}"]
                                    for k, (i, nm, v) in enumerate(members)])
    h = w = size // 2
    rows = []
    for k in range(n):
        stem = f"gen/{k:05d}"
        cells = {c: [] for c in CATEGORIES}
        obj = np.zeros((h, w), np.int64)
        part = np.zeros((h, w), np.int64)
        mat = np.zeros((h, w), np.int64)
        kind = k % 10
        if kind not in (8, 9):              # kinds 8, 9: rows without any label
            for _ in range(int(rng.integers(1, 4))):
                obj[_rect(rng, h, w)] = rng.choice(OBJECTS)
            if kind in (1, 4, 7):           # a material label inside the object mask only
                obj[_rect(rng, h, w, 0.1, 0.4)] = rng.choice(MATERIALS)
            if kind in (2, 5):
                inside = obj > 0
                part[inside & (rng.random((h, w)) < 0.5)] = rng.choice(PARTS)
            if kind in (3, 6):
                mat[_rect(rng, h, w)] = rng.choice(MATERIALS)
        colour = np.zeros((h, w), np.int64)
        if kind not in (8, 9):
            colour[:] = rng.choice([1, 2, 3])
            colour[_rect(rng, h, w)] = rng.choice([1, 2, 3])
        # the image: a colour field following the colour labels, brighter on objects, noise
        img = np.zeros((h, w, 3), np.float64)
        for c, rgb in COLOURS.items():
            img[colour == c] = rgb
        img[colour == 0] = (128, 128, 128)
        img += (obj[..., None] * 9.0 + part[..., None] * 5.0 + mat[..., None] * 3.0) % 60
        img = np.kron(img, np.ones((2, 2, 1)))
        img += rng.normal(0, 12, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            root / "images" / f"{stem}.jpg", quality=95)
        for cat, arr in (("color", colour), ("object", obj), ("part", part),
                         ("material", mat)):
            if arr.any():
                name = f"{stem}_{cat}.png"
                _png(root / "images" / name, arr)
                cells[cat].append(name)
        if kind == 8:
            cells["scene"].append("0")      # only scene 0: NetDissect drops the row
        elif kind != 9:
            cells["scene"].append(str(rng.choice([13, 14])))
            if k % 3 == 0:
                cells["texture"].append(str(rng.choice([15, 16])))
        rows.append([f"{stem}.jpg", "train" if k % 10 < 7 else "val", size, size, h, w]
                    + [";".join(cells[c]) for c in CATEGORIES])
    _csv(root / "index.csv", ["image", "split", "ih", "iw", "sh", "sw"] + CATEGORIES, rows)
    return root
