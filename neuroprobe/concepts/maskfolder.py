"""Mask folders as a concept source: VOC-style palette PNGs and labelme JSON polygons.

Two layouts are read:

* **VOC style** (as PASCAL VOC and the OSIE-SR masks of He et al., CVPR 2019 use it):
  ``SegmentationClass/<stem>.png``, a palette (``P``) or grayscale (``L``) PNG whose pixel values
  are class values (0 background, 255 "void", ignored), optional
  ``SegmentationObject/<stem>.png`` with one value per instance (items then carry them as
  ``instances``: each instance is one region-NSS region, as in the study), and the photos in
  ``JPEGImages/`` (or the folder given as ``images``).
* **labelme**: one ``<stem>.json`` per image with ``shapes`` (``polygon``, ``rectangle``,
  ``circle``; ``line``/``point`` shapes have no area and are skipped) whose ``label`` is a label
  name (or its value); shapes are painted in file order, later ones on top, as labelme's own
  ``labelme2voc`` does.  Polygons are filled with PIL like labelme's ``shape_to_mask``.

The default label map is OSIE-SR's: 1 person head, 10 person part, 16 animal head, 22 animal
part, 27 object, 37 text, 46 symbol, 51 vehicle, 57 food, 63 plant, 68 drink, 73 other.  A class
value *is* the global label id.  Following the synthetic world, the head and part labels have
NetDissect category ``"part"`` and the other eight ``"object"``.  Every image is taken as
exhaustively annotated (``categories`` all true).

Optional fixations (the OSIE/EyeCrowd ``fixations.mat`` layout) are joined by image file name.

This module also holds the helpers that all real-image sources share (image decoding and
resizing, nearest-neighbour mask resizing, fixation scaling, data-folder resolution).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import ConceptSetError, DataFormatError
from ..saliency.fixations import read_subjects_mat
from .base import STUDY_CATEGORIES, ConceptDataset, Label, LabelTable
from .cache import hash_fixations
from .paths import resolve_data_path

__all__ = ["MaskFolderDataset", "from_spec", "OSIE_SR", "study_label_table", "read_image",
           "image_tensor", "image_uint8", "UINT8_SCALE", "resize_labels", "fixation_tensors", "resolve_data_path"]

#: OSIE-SR class values (= global label ids) -> names (He et al., CVPR 2019).
OSIE_SR: dict[int, str] = {v: k for k, v in STUDY_CATEGORIES.items()}
#: The study labels that are NetDissect "part" labels; the rest are "object".
PART_LABELS = ("person head", "person part", "animal head", "animal part")
#: the largest class value an 8-bit (palette or grayscale) mask can hold
MAX_CLASS_VALUE = 255
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")


# ---------------------------------------------------------------------------------------------
# helpers shared by the real-image sources (broden, coco, boxes, maskfolder)

def study_category(name: str) -> str:
    return "part" if name in PART_LABELS else "object"


def study_label_table(label_map: dict[int, str] | None = None) -> LabelTable:
    """Label table of a value -> name map (default OSIE-SR), categories ``object``, ``part``."""
    label_map = OSIE_SR if label_map is None else label_map
    return LabelTable([Label(int(v), n, study_category(n)) for v, n in sorted(label_map.items())],
                      ["object", "part"])


def as_size(value, default=None) -> tuple[int, int] | None:
    """``224`` or ``[224, 224]`` -> ``(224, 224)``."""
    from ..imageio import parse_size

    if value is None:
        return default
    return parse_size(value, "image or mask size", ConceptSetError)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to ``uint8 (H, W, 3)`` RGB; a clear error when it cannot be read."""
    from ..imageio import read_image as _read

    return _read(path, "image")


