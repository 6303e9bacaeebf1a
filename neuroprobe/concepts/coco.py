"""COCO annotations as a concept source with the study's categories ("coco-parts").

He et al. (CVPR 2019) label salient regions with 12 categories (person head, person part, animal
head, animal part, object, text, symbol, vehicle, food, plant, drink, other).  COCO (Lin et al.,
ECCV 2014) gives instance masks of 80 categories and, for people, 17 keypoints whose first five
are nose, left/right eye and left/right ear.  This module turns them into the study's labels; the
mapping from COCO categories to study labels is a readable data file (``concepts/coco-parts.toml``).

Masks
    decoded with ``pycocotools.mask``: polygons (``frPyObjects`` + ``merge``), uncompressed RLE
    (``counts`` a list) and compressed RLE (``counts`` a string).  Crowd annotations
    (``iscrowd = 1``, RLE over a group of objects) are painted with their label when
    ``crowd = "include"`` (default) and left out with ``crowd = "skip"``; a crowd of people has
    no keypoints, so it is person part only.

Person head geometry (documented here and in the TOML)
    The head is an ellipse located from the visible face keypoints (nose, eyes, ears; COCO
    visibility ``v > 0``) and clipped to that person's mask:

    * **centre**: the mean of the visible face keypoints (eyes and ears sit about half-way
      between the top of the head and the chin);
    * **size**: the head breadth ``B`` is estimated from every visible pair of face keypoints
      as ``distance / ratio`` with the pair's typical 3-D distance as a fraction of head breadth
      (ear-ear 1.0, eye-eye 0.42, nose-eye 0.30, nose-ear 0.75, eye-ear same side 0.60,
      eye-ear opposite sides 0.85); projection only shortens distances, so every estimate is a
      lower bound and the largest one is used;
    * **shape**: semi-axes ``margin * B / 2`` across and ``margin * aspect * B / 2`` along the
      head's long axis (``aspect = 1.4``, head height / breadth; ``margin = 1.15``);
    * **orientation**: the long axis points from the mid-point of the shoulders to the face
      centre when both shoulders are annotated, else it is vertical;
    * at least ``min_face_keypoints = 2`` visible face keypoints are needed; a person with fewer
      gets no head (all of it is person part);
    * pixels are tested at their centres, ``(col + 0.5, row + 0.5)`` in COCO coordinates (pixel
      corners at integers, as pycocotools rasterises polygons).

    **Person part** is the rest of the person mask.  Animals have no keypoints in COCO: a whole
    animal is "animal part" (no animal head).

Layers
    ``layers[0]``: non-person objects (painted largest first, so smaller objects stay visible);
    ``layers[1]``: people (person part of every person, then heads on top); ``layers[2]`` (only
    with a COCO-Text file): text regions (their polygon, or box when the polygon is missing).
    ``instances``: one id per annotation (a person's head and person part carry the person's
    id), so that each annotated object is its own region-NSS region.

Ids
    An item's ``id`` is the COCO image id as a string (``"785"``).  SALICON images are COCO 2014
    images: :func:`coco_image_id` turns ``COCO_val2014_000000000785.jpg`` (or ``785``) into
    ``785`` and :meth:`CocoParts.index_of` finds the item, so SALICON fixations join by image id
    (pass them as ``fixations={image_id: Fixations}``).
"""
from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path

import numpy as np

from ..download import download, fetch
from ..errors import ConceptSetError, DataFormatError
from ..resources import cache_dir
from .base import STUDY_CATEGORIES, ConceptDataset
from .cache import hash_files, hash_fixations
from .maskfolder import (as_size, fixation_tensors, image_tensor, image_uint8, read_image,
                         resize_labels, study_label_table)
from .paths import is_shipped, resolve_data_path

__all__ = ["CocoParts", "from_spec", "head_mask", "decode_segmentation", "coco_image_id",
           "DEFAULT_PAIR_RATIOS", "FACE_KEYPOINTS"]

FACE_KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear")
#: typical 3-D distance between two face keypoints as a fraction of head breadth
DEFAULT_PAIR_RATIOS = {
    "left_ear-right_ear": 1.0,
    "left_eye-right_eye": 0.42,
    "nose-left_eye": 0.30, "nose-right_eye": 0.30,
    "nose-left_ear": 0.75, "nose-right_ear": 0.75,
    "left_eye-left_ear": 0.60, "right_eye-right_ear": 0.60,
    "left_eye-right_ear": 0.85, "right_eye-left_ear": 0.85,
}
PERSON = "person"


