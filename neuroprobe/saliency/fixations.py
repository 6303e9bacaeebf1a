"""Fixation records and the MATLAB layout shared by OSIE and EyeCrowd.

Every reader in neuroprobe converts fixations to **0-based pixel coordinates with pixel centres at
integers**: a MATLAB 1-based position ``p`` becomes ``p - 1``.  A fixation at ``(x, y)`` lies in
pixel ``(round(y), round(x))`` of the image.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataFormatError


@dataclass
class Fixations:
    """The fixations of all observers on one image.

    Attributes
    ----------
    image : str
        Image file name (e.g. ``"1001.jpg"``).
    x, y : ndarray of float
        0-based pixel coordinates (pixel centres at integers).
    observer : ndarray of int
        Observer index of each fixation (0-based).
    duration : ndarray of float or None
        Fixation durations in milliseconds where known.
    size : (height, width) or None
        The image size the coordinates refer to, where known.
    """

    image: str
    x: np.ndarray
    y: np.ndarray
    observer: np.ndarray
    duration: np.ndarray | None = None
    size: tuple[int, int] | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.x)

    @property
    def n_observers(self) -> int:
        return int(self.observer.max()) + 1 if len(self.observer) else 0

    def xy(self) -> np.ndarray:
        """``(N, 2)`` array of ``(x, y)``."""
        return np.stack([self.x, self.y], axis=1) if len(self.x) else np.zeros((0, 2))

    def inside(self, height: int, width: int) -> "Fixations":
        """Only the fixations that fall inside an image of this size (rounded to pixels)."""
        keep = ((np.round(self.x) >= 0) & (np.round(self.x) <= width - 1)
                & (np.round(self.y) >= 0) & (np.round(self.y) <= height - 1))
        return self.select(keep)

    def select(self, keep: np.ndarray) -> "Fixations":
        return Fixations(self.image, self.x[keep], self.y[keep], self.observer[keep],
                         None if self.duration is None else self.duration[keep], self.size,
                         dict(self.extra))

    def scaled(self, sy: float, sx: float) -> "Fixations":
        """Coordinates for an image resized by (sy, sx) (pixel-centre aligned)."""
        x = (self.x + 0.5) * sx - 0.5
        y = (self.y + 0.5) * sy - 0.5
        size = None if self.size is None else (round(self.size[0] * sy), round(self.size[1] * sx))
        return Fixations(self.image, x, y, self.observer.copy(),
                         None if self.duration is None else self.duration.copy(), size,
                         dict(self.extra))


def _as_list(value) -> list:
    if isinstance(value, np.ndarray):
        return list(value.reshape(-1))
    return [value]


def _as_float_array(value) -> np.ndarray:
    return np.atleast_1d(np.asarray(value, dtype=np.float64)).reshape(-1)


def read_subjects_mat(path: str | Path, variable: str = "fixations",
                      size: tuple[int, int] | None = None) -> dict[str, Fixations]:
    """Read a ``fixations.mat`` in the OSIE / EyeCrowd layout.

    The file holds a struct array ``fixations`` with one record per image: ``img`` (file name) and
    ``subjects``, one record per observer with ``fix_x``, ``fix_y`` (1-based pixels, as MATLAB
    writes them) and ``fix_duration`` (ms).  An observer with a single fixation is stored by
    MATLAB as scalars; one with none as empty arrays.  Both are handled.

    Returns a dict from image file name to :class:`Fixations` with 0-based coordinates.
    """
    import scipy.io as sio

    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"fixation file {path} does not exist")
    try:
        mat = sio.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as err:  # scipy raises several types for a damaged file
        raise DataFormatError(f"{path} is not a readable MATLAB .mat file ({err})") from None
    if variable not in mat:
        found = ", ".join(k for k in mat if not k.startswith("__")) or "nothing"
        raise DataFormatError(f"{path} has no variable {variable!r} (it holds: {found})",
                              hint="expected the OSIE/EyeCrowd layout: fixations(i).img and "
                              "fixations(i).subjects(j).fix_x/fix_y")
    out: dict[str, Fixations] = {}
    for rec in _as_list(mat[variable]):
        fields = getattr(rec, "_fieldnames", None)
        if not fields or "img" not in fields or "subjects" not in fields:
            raise DataFormatError(f"{path}: records of {variable!r} need fields img and subjects "
                                  f"(found {fields})")
        xs, ys, obs, durs = [], [], [], []
        for j, subj in enumerate(_as_list(rec.subjects)):
            sf = getattr(subj, "_fieldnames", None) or []
            if "fix_x" not in sf or "fix_y" not in sf:
                raise DataFormatError(f"{path}: observer records need fix_x and fix_y (found {sf})")
            x = _as_float_array(subj.fix_x)
            y = _as_float_array(subj.fix_y)
            if len(x) != len(y):
                raise DataFormatError(f"{path}: image {rec.img}, observer {j}: fix_x and fix_y "
                                      "differ in length")
            d = (_as_float_array(subj.fix_duration) if "fix_duration" in sf
                 else np.full(len(x), np.nan))
            if len(d) != len(x):
                d = np.full(len(x), np.nan)
            xs.append(x - 1.0)
            ys.append(y - 1.0)
            obs.append(np.full(len(x), j, dtype=np.int64))
            durs.append(d)
        name = str(rec.img)
        out[name] = Fixations(
            image=name,
            x=np.concatenate(xs) if xs else np.zeros(0),
            y=np.concatenate(ys) if ys else np.zeros(0),
            observer=np.concatenate(obs) if obs else np.zeros(0, dtype=np.int64),
            duration=np.concatenate(durs) if durs else np.zeros(0),
            size=size,
        )
    return out
