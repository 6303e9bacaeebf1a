"""Broden (Bau et al., "Network Dissection", CVPR 2017) as a concept source.

Reads the exact on-disk format of ``broden1_224`` / ``_227`` / ``_384``:

``index.csv``
    ``image,split,ih,iw,sh,sw,<one column per category>``.  A category cell is a ``;``-separated
    list of either PNG file names (pixel label layers; several part layers can exist for one
    image) or integers (whole-image labels such as scene and texture).  Paths are relative to
    ``images/``.
``category.csv``
    ``name,first,last,count,frequency`` (the categories, in column order of ``index.csv``).
``label.csv``
    ``number,name,category,frequency,coverage,syns`` with ``category`` like
    ``material(36);object(3)``.  Label 0 is ``-`` (unlabelled).
``c_<category>.csv``
    ``code,number,name,frequency,coverage``: dense per-category codes of the global numbers
    (checked against ``label.csv``).  Known pitfall: scene label 0 appears in ``index.csv`` but
    not in ``c_scene.csv``; whole-image label 0 means "unlabelled" here and is dropped.
Segmentation PNG
    RGB(A), global label = ``R + 256 * G`` (B unused), of size ``sh x sw`` (half the image).

NetDissect's data rules (``primary="coverage"``, ``keep_empty_rows=False``, the defaults):

* **Primary category** of a label: the category in whose ``c_<category>.csv`` the label has
  the largest ``coverage`` (0 where it is not listed), ties going to the later category in
  ``category.csv`` order: NetDissect's ``primary_categories_per_index`` takes
  ``max((coverage, category index))``.  (A label of coverage 0 everywhere has no pixel in the
  data and scores 0 whatever its category; NetDissect would put it in the last category,
  neuroprobe keeps it in the category file that lists it, else in its ``label.csv``
  category, so that its name is reported sensibly.)  ``primary="count"`` takes the largest count of the
  ``label.csv`` category cell instead, ties to the earlier category (neuroprobe's former rule);
  it is also used when a ``c_<category>.csv`` file is missing.
* **Rows without labels** are dropped, from both passes (thresholds too): NetDissect's
  ``SegmentationData`` keeps a row only when ``index_has_any_data``, i.e. some category cell
  holds a mask file or a non-zero whole-image label (a scene cell ``0`` alone does not count).
  ``keep_empty_rows=True`` keeps them (neuroprobe's former rule).  Rows are dropped before
  ``split`` and ``limit`` apply.

An image carries annotation for a category (the ``categories`` item entry) when its cell for that
category is not empty; the ``netdissect`` IoU denominator does not use these flags (it counts
an image for category ``c`` when it holds a label of primary category ``c``, see
:func:`neuroprobe.tally.iou_counts`), the ``annotated`` one does.
The 70/30 train/val split is the ``split`` column; ``split="train"|"val"`` selects it.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..download import extract, fetch
from ..errors import ConceptSetError, DataFormatError
from ..io import read_csv
from ..resources import cache_dir
from .base import ConceptDataset, Label, LabelTable
from .maskfolder import (as_size, check_known_ids, image_tensor, image_uint8, read_image,
                         resize_labels, resolve_data_path)

__all__ = ["BrodenDataset", "from_spec", "read_label_csv", "decode_label_png",
           "encode_label_png"]

INDEX_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")
_CAT_RE = re.compile(r"^\s*([^()]+?)\s*\(\s*(\d+)\s*\)\s*$")


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict]:
    return read_csv(path, required,
                    missing_hint="the Broden folder is incomplete; download it again",
                    format_hint="the file is not in the Broden format")[1]


def _int(value, path: Path, row: int, column: str) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        raise DataFormatError(f"{path}, row {row}: column {column!r} is {value!r}, not an "
                              "integer") from None


#: how a label's primary category is chosen (see the module docstring)
PRIMARY_RULES = ("coverage", "count")


def read_label_csv(path: Path, categories: list[str],
                   coverage: dict[int, dict[str, float]] | None = None) -> LabelTable:
    """``label.csv`` -> :class:`LabelTable`.

    With ``coverage`` (``{number: {category: coverage}}`` from the ``c_<category>.csv`` files)
    the primary category is NetDissect's: the largest coverage, 0 where a label is not listed,
    ties to the later category of ``categories`` (``primary_categories_per_index``).  Without
    it, the largest count of the ``category`` cell, ties to the earlier category.
    """
    rows = _read_csv(path, ("number", "name", "category"))
    labels = []
    for i, r in enumerate(rows, start=2):
        number = _int(r["number"], path, i, "number")
        if number == 0:
            continue
        counts: dict[str, int] = {}
        for part in filter(None, (r["category"] or "").split(";")):
            m = _CAT_RE.match(part)
            if not m:
                raise DataFormatError(f"{path}, row {i}: category {r['category']!r} is not like "
                                      "'material(36);object(3)'")
            counts[m.group(1)] = counts.get(m.group(1), 0) + int(m.group(2))
        if not counts:
            raise DataFormatError(f"{path}, row {i}: label {r['name']!r} has no category")
        unknown = [c for c in counts if c not in categories]
        if unknown:
            raise DataFormatError(f"{path}, row {i}: label {r['name']!r} names category "
                                  f"{unknown[0]!r}, which category.csv does not list")
        primary = max(counts, key=lambda c: (counts[c], -list(counts).index(c)))
        if coverage is not None:
            cov = coverage.get(number, {})
            best, ic = max(((cov.get(c, 0.0), ic) for ic, c in enumerate(categories)))
            if best > 0:
                primary = categories[ic]
            elif cov:   # listed with coverage 0 only (the label has no pixel): the later listing
                primary = max(cov, key=categories.index)
            labels.append(Label(number, r["name"], primary, coverage=dict(cov)))
            continue
        labels.append(Label(number, r["name"], primary, coverage=counts))
    try:
        return LabelTable(labels, categories)
    except ValueError as err:
        raise DataFormatError(f"{path}: {err}") from None


def decode_label_png(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """A Broden segmentation PNG -> ``int64 (H, W)`` global labels ``R + 256 * G``."""
    from ..imageio import read_label_image

    if not path.is_file():
        raise DataFormatError(f"Broden mask {path} does not exist",
                              hint="the Broden folder is incomplete; download it again")
    arr = read_label_image(path, "Broden mask", modes=("RGB", "RGBA"),
                           hint="Broden masks are RGB with label = R + 256*G")
    if size is not None and arr.shape[:2] != tuple(size):
        raise DataFormatError(f"Broden mask {path} is {arr.shape[1]}x{arr.shape[0]}, index.csv "
                              f"says {size[1]}x{size[0]}")
    return arr[..., 0].astype(np.int64) + 256 * arr[..., 1].astype(np.int64)


def encode_label_png(labels: np.ndarray) -> np.ndarray:
    """``(H, W)`` global labels -> ``uint8 (H, W, 3)`` RGB with ``R + 256 * G`` (B = 0)."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 65535:
        raise ValueError("Broden labels must lie in 0..65535")
    out = np.zeros(labels.shape + (3,), dtype=np.uint8)
    out[..., 0] = labels % 256
    out[..., 1] = labels // 256
    return out


