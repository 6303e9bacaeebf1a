"""Eye-fixation data sets: OSIE, EyeCrowd, SALICON (2015 JSON, 2017 .mat), MIT1003, generic CSV.

Every reader returns a :class:`FixationDataset` whose fixations are **0-based pixel coordinates
with pixel centres at integers** (:mod:`neuroprobe.saliency.fixations`).  The conversion per
source:

==========  =================================================  ===============================
source      stored as                                          conversion
==========  =================================================  ===============================
OSIE        ``fix_x``, ``fix_y``: 1-based MATLAB pixels        ``x - 1``, ``y - 1``
EyeCrowd    same layout as OSIE                                ``x - 1``, ``y - 1``
SALICON'15  ``fixations: [[row, col], ...]``, 1-based          ``x = col - 1``, ``y = row - 1``
SALICON'17  ``gaze(j).fixations``: ``[x, y]`` rows, 1-based    ``x - 1``, ``y - 1``
MIT1003     ``fixations``: ``[x, y]`` rows, 1-based (MATLAB     ``x - 1``, ``y - 1``; the first
            ``checkFixations`` output, one file per image and   fixation of every observer is
            observer: ``<image>_<observer>.mat``)               dropped (``drop_first``)
CSV         columns ``image,x,y,observer``: 0-based pixels     none
==========  =================================================  ===============================

OSIE and EyeCrowd are read from a local folder (the real data of this project is in
``../shared/data/osie`` and ``../shared/data/eyecrowd``) or fetched from the public repository's
archive with :func:`fetch_repository` (through :mod:`neuroprobe.download`).  :func:`open_dataset`
resolves the ``--data NAME:PATH`` specs of the command line.

Baselines built from fixations: :func:`inter_observer` (leave one observer out) and
:func:`centre_prior` (the mean fixation density of the other images).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import download as dl
from ..errors import DataFormatError, UserError, suggest
from .fixations import Fixations, read_subjects_mat
from .metrics import GroundTruth, gaussian_density, mit_sigma

__all__ = ["FixationDataset", "load_osie", "load_eyecrowd", "read_salicon_json",
           "read_salicon_mat", "read_mit1003", "read_csv", "open_dataset", "fetch_repository",
           "inter_observer", "centre_prior", "SOURCES"]

REPOSITORIES = {
    "osie": "https://github.com/NUS-VIP/predicting-human-gaze-beyond-pixels/archive/refs/heads/"
            "master.zip",
    "eyecrowd": "https://github.com/NUS-VIP/saliency-in-crowd/archive/refs/heads/master.zip",
}


@dataclass
class FixationDataset:
    """Images and their fixations.

    Attributes
    ----------
    name : str
        Data-set name (``osie``, ``salicon-2015`` ...), written into result tables.
    fixations : list of Fixations
        One per image, 0-based pixel coordinates, ``size`` = (height, width).
    image_paths : list of Path or None
        The image files where known (None where only fixations were given).
    root : Path or None
    convention : str
        How the stored coordinates were converted (for the result files).
    """

    name: str
    fixations: list[Fixations]
    image_paths: list[Path | None]
    root: Path | None = None
    convention: str = ""
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.fixations)

    @property
    def images(self) -> list[str]:
        return [f.image for f in self.fixations]

    def load_image(self, i: int) -> np.ndarray:
        """Image ``i`` as ``(H, W, 3)`` float in [0, 1]."""
        from ..imageio import read_image

        path = self.image_paths[i]
        if path is None:
            raise UserError(f"{self.name}: no image file for {self.fixations[i].image}",
                            hint="give the folder with the images (--images DIR)")
        return read_image(path).astype(np.float64) / 255.0

    def subset(self, n: int | None) -> "FixationDataset":
        """The first ``n`` images (all when n is None)."""
        if n is None or n >= len(self):
            return self
        return FixationDataset(self.name, self.fixations[:n], self.image_paths[:n], self.root,
                               self.convention, dict(self.extra))


# --------------------------------------------------------------------------- local folders
def _missing_root(root: Path, name: str) -> UserError:
    return UserError(f"{name} data folder {root} does not exist",
                     hint=f"pass --data {name}:PATH (a folder with fixations.mat and stimuli/)")


def _subjects_dataset(root, name: str, size: tuple[int, int], convention: str,
                      require_images: bool = True) -> FixationDataset:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise _missing_root(root, name)
    mat = root / "fixations.mat"
    if not mat.is_file():
        raise DataFormatError(f"{root} has no fixations.mat",
                              hint=f"expected the {name} layout: fixations.mat and stimuli/")
    records = read_subjects_mat(mat, size=size)
    stimuli = root / "stimuli"
    fixes, paths, missing = [], [], 0
    for img_name in sorted(records):
        path = stimuli / img_name
        if not path.is_file():
            missing += 1
            if require_images:
                continue
            path = None
        fixes.append(records[img_name])
        paths.append(path)
    if not fixes:
        raise DataFormatError(f"{root}: none of the {len(records)} images of fixations.mat is in "
                              f"{stimuli}")
    ds = FixationDataset(name, fixes, paths, root, convention)
    ds.extra["records_without_image"] = missing
    return ds


def load_osie(root) -> FixationDataset:
    """OSIE (Xu et al., JoV 2014): 700 images 800x600, 15 observers; ``root`` holds
    ``fixations.mat`` and ``stimuli/``.  Coordinates: 1-based MATLAB pixels minus 1."""
    return _subjects_dataset(root, "osie", (600, 800), "OSIE fix_x/fix_y 1-based -> x-1, y-1")


def load_eyecrowd(root) -> FixationDataset:
    """EyeCrowd (Jiang et al., ECCV 2014): 1024x768, 16 observers; only the records whose image
    is present in ``stimuli/`` are kept.  Coordinates: 1-based MATLAB pixels minus 1."""
    return _subjects_dataset(root, "eyecrowd", (768, 1024),
                             "EyeCrowd fix_x/fix_y 1-based -> x-1, y-1")


def _find_layout(folder: Path) -> Path:
    """The folder inside an extracted repository that holds fixations.mat and stimuli/."""
    for mat in sorted(folder.rglob("fixations.mat")):
        if (mat.parent / "stimuli").is_dir():
            return mat.parent
    raise DataFormatError(f"{folder}: no folder with fixations.mat and stimuli/ inside",
                          hint="the repository layout changed; give the folder with --data "
                          "NAME:PATH")


def fetch_repository(name: str, out, *, mirror: str | None = None) -> Path:
    """Download the public repository archive of ``osie`` or ``eyecrowd`` into ``out`` (once)
    with :func:`neuroprobe.download.download`, extract it safely, and return the data folder."""
    if name not in REPOSITORIES:
        raise UserError(f"no repository archive known for {name!r}",
                        hint="known: " + ", ".join(REPOSITORIES))
    out = Path(out).expanduser()
    target = out / f"{name}-repository"
    if not target.is_dir():
        archive = out / f"{name}-repository.zip"
        dl.download(REPOSITORIES[name], archive, mirror=mirror)
        dl.extract(archive, target)
        archive.unlink(missing_ok=True)
    return _find_layout(target)


# --------------------------------------------------------------------------- SALICON
def read_salicon_json(path, images_root=None) -> FixationDataset:
    """SALICON 2015 fixations (COCO-style JSON: ``images`` with ``id``, ``file_name``, ``width``,
    ``height``; ``annotations`` with ``image_id``, ``worker_id``, ``fixations: [[row, col]]``,
    1-based).  Observers are the workers, numbered per image in order of appearance."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"SALICON fixation file {path} does not exist")
    from ..io import read_json

    data = read_json(path, "SALICON fixation file")
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise DataFormatError(f"{path} is not a SALICON 2015 fixation file",
                              hint="expected COCO-style keys 'images' and 'annotations' with "
                              "'fixations': [[row, col], ...]")
    images = {im["id"]: im for im in data["images"]}
    per: dict = {k: [] for k in images}
    for ann in data["annotations"]:
        if "fixations" not in ann or "image_id" not in ann:
            raise DataFormatError(f"{path}: an annotation lacks image_id or fixations")
        if ann["image_id"] not in per:
            raise DataFormatError(f"{path}: annotation for unknown image id {ann['image_id']}")
        per[ann["image_id"]].append(ann)
    fixes, paths = [], []
    for iid, im in images.items():
        xs, ys, obs, workers = [], [], [], {}
        for ann in per[iid]:
            pts = np.asarray(ann["fixations"], dtype=np.float64).reshape(-1, 2)
            j = workers.setdefault(ann.get("worker_id", len(workers)), len(workers))
            ys.append(pts[:, 0] - 1)
            xs.append(pts[:, 1] - 1)
            obs.append(np.full(len(pts), j, dtype=np.int64))
        size = (int(im["height"]), int(im["width"]))
        cat = (lambda a, dt=np.float64: np.concatenate(a) if a else np.zeros(0, dt))
        fixes.append(Fixations(im["file_name"], cat(xs), cat(ys), cat(obs, np.int64), None, size))
        paths.append(Path(images_root) / im["file_name"] if images_root else None)
    return FixationDataset("salicon-2015", fixes, paths, path.parent,
                           "SALICON 2015 [row, col] 1-based -> x=col-1, y=row-1")


