"""Training data for the variants: images resized to the model input, with fixations or labels.

``--data`` names a source:

``synthetic`` / ``synthetic:SEED``
    The synthetic concept world (:mod:`neuroprobe.concepts.synthetic`), rendered at the model
    input size.  Training images use world seed 1 by default, so that they differ from the images
    ``neuroprobe dissect`` sees (seed 0).  Fixations come from the world's synthetic observers,
    scene labels from its scene ids, multi-label object targets from the object and part layers.
``osie`` / ``osie:DIR``
    OSIE (Xu et al., JoV 2014): 700 images, 15 observers.  Images sorted by name; the first 500
    are the training split, the remaining 200 the validation / test split.
``salicon:DIR``
    SALICON 2017 release: ``DIR/images/{train,val}/*.jpg`` and ``DIR/fixations/{train,val}/*.mat``
    (``gaze`` per subject with 1-based ``fixations`` ``[x, y]``, ``resolution`` ``[h, w]``).
``folder:DIR``
    Any images in ``DIR`` (``*.jpg``, ``*.jpeg``, ``*.png``) with ``DIR/fixations.csv``
    (``image,x,y`` in 0-based pixels of the original image) for saliency, or a labels CSV
    (``image,label``, ``--labels``) for scenes.  Sorted by name; the last ``--val`` images validate.

Everything is loaded into memory once (uint8 at the input size) so epochs are cheap and the order
of images is a pure function of the seed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..concepts import open_concepts
from ..errors import DataFormatError, UserError
from ..saliency.data import read_salicon_mat
from ..saliency.fixations import Fixations, read_subjects_mat
from ..utils import progress

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
DEMO_WORLD_SEED = 1


@dataclass
class ImageSet:
    """Images (uint8 ``(N, 3, H, W)`` at the input size) with what a task needs.

    ``fixations``: per image an ``(n, 2)`` float array of ``(x, y)`` in the input frame;
    ``original``: the same fixations in the original image frame (:class:`Fixations` with
    ``size``) for evaluation at full resolution; ``labels``: class index per image (scene);
    ``targets``: multi-hot ``(N, K)`` float (object recognition); ``classes``: class names.
    """

    images: torch.Tensor
    ids: list
    fixations: list | None = None
    original: list | None = None
    labels: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    classes: list = field(default_factory=list)
    paths: list | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, idx) -> "ImageSet":
        idx = list(idx)
        pick = (lambda v: None if v is None else [v[i] for i in idx])
        t = torch.as_tensor(idx, dtype=torch.long)
        return ImageSet(self.images[t], [self.ids[i] for i in idx], pick(self.fixations),
                        pick(self.original), None if self.labels is None else self.labels[t],
                        None if self.targets is None else self.targets[t], list(self.classes),
                        pick(self.paths))


def shared_data_dir() -> Path | None:
    """``$NEUROPROBE_DATA`` or the project's ``../shared/data`` next to a source checkout."""
    env = os.environ.get("NEUROPROBE_DATA")
    if env:
        return Path(env).expanduser()
    cand = Path(__file__).resolve().parents[3] / "shared" / "data"
    return cand if cand.is_dir() else None


def parse_data(spec: str) -> tuple[str, str | None]:
    kind, _, arg = str(spec).partition(":")
    kind = kind.lower()
    if kind not in ("synthetic", "osie", "salicon", "folder"):
        raise UserError(f"unknown --data {spec!r}",
                        hint="use synthetic, osie, salicon:DIR or folder:DIR")
    if kind in ("salicon", "folder") and not arg:
        raise UserError(f"--data {kind} needs a folder", hint=f"write --data {kind}:DIR")
    return kind, arg or None