def image_uint8(rgb: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """``uint8 (H, W, 3)`` -> ``uint8 (3, h, w)``, resized bilinearly to ``size`` (see
    :func:`image_tensor`, which is this divided by 255)."""
    from PIL import Image

    rgb = np.asarray(rgb)
    if rgb.shape[:2] != tuple(size):
        rgb = np.asarray(Image.fromarray(rgb).resize((int(size[1]), int(size[0])),
                                                     Image.BILINEAR))
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


#: ``uint8`` -> ``[0, 1]`` factor; ``x.float() * UINT8_SCALE`` gives the same float32 image on
#: every device (one IEEE float32 multiplication by the same constant)
UINT8_SCALE = float(np.float32(1.0 / 255.0))


def image_tensor(rgb: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """``uint8 (H, W, 3)`` -> ``float32 (3, h, w)`` in [0, 1], resized bilinearly to ``size``.

    Resizing uses PIL's bilinear filter, which widens its support when shrinking (antialiased)
    and samples at pixel centres (half-pixel aligned, like ``align_corners=False``).
    """
    chw = image_uint8(rgb, size).numpy().astype(np.float32)
    # converted in numpy: cheaper than torch's elementwise kernels for one small image
    chw *= np.float32(UINT8_SCALE)
    return torch.from_numpy(chw)


def nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel for pixel-centre-aligned nearest resizing."""
    idx = np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def resize_labels(layers: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of ``(..., H, W)`` label arrays (pixel-centre aligned)."""
    h, w = layers.shape[-2:]
    if (h, w) == tuple(size):
        return layers
    return layers[..., nearest_index(h, size[0])[:, None], nearest_index(w, size[1])[None, :]]


def fixation_tensors(fix, src_hw: tuple[int, int], dst_hw: tuple[int, int]):
    """Scale a :class:`~neuroprobe.saliency.fixations.Fixations` from an image of ``src_hw`` to
    one of ``dst_hw`` and keep those inside; returns ``(xy float32 (N,2), observers int64)``."""
    if fix is None:
        return torch.zeros((0, 2), dtype=torch.float32), torch.zeros(0, dtype=torch.int64)
    fix = fix.inside(*src_hw).scaled(dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1])
    fix = fix.inside(*dst_hw)
    return (torch.from_numpy(fix.xy().astype(np.float32)).reshape(-1, 2),
            torch.from_numpy(np.asarray(fix.observer, dtype=np.int64)))


def find_image(folder: Path, stem: str) -> Path | None:
    for ext in IMAGE_EXTS:
        cand = folder / f"{stem}{ext}"
        if cand.is_file():
            return cand
    return None


def check_known_ids(arr: np.ndarray, labels: LabelTable, where: str) -> None:
    """Raise a clear error if ``arr`` holds an id that is not in ``labels``.

    The common case (every id known) is one gather through a lookup table of known ids kept
    on the label table, several times cheaper than ``numpy.unique`` on a mask."""
    lut = getattr(labels, "_known_lut", None)
    if lut is None:
        lut = np.zeros(labels.max_id + 1, dtype=bool)
        lut[labels.ids] = True
        labels._known_lut = lut
    if arr.size == 0 or (arr.min() >= 0 and arr.max() < len(lut) and lut[arr].all()):
        return
    ids = np.unique(arr)
    bad = [int(i) for i in ids if int(i) not in labels]
    if bad:
        raise DataFormatError(f"{where} holds label ids not in the label table: "
                              f"{', '.join(map(str, bad[:10]))}",
                              hint="add them to the label map of the concept set or fix the masks")


def read_mask_png(path: Path, size: tuple[int, int] | None, modes=("P", "L")) -> np.ndarray:
    """Read a single-channel class-value PNG (palette indices for ``P``)."""
    from ..imageio import read_label_image

    arr = read_label_image(path, "mask", modes=tuple(modes),
                           hint="save masks as indexed (P) or grayscale (L) PNGs of class "
                           "values, as VOC does").astype(np.int64)
    if size is not None and arr.shape != tuple(size):
        raise DataFormatError(f"mask {path} is {arr.shape[1]}x{arr.shape[0]} but its image is "
                              f"{size[1]}x{size[0]}", hint="masks must have the image's size")
    return arr


# ---------------------------------------------------------------------------------------------

def _labelme_layer(doc: dict, path: Path, hw: tuple[int, int], labels: LabelTable) -> np.ndarray:
    from PIL import Image, ImageDraw

    shapes = doc.get("shapes")
    if not isinstance(shapes, list):
        raise DataFormatError(f"{path} is not a labelme file (no `shapes` list)")
    canvas = Image.new("I", (hw[1], hw[0]), 0)
    draw = ImageDraw.Draw(canvas)
    for k, shape in enumerate(shapes):
        try:
            name = str(shape["label"])
            pts = [(float(x), float(y)) for x, y in shape["points"]]
        except (KeyError, TypeError, ValueError):
            raise DataFormatError(f"{path}: shape {k} needs a `label` and `points` [[x, y], ...]"
                                  ) from None
        kind = shape.get("shape_type") or "polygon"
        try:
            lab = labels.by_name(name)
        except KeyError:
            if name.isdigit() and int(name) in labels:
                lab = labels[int(name)]
            else:
                raise DataFormatError(f"{path}: shape {k} has label {name!r}, which is not in "
                                      "the label table",
                                      hint="use one of: " + ", ".join(
                                          lab.name for lab in labels if lab.id)) from None
        if kind == "polygon" and len(pts) >= 3:
            draw.polygon(pts, outline=lab.id, fill=lab.id)
        elif kind == "rectangle" and len(pts) == 2:
            (x0, y0), (x1, y1) = pts
            draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)],
                           outline=lab.id, fill=lab.id)
        elif kind == "circle" and len(pts) == 2:
            (cx, cy), (px, py) = pts
            r = float(np.hypot(px - cx, py - cy))
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=lab.id, fill=lab.id)
        elif kind in ("line", "linestrip", "point", "points"):
            continue  # no area
        else:
            raise DataFormatError(f"{path}: shape {k} of type {kind!r} with {len(pts)} points "
                                  "is not supported (polygon, rectangle, circle)")
    return np.asarray(canvas, dtype=np.int64)


