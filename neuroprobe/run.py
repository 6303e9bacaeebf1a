"""A dissection run as an object: ``neuroprobe.load_run(DIR)``.

A run folder written by ``neuroprobe dissect`` (or :func:`neuroprobe.dissect.dissect` with
``out_dir``) holds

* ``units.csv`` - one row per unit (:attr:`Run.units`, cells typed: whole numbers as ``int``,
  other numbers as ``float``, empty cells as ``None``, names as ``str``);
* ``summary.json`` - configuration, versions, detector counts (:attr:`Run.summary`);
* ``region_nss.csv`` - the region-NSS table where the run scored it (:attr:`Run.nss_table`);
* ``scores.npz`` - every unit's IoU and mean region-NSS for every label (:attr:`Run.iou`,
  :attr:`Run.nss`, columns named by :attr:`Run.label_names`);
* ``top_images.npz`` - the top-k data-set images of every unit (:attr:`Run.top_images`;
  runs made before it was written keep ``top_images.pt``, read with ``weights_only=True``).

:class:`Run` and :class:`~neuroprobe.dissect.DissectionResult` (what ``dissect`` returns) share
:class:`ResultView`: a short ``repr``, ``_repr_html_`` (a compact table for Jupyter, with
thumbnails of the unit cards where ``neuroprobe gallery`` drew them) and ``to_dataframe()``
(needs pandas).  ``neuroprobe gallery`` and ``neuroprobe compare`` read runs through
:func:`load_run`.

The module imports numpy and the standard library only (torch just for a legacy
``top_images.pt``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataFormatError, UserError
from .io import read_csv, read_json
from .notebook import read_gallery, result_html
from .results import LEGACY_TOP_IMAGES, SCORES, TOP_IMAGES

__all__ = ["load_run", "Run", "ResultView", "MissingDependency", "typed_row", "model_spec",
           "read_top_images", "typed_cell"]

#: ``units.csv`` / ``region_nss.csv`` columns that hold names, never numbers
_TEXT = ("layer", "label", "category")
#: columns that must hold numbers (a cell that is not one is refused)
_STRICT = ("unit", "score", "threshold", "detector")


class MissingDependency(UserError, ImportError):
    """An optional library that a feature needs is not installed."""


def typed_cell(key: str, value, where: str | None = None, text=()):
    """One CSV cell, typed as the dissection wrote it (ints, floats written with ``repr``);
    empty cells are ``None``; name columns (and the keys in ``text``) stay strings.  With
    ``where``, a cell of a number column that is not a number is refused, naming ``where``."""
    if (key in _TEXT or key in text or key.endswith(("-label", "-category"))
            or not isinstance(value, str)):
        return value
    if value == "":
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    if where is not None and key in _STRICT:
        raise DataFormatError(f"{where}: bad number {value!r} in column {key!r}",
                              hint="rerun `neuroprobe dissect` into this folder")
    return value


def typed_row(row: dict, where: str = "units.csv") -> dict:
    """A CSV row with its cells typed (see :func:`typed_cell`)."""
    return {k: typed_cell(k, v, where) for k, v in row.items()}


def _table(path: Path, required=()) -> list[dict]:
    _, rows = read_csv(path, required, format_hint="rerun `neuroprobe dissect` into this folder")
    return [typed_row(r, f"{path}, line {line} (unit {r.get('layer')}:{r.get('unit')})")
            for line, r in enumerate(rows, start=2)]


def model_spec(model_info: dict) -> str | None:
    """The spec that reloads a run's model (``summary["config"]["model"]``) from this working
    folder: the recorded ``spec``, or the absolute ``file`` where ``spec`` is a relative path
    of that file written from another folder (a built-in name or ``torchvision:NAME`` is kept)."""
    spec, file = model_info.get("spec"), model_info.get("file")
    if not spec or not file or Path(spec).is_file() or not Path(file).is_file():
        return spec
    parts = [p for p in Path(spec).parts if p not in (".", "..")]
    return file if parts and list(Path(file).parts[-len(parts):]) == parts else spec


def load_run(path, *, require_summary: bool = True) -> "Run":
    """Open a dissection run folder.

    Parameters
    ----------
    path : the ``--out`` folder of ``neuroprobe dissect``.
    require_summary : refuse a folder without ``summary.json`` (with ``False`` its summary is
        ``{}``).

    Returns
    -------
    Run
        Tables are read at once; the ``.npz`` arrays when first used.

    Raises
    ------
    UserError
        One line naming the folder or file: not a run folder, a bad number in ``units.csv``, an
        unreadable ``summary.json``.
    """
    path = Path(path).expanduser()
    units_csv, summary_json = path / "units.csv", path / "summary.json"
    if not units_csv.is_file() or (require_summary and not summary_json.is_file()):
        lacks = "units.csv" if not units_csv.is_file() else "summary.json"
        raise UserError(f"{path} is not a dissection run folder: it has no {lacks}",
                        hint="pass the --out folder of `neuroprobe dissect`")
    units = _table(units_csv, ("layer", "unit", "label", "score"))
    summary = read_json(summary_json, "run summary", DataFormatError) \
        if summary_json.is_file() else {}
    if not isinstance(summary, dict):
        raise DataFormatError(f"{summary_json} does not hold a JSON object",
                              hint="rerun `neuroprobe dissect` into this folder")
    nss_csv = path / "region_nss.csv"
    nss_table = _table(nss_csv) if nss_csv.is_file() else None
    return Run(path, units, summary, nss_table)


# -- the shared view ------------------------------------------------------------------------------

class ResultView:
    """What a run folder and an in-memory dissection result both offer.

    Needs the attributes ``units``, ``summary``, ``nss_table``, ``iou``, ``nss``,
    ``label_names``, ``label_categories`` and ``path`` (``None`` for a result not written).
    """

    @property
    def layers(self) -> list[str]:
        """The dissected layers, in the run's order."""
        names = (self.summary.get("config") or {}).get("layers")
        return list(names) if names else list(dict.fromkeys(r["layer"] for r in self.units))

    @property
    def config(self) -> dict:
        """The run's configuration (``summary["config"]``)."""
        return self.summary.get("config") or {}

    def detectors(self, layer: str | None = None) -> list[dict]:
        """The rows of detector units (of ``layer``, or of every layer)."""
        return [r for r in self.units if r.get("detector") and
                (layer is None or r["layer"] == layer)]

    def _what(self) -> str:
        """One line: model, concepts, images, mode and score, detectors per layer."""
        cfg = self.config
        model = (cfg.get("model") or {})
        concepts = cfg.get("concepts") or {}
        head = [f"model {model.get('spec') or model.get('name') or model.get('arch') or '?'}",
                f"concepts {concepts.get('name') or concepts.get('spec') or '?'}"
                + (f" ({concepts['n']} images)" if concepts.get("n") is not None else "")]
        if cfg.get("mode"):
            head.append(f"{cfg['mode']}/{cfg.get('score', '?')}")
        per = []
        for layer in self.layers:
            rows = [r for r in self.units if r["layer"] == layer]
            per.append(f"{layer} {sum(bool(r.get('detector')) for r in rows)}/{len(rows)}")
        more = f", ... ({len(per) - 6} more layers)" if len(per) > 6 else ""
        det = ", ".join(per[:6]) + more
        return ", ".join(head) + (f"; detectors {det}" if det else "")

    def __repr__(self) -> str:
        where = f"{str(self.path)!r}: " if getattr(self, "path", None) else ""
        return f"{type(self).__name__}({where}{self._what()})"

    def _repr_html_(self) -> str:
        return result_html(self)

    def gallery_entries(self) -> list[dict]:
        """The units ``neuroprobe gallery`` drew for this run (``<run>/gallery/gallery.json``;
        ``[]`` where there is none); each entry's ``png`` is made absolute."""
        path = getattr(self, "path", None)
        return read_gallery(Path(path) / "gallery") if path else []

    def matrix(self, kind: str = "iou", layer: str | None = None) -> np.ndarray:
        """The ``(units, labels)`` score matrix of one layer: ``kind`` ``"iou"`` or ``"nss"``
        (mean region-NSS); ``layer`` may be left out when the run has one layer."""
        if kind not in ("iou", "nss"):
            raise UserError(f"unknown score matrix {kind!r}", hint="use iou or nss")
        found = getattr(self, kind) or {}
        if not found:
            what = "IoU" if kind == "iou" else "region-NSS"
            raise UserError(f"this run has no {what} matrix (it was scored with "
                            f"{self.config.get('score', '?')})")
        if layer is None:
            if len(found) != 1:
                raise UserError(f"the run has {len(found)} layers: name one",
                                hint="layers: " + ", ".join(found))
            layer = next(iter(found))
        if layer not in found:
            raise UserError(f"layer {layer!r} is not in this run",
                            hint="layers: " + ", ".join(found))
        return found[layer]

    def to_dataframe(self, table: str = "units", layer: str | None = None):
        """A pandas DataFrame of ``table``: ``"units"`` (units.csv), ``"region_nss"`` (the
        region-NSS table), or ``"iou"`` / ``"nss"`` (the score matrix of ``layer``: one row per
        unit, one column per label, named by the label, ``"name (category)"`` where a name
        repeats).  Needs pandas (``pip install pandas``)."""
        try:
            import pandas as pd
        except ImportError:
            raise MissingDependency("to_dataframe needs pandas, which is not installed",
                                    hint="pip install pandas") from None
        if table == "units":
            return pd.DataFrame(self.units)
        if table == "region_nss":
            if self.nss_table is None:
                raise UserError("this run has no region-NSS table (it was scored with "
                                f"{self.config.get('score', '?')})")
            return pd.DataFrame(self.nss_table)
        if table not in ("iou", "nss"):
            raise UserError(f"unknown table {table!r}", hint="use units, region_nss, iou or nss")
        m = self.matrix(table, layer)
        names, cats = list(self.label_names), list(self.label_categories)
        keep = [j for j in range(min(m.shape[1], len(names))) if j and names[j] and cats[j]]
        seen: dict = {}
        for j in keep:
            seen[names[j]] = seen.get(names[j], 0) + 1
        cols = [names[j] if seen[names[j]] == 1 else f"{names[j]} ({cats[j]})" for j in keep]
        return pd.DataFrame(m[:, keep], columns=cols,
                            index=pd.RangeIndex(m.shape[0], name="unit"))