def read_salicon_mat(path, images_root=None) -> FixationDataset:
    """SALICON 2017 fixations: one ``<image>.mat`` per image (a file or a folder of them) with
    ``image`` (name), ``resolution`` ``[height, width]`` and ``gaze``, one record per observer
    with ``fixations`` (rows ``[x, y]``, 1-based)."""
    import scipy.io as sio

    path = Path(path)
    files = sorted(path.glob("*.mat")) if path.is_dir() else [path]
    if not files or not files[0].is_file():
        raise DataFormatError(f"no SALICON 2017 .mat files at {path}")
    fixes, paths = [], []
    for f in files:
        try:
            mat = sio.loadmat(str(f), squeeze_me=True, struct_as_record=False)
        except Exception as err:
            raise DataFormatError(f"{f} is not a readable MATLAB .mat file ({err})") from None
        if "gaze" not in mat or "resolution" not in mat:
            found = ", ".join(k for k in mat if not k.startswith("__"))
            raise DataFormatError(f"{f} is not a SALICON 2017 file (it holds: {found})",
                                  hint="expected variables gaze(j).fixations and resolution")
        res = np.asarray(mat["resolution"]).reshape(-1)
        size = (int(res[0]), int(res[1]))
        gaze = mat["gaze"]
        gaze = list(gaze.reshape(-1)) if isinstance(gaze, np.ndarray) else [gaze]
        xs, ys, obs = [], [], []
        for j, g in enumerate(gaze):
            if "fixations" not in (getattr(g, "_fieldnames", None) or []):
                raise DataFormatError(f"{f}: gaze records need a fixations field")
            pts = np.asarray(g.fixations, dtype=np.float64)
            pts = pts.reshape(-1, 2) if pts.size else np.zeros((0, 2))
            xs.append(pts[:, 0] - 1)
            ys.append(pts[:, 1] - 1)
            obs.append(np.full(len(pts), j, dtype=np.int64))
        name = str(mat.get("image", f.stem))
        name = name if Path(name).suffix else name + ".jpg"
        fixes.append(Fixations(name, np.concatenate(xs) if xs else np.zeros(0),
                               np.concatenate(ys) if ys else np.zeros(0),
                               np.concatenate(obs) if obs else np.zeros(0, np.int64), None, size))
        paths.append(Path(images_root) / name if images_root else None)
    return FixationDataset("salicon-2017", fixes, paths, path if path.is_dir() else path.parent,
                           "SALICON 2017 gaze.fixations [x, y] 1-based -> x-1, y-1")