class MaskFolderDataset(ConceptDataset):
    """Concept dataset over a VOC-style mask folder or a folder of labelme JSON files.

    Parameters
    ----------
    root : path
        Data folder.
    images : path, optional
        Folder of the photos (default ``root/JPEGImages`` when it exists, else ``root``).
    masks : str
        Class-mask sub-folder (``SegmentationClass``); used when it exists.
    objects : str
        Instance-mask sub-folder (``SegmentationObject``), read by :meth:`instances`.
    labelme : path, optional
        Folder of labelme JSON files (used when no class-mask folder exists; default ``root``).
    label_map : dict, optional
        Class value -> label name (default :data:`OSIE_SR`).
    fixations : path, optional
        A ``fixations.mat`` (OSIE/EyeCrowd layout) joined by image file name.
    image_size, mask_size : (H, W)
        Output sizes (default 224x224 and the image size).
    limit : int, optional
        Use the first ``limit`` images (sorted by name).
    void : sequence of int
        Class values treated as unlabelled (VOC's 255 boundary value).
    """

    def __init__(self, root, *, images=None, masks: str = "SegmentationClass",
                 objects: str = "SegmentationObject", labelme=None,
                 label_map: dict[int, str] | None = None, fixations=None,
                 image_size=(224, 224), mask_size=None, limit: int | None = None,
                 void: Sequence[int] = (255,), name: str = "mask-folder"):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConceptSetError(f"mask folder {self.root} does not exist")
        self.name = name
        self.labels = study_label_table(label_map)
        self.image_size = as_size(image_size)
        self.mask_size = as_size(mask_size, self.image_size)
        self.void = tuple(int(v) for v in void)
        default_images = self.root / "JPEGImages"
        self.images_dir = Path(images) if images else (
            default_images if default_images.is_dir() else self.root)
        self.masks_dir = self.root / masks
        self.objects_dir = self.root / objects
        self.items: list[tuple[str, Path, Path]] = []  # (stem, image, annotation)
        if self.masks_dir.is_dir():
            self.format = "voc"
            for m in sorted(self.masks_dir.glob("*.png")):
                img = find_image(self.images_dir, m.stem)
                if img is None:
                    raise DataFormatError(f"mask {m} has no image {m.stem}.jpg/.png in "
                                          f"{self.images_dir}",
                                          hint="pass `images` = the folder of the photos")
                self.items.append((m.stem, img, m))
        else:
            self.format = "labelme"
            folder = Path(labelme) if labelme else self.root
            for j in sorted(folder.glob("*.json")):
                self.items.append((j.stem, None, j))
        if not self.items:
            raise DataFormatError(f"{self.root} holds no {masks}/*.png masks and no labelme "
                                  "*.json files", hint="point root at the mask folder")
        if limit is not None:
            self.items = self.items[: int(limit)]
        self.fixations = None
        if fixations:
            self.fixations = read_subjects_mat(fixations)
            self.has_fixations = True

    def __len__(self) -> int:
        return len(self.items)

    def _labelme_doc(self, path: Path) -> tuple[dict, Path]:
        from ..io import read_json

        doc = read_json(path, "labelme file")
        if not isinstance(doc, dict):
            raise DataFormatError(f"{path} is not a labelme file")
        image_path = doc.get("imagePath")
        img = None
        if image_path:
            from ..io import confined

            img = confined(path.parent, image_path, source=path, what="imagePath")
        if img is None or not img.is_file():
            img = find_image(self.images_dir, path.stem) or find_image(path.parent, path.stem)
        if img is None:
            raise DataFormatError(f"{path}: image {image_path or path.stem} not found next to "
                                  f"it or in {self.images_dir}")
        return doc, img

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray, Path]:
        """Image ``uint8 (H,W,3)`` and class mask ``int64 (H,W)`` at native size, image path."""
        stem, img_path, ann = self.items[index]
        if self.format == "voc":
            rgb = read_image(img_path)
            mask = read_mask_png(ann, rgb.shape[:2])
        else:
            doc, img_path = self._labelme_doc(ann)
            rgb = read_image(img_path)
            hw = rgb.shape[:2]
            if doc.get("imageHeight") and doc.get("imageWidth") and (
                    int(doc["imageHeight"]), int(doc["imageWidth"])) != hw:
                raise DataFormatError(f"{ann} says the image is {doc['imageWidth']}x"
                                      f"{doc['imageHeight']} but {img_path} is {hw[1]}x{hw[0]}")
            mask = _labelme_layer(doc, ann, hw, self.labels)
        for v in self.void:
            mask[mask == v] = 0
        check_known_ids(mask, self.labels, str(ann))
        return rgb, mask, img_path

    def item_id(self, index: int) -> str:
        return self.items[index][0]

    def __getitem__(self, index: int) -> dict:
        return self.item(index)

    def item(self, index: int, *, labels: bool = True, raw_image: bool = False) -> dict:
        """See :meth:`ConceptDataset.item`: ``labels=False`` reads no mask; labels come from
        the concept-set cache where it is attached."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        got = self.cached_labels(index) if labels else None
        if labels and got is None:
            rgb, mask, img_path = self.raw(index)
            got = self._labels_of(index, mask, img_path, rgb.shape[:2])
        else:
            rgb = read_image(self._image_path(index))
        out = {"image": (image_uint8 if raw_image else image_tensor)(rgb, self.image_size),
               "id": self.items[index][0]}
        if labels:
            out.update(self.label_tensors(got))
        return out

    def _labels_of(self, index: int, mask: np.ndarray, img_path: Path, hw) -> dict:
        """The label entries of item ``index`` from its native-size class ``mask``."""
        fix = obs = None
        if self.fixations is not None:
            rec = self.fixations.get(img_path.name) or self.fixations.get(self.items[index][0])
            fix, obs = (t.numpy() for t in fixation_tensors(rec, hw, self.image_size))
        out = {"layers": resize_labels(mask[None], self.mask_size),
               "whole": np.zeros(0, np.int64), "categories": np.ones(len(self.categories), bool),
               "fixations": fix, "observers": obs}
        inst = self._instance_map(index, mask.shape)
        if inst is not None:   # OSIE-SR / VOC instance masks: one region-NSS region each
            out["instances"] = resize_labels(np.where(mask > 0, inst, 0)[None], self.mask_size)
        return out

    def _image_path(self, index: int) -> Path:
        stem, img, ann = self.items[index]
        return img if self.format == "voc" else self._labelme_doc(ann)[1]

    # -- the concept-set cache (neuroprobe.concepts.cache) ----------------------------------
    def decode_labels(self, index: int) -> dict:
        """Item ``index``'s labels from its mask (and instance) PNG or labelme file, checked
        against its image as without the cache."""
        rgb, mask, img_path = self.raw(index)
        return self._labels_of(index, mask, img_path, rgb.shape[:2])

    def label_files(self, index: int) -> list[Path]:
        """The class mask (or labelme file), the instance mask's path (VOC; absent counts as
        absent) and the image, whose size the masks are checked against and fixations scaled
        from."""
        stem, _, ann = self.items[index]
        files = [ann] + ([self.objects_dir / f"{stem}.png"] if self.format == "voc" else [])
        return files + [self._image_path(index)]

    def replaced_files(self, index: int) -> list[Path]:
        """The mask files (the image is read with or without the cache)."""
        return self.label_files(index)[:-1]

    def cache_spec(self) -> dict:
        """Item names, label map, void values, the fixations (hashed) and the sizes; not the
        folder's path."""
        h = hashlib.sha256(repr([(stem, Path(a).name) for stem, _, a in self.items]).encode())
        fix = None
        if self.fixations is not None:
            f = hashlib.sha256()
            for key in sorted(self.fixations):
                f.update(f"{key};".encode())
                hash_fixations(f, self.fixations[key])
            fix = f.hexdigest()
        return {"source": "mask-folder", "items": h.hexdigest(),
                "labels": self.labels.to_rows(), "void": list(self.void), "fixations": fix,
                **{k: v for k, v in self.config().items() if k != "root"}}

    def _instance_map(self, index: int, shape) -> np.ndarray | None:
        """The native-size ``SegmentationObject`` map of item ``index`` (void values -> 0), or
        None where the folder has none for it."""
        path = self.objects_dir / f"{self.items[index][0]}.png"
        if self.format != "voc" or not path.is_file():
            return None
        inst = read_mask_png(path, tuple(shape))
        for v in self.void:
            inst[inst == v] = 0
        return inst

    def instances(self, index: int) -> tuple[np.ndarray, dict[int, int]]:
        """Instance map at ``mask_size`` (0 = none) and the label of each instance.

        From ``SegmentationObject`` (VOC layout; the label is the most frequent class value
        under the instance) or, for labelme, one instance per shape is not kept: labelme
        folders give an empty map.
        """
        _, mask, _ = self.raw(index)
        inst = self._instance_map(index, mask.shape)
        if inst is None:
            return np.zeros(self.mask_size, dtype=np.int64), {}
        out = {}
        for k in np.unique(inst):
            if k == 0:
                continue
            vals, counts = np.unique(mask[inst == k], return_counts=True)
            keep = vals > 0
            if keep.any():
                out[int(k)] = int(vals[keep][np.argmax(counts[keep])])
        return resize_labels(inst, self.mask_size), out

    def config(self) -> dict:
        out = super().config()
        out.update({"source": "mask-folder", "root": str(self.root), "format": self.format})
        return out