def coco_image_id(name) -> int:
    """COCO image id from an id, ``000000000785.jpg`` or ``COCO_val2014_000000000785.jpg``."""
    if isinstance(name, (int, np.integer)):
        return int(name)
    m = re.search(r"(\d+)(?:\.\w+)?$", str(name))
    if not m:
        raise DataFormatError(f"cannot read a COCO image id from {name!r}")
    return int(m.group(1))


def decode_segmentation(seg, height: int, width: int, where: str = "") -> np.ndarray:
    """A COCO ``segmentation`` (polygons, uncompressed or compressed RLE) -> bool ``(H, W)``."""
    from pycocotools import mask as mask_utils

    try:
        if isinstance(seg, list):
            polys = [p for p in seg if len(p) >= 6]
            if not polys:
                return np.zeros((height, width), dtype=bool)
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, height, width)
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), (str, bytes)):
            rle = dict(seg)
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode("ascii")
        else:
            raise TypeError("neither polygons nor RLE")
        with warnings.catch_warnings():  # pycocotools vs numpy 2 "copy" keyword notice
            warnings.simplefilter("ignore", DeprecationWarning)
            m = mask_utils.decode(rle)
    except (TypeError, ValueError, KeyError, AssertionError) as err:
        raise DataFormatError(f"{where}: segmentation cannot be decoded ({err})",
                              hint="COCO segmentations are polygon lists or RLE dicts") from None
    if m.shape[:2] != (height, width):
        raise DataFormatError(f"{where}: RLE of size {m.shape[1]}x{m.shape[0]} for an image of "
                              f"{width}x{height}")
    return m.astype(bool).reshape(height, width)


def head_mask(keypoints, names, height: int, width: int, *, pair_ratios=None,
              aspect: float = 1.4, margin: float = 1.15, min_face_keypoints: int = 2):
    """The head ellipse of one person (see the module docstring), unclipped, or None.

    Parameters
    ----------
    keypoints : sequence of float
        COCO ``keypoints`` (x1, y1, v1, x2, ...).
    names : sequence of str
        The keypoint names of the person category (COCO: nose, left_eye, ...).
    """
    ratios = DEFAULT_PAIR_RATIOS if pair_ratios is None else pair_ratios
    kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, 3)
    pos = {n: kp[i, :2] for i, n in enumerate(names) if i < len(kp) and kp[i, 2] > 0}
    face = [n for n in FACE_KEYPOINTS if n in pos]
    if len(face) < max(2, min_face_keypoints):
        return None
    breadth = 0.0
    for pair, ratio in ratios.items():
        a, _, b = pair.partition("-")
        if a in pos and b in pos:
            breadth = max(breadth, float(np.hypot(*(pos[a] - pos[b]))) / float(ratio))
    if breadth <= 0:
        return None
    centre = np.mean([pos[n] for n in face], axis=0)
    up = np.array([0.0, -1.0])
    if "left_shoulder" in pos and "right_shoulder" in pos:
        d = centre - (pos["left_shoulder"] + pos["right_shoulder"]) / 2
        if np.hypot(*d) > 1e-6:
            up = d / np.hypot(*d)
    across = np.array([-up[1], up[0]])
    a = margin * breadth / 2          # semi-axis across the head
    b = margin * aspect * breadth / 2  # semi-axis along the head
    x0, x1 = int(max(0, np.floor(centre[0] - b - 1))), int(min(width, np.ceil(centre[0] + b + 1)))
    y0, y1 = int(max(0, np.floor(centre[1] - b - 1))), int(min(height, np.ceil(centre[1] + b + 1)))
    out = np.zeros((height, width), dtype=bool)
    if x0 >= x1 or y0 >= y1:
        return out
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dx = xx + 0.5 - centre[0]
    dy = yy + 0.5 - centre[1]
    u = dx * across[0] + dy * across[1]
    v = dx * up[0] + dy * up[1]
    out[y0:y1, x0:x1] = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    return out


def _load_json(path: Path, what: str) -> dict:
    from ..io import read_json

    if not path.is_file():
        raise DataFormatError(f"{what} {path} does not exist")
    return read_json(path, what)