# -- a run folder ---------------------------------------------------------------------------------

class Run(ResultView):
    """A dissection run folder (see :func:`load_run`).

    Attributes
    ----------
    path : Path
    units : list of dict
        The rows of ``units.csv``, typed.
    summary : dict
        ``summary.json``.
    nss_table : list of dict or None
        The rows of ``region_nss.csv`` (``None``: not scored).
    """

    def __init__(self, path, units: list, summary: dict, nss_table: list | None = None):
        self.path = Path(path)
        self.units = units
        self.summary = summary
        self.nss_table = nss_table
        self._scores: dict | None = None
        self._top: dict | None = None

    @property
    def name(self) -> str:
        """The folder's name (how ``compare`` names the run)."""
        return self.path.name

    @property
    def iou_threshold(self) -> float:
        return float(self.config.get("iou_threshold", 0.04))

    # -- the arrays, read when first used --------------------------------------------------------
    def _load_scores(self) -> dict:
        if self._scores is not None:
            return self._scores
        file = self.path / SCORES
        if not file.is_file():
            raise UserError(f"run {self.path} has no {SCORES} (the full score matrices; runs "
                            "made before it was written lack it)",
                            hint="run the same `neuroprobe dissect` command again: a finished "
                            "run rewrites its results from .state/ without a forward pass")
        with _npz(file) as z:
            layers = z["layers"].tolist()
            out = {"labels": z["labels"].tolist(), "categories": z["categories"].tolist(),
                   "iou": {l: z[f"iou_{i}"] for i, l in enumerate(layers)
                           if f"iou_{i}" in z.files},
                   "nss": {l: z[f"nss_{i}"] for i, l in enumerate(layers)
                           if f"nss_{i}" in z.files}}
        self._scores = out
        return out

    @property
    def iou(self) -> dict:
        """``{layer: (units, labels) float64}``: every unit's IoU with every label id (column
        ``j`` = label id ``j``, named by :attr:`label_names`; 0 = unlabelled, always 0)."""
        return self._load_scores()["iou"]

    @property
    def nss(self) -> dict:
        """``{layer: (units, labels) float64}``: mean region-NSS (NaN: no fixated region)."""
        return self._load_scores()["nss"]

    @property
    def label_names(self) -> list[str]:
        """The name of every label id (the columns of :attr:`iou` and :attr:`nss`)."""
        return self._load_scores()["labels"]

    @property
    def label_categories(self) -> list[str]:
        """The primary category of every label id (``""`` for id 0 and unused ids)."""
        return self._load_scores()["categories"]

    @property
    def top_images(self) -> dict:
        """``{layer: (values (U, k) float, index (U, k) int64)}``: each unit's top data-set
        images (data-set indices), best first, with the peak of the unit's map on each."""
        if self._top is None:
            self._top = read_top_images(self.path)
        return self._top


def _npz(file: Path):
    """``np.load`` of an archive without pickles; a damaged file is one line."""
    try:
        return np.load(file, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataFormatError(f"cannot read {file}: {err}",
                              hint="rerun `neuroprobe dissect` into this folder") from None


def read_top_images(run_dir) -> dict:
    """The top images of a run folder: ``top_images.npz``, else a legacy ``top_images.pt``
    (``torch.load(weights_only=True)``); ``{}`` where the run has neither."""
    run = Path(run_dir)
    if (run / TOP_IMAGES).is_file():
        with _npz(run / TOP_IMAGES) as z:
            return {layer: (z[f"values_{i}"], z[f"index_{i}"])
                    for i, layer in enumerate(z["layers"].tolist())}
    legacy = run / LEGACY_TOP_IMAGES
    if legacy.is_file():
        import torch

        try:
            saved = torch.load(legacy, map_location="cpu", weights_only=True)
        except Exception as err:   # torch raises many kinds for a damaged file
            raise DataFormatError(f"cannot read {legacy}: {err}",
                                  hint="rerun `neuroprobe dissect` into this folder") from None
        return {k: (v["values"].numpy(), v["index"].numpy()) for k, v in saved.items()}
    return {}

