"""The one dataset interface shared by every concept source.

A concept source is a :class:`torch.utils.data.Dataset` (subclass :class:`ConceptDataset`)
whose items are dicts with these keys:

``image``
    ``float32`` tensor ``(3, H, W)`` in ``[0, 1]`` (models own their normalisation).
``layers``
    ``int64`` tensor ``(K, h, w)`` of **global** label ids, ``0`` = unlabelled.  ``K`` may be 0.
    Several layers let labels overlap (a part inside its whole, several Broden part layers).
    ``(h, w)`` is the dataset's ``mask_size`` (Broden: half the image size).
``instances`` (optional)
    ``int64`` tensor of the shape of ``layers``: the instance id of each labelled pixel (one
    annotated object, face, person ...), ids unique within the image, ``0`` = no instance
    known.  Region-NSS scores each (label, instance) region on its own, as He et al. (CVPR
    2019) do; sources that know no instances leave the key out (every label of an image is
    then one region).
``whole``
    ``int64`` tensor ``(n,)`` of whole-image label ids (scene, texture); such a label covers
    every pixel of the image.
``categories``
    ``bool`` tensor ``(C,)``: which categories of ``dataset.categories`` the image carries
    annotation for.  NetDissect counts a unit's activation for category ``c`` only on images
    where this is true.
``fixations``
    ``float32`` tensor ``(N, 2)`` of ``(x, y)`` fixation positions in 0-based pixel coordinates of
    ``image`` (pixel centres at integers), or ``None`` where the source has no fixations.
``observers``
    ``int64`` tensor ``(N,)`` with the observer of each fixation, or ``None``.
``id``
    ``str``, a stable image id (file name stem, COCO id, or ``"synthetic:<seed>:<index>"``).

The label table (:class:`LabelTable`) gives every global id its name and primary category.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

#: The 12 salient-region categories of He et al. (CVPR 2019) with their OSIE-SR mask values.
STUDY_CATEGORIES: dict[str, int] = {
    "person head": 1,
    "person part": 10,
    "animal head": 16,
    "animal part": 22,
    "object": 27,
    "text": 37,
    "symbol": 46,
    "vehicle": 51,
    "food": 57,
    "plant": 63,
    "drink": 68,
    "other": 73,
}

SAMPLE_KEYS = ("image", "layers", "whole", "categories", "fixations", "observers", "id")


@dataclass(frozen=True)
class Label:
    """One concept label: a global id, a name and its primary category."""

    id: int
    name: str
    category: str
    #: pixel coverage (or count) per category where known; the primary category has the most
    coverage: dict = field(default_factory=dict, compare=False, hash=False)


class LabelTable:
    """Global label ids -> names and primary categories.

    Id ``0`` is always the unlabelled ``"-"`` and belongs to no category.
    """

    def __init__(self, labels: Iterable[Label], categories: Sequence[str]):
        self.categories = list(categories)
        if len(set(self.categories)) != len(self.categories):
            raise ValueError("category names must be unique")
        by_id: dict[int, Label] = {0: Label(0, "-", "")}
        for lab in labels:
            if lab.id == 0:
                continue
            if lab.id < 0:
                raise ValueError(f"label id must be positive, got {lab.id}")
            if lab.id in by_id:
                raise ValueError(f"duplicate label id {lab.id}")
            if lab.category not in self.categories:
                raise ValueError(f"label {lab.name!r} has unknown category {lab.category!r}")
            by_id[lab.id] = lab
        self._by_id = dict(sorted(by_id.items()))
        self._by_name = {}
        for lab in self._by_id.values():
            self._by_name.setdefault(lab.name, lab)

    # -- lookups -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self):
        return iter(self._by_id.values())

    def __contains__(self, label_id) -> bool:
        return int(label_id) in self._by_id

    def __getitem__(self, label_id: int) -> Label:
        return self._by_id[int(label_id)]

    @property
    def ids(self) -> list[int]:
        return list(self._by_id)

    @property
    def max_id(self) -> int:
        return max(self._by_id)

    def by_name(self, name: str) -> Label:
        return self._by_name[name]

    def name(self, label_id: int) -> str:
        return self._by_id[int(label_id)].name

    def category(self, label_id: int) -> str:
        return self._by_id[int(label_id)].category

    def category_index(self) -> np.ndarray:
        """``int64`` array of length ``max_id + 1``: primary category index per id (-1 = none)."""
        out = np.full(self.max_id + 1, -1, dtype=np.int64)
        pos = {c: i for i, c in enumerate(self.categories)}
        for lab in self._by_id.values():
            if lab.id:
                out[lab.id] = pos[lab.category]
        return out

    def labels_of(self, category: str) -> list[Label]:
        return [lab for lab in self._by_id.values() if lab.id and lab.category == category]

    # -- (de)serialisation ---------------------------------------------------------------
    def to_rows(self) -> list[dict]:
        return [{"id": lab.id, "name": lab.name, "category": lab.category}
                for lab in self._by_id.values() if lab.id]

    @classmethod
    def from_rows(cls, rows: Iterable[dict], categories: Sequence[str]) -> "LabelTable":
        return cls((Label(int(r["id"]), str(r["name"]), str(r["category"])) for r in rows),
                   categories)

    def __repr__(self) -> str:
        return f"LabelTable({len(self) - 1} labels, categories={self.categories})"


class ConceptDataset(torch.utils.data.Dataset):
    """Base class of concept sources (see the module docstring for the item layout).

    Subclasses set :attr:`labels` (a :class:`LabelTable`), :attr:`image_size` and
    :attr:`mask_size` (``(H, W)``, fixed for the whole dataset so that batches stack),
    :attr:`has_fixations`, and implement ``__len__`` and ``__getitem__``.
    """

    name: str = "concepts"
    labels: LabelTable
    image_size: tuple[int, int]
    mask_size: tuple[int, int]
    has_fixations: bool = False

    @property
    def categories(self) -> list[str]:
        return self.labels.categories

    def config(self) -> dict:
        """What identifies this data (written into results and hashed into cache keys)."""
        return {"name": self.name, "n": len(self), "image_size": list(self.image_size),
                "mask_size": list(self.mask_size)}

    def item_id(self, index: int) -> str | None:
        """The ``id`` of item ``index`` without decoding it (``None`` where a source cannot
        tell); the engine names an unreadable item by it."""
        return None

    def item(self, index: int, *, labels: bool = True, raw_image: bool = False) -> dict:
        """One item, as the dissection engine reads it.

        ``labels=False`` returns only ``image`` and ``id`` (the first pass of a dissection needs
        no masks); ``raw_image=True`` lets a source that decodes 8-bit files return the image
        as ``uint8 (3, H, W)`` before the division by 255 (a quarter of the bytes to move
        between loader workers and to the GPU; ``image.float() * (1/255)`` on any device gives
        exactly the float image).  This default serves every source from ``__getitem__``
        (float images, labels decoded and dropped); sources override it to skip the work.
        """
        out = self[index]
        if not labels:
            out = {"image": out["image"], "id": out["id"]}
        return out

    def labels_of(self, index: int) -> dict:
        """Item ``index`` without its image: ``{"layers", "whole", "categories", "fixations",
        "observers", "id"}`` (and ``"instances"`` where the source has them), as
        :meth:`item` gives them.  From the concept-set cache where it holds the item (and the
        source names items by :meth:`item_id`), no file is read; otherwise the item is read
        whole and its image dropped (Broden overrides this to decode the masks alone).  The
        dissection's second pass reads items this way when it kept the maps of the first
        (``keep="memory"``).
        """
        got = self.cached_labels(index)
        name = self.item_id(index) if got is not None else None
        if name is not None:
            return {**self.label_tensors(got), "id": name}
        out = dict(self.item(index, labels=True, raw_image=True))
        out.pop("image", None)
        return out

    # -- the concept-set cache (neuroprobe.concepts.cache) --------------------------------
    #: read labels through the concept-set cache where the source has one (``--no-cache``:
    #: set it to False)
    use_cache: bool = True
    #: the attached :class:`~neuroprobe.concepts.cache.LabelCache` (see :meth:`prepare_labels`)
    label_cache = None

    def cache_spec(self) -> dict | None:
        """What determines the decoded labels of every item, besides the label files
        themselves (hashed into the cache key); ``None``: this source has no cache."""
        return None

    def label_files(self, index: int) -> list:
        """The files item ``index``'s labels are decoded from (their signatures validate its
        cache entry)."""
        return []

    def replaced_files(self, index: int) -> list:
        """The files of item ``index`` that a run with the cache no longer reads (their sizes
        are reported beside the cache's); default :meth:`label_files`."""
        return self.label_files(index)

    def decode_labels(self, index: int) -> dict:
        """Item ``index``'s ``layers`` (numpy, at :attr:`mask_size`), ``whole``,
        ``categories``, ``fixations`` and ``observers``, decoded from the source's files."""
        raise NotImplementedError(f"{type(self).__name__} has no decode_labels")

    def prepare_labels(self, indices=None, *, progress: bool = True):
        """Build (where missing) and attach the cache for the items ``indices`` (default: all);
        a no-op returning ``None`` where the source has no cache or :attr:`use_cache` is off."""
        from .cache import prepare

        return prepare(self, indices, progress=progress)

    def cached_labels(self, index: int) -> dict | None:
        """Item ``index``'s labels from the attached cache (``None``: decode them)."""
        if self.label_cache is None or not self.use_cache:
            return None
        return self.label_cache.get(index, self.label_files(index))

    @staticmethod
    def label_tensors(got: dict) -> dict:
        """The label entries of an item (``layers``, ``instances`` where present, ``whole``,
        ``categories``, ``fixations``, ``observers``) as tensors, from the numpy arrays that
        :meth:`decode_labels` or the cache give (``int64`` masks)."""
        def tensor(a, dtype):
            return None if a is None else torch.from_numpy(np.ascontiguousarray(a, dtype))

        out = {"layers": tensor(got["layers"], np.int64),
               "whole": tensor(got["whole"], np.int64),
               "categories": tensor(got["categories"], bool),
               "fixations": tensor(got.get("fixations"), np.float32),
               "observers": tensor(got.get("observers"), np.int64)}
        if got.get("instances") is not None:
            out["instances"] = tensor(got["instances"], np.int64)
        return out

    def present_categories(self, layers: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
        """Default ``categories`` entry: the categories of the labels that occur in the image."""
        cat_idx = torch.from_numpy(self.labels.category_index())
        ids = torch.cat([layers.reshape(-1).unique(), whole.reshape(-1)])
        ids = ids[(ids > 0) & (ids < len(cat_idx))]
        out = torch.zeros(len(self.categories), dtype=torch.bool)
        cats = cat_idx[ids]
        out[cats[cats >= 0]] = True
        return out


#: key of the marker item that stands for an item that could not be read (see :func:`collate`)
SKIPPED = "skipped"


def collate(samples: Sequence[dict], label_dtype: torch.dtype = torch.int64) -> dict:
    """Batch items of a :class:`ConceptDataset`.

    Images and masks must share their size within a batch.  ``layers`` are padded with zero
    layers to the largest ``K`` (in ``label_dtype``; ``instances``, present when some item has
    them, the same way), ``whole`` with zeros to the longest list;
    ``fixations``, ``observers`` and ``id`` stay lists.  Items without labels
    (``ConceptDataset.item(i, labels=False)``) give ``{"image", "id"}`` batches, items without
    an image (``ConceptDataset.labels_of(i)``) batches without ``image``.  Items that
    carry their data-set position as ``"index"`` (the dissection engine's reader adds it) give an
    ``int64`` ``index`` tensor.

    Items that could not be read, given as markers ``{"skipped": {"index", "id", "error"}}``
    (see :data:`SKIPPED`; the dissection engine's reader returns them when asked to skip
    unreadable images), are left out of the batch and listed under ``"skipped"``; a batch of
    markers only is ``{"id": [], "index": empty, "skipped": [...]}`` (no ``image``).
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    skipped = [s[SKIPPED] for s in samples if SKIPPED in s]
    if skipped:
        samples = [s for s in samples if SKIPPED not in s]
        if not samples:
            return {"id": [], "index": torch.zeros(0, dtype=torch.int64), SKIPPED: skipped}
    out = _collate_items(samples, label_dtype)
    if "index" in samples[0]:
        out["index"] = torch.tensor([int(s["index"]) for s in samples], dtype=torch.int64)
    if skipped:
        out[SKIPPED] = skipped
    return out


def _collate_items(samples: Sequence[dict], label_dtype: torch.dtype) -> dict:
    # (items read without their image, ConceptDataset.labels_of, give batches without one)
    images = torch.stack([s["image"] for s in samples]) if "image" in samples[0] else None
    if "layers" not in samples[0]:
        return {"image": images, "id": [s["id"] for s in samples]}
    k = max(s["layers"].shape[0] for s in samples)
    h, w = samples[0]["layers"].shape[-2:]
    layers = torch.zeros((len(samples), k, h, w), dtype=label_dtype)
    for i, s in enumerate(samples):
        if s["layers"].shape[-2:] != (h, w):
            raise ValueError("all masks in a batch must have the same size")
        layers[i, : s["layers"].shape[0]] = s["layers"]
    n = max(len(s["whole"]) for s in samples)
    whole = torch.zeros((len(samples), n), dtype=torch.int64)
    for i, s in enumerate(samples):
        whole[i, : len(s["whole"])] = s["whole"]
    out = {
        "image": images,
        "layers": layers,
        "whole": whole,
        "categories": torch.stack([s["categories"] for s in samples]),
        "fixations": [s.get("fixations") for s in samples],
        "observers": [s.get("observers") for s in samples],
        "id": [s["id"] for s in samples],
    }
    if images is None:
        del out["image"]
    if any(s.get("instances") is not None for s in samples):
        top = max(int(s["instances"].max()) if s.get("instances") is not None
                  and s["instances"].numel() else 0 for s in samples)
        dtype = layers.dtype if top <= torch.iinfo(layers.dtype).max else torch.int64
        inst = torch.zeros(layers.shape, dtype=dtype)
        for i, s in enumerate(samples):
            if s.get("instances") is not None:
                inst[i, : s["instances"].shape[0]] = s["instances"]
        out["instances"] = inst
    return out