def _label_map(spec: dict) -> dict[int, str] | None:
    table = spec.get("labels")
    if not table:
        return None
    try:
        out = {int(k): str(v) for k, v in table.items()}
    except (ValueError, AttributeError):
        raise ConceptSetError(f"concept set {spec.get('_path')}: [labels] must map class values "
                              "to names, e.g. 1 = \"person head\"") from None
    bad = [k for k in out if not 1 <= k <= MAX_CLASS_VALUE]
    if bad:
        raise ConceptSetError(f"concept set {spec.get('_path')}: [labels] class value {bad[0]} "
                              f"is outside 1..{MAX_CLASS_VALUE}",
                              hint="mask PNGs (palette or grayscale) hold class values 0-255; "
                              "0 is unlabelled")
    return out


def from_spec(spec: dict, **overrides) -> MaskFolderDataset:
    """Open a ``source = "mask-folder"`` concept set (see ``concepts/osie-sr.toml``)."""
    opts = {**spec, **overrides}
    split = opts.get("split")
    if split not in (None, "all"):
        raise ConceptSetError(f"mask folders have no {split!r} split", hint="leave out --split")
    hint = (f"pass --root DIR (a folder with SegmentationClass/ and JPEGImages/, or labelme "
            f"JSON files) or set `root` in {spec.get('_path')}")
    root = resolve_data_path(opts.get("root"), spec, what="mask folder", hint=hint,
                             given="root" in overrides)
    images = opts.get("images")
    images = resolve_data_path(images, spec, what="image folder", hint=hint, root=root,
                               given="images" in overrides) if images else None
    fix = opts.get("fixations")
    fix = resolve_data_path(fix, spec, what="fixation file", root=root,
                            given="fixations" in overrides,
                            hint="set `fixations` to a fixations.mat or remove it") if fix else None
    return MaskFolderDataset(root, images=images, masks=opts.get("masks", "SegmentationClass"),
                             objects=opts.get("objects", "SegmentationObject"),
                             labelme=opts.get("labelme"), label_map=_label_map(spec),
                             fixations=fix, image_size=as_size(opts.get("image_size"), (224, 224)),
                             mask_size=opts.get("mask_size"), limit=opts.get("limit"),
                             void=opts.get("void", (255,)), name=spec.get("name", "mask-folder"))