def find_broden_root(path: Path) -> Path:
    """The folder holding ``index.csv``: ``path`` itself or its single sub-folder."""
    if (path / "index.csv").is_file():
        return path
    subs = [p for p in path.iterdir() if p.is_dir() and (p / "index.csv").is_file()]
    if len(subs) == 1:
        return subs[0]
    raise DataFormatError(f"{path} holds no Broden index.csv",
                          hint="point root at the broden1_224 folder (the one with index.csv)")


class BrodenDataset(ConceptDataset):
    """Broden as a :class:`ConceptDataset`.

    Parameters
    ----------
    root : path
        The folder with ``index.csv`` (or its parent), or a ``broden1_*.zip`` which is extracted
        safely next to it on first use.
    split : ``"train"``, ``"val"`` or None
        Rows of this split only (None: all).
    limit : int, optional
        The first ``limit`` rows (after the split).
    image_size, mask_size : (H, W), optional
        Default: the sizes of the first row (224 and 112 for ``broden1_224``).  Other rows are
        resized (bilinear images, nearest masks).
    primary : ``"coverage"`` (NetDissect's, default) or ``"count"``
        How a label's primary category is chosen (see the module docstring).
    keep_empty_rows : bool
        Keep ``index.csv`` rows without any label (NetDissect drops them; default False).
    """

    def __init__(self, root, *, split: str | None = None, limit: int | None = None,
                 image_size=None, mask_size=None, name: str = "broden",
                 primary: str = "coverage", keep_empty_rows: bool = False,
                 cache: bool = True):
        self.use_cache = bool(cache)
        root = Path(root)
        if root.is_file() and root.suffix == ".zip":
            target = root.with_suffix("")
            if not target.exists():
                extract(root, target)
            root = target
        if not root.is_dir():
            raise ConceptSetError(f"Broden folder {root} does not exist")
        self.root = find_broden_root(root)
        self.name = name
        cats = _read_csv(self.root / "category.csv", ("name",))
        categories = [r["name"] for r in cats]
        if not categories:
            raise DataFormatError(f"{self.root / 'category.csv'} lists no categories")
        if primary not in PRIMARY_RULES:
            raise ConceptSetError(f"Broden primary must be coverage or count, not {primary!r}")
        self.labels = read_label_csv(self.root / "label.csv", categories)
        coverage = self._check_code_tables(categories)
        self.primary = "count"
        if primary == "coverage" and coverage is not None:
            self.labels = read_label_csv(self.root / "label.csv", categories, coverage)
            self.primary = "coverage"
        self.keep_empty_rows = bool(keep_empty_rows)
        self.dropped_rows = 0
        index = _read_csv(self.root / "index.csv", INDEX_COLUMNS + tuple(categories))
        if split not in (None, "all", "train", "val"):
            raise ConceptSetError(f"Broden split must be train, val or all, not {split!r}")
        self.split = None if split == "all" else split
        path = self.root / "index.csv"
        rows = []
        for i, r in enumerate(index, start=2):
            if not (self.keep_empty_rows or _has_any_data(r, categories)):
                self.dropped_rows += 1
                continue
            if self.split and r["split"] != self.split:
                continue
            rows.append({"image": r["image"], "split": r["split"],
                         "ih": _int(r["ih"], path, i, "ih"), "iw": _int(r["iw"], path, i, "iw"),
                         "sh": _int(r["sh"], path, i, "sh"), "sw": _int(r["sw"], path, i, "sw"),
                         "cells": {c: r[c] or "" for c in categories}, "row": i})
            if limit is not None and len(rows) >= int(limit):
                break
        if not rows:
            raise DataFormatError(f"{path} has no rows" + (f" in split {split!r}" if split else ""))
        self.rows = rows
        self.image_size = as_size(image_size, (rows[0]["ih"], rows[0]["iw"]))
        self.mask_size = as_size(mask_size, (rows[0]["sh"], rows[0]["sw"]))

    def _check_code_tables(self, categories: list[str]):
        """Read ``c_<category>.csv`` where present; every number must be a known label.

        Returns ``{number: {category: coverage}}`` when every category has its file with a
        ``coverage`` column (else None)."""
        self.codes: dict[str, dict[int, int]] = {}
        coverage: dict[int, dict[str, float]] | None = {}
        for cat in categories:
            path = self.root / f"c_{cat}.csv"
            if not path.exists():
                coverage = None
                continue
            rows = _read_csv(path, ("code", "number"))
            table = {}
            for i, r in enumerate(rows, start=2):
                number = _int(r["number"], path, i, "number")
                if number not in self.labels:
                    raise DataFormatError(f"{path}, row {i}: label number {number} is not in "
                                          "label.csv")
                table[number] = _int(r["code"], path, i, "code")
                if coverage is None or number == 0:
                    continue
                if r.get("coverage") in (None, ""):
                    coverage = None
                    continue
                try:
                    coverage.setdefault(number, {})[cat] = float(r["coverage"])
                except ValueError:
                    raise DataFormatError(f"{path}, row {i}: coverage {r['coverage']!r} is not "
                                          "a number") from None
            self.codes[cat] = table
        return coverage

    def __len__(self) -> int:
        return len(self.rows)

    def decode(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Native-size ``image (ih,iw,3) uint8``, ``layers (K,sh,sw)``, ``whole (n,)`` and the
        ``categories`` flags of row ``index``."""
        return (self._decode_image(index), *self._decode_labels(index))

    def _decode_image(self, index: int) -> np.ndarray:
        row = self.rows[index]
        images = self.root / "images"
        rgb = read_image(images / row["image"])
        if rgb.shape[:2] != (row["ih"], row["iw"]):
            raise DataFormatError(f"image {images / row['image']} is {rgb.shape[1]}x"
                                  f"{rgb.shape[0]}, index.csv row {row['row']} says "
                                  f"{row['iw']}x{row['ih']}")
        return rgb

    def _decode_labels(self, index: int):
        row = self.rows[index]
        images = self.root / "images"
        layers, whole = [], []
        cats = np.zeros(len(self.categories), dtype=bool)
        for c, cat in enumerate(self.categories):
            entries = [e.strip() for e in row["cells"][cat].split(";") if e.strip()]
            for e in entries:
                if re.fullmatch(r"\d+", e):
                    v = int(e)
                    if v == 0:  # the scene-0 pitfall: "unlabelled", not a label
                        continue
                    if v not in self.labels:
                        raise DataFormatError(f"index.csv row {row['row']}: {cat} label {v} is "
                                              "not in label.csv")
                    whole.append(v)
                    cats[c] = True
                else:
                    arr = decode_label_png(images / e, (row["sh"], row["sw"]))
                    check_known_ids(arr, self.labels, f"Broden mask {images / e}")
                    layers.append(arr)
                    cats[c] = True
        lay = (np.stack(layers) if layers
               else np.zeros((0, row["sh"], row["sw"]), dtype=np.int64))
        return lay, np.asarray(whole, dtype=np.int64), cats

    def __getitem__(self, index: int) -> dict:
        return self.item(index)

    def item_id(self, index: int) -> str:
        return str(Path(self.rows[index]["image"]).with_suffix(""))

    def item(self, index: int, *, labels: bool = True, raw_image: bool = False) -> dict:
        """See :meth:`ConceptDataset.item`: ``labels=False`` decodes no mask; ``raw_image``
        gives the ``uint8`` image."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        rgb = self._decode_image(index)
        out = {"image": (image_uint8 if raw_image else image_tensor)(rgb, self.image_size),
               "id": self.item_id(index)}
        if not labels:
            return out
        return {"image": out["image"], **self.labels_of(index)}

    def labels_of(self, index: int) -> dict:
        """See :meth:`ConceptDataset.labels_of`: the labels of row ``index`` (from the
        concept-set cache where it is attached), no image decoded."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        got = self.cached_labels(index) or self.decode_labels(index)
        lay, whole, cats = got["layers"], got["whole"], got["categories"]
        return {
            "layers": torch.from_numpy(np.ascontiguousarray(lay)),
            "whole": torch.from_numpy(whole),
            "categories": torch.from_numpy(cats),
            "fixations": None,
            "observers": None,
            "id": self.item_id(index),
        }

    # -- the concept-set cache (neuroprobe.concepts.cache) ----------------------------------
    def decode_labels(self, index: int) -> dict:
        """Row ``index``'s labels from its PNGs, masks resized to :attr:`mask_size`."""
        lay, whole, cats = self._decode_labels(index)
        return {"layers": resize_labels(lay, self.mask_size), "whole": whole,
                "categories": cats, "fixations": None, "observers": None}

    def label_files(self, index: int) -> list[Path]:
        """The mask PNGs of row ``index`` (its whole-image labels live in ``index.csv``)."""
        images = self.root / "images"
        return [images / e.strip() for cell in self.rows[index]["cells"].values()
                for e in cell.split(";") if e.strip() and not re.fullmatch(r"\d+", e.strip())]

    def cache_spec(self) -> dict:
        """The tables' contents and the options that shape the decoded labels (not the
        folder's path: a copy of the same set shares the cache)."""
        from .cache import hash_files

        tables = ["index.csv", "category.csv", "label.csv"] + sorted(
            p.name for p in self.root.glob("c_*.csv"))
        return {"source": "broden", "tables": hash_files(self.root / t for t in tables),
                **{k: v for k, v in self.config().items() if k != "root"}}

    def config(self) -> dict:
        out = super().config()
        out.update({"source": "broden", "root": str(self.root), "split": self.split or "all",
                    "primary": self.primary, "keep_empty_rows": self.keep_empty_rows,
                    "dropped_rows": self.dropped_rows})
        return out


def _has_any_data(row: dict, categories: list[str]) -> bool:
    """NetDissect's ``index_has_any_data``: some category cell holds a mask file name or a
    non-zero whole-image label (NetDissect parses integer entries and keeps truthy ones)."""
    for c in categories:
        for e in (row.get(c) or "").split(";"):
            e = e.strip()
            if e and not (e.isdigit() and int(e) == 0):
                return True
    return False


def from_spec(spec: dict, **overrides) -> BrodenDataset:
    """Open a ``source = "broden"`` concept set (see ``concepts/broden.toml``).

    Options: ``root`` (folder or zip; default ``broden1_<resolution>``, looked up as described
    in :mod:`neuroprobe.concepts.paths`), ``resolution`` (224, 227,
    384), ``split``, ``limit``, ``image_size``, ``mask_size``, ``primary`` (``"coverage"`` or
    ``"count"``), ``keep_empty_rows``; ``download = true`` fetches the archive into
    ``<cache>/data`` when it is not found.
    """
    opts = {**spec, **overrides}
    resolution = int(opts.get("resolution", 224))
    if resolution not in (224, 227, 384):
        raise ConceptSetError(f"Broden resolution must be 224, 227 or 384, not {resolution}")
    name = "broden" if resolution == 224 else f"broden{resolution}"
    root = opts.get("root") or f"broden1_{resolution}"
    hint = (f"download it with `neuroprobe download {name} --out DIR` and pass --root "
            f"DIR/broden1_{resolution}, or set `root` in {spec.get('_path')}")
    try:
        path = resolve_data_path(root, spec, what="Broden folder", hint=hint,
                                 given="root" in overrides)
    except ConceptSetError:
        if not opts.get("download"):
            raise
        path = fetch(name, cache_dir() / "data", mirror=opts.get("mirror"))
    return BrodenDataset(path, split=opts.get("split"), limit=opts.get("limit"),
                         image_size=opts.get("image_size"), mask_size=opts.get("mask_size"),
                         name=spec.get("name", "broden"),
                         primary=opts.get("primary", "coverage"),
                         keep_empty_rows=bool(opts.get("keep_empty_rows", False)),
                         cache=opts.get("cache", True))
