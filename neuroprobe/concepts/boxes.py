"""Bounding-box concept sources: a box becomes a region of its label.

First of all **EyeCrowd** (Jiang, Xu, Zhao, "Saliency in crowd", ECCV 2014): crowded scenes at
1024x768 with the fixations of 16 observers and every face labelled with a box and the flags
``isFrontalFace``, ``isProfileFace``, ``isBackFace``, ``isOccluded``.  Faces become "person head"
regions (label id 1, as in the OSIE-SR map), which makes region-NSS and category preference
measurable on real fixations.  Only records whose image file is present are used.

Box geometry
    Boxes are stored as :class:`Box` in 0-based pixel coordinates with pixel centres at integers
    (the convention of :mod:`neuroprobe.saliency.fixations`).  A pixel belongs to the box when
    its centre ``(col, row)`` satisfies ``x <= col < x + width`` and ``y <= row < y + height``.
    EyeCrowd's ``left``/``top`` are MATLAB 1-based, so ``x = left - 1``, ``y = top - 1``.
    Overlapping boxes: larger boxes are painted first, smaller (usually nearer) ones on top.
Each box is one instance (item key ``instances``): two faces are two region-NSS regions.

A generic CSV of boxes is read too (``format = "csv"``): columns ``image,label,x,y,width,height``
(0-based, as above) plus any ``0/1`` flag columns, with the images in ``images``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import ConceptSetError, DataFormatError
from ..imageio import image_size as native_size
from ..io import confined, read_csv
from ..saliency.fixations import read_subjects_mat
from .base import STUDY_CATEGORIES, ConceptDataset, LabelTable
from .cache import hash_fixations
from .maskfolder import (as_size, fixation_tensors, image_tensor, image_uint8, read_image,
                         resize_labels, resolve_data_path, study_label_table)

__all__ = ["Box", "BoxDataset", "box_mask", "read_eyecrowd", "read_box_csv", "from_spec",
           "EYECROWD_FLAGS"]

EYECROWD_FLAGS = ("isFrontalFace", "isProfileFace", "isBackFace", "isOccluded")


@dataclass
class Box:
    """One labelled box (0-based pixel coordinates, pixel centres at integers)."""

    label: int
    x: float
    y: float
    width: float
    height: float
    flags: dict = field(default_factory=dict)

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)


def box_mask(box: Box, height: int, width: int) -> np.ndarray:
    """Bool ``(height, width)``: pixels whose centre lies in the half-open box."""
    c0 = max(0, int(np.ceil(box.x)))
    c1 = min(width, int(np.ceil(box.x + box.width)))
    r0 = max(0, int(np.ceil(box.y)))
    r1 = min(height, int(np.ceil(box.y + box.height)))
    out = np.zeros((height, width), dtype=bool)
    if c0 < c1 and r0 < r1:
        out[r0:r1, c0:c1] = True
    return out


@dataclass
class BoxRecord:
    id: str
    image: Path
    boxes: list
    fixations: object = None


class BoxDataset(ConceptDataset):
    """Images with labelled boxes (and optional fixations) as a :class:`ConceptDataset`.

    Parameters
    ----------
    records : list of BoxRecord
    labels : LabelTable, optional
        Default: the 12 study labels (OSIE-SR ids), categories ``object`` and ``part``.
    annotated : sequence of str, optional
        The categories every image is annotated for (``categories`` item entry); default all.
    exclude, only : sequence of str
        Drop boxes with any of the ``exclude`` flags set / keep only boxes with all ``only``
        flags set (e.g. ``exclude=["isBackFace"]``).
    image_size, mask_size : (H, W)
    """

    def __init__(self, records: Sequence[BoxRecord], *, labels: LabelTable | None = None,
                 annotated: Sequence[str] | None = None, exclude: Sequence[str] = (),
                 only: Sequence[str] = (), image_size=(224, 224), mask_size=None,
                 limit: int | None = None, name: str = "boxes"):
        self.name = name
        self.labels = labels or study_label_table()
        self.image_size = as_size(image_size)
        self.mask_size = as_size(mask_size, self.image_size)
        self.records = list(records)[: None if limit is None else int(limit)]
        if not self.records:
            raise DataFormatError(f"box source {name!r} has no images")
        self.exclude, self.only = tuple(exclude), tuple(only)
        self.has_fixations = any(r.fixations is not None for r in self.records)
        cats = self.labels.categories if annotated is None else list(annotated)
        unknown = [c for c in cats if c not in self.labels.categories]
        if unknown:
            raise ConceptSetError(f"unknown category {unknown[0]!r}; categories: "
                                  f"{', '.join(self.labels.categories)}")
        self._annotated = torch.tensor([c in cats for c in self.labels.categories])
        for r in self.records:
            for b in r.boxes:
                if b.label not in self.labels or b.label == 0:
                    raise DataFormatError(f"box of image {r.id} has label id {b.label}, which "
                                          "is not in the label table")

    def __len__(self) -> int:
        return len(self.records)

    def boxes(self, index: int) -> list[Box]:
        """The boxes of an image after the flag filters (flags kept on each box)."""
        out = []
        for b in self.records[index].boxes:
            if any(b.flags.get(f) for f in self.exclude):
                continue
            if not all(b.flags.get(f) for f in self.only):
                continue
            out.append(b)
        return out

    def item_id(self, index: int) -> str:
        return str(self.records[index].id)

    def __getitem__(self, index: int) -> dict:
        return self.item(index)

    def item(self, index: int, *, labels: bool = True, raw_image: bool = False) -> dict:
        """See :meth:`ConceptDataset.item`: ``labels=False`` paints no box; labels come from
        the concept-set cache where it is attached."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        rec = self.records[index]
        rgb = read_image(rec.image)
        out = {"image": (image_uint8 if raw_image else image_tensor)(rgb, self.image_size),
               "id": rec.id}
        if labels:
            got = self.cached_labels(index) or self.decode_labels(index, rgb.shape[:2])
            out.update(self.label_tensors(got))
        return out

    # -- the concept-set cache (neuroprobe.concepts.cache) ----------------------------------
    def decode_labels(self, index: int, hw: tuple[int, int] | None = None) -> dict:
        """Item ``index``'s boxes painted at the image's native size ``hw`` (default: read from
        the image file's header) and resized to :attr:`mask_size`, one instance per box, and
        its fixations scaled to :attr:`image_size`."""
        rec = self.records[index]
        h, w = native_size(rec.image) if hw is None else hw
        layer = np.zeros((h, w), dtype=np.int64)
        inst = np.zeros((h, w), dtype=np.int64)   # each box is one region-NSS region
        for k, b in enumerate(sorted(self.boxes(index), key=lambda b: -b.area), start=1):
            m = box_mask(b, h, w)
            layer[m] = b.label
            inst[m] = k
        fix = obs = None
        if self.has_fixations:
            fix, obs = (t.numpy() for t in fixation_tensors(rec.fixations, (h, w),
                                                            self.image_size))
        return {"layers": resize_labels(layer[None], self.mask_size),
                "instances": resize_labels(inst[None], self.mask_size),
                "whole": np.zeros(0, np.int64), "categories": self._annotated.numpy().copy(),
                "fixations": fix, "observers": obs}

    def label_files(self, index: int) -> list[Path]:
        """The image file: its size places the boxes (the boxes and fixations themselves are
        in the cache key, :meth:`cache_spec`)."""
        return [self.records[index].image]

    def replaced_files(self, index: int) -> list:
        """None: the image is read with or without the cache."""
        return []

    def cache_spec(self) -> dict:
        """Every record's id, image name, boxes (with flags) and fixations, hashed, and the
        options that shape the labels; not the folder's path."""
        h = hashlib.sha256()
        for r in self.records:
            boxes = [(b.label, b.x, b.y, b.width, b.height, sorted(b.flags.items()))
                     for b in r.boxes]
            h.update(repr((r.id, r.image.name, boxes)).encode())
            hash_fixations(h, r.fixations)
        return {"source": "boxes", "records": h.hexdigest(), "labels": self.labels.to_rows(),
                "annotated": self._annotated.tolist(), **self.config()}

    def config(self) -> dict:
        out = super().config()
        out.update({"source": "boxes", "exclude": list(self.exclude), "only": list(self.only)})
        return out