def load_image(path: Path, size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """Read an image as uint8 ``(3, H, W)`` resized (bilinear) to ``size``; returns it and the
    original ``(height, width)``."""
    from PIL import Image

    from ..imageio import read_image

    rgb = read_image(path)
    orig = rgb.shape[:2]
    arr = rgb
    if orig != tuple(size):
        im = Image.fromarray(rgb).resize((size[1], size[0]), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous(), orig


def _to_input_frame(fix: Fixations, orig: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    f = Fixations(fix.image, fix.x, fix.y, fix.observer, fix.duration, orig).inside(*orig)
    s = f.scaled(size[0] / orig[0], size[1] / orig[1])
    return np.stack([s.x, s.y], 1).astype(np.float32) if len(s) else np.zeros((0, 2), np.float32)


def _from_files(paths: list[Path], fixes: list[Fixations] | None, size, desc: str,
                labels=None) -> ImageSet:
    imgs, in_frame, original = [], [], []
    for i, p in enumerate(progress(paths, desc=f"loading {desc}", unit="img", leave=False)):
        im, orig = load_image(p, size)
        imgs.append(im)
        if fixes is not None:
            f = fixes[i]
            original.append(Fixations(f.image, f.x, f.y, f.observer, f.duration, orig)
                            .inside(*orig))
            in_frame.append(_to_input_frame(f, orig, size))
    images = torch.stack(imgs) if imgs else torch.zeros((0, 3, *size), dtype=torch.uint8)
    return ImageSet(images, [p.stem for p in paths], in_frame if fixes is not None else None,
                    original if fixes is not None else None, labels, paths=list(paths))


# -- synthetic --------------------------------------------------------------------------------

def synthetic_world(n: int, seed: int, size: tuple[int, int], observers: int = 15):
    mask = (max(1, size[0] // 2), max(1, size[1] // 2))
    return open_concepts("synthetic", n=n, seed=seed, image_size=list(size),
                         mask_size=list(mask), observers=observers)


def recognition_classes(world) -> list:
    """The multi-label recognition targets: object-layer and part-layer labels of the world."""
    return [lab for lab in world.labels if lab.id and lab.category in ("object", "part")]


def load_synthetic(n: int, seed: int, size: tuple[int, int], min_fraction: float = 0.002,
                   desc: str = "synthetic world") -> ImageSet:
    """Render ``n`` images of the world with every target a task can need.

    ``targets`` marks a recognition class present when it covers at least ``min_fraction`` of the
    mask pixels (tiny, occluded remnants are not asked for).
    """
    world = synthetic_world(n, seed, size)
    rec = recognition_classes(world)
    rec_index = {lab.id: k for k, lab in enumerate(rec)}
    scenes = world.labels.labels_of("scene")
    scene_index = {lab.id: k for k, lab in enumerate(scenes)}
    imgs, fixes, labels = [], [], []
    targets = torch.zeros((n, len(rec)), dtype=torch.float32)
    for i in progress(range(n), desc=f"rendering {desc}", unit="img", leave=False):
        item = world[i]
        imgs.append((item["image"] * 255.0).round_().to(torch.uint8))
        fixes.append(item["fixations"].numpy().astype(np.float32))
        labels.append(scene_index[int(item["whole"][0])])
        lay = item["layers"][:2]
        npx = lay[0].numel()
        ids, counts = torch.unique(lay, return_counts=True)
        for lab, c in zip(ids.tolist(), counts.tolist()):
            if lab in rec_index and c >= min_fraction * npx:
                targets[i, rec_index[lab]] = 1.0
    original = [Fixations(f"synthetic:{seed}:{i}", f[:, 0].astype(np.float64),
                          f[:, 1].astype(np.float64), np.zeros(len(f), np.int64), None,
                          tuple(size)) for i, f in enumerate(fixes)]
    return ImageSet(torch.stack(imgs), [f"synthetic:{seed}:{i}" for i in range(n)], fixes,
                    original, torch.tensor(labels, dtype=torch.long), targets,
                    [lab.name for lab in scenes])


# -- OSIE -------------------------------------------------------------------------------------

def osie_root(arg: str | None) -> Path:
    if arg:
        root = Path(arg).expanduser()
    else:
        base = shared_data_dir()
        if base is None:
            raise UserError("no OSIE folder given and ../shared/data/osie was not found",
                            hint="pass --data osie:DIR or set NEUROPROBE_DATA")
        root = base / "osie"
    if not (root / "fixations.mat").is_file() or not (root / "stimuli").is_dir():
        raise DataFormatError(f"{root} is not an OSIE folder (needs fixations.mat and stimuli/)",
                              hint="pass --data osie:DIR with the OSIE data set")
    return root


def load_osie(arg: str | None, size, n_train: int = 500, limit: int | None = None,
              split: str = "both") -> tuple[ImageSet | None, ImageSet | None]:
    """OSIE's first ``n_train`` images (sorted by name) to train, the rest to validate/test."""
    root = osie_root(arg)
    fix = read_subjects_mat(root / "fixations.mat")
    names = sorted(n for n in fix if (root / "stimuli" / n).is_file())
    if len(names) <= n_train:
        raise DataFormatError(f"{root} holds {len(names)} images with fixations, fewer than the "
                              f"{n_train} training images plus a test split")
    tr, te = names[:n_train], names[n_train:]
    if limit:
        tr = tr[:limit]
    out = []
    for part, which in ((tr, "train"), (te, "test")):
        if split not in ("both", which):
            out.append(None)
            continue
        out.append(_from_files([root / "stimuli" / n for n in part], [fix[n] for n in part],
                               size, f"OSIE {which}"))
    return out[0], out[1]


# -- SALICON (2017 release; files read by neuroprobe.saliency.data) ---------------------------

def load_salicon(arg: str, size, limit=None, val_limit=None):
    root = Path(arg).expanduser()
    out = []
    for split, lim in (("train", limit), ("val", val_limit)):
        img_dir, fix_dir = root / "images" / split, root / "fixations" / split
        if not img_dir.is_dir() or not fix_dir.is_dir():
            raise DataFormatError(f"{root} lacks images/{split} or fixations/{split}",
                                  hint="expected the SALICON 2017 layout")
        ds = read_salicon_mat(fix_dir, images_root=img_dir).subset(lim)
        keep = [i for i, p in enumerate(ds.image_paths) if p is not None and p.is_file()]
        paths = [ds.image_paths[i] for i in keep]
        fixes = [ds.fixations[i] for i in keep]
        out.append(_from_files(paths, fixes, size, f"SALICON {split}"))
    return out[0], out[1]


# -- folders ----------------------------------------------------------------------------------

def _folder_images(root: Path) -> list[Path]:
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist")
    paths = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not paths:
        raise DataFormatError(f"{root} holds no images ({', '.join(IMAGE_EXTS)})")
    return paths


def _read_csv(path: Path, need: tuple[str, ...]) -> list[dict]:
    from ..io import read_csv

    if not path.is_file():
        raise UserError(f"CSV file {path} does not exist")
    header, rows = read_csv(path)
    cols = set(header) if rows else set()
    if not rows or not set(need) <= cols:
        raise DataFormatError(f"{path} needs the columns {', '.join(need)} (found "
                              f"{', '.join(sorted(cols)) or 'no rows'})")
    return rows


def _match(paths: list[Path], name: str) -> str:
    return Path(name).name


def load_folder_saliency(arg: str, size) -> ImageSet:
    root = Path(arg).expanduser()
    paths = _folder_images(root)
    rows = _read_csv(root / "fixations.csv", ("image", "x", "y"))
    by = {}
    for line, r in enumerate(rows, start=2):
        try:
            point = (float(r["x"]), float(r["y"]), int(r.get("observer") or 0))
        except (TypeError, ValueError):
            raise DataFormatError(f"{root / 'fixations.csv'}, line {line}: x, y must be numbers "
                                  "and observer an integer") from None
        by.setdefault(_match(paths, r["image"]), []).append(point)
    fixes = []
    for p in paths:
        pts = np.asarray(by.get(p.name, []), dtype=np.float64).reshape(-1, 3)
        fixes.append(Fixations(p.name, pts[:, 0], pts[:, 1], pts[:, 2].astype(np.int64)))
    return _from_files(paths, fixes, size, f"folder {root.name}")


def load_folder_scene(arg: str, labels_csv: str | None, size) -> ImageSet:
    root = Path(arg).expanduser()
    if not labels_csv:
        raise UserError("--data folder:DIR for scenes needs --labels CSV (image,label)")
    paths = _folder_images(root)
    rows = _read_csv(Path(labels_csv).expanduser(), ("image", "label"))
    lab = {_match(paths, r["image"]): r["label"].strip() for r in rows}
    missing = [p.name for p in paths if p.name not in lab]
    if missing:
        raise DataFormatError(f"{labels_csv} has no label for {len(missing)} image(s) of {root}, "
                              f"e.g. {missing[0]}")
    classes = sorted(set(lab.values()))
    data = _from_files(paths, None, size, f"folder {root.name}",
                       torch.tensor([classes.index(lab[p.name]) for p in paths]))
    data.classes = classes
    return data


def split_tail(data: ImageSet, n_val: int) -> tuple[ImageSet, ImageSet]:
    n = len(data)
    n_val = max(1, min(int(n_val), n - 1))
    return data.subset(range(n - n_val)), data.subset(range(n - n_val, n))


def load_task_data(spec: str, task: str, size, *, limit=None, val=None, seed=None,
                   labels=None) -> tuple[ImageSet, ImageSet, dict]:
    """Training and validation sets for ``task`` (saliency | scene | recognition) from ``spec``.

    Returns ``(train, val, description)``; the description goes into the checkpoint.
    """
    kind, arg = parse_data(spec)
    size = (int(size[0]), int(size[1]))
    desc = {"data": spec, "kind": kind}
    if kind == "synthetic":
        wseed = int(arg) if arg else (DEMO_WORLD_SEED if seed is None else int(seed))
        n_train = int(limit or 1000)
        n_val = int(val if val is not None else max(1, min(200, n_train // 5)))
        data = load_synthetic(n_train + n_val, wseed, size)
        train, valid = data.subset(range(n_train)), data.subset(range(n_train, n_train + n_val))
        desc.update(world_seed=wseed, n_train=n_train, n_val=n_val)
        if task == "recognition":
            desc["classes"] = [lab.name for lab in recognition_classes(
                synthetic_world(1, wseed, size))]
        return train, valid, desc
    if task == "recognition":
        raise UserError(f"recognition pretraining needs --data synthetic, not {spec}")
    if task == "scene":
        if kind != "folder":
            raise UserError(f"scene training reads --data synthetic or folder:DIR, not {spec}")
        data = load_folder_scene(arg, labels, size)
        if limit:
            data = data.subset(range(min(limit + (val or 0), len(data))))
        train, valid = split_tail(data, val if val is not None else max(1, len(data) // 5))
        desc.update(n_train=len(train), n_val=len(valid), classes=data.classes)
        return train, valid, desc
    if kind == "osie":
        train, valid = load_osie(arg, size, limit=limit)
        if val is not None:
            valid = valid.subset(range(min(int(val), len(valid))))
    elif kind == "salicon":
        train, valid = load_salicon(arg, size, limit=limit, val_limit=val)
    else:
        data = load_folder_saliency(arg, size)
        if limit:
            data = data.subset(range(min(limit + (val or 0), len(data))))
        train, valid = split_tail(data, val if val is not None else max(1, len(data) // 5))
    desc.update(n_train=len(train), n_val=len(valid))
    return train, valid, desc