# --------------------------------------------------------------------------- MIT1003
def read_mit1003(folder, images_root=None, drop_first: bool = True) -> FixationDataset:
    """MIT1003 fixations extracted with the data set's MATLAB code (``checkFixations``): one
    ``<image>_<observer>.mat`` per image and observer holding ``fixations`` (rows ``[x, y]``,
    1-based).  ``images_root`` (the ``ALLSTIMULI`` folder) gives the image sizes; without it the
    sizes are unknown.  The first fixation of each observer (the central fixation cross) is
    dropped unless ``drop_first=False``, as in Judd et al. 2009."""
    import scipy.io as sio

    folder = Path(folder)
    if not folder.is_dir():
        raise DataFormatError(f"MIT1003 fixation folder {folder} does not exist")
    files = sorted(folder.glob("*_*.mat"))
    if not files:
        raise DataFormatError(f"{folder} holds no <image>_<observer>.mat fixation files")
    per: dict[str, dict[str, np.ndarray]] = {}
    for f in files:
        image, observer = f.stem.rsplit("_", 1)
        try:
            mat = sio.loadmat(str(f))
        except Exception as err:
            raise DataFormatError(f"{f} is not a readable MATLAB .mat file ({err})") from None
        if "fixations" not in mat:
            found = ", ".join(k for k in mat if not k.startswith("__"))
            raise DataFormatError(f"{f} has no variable 'fixations' (it holds: {found})",
                                  hint="expected the output of MIT1003's checkFixations")
        pts = np.asarray(mat["fixations"], dtype=np.float64)
        pts = pts.reshape(-1, 2) if pts.size else np.zeros((0, 2))
        per.setdefault(image, {})[observer] = pts[1:] if drop_first else pts
    fixes, paths = [], []
    for image in sorted(per):
        xs, ys, obs = [], [], []
        for j, obsname in enumerate(sorted(per[image])):
            pts = per[image][obsname]
            pts = pts[np.isfinite(pts).all(axis=1)]
            xs.append(pts[:, 0] - 1)
            ys.append(pts[:, 1] - 1)
            obs.append(np.full(len(pts), j, dtype=np.int64))
        path, size = None, None
        if images_root is not None:
            path = Path(images_root) / image
            if path.is_file():
                from ..imageio import image_size

                size = image_size(path)
            else:
                path = None
        fx = Fixations(image, np.concatenate(xs), np.concatenate(ys), np.concatenate(obs), None,
                       size)
        fixes.append(fx.inside(*size) if size else fx)
        paths.append(path)
    return FixationDataset("mit1003", fixes, paths, folder,
                           "MIT1003 fixations [x, y] 1-based -> x-1, y-1"
                           + ("; first fixation dropped" if drop_first else ""))