# ---------------------------------------------------------------------------------------------

def _records_of(value) -> list:
    if isinstance(value, np.ndarray):
        return list(value.reshape(-1))
    return [] if value is None else [value]


def read_eyecrowd(root: str | Path) -> list[BoxRecord]:
    """EyeCrowd's ``labels.mat`` + ``fixations.mat`` + ``stimuli/`` -> box records.

    Only records whose image exists in ``stimuli/`` are returned (in file-name order).
    """
    import scipy.io as sio

    root = Path(root)
    labels_path = root / "labels.mat"
    if not labels_path.is_file():
        raise DataFormatError(f"EyeCrowd labels {labels_path} do not exist",
                              hint="root must hold labels.mat, fixations.mat and stimuli/")
    try:
        mat = sio.loadmat(str(labels_path), squeeze_me=True, struct_as_record=False)
    except Exception as err:  # scipy raises several types for a damaged file
        raise DataFormatError(f"{labels_path} is not a readable MATLAB .mat file ({err})") from None
    if "labels" not in mat:
        raise DataFormatError(f"{labels_path} has no variable 'labels'")
    fix_path = root / "fixations.mat"
    fixations = read_subjects_mat(fix_path) if fix_path.is_file() else {}
    head = STUDY_CATEGORIES["person head"]
    out = []
    for rec in _records_of(mat["labels"]):
        fields = getattr(rec, "_fieldnames", None) or []
        if "img" not in fields or "faces" not in fields:
            raise DataFormatError(f"{labels_path}: records need img and faces (found {fields})")
        image = confined(root / "stimuli", str(rec.img), source=labels_path)
        if not image.is_file():
            continue
        boxes = []
        for face in _records_of(rec.faces):
            ff = getattr(face, "_fieldnames", None) or []
            if not all(k in ff for k in ("left", "top", "width", "height")):
                raise DataFormatError(f"{labels_path}: faces of {rec.img} need left, top, width "
                                      f"and height (found {ff})")
            flags = {k: bool(int(getattr(face, k))) for k in EYECROWD_FLAGS if k in ff}
            boxes.append(Box(head, float(face.left) - 1.0, float(face.top) - 1.0,
                             float(face.width), float(face.height), flags))
        out.append(BoxRecord(Path(str(rec.img)).stem, image, boxes,
                             fixations.get(str(rec.img))))
    out.sort(key=lambda r: r.image.name)
    if not out:
        raise DataFormatError(f"none of the EyeCrowd images named in {labels_path} is in "
                              f"{root / 'stimuli'}")
    return out