def _check_coco(doc, path: Path) -> None:
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list)
                                            for k in ("images", "annotations", "categories")):
        found = ", ".join(sorted(doc)) if isinstance(doc, dict) else type(doc).__name__
        raise DataFormatError(f"{path} is not a COCO annotation file (needs lists `images`, "
                              f"`annotations`, `categories`; found {found})",
                              hint="give instances_*.json or person_keypoints_*.json")
    for img in doc["images"][:1]:
        if not all(k in img for k in ("id", "file_name", "height", "width")):
            raise DataFormatError(f"{path}: images need id, file_name, height and width")
    for ann in doc["annotations"][:1]:
        if not all(k in ann for k in ("image_id", "category_id", "segmentation")):
            raise DataFormatError(f"{path}: annotations need image_id, category_id and "
                                  "segmentation")


class CocoParts(ConceptDataset):
    """COCO images with masks of the study's categories (see the module docstring).

    Parameters
    ----------
    annotations : list of path
        COCO annotation files (``instances_*.json``, ``person_keypoints_*.json``).  When both
        give people, the keypoint file's annotations are used for them (same ids).
    mapping : dict
        Study label name -> list of COCO category names (``"person"`` is handled specially and
        must not be listed).
    images : path, optional
        Folder of the image files (``file_name``).
    fetch_images : bool
        Download missing images from their ``coco_url`` with :func:`neuroprobe.download.download`
        into ``image_cache``.
    coco_text : path, optional
        A COCO-Text annotation file (v2 layout: ``anns`` with ``image_id``, ``mask``, ``bbox``).
    crowd : ``"include"`` or ``"skip"``
    head : dict
        Head geometry options for :func:`head_mask`.
    fixations : mapping, optional
        COCO image id (or file name) -> :class:`~neuroprobe.saliency.fixations.Fixations`
        in the coordinates of the original image (e.g. SALICON).
    """

    def __init__(self, annotations, mapping: dict[str, list[str]], *, images=None,
                 fetch_images: bool = False, image_cache=None, coco_text=None,
                 crowd: str = "include", head: dict | None = None, image_size=(224, 224),
                 mask_size=None, limit: int | None = None, fixations=None,
                 name: str = "coco-parts"):
        self.name = name
        self.labels = study_label_table()
        self.image_size = as_size(image_size)
        self.mask_size = as_size(mask_size, self.image_size)
        if crowd not in ("include", "skip"):
            raise ConceptSetError(f"crowd must be 'include' or 'skip', not {crowd!r}")
        self.crowd = crowd
        self.head = dict(head or {})
        self.images_dir = Path(images) if images else None
        self.fetch_images = fetch_images
        self.image_cache = Path(image_cache) if image_cache else None
        self.fixations = fixations
        self.has_fixations = fixations is not None
        self._label_of = self._check_mapping(mapping)
        paths = [Path(p) for p in ([annotations] if isinstance(annotations, (str, Path))
                                   else annotations)]
        if not paths:
            raise ConceptSetError("coco-parts needs at least one COCO annotation file")
        #: the annotation files read, as absolute paths (a run records them)
        self.annotation_files = [os.path.abspath(p) for p in paths]
        self.images: dict[int, dict] = {}
        self.anns: dict[int, list[dict]] = {}
        self.cat_names: dict[int, str] = {}
        self.keypoint_names: list[str] = []
        docs = []
        for p in paths:
            doc = _load_json(p, "COCO annotation file")
            _check_coco(doc, p)
            docs.append((p, doc))
        has_kp = any(any("keypoints" in c for c in doc["categories"]) for _, doc in docs)
        for p, doc in docs:
            kp_file = any("keypoints" in c for c in doc["categories"])
            for c in doc["categories"]:
                if self.cat_names.get(int(c["id"]), c.get("name")) != c.get("name"):
                    raise DataFormatError(f"{p}: category id {c['id']} is {c.get('name')!r} here "
                                          f"but {self.cat_names[int(c['id'])]!r} in another file")
                self.cat_names[int(c["id"])] = str(c["name"])
                if c.get("name") == PERSON and c.get("keypoints"):
                    self.keypoint_names = list(c["keypoints"])
            for img in doc["images"]:
                self.images.setdefault(int(img["id"]), img)
            for ann in doc["annotations"]:
                is_person = self.cat_names.get(int(ann["category_id"])) == PERSON
                if is_person and has_kp and not kp_file:
                    continue  # people come from the keypoint file
                self.anns.setdefault(int(ann["image_id"]), []).append(ann)
        unknown = {int(a["category_id"]) for anns in self.anns.values() for a in anns
                   } - set(self.cat_names)
        if unknown:
            raise DataFormatError(f"annotations name category id(s) {sorted(unknown)[:5]} that no "
                                  "`categories` entry defines")
        #: the COCO-Text file read, if any (its content is part of the cache key)
        self.coco_text = Path(coco_text).resolve() if coco_text else None
        self.text = self._read_coco_text(self.coco_text) if coco_text else None
        self.ids = sorted(self.images)
        if limit is not None:
            self.ids = self.ids[: int(limit)]
        self._pos = {i: k for k, i in enumerate(self.ids)}

    # -- set-up ----------------------------------------------------------------------------
    @staticmethod
    def _check_mapping(mapping: dict[str, list[str]]) -> dict[str, int]:
        label_of: dict[str, int] = {}
        for label, names in mapping.items():
            if label not in STUDY_CATEGORIES:
                raise ConceptSetError(f"coco-parts mapping names {label!r}, which is not a study "
                                      f"label ({', '.join(STUDY_CATEGORIES)})")
            if label in ("person head", "person part"):
                raise ConceptSetError("coco-parts mapping: people become person head / person "
                                      "part from their keypoints; do not map them")
            for n in names:
                if n == PERSON:
                    raise ConceptSetError("coco-parts mapping must not list 'person'")
                if n in label_of:
                    raise ConceptSetError(f"coco-parts mapping lists COCO category {n!r} twice")
                label_of[n] = STUDY_CATEGORIES[label]
        return label_of

    def _read_coco_text(self, path: Path) -> dict[int, list[dict]]:
        doc = _load_json(path, "COCO-Text file")
        if not isinstance(doc, dict) or not isinstance(doc.get("anns"), dict):
            raise DataFormatError(f"{path} is not a COCO-Text file (needs an `anns` object)")
        out: dict[int, list[dict]] = {}
        for ann in doc["anns"].values():
            if "image_id" not in ann:
                raise DataFormatError(f"{path}: COCO-Text annotations need image_id")
            out.setdefault(int(ann["image_id"]), []).append(ann)
        return out

    # -- access ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, image) -> int:
        """Item index of a COCO image id or (SALICON / COCO) file name."""
        key = coco_image_id(image)
        if key not in self._pos:
            raise KeyError(f"COCO image {key} is not in this data set")
        return self._pos[key]

    def image_path(self, image_id: int) -> Path:
        from ..io import confined

        info = self.images[image_id]
        fname = info["file_name"]
        confined(Path("."), fname, source=f"COCO image {image_id}", what="file_name")
        for folder in (self.images_dir, self.image_cache):
            if folder is not None and (folder / fname).is_file():
                return folder / fname
        if self.fetch_images and info.get("coco_url"):
            cache = self.image_cache or cache_dir() / "data" / "coco" / "images"
            return download(info["coco_url"], cache / fname, desc=fname)
        where = self.images_dir or "no image folder"
        raise DataFormatError(f"COCO image {fname} not found in {where}",
                              hint="pass --root/`images` = the COCO image folder (e.g. val2017), "
                              "or set fetch_images = true to download images from cocodataset.org")

    def masks(self, image_id: int) -> np.ndarray:
        """``int64 (K, H, W)`` study-label layers at the image's native size."""
        return self.masks_and_instances(image_id)[0]

    def masks_and_instances(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`masks` and, of the same shape, the instance id of every labelled pixel: one
        per annotation (a person's head and person part carry the person's id), unique within
        the image."""
        info = self.images[image_id]
        h, w = int(info["height"]), int(info["width"])
        objects = np.zeros((h, w), dtype=np.int64)
        people = np.zeros((h, w), dtype=np.int64)
        inst = np.zeros((3, h, w), dtype=np.int64)
        next_id = 1
        obj_list, person_list = [], []
        for ann in self.anns.get(image_id, []):
            if ann.get("iscrowd", 0) and self.crowd == "skip":
                continue
            cname = self.cat_names[int(ann["category_id"])]
            if cname == PERSON:
                person_list.append(ann)
            elif cname in self._label_of:
                obj_list.append(ann)
        where = f"COCO image {image_id}"
        for ann in sorted(obj_list, key=lambda a: -float(a.get("area", 0))):
            m = decode_segmentation(ann["segmentation"], h, w,
                                    f"{where}, annotation {ann.get('id')}")
            objects[m] = self._label_of[self.cat_names[int(ann["category_id"])]]
            inst[0][m] = next_id
            next_id += 1
        heads = []
        for ann in sorted(person_list, key=lambda a: -float(a.get("area", 0))):
            m = decode_segmentation(ann["segmentation"], h, w,
                                    f"{where}, annotation {ann.get('id')}")
            people[m] = STUDY_CATEGORIES["person part"]
            inst[1][m] = next_id
            next_id += 1
            if ann.get("keypoints") and not ann.get("iscrowd", 0) and self.keypoint_names:
                hm = head_mask(ann["keypoints"], self.keypoint_names, h, w, **self.head)
                if hm is not None:
                    heads.append((hm & m, next_id - 1))
        for hm, k in heads:
            people[hm] = STUDY_CATEGORIES["person head"]
            inst[1][hm] = k
        layers = [objects, people]
        if self.text is not None:
            text = np.zeros((h, w), dtype=np.int64)
            for ann in self.text.get(image_id, []):
                poly = ann.get("mask") or []
                if len(poly) >= 6:
                    m = decode_segmentation([list(map(float, poly))], h, w, where)
                elif ann.get("bbox"):
                    x, y, bw, bh = map(float, ann["bbox"])
                    m = decode_segmentation([[x, y, x + bw, y, x + bw, y + bh, x, y + bh]], h, w,
                                            where)
                else:
                    continue
                text[m] = STUDY_CATEGORIES["text"]
                inst[2][m] = next_id
                next_id += 1
            layers.append(text)
        return np.stack(layers), inst[:len(layers)]

    def item_id(self, index: int) -> str:
        return str(self.ids[index])

    def __getitem__(self, index: int) -> dict:
        return self.item(index)

    def item(self, index: int, *, labels: bool = True, raw_image: bool = False) -> dict:
        """See :meth:`ConceptDataset.item`: ``labels=False`` decodes no segmentation; labels
        come from the concept-set cache where it is attached."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        image_id = self.ids[index]
        info = self.images[image_id]
        rgb = read_image(self.image_path(image_id))
        h, w = int(info["height"]), int(info["width"])
        if rgb.shape[:2] != (h, w):
            raise DataFormatError(f"COCO image {info['file_name']} is {rgb.shape[1]}x"
                                  f"{rgb.shape[0]}, the annotations say {w}x{h}")
        out = {"image": (image_uint8 if raw_image else image_tensor)(rgb, self.image_size),
               "id": str(image_id)}
        if labels:
            out.update(self.label_tensors(self.cached_labels(index)
                                          or self.decode_labels(index)))
        return out

    # -- the concept-set cache (neuroprobe.concepts.cache) ----------------------------------
    def decode_labels(self, index: int) -> dict:
        """Item ``index``'s layers and instances decoded from its annotations (at the size
        the annotations give) and resized to :attr:`mask_size`, and its fixations."""
        image_id = self.ids[index]
        info = self.images[image_id]
        h, w = int(info["height"]), int(info["width"])
        layers, inst = self.masks_and_instances(image_id)
        fix = obs = None
        if self.fixations is not None:
            rec = self.fixations.get(image_id)
            if rec is None:
                rec = self.fixations.get(info["file_name"])
            fix, obs = (t.numpy() for t in fixation_tensors(rec, (h, w), self.image_size))
        return {"layers": resize_labels(layers, self.mask_size),
                "instances": resize_labels(inst, self.mask_size),
                "whole": np.zeros(0, np.int64),
                "categories": np.ones(len(self.categories), bool),
                "fixations": fix, "observers": obs}

    def label_files(self, index: int) -> list:
        """None: an item's labels are made of the annotation files alone (hashed into the
        cache key, :meth:`cache_spec`), not of its image."""
        return []

    def cache_spec(self) -> dict:
        """The contents of the annotation (and COCO-Text) files, the mapping, head and crowd
        options, the fixations given and the sizes; not the files' paths."""
        if getattr(self, "_spec", None) is None:   # hashed once per data set (MBs of json)
            self._spec = self._cache_spec()
        return self._spec

    def _cache_spec(self) -> dict:
        files = [Path(p) for p in self.annotation_files]
        fix = None
        if self.fixations is not None:
            h = hashlib.sha256()
            for image_id in self.ids:
                info = self.images[image_id]
                rec = self.fixations.get(image_id)
                hash_fixations(h, self.fixations.get(info["file_name"]) if rec is None else rec)
            fix = h.hexdigest()
        return {"source": "coco-parts", "annotations": hash_files(files),
                "coco_text": None if self.coco_text is None else hash_files([self.coco_text]),
                "map": sorted(self._label_of.items()), "fixations": fix, **self.config()}

    def config(self) -> dict:
        out = super().config()
        out.update({"source": "coco-parts", "crowd": self.crowd, "head": self.head,
                    "text": self.text is not None})
        return out


def _annotation_files(spec: dict, opts: dict, year: str, split: str, *, given: bool,
                      root) -> list[Path]:
    """The COCO json files: ``annotations`` (the command line's ``--annotations FILE ...`` or
    the file's list, looked up as :mod:`neuroprobe.concepts.paths` describes), else the
    official files in ``<cache>/data/coco`` (fetched there with ``download = true``)."""
    names = f"instances_{split}{year}.json and/or person_keypoints_{split}{year}.json"
    if is_shipped(spec):
        hint = (f"pass --annotations FILE ... ({names}), or set download = true in a copy of "
                f"{spec.get('_path')} to fetch them from cocodataset.org (241 MB)")
    else:
        hint = (f"pass --annotations FILE ... or set `annotations` in {spec.get('_path')} "
                f"({names}), or set download = true to fetch them from cocodataset.org "
                "(241 MB)")
    ann = opts.get("annotations")
    if isinstance(ann, (str, Path)):
        ann = [ann]
    if ann:
        return [resolve_data_path(a, spec, what="COCO annotation file", hint=hint, given=given,
                                  root=root) for a in ann]
    folder = cache_dir() / "data" / "coco" / f"annotations_trainval{year}"
    files = [folder / f"instances_{split}{year}.json",
             folder / f"person_keypoints_{split}{year}.json"]
    if not all(f.is_file() for f in files):
        if not opts.get("download"):
            raise ConceptSetError("no COCO annotation files given", hint=hint)
        fetch(f"coco-annotations-{year}", cache_dir() / "data" / "coco",
              mirror=opts.get("mirror"))
    return files


def from_spec(spec: dict, **overrides) -> CocoParts:
    """Open a ``source = "coco-parts"`` concept set (see ``concepts/coco-parts.toml``).

    Options: ``annotations`` (list of COCO json files) or ``download = true`` with
    ``year``/``split`` (fetches the official annotation archive into ``<cache>/data/coco``),
    ``images`` / ``root`` (the image folder), ``fetch_images``, ``coco_text``, ``crowd``,
    ``[head]``, ``[map]``, ``limit``, ``image_size``, ``mask_size``.
    """
    opts = {**spec, **overrides}
    mapping = spec.get("map")
    if not isinstance(mapping, dict) or not mapping:
        raise ConceptSetError(f"concept set {spec.get('_path')} has no [map] table of study "
                              "label -> COCO category names")
    year = str(opts.get("year", 2017))
    split = opts.get("split") or "val"
    if split not in ("train", "val"):
        raise ConceptSetError(f"COCO split must be train or val, not {split!r}")
    images = opts.get("root") or opts.get("images")
    img_dir = None
    if images:
        img_dir = resolve_data_path(images, spec, what="COCO image folder",
                                    hint="pass --root = the folder of the COCO images",
                                    must_exist=not opts.get("fetch_images"),
                                    given=("root" if opts.get("root") else "images") in overrides)
    paths = _annotation_files(spec, opts, year, split, given="annotations" in overrides,
                              root=img_dir)
    text = opts.get("coco_text")
    if text:
        text = resolve_data_path(text, spec, what="COCO-Text file", root=img_dir,
                                 given="coco_text" in overrides,
                                 hint="set coco_text to cocotext.v2.json or remove it")
    return CocoParts(paths, mapping, images=img_dir, fetch_images=bool(opts.get("fetch_images")),
                     coco_text=text, crowd=opts.get("crowd", "include"), head=spec.get("head"),
                     image_size=as_size(opts.get("image_size"), (224, 224)),
                     mask_size=opts.get("mask_size"), limit=opts.get("limit"),
                     name=spec.get("name", "coco-parts"))