# --------------------------------------------------------------------------- CSV
def read_csv(path, images_root=None, sizes: dict | None = None) -> FixationDataset:
    """A generic CSV with a header and columns ``image,x,y,observer`` (0-based pixels, pixel
    centres at integers), optionally ``width,height``.  Without size columns the size comes from
    ``sizes`` or from the image file in ``images_root``.

    The ``image`` column names files relative to ``images_root``: a name that leads outside it
    (an absolute path, ``..``, a link out of the folder) is refused, so a data-set file cannot
    make neuroprobe read any file on the machine.  The file is read by :func:`neuroprobe.io.
    read_csv` (UTF-8, with or without a byte-order mark).
    """
    from ..io import read_csv as _read_csv

    path = Path(path)
    _, rows = _read_csv(path, ("image", "x", "y", "observer"), what="fixation CSV",
                        missing_hint="check --data csv:FILE",
                        format_hint="the header must name image,x,y,observer "
                        "(optionally width,height)")
    root = Path(images_root).expanduser() if images_root else None
    if root is not None and not root.is_dir():
        raise DataFormatError(f"image folder {root} does not exist or is not a folder",
                              hint="check --images DIR")
    per: dict[str, list] = {}
    dims: dict[str, tuple[int, int]] = {}
    first: dict[str, int] = {}
    for lineno, row in enumerate(rows, start=2):
        try:
            x, y, o = float(row["x"]), float(row["y"]), int(row["observer"])
            if row.get("width") and row.get("height"):
                dims[row["image"]] = (int(row["height"]), int(row["width"]))
        except (TypeError, ValueError):
            raise DataFormatError(f"{path}, line {lineno}: x, y must be numbers and "
                                  "observer an integer (width, height whole numbers)") from None
        if row["image"] in dims and min(dims[row["image"]]) < 1:
            raise DataFormatError(f"{path}, line {lineno}: width and height must be positive")
        first.setdefault(row["image"], lineno)
        per.setdefault(row["image"], []).append((x, y, o))
    fixes, paths = [], []
    for image, rows_ in per.items():
        arr = np.asarray(rows_, dtype=np.float64).reshape(-1, 3)
        p = _inside(root, image, path, first[image]) if root is not None else None
        size = dims.get(image) or (sizes or {}).get(image)
        if size is None:
            if p is None:
                raise DataFormatError(f"{path}, line {first[image]}: the size of image {image!r} "
                                      "is unknown", hint="pass --images DIR (the folder holding "
                                      "the images) or add width,height columns to the CSV")
            if not p.is_file():
                raise DataFormatError(f"image {p} (named by {path}, line {first[image]}) does "
                                      "not exist", hint="check --images DIR, or add width,height "
                                      "columns to the CSV to score models that need no image")
            from ..imageio import image_size

            size = image_size(p)
        fixes.append(Fixations(image, arr[:, 0], arr[:, 1], arr[:, 2].astype(np.int64), None,
                               size))
        paths.append(p if p is not None and p.is_file() else None)
    return FixationDataset("csv", fixes, paths, path.parent, "CSV x, y 0-based (no conversion)")