def read_box_csv(path: str | Path, images: str | Path, labels: LabelTable,
                 fixations: dict | None = None) -> list[BoxRecord]:
    """``image,label,x,y,width,height[,flag...]`` rows (label = name or id) -> box records."""
    path, images = Path(path), Path(images)

    required = ("image", "label", "x", "y", "width", "height")
    header, rows = read_csv(path, required, missing_hint="pass the path of the box CSV",
                            format_hint="columns: image,label,x,y,width,height[,flags]")
    flag_cols = [c for c in header if c not in required]
    by_image: dict[str, list[Box]] = {}
    for i, r in enumerate(rows, start=2):
        name = r["label"].strip()
        try:
            lab = labels.by_name(name).id
        except KeyError:
            if name.isdigit() and int(name) in labels:
                lab = int(name)
            else:
                raise DataFormatError(f"{path}, row {i}: label {name!r} is not in the label "
                                      "table") from None
        try:
            x, y, w, h = (float(r[k]) for k in ("x", "y", "width", "height"))
            flags = {c: bool(int(r[c] or 0)) for c in flag_cols}
        except (TypeError, ValueError):
            raise DataFormatError(f"{path}, row {i}: box values and flags must be numbers"
                                  ) from None
        by_image.setdefault(r["image"], []).append(Box(lab, x, y, w, h, flags))
    out = []
    for name in sorted(by_image):
        image = images / name
        if not image.is_file():
            raise DataFormatError(f"{path}: image {image} does not exist")
        fx = (fixations or {}).get(name)
        out.append(BoxRecord(Path(name).stem, image, by_image[name], fx))
    return out


def from_spec(spec: dict, **overrides) -> BoxDataset:
    """Open a box concept set (``source = "eyecrowd"``; see ``concepts/eyecrowd.toml``).

    Options: ``format`` (``"eyecrowd"``, default, or ``"csv"``), ``root``, ``exclude``,
    ``only``, ``limit``, ``image_size``, ``mask_size``; for ``csv``: ``boxes``, ``images``,
    ``fixations`` (an OSIE-layout ``fixations.mat``).
    """
    opts = {**spec, **overrides}
    if opts.get("split") not in (None, "all"):
        raise ConceptSetError(f"box sources have no {opts['split']!r} split",
                              hint="leave out --split")
    fmt = opts.get("format", "eyecrowd")
    common = dict(exclude=opts.get("exclude", ()), only=opts.get("only", ()),
                  image_size=as_size(opts.get("image_size"), (224, 224)),
                  mask_size=opts.get("mask_size"), limit=opts.get("limit"),
                  name=spec.get("name", fmt))
    if fmt == "eyecrowd":
        hint = (f"EyeCrowd (labels.mat, fixations.mat, stimuli/) is at github.com/NUS-VIP/"
                f"saliency-in-crowd; pass --root DIR, set `root` in {spec.get('_path')}, or put "
                "it at $NEUROPROBE_DATA/eyecrowd")
        root = resolve_data_path(opts.get("root") or "eyecrowd", spec, what="EyeCrowd folder",
                                 hint=hint, given="root" in overrides)
        unknown = [f for f in (*common["exclude"], *common["only"]) if f not in EYECROWD_FLAGS]
        if unknown:
            raise ConceptSetError(f"unknown EyeCrowd flag {unknown[0]!r}; flags: "
                                  f"{', '.join(EYECROWD_FLAGS)}")
        return BoxDataset(read_eyecrowd(root), annotated=["part"], **common)
    if fmt == "csv":
        labels = study_label_table()
        hint = f"set `boxes` and `images` in {spec.get('_path')}"
        images = resolve_data_path(opts.get("images") or opts.get("root"), spec,
                                   what="image folder", hint=hint,
                                   given=("images" if opts.get("images") else "root")
                                   in overrides)
        boxes = resolve_data_path(opts.get("boxes"), spec, what="box CSV", hint=hint,
                                  given="boxes" in overrides, root=images)
        fix = None
        if opts.get("fixations"):
            fix = read_subjects_mat(resolve_data_path(opts["fixations"], spec,
                                                      what="fixation file", hint=hint,
                                                      given="fixations" in overrides,
                                                      root=images))
        return BoxDataset(read_box_csv(boxes, images, labels, fix), labels=labels, **common)
    raise ConceptSetError(f"box format must be 'eyecrowd' or 'csv', not {fmt!r}")