def _inside(root: Path, name: str, csv_path: Path, lineno: int) -> Path:
    """``root / name``, refused where it resolves (links followed) outside ``root``."""
    from ..io import confined

    return confined(root, name, source=f"{csv_path}, line {lineno}",
                    hint="the image column must name files inside --images DIR, relative to it")


SOURCES = {"osie": load_osie, "eyecrowd": load_eyecrowd, "salicon-2015": read_salicon_json,
           "salicon-2017": read_salicon_mat, "mit1003": read_mit1003, "csv": read_csv}


def open_dataset(spec: str, root=None, images=None) -> FixationDataset:
    """Resolve ``NAME:PATH`` (or ``NAME`` with ``root``) to a data set.

    ``osie`` and ``eyecrowd`` take the data folder; ``salicon-2015`` the JSON file,
    ``salicon-2017`` a .mat file or folder, ``mit1003`` the folder of extracted fixation files,
    ``csv`` the CSV file; ``images`` is the image folder where the source needs it.
    """
    name, _, path = spec.partition(":")
    name = name.lower()
    if name not in SOURCES:
        raise UserError(f"unknown fixation data set {name!r}",
                        hint=f"{suggest(name, SOURCES, 'data set')}; known: {', '.join(SOURCES)}")
    path = path or root
    if not path:
        raise UserError(f"no location given for the {name} data",
                        hint=f"use --data {name}:PATH or --root PATH")
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{name} data {path} does not exist",
                        hint=f"check --data {name}:PATH / --root")
    if name in ("osie", "eyecrowd"):
        return SOURCES[name](path)
    return SOURCES[name](path, images_root=images)


# --------------------------------------------------------------------------- baselines
def inter_observer(fixations: Fixations, shape=None, **gt_kwargs):
    """Leave-one-observer-out splits of one image.

    Yields ``(observer, others, held_out)`` as :class:`~neuroprobe.saliency.metrics.GroundTruth`
    pairs: the *prediction* is built from the fixations of all other observers and evaluated
    against the held-out observer's fixations.  Observers without fixations are skipped.
    """
    shape = shape or fixations.size
    for o in np.unique(fixations.observer):
        held = fixations.observer == o
        if not held.any() or held.all():
            continue
        yield (int(o), GroundTruth.from_fixations(fixations.select(~held), shape, **gt_kwargs),
               GroundTruth.from_fixations(fixations.select(held), shape, **gt_kwargs))


def centre_prior(dataset_fixations: list[Fixations], shape, exclude: int | None = None,
                 sigma: float | None = None) -> np.ndarray:
    """Centre-bias baseline from data: the density of all fixations of the *other* images
    (rescaled to ``shape``), blurred with a Gaussian (sigma in pixels, default the MIT-equivalent
    sigma of the shape).  Leaving image ``exclude`` out keeps it a fair baseline for that image."""
    rows, cols = [], []
    for i, f in enumerate(dataset_fixations):
        if i == exclude or len(f) == 0:
            continue
        h, w = f.size
        rows.append((f.y + 0.5) * shape[0] / h - 0.5)
        cols.append((f.x + 0.5) * shape[1] / w - 0.5)
    if not rows:
        warnings.warn("no fixations for the centre prior; uniform map", RuntimeWarning)
        return np.full(shape, 1.0 / (shape[0] * shape[1]))
    r = np.clip(np.round(np.concatenate(rows)), 0, shape[0] - 1)
    c = np.clip(np.round(np.concatenate(cols)), 0, shape[1] - 1)
    return gaussian_density(r, c, shape, sigma if sigma is not None else mit_sigma(shape))
