"""Compare variants of one model: concept shift, category preference, representation similarity.

The study (He et al., CVPR 2019) compares one encoder in several states: pretrained, frozen with a
saliency decoder, fine-tuned for saliency, fine-tuned for scene classification.  This module holds
the comparisons, each usable on its own:

* :func:`count_table` / :func:`changed_units` - detector counts per concept and layer side by side
  and the units whose label changed, from dissection run folders (``units.csv``).
* :func:`per_image_tallies` + :func:`bootstrap_count_difference` - a paired bootstrap over images
  of the difference in detector counts between two runs on the same images.  Each unit keeps the
  label its run assigned; the bootstrap re-estimates its IoU on resampled images, so the interval
  shows how much of a count difference the image sample alone could produce (conditional on the
  label assignment; Efron & Tibshirani 1993, percentile intervals).
* :func:`category_preference` - share of predicted saliency mass (or of fixations) that falls on
  each concept region, divided by the region's share of the image area (1 = no preference).
* :func:`collect_activations` + :func:`cka_matrix` - linear CKA between variants per layer
  (:mod:`neuroprobe.cka`), the basis of the task-vs-domain analysis.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .errors import UserError
from .io import read_csv

__all__ = ["Run", "load_run", "count_table", "changed_units", "per_image_tallies",
           "bootstrap_count_difference", "category_preference", "fixation_preference",
           "collect_activations", "cka_matrix"]


@dataclass
class Run:
    """A dissection run folder: its unit rows and summary."""

    path: Path
    units: list
    summary: dict

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def iou_threshold(self) -> float:
        cfg = self.summary.get("config", {})
        return float(cfg.get("iou_threshold", 0.04))


def load_run(path) -> Run:
    """Read ``units.csv`` and ``summary.json`` of a dissection run folder."""
    path = Path(path)
    units_csv, summary_json = path / "units.csv", path / "summary.json"
    if not units_csv.is_file() or not summary_json.is_file():
        raise UserError(f"{path} is not a dissection run folder (units.csv and summary.json are "
                        "needed)", hint="pass the --out folder of `neuroprobe dissect`")
    _, rows = read_csv(units_csv, ("layer", "unit", "label", "category", "score", "detector"),
                       format_hint="rerun `neuroprobe dissect` into this folder")
    for line, r in enumerate(rows, start=2):
        try:
            r["unit"] = int(r["unit"])
            r["score"] = float(r["score"])
            r["detector"] = int(float(r["detector"]))
        except (TypeError, ValueError):
            raise UserError(f"{units_csv}, line {line}: unit, score and detector must be "
                            "numbers", hint="rerun `neuroprobe dissect` into this folder") from None
    try:
        summary = json.loads(summary_json.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{summary_json} is not valid JSON ({err})") from None
    return Run(path, rows, summary)


def detector_counts(run: Run) -> dict:
    """``{(layer, label): (category, count)}`` of detector units."""
    out: dict = {}
    for r in run.units:
        if r["detector"]:
            key = (r["layer"], r["label"])
            cat, n = out.get(key, (r["category"], 0))
            out[key] = (cat, n + 1)
    return out


def count_table(runs: Sequence[Run]) -> list[dict]:
    """Detector counts per (layer, concept) for every run, with the difference last - first."""
    counts = [detector_counts(r) for r in runs]
    keys = sorted(set().union(*counts), key=lambda k: (k[0], k[1]))
    rows = []
    for layer, label in keys:
        cat = next(c[(layer, label)][0] for c in counts if (layer, label) in c)
        row = {"layer": layer, "label": label, "category": cat}
        for run, c in zip(runs, counts):
            row[run.name] = c.get((layer, label), (cat, 0))[1]
        row["difference"] = row[runs[-1].name] - row[runs[0].name]
        rows.append(row)
    return rows


def changed_units(a: Run, b: Run) -> list[dict]:
    """Units (same layer and index) whose label or detector status differs between two runs."""
    index = {(r["layer"], r["unit"]): r for r in b.units}
    out = []
    for ra in a.units:
        rb = index.get((ra["layer"], ra["unit"]))
        if rb is None:
            continue
        if ra["detector"] or rb["detector"]:
            la = ra["label"] if ra["detector"] else ""
            lb = rb["label"] if rb["detector"] else ""
            if la != lb:
                out.append({"layer": ra["layer"], "unit": ra["unit"], "run_a": a.name,
                            "label_a": la, "score_a": ra["score"], "run_b": b.name,
                            "label_b": lb, "score_b": rb["score"]})
    return out


# -- paired bootstrap over images -----------------------------------------------------------------

def per_image_tallies(model, dataset, layer: str, thresholds: np.ndarray, labels: np.ndarray,
                      *, denominator: str = "netdissect", batch_size: int = 16,
                      device="cpu", skip: Sequence[int] = ()) -> dict:
    """Per-image intersection, activation and truth counts of each unit for its own label.

    Parameters
    ----------
    thresholds : (U,) activation thresholds of the run.
    labels : (U,) global label id assigned to each unit (0 = none; such units get zeros).
    skip : indices of images to leave out (those a run skipped as unreadable: the ``index`` of
        each entry of ``summary["skipped"]``; for a paired comparison, the union of both runs').

    Returns
    -------
    dict with ``inter``, ``act``, ``truth``: int64 arrays ``(N_images, U)``.
    """
    import torch

    from .concepts.base import collate
    from .hooks import Recorder
    from .tally import iou_counts, label_counts

    table = dataset.labels
    cat_of = torch.from_numpy(table.category_index())
    L, C = table.max_id + 1, len(table.categories)
    thr = torch.as_tensor(np.asarray(thresholds, dtype=np.float32))
    lab = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    units = len(lab)
    cat_u = cat_of[lab.clamp(min=0)].clamp(min=0)
    inter_all, act_all, truth_all = [], [], []
    model = model.eval().to(device)
    left_out = {int(i) for i in skip}
    order = [i for i in range(len(dataset)) if i not in left_out]
    for start in range(0, len(order), batch_size):
        batch = collate([dataset[i] for i in order[start:start + batch_size]])
        with torch.no_grad(), Recorder(model, layer, stop=True) as rec:
            model(batch["image"].to(device))
        maps = rec[layer].float().cpu()
        for b in range(maps.shape[0]):
            inter, act = iou_counts(maps[b:b + 1], thr, batch["layers"][b:b + 1],
                                    batch["whole"][b:b + 1], batch["categories"][b:b + 1],
                                    cat_of, L, C, denominator)
            g = label_counts(batch["layers"][b:b + 1], batch["whole"][b:b + 1], L)
            idx = torch.arange(units)
            inter_all.append(inter[idx, lab].numpy())
            act_all.append(act[idx, cat_u].numpy() if denominator != "all" else act[:, 0].numpy())
            truth_all.append(g[lab].numpy())
    out = {"inter": np.stack(inter_all), "act": np.stack(act_all), "truth": np.stack(truth_all)}
    none = lab.numpy() == 0
    for k in out:
        out[k][:, none] = 0
    return out


def _iou(t: dict, w: np.ndarray) -> np.ndarray:
    i = w @ t["inter"]
    a = w @ t["act"]
    g = w @ t["truth"]
    den = a + g - i
    return np.divide(i, den, out=np.zeros_like(i, dtype=np.float64), where=den > 0)


def bootstrap_count_difference(a: dict, b: dict, labels_a: Sequence[str],
                               labels_b: Sequence[str], iou_threshold: float = 0.04,
                               n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> list:
    """Paired bootstrap over images of ``count_b(concept) - count_a(concept)``.

    ``a``/``b`` are :func:`per_image_tallies` of the two runs on the **same images in the same
    order**; ``labels_a``/``labels_b`` the label name of each unit ("" = none).  Returns rows
    with the observed difference, the bootstrap mean and the percentile interval.
    """
    n = a["inter"].shape[0]
    if b["inter"].shape[0] != n:
        raise ValueError("both runs must be tallied on the same images")
    rng = np.random.default_rng(seed)
    concepts = sorted({x for x in list(labels_a) + list(labels_b) if x})
    la, lb = np.asarray(labels_a, dtype=object), np.asarray(labels_b, dtype=object)

    def counts(t, lab_names, w):
        det = _iou(t, w) >= iou_threshold
        return np.array([int(np.sum(det & (lab_names == c))) for c in concepts])

    ones = np.ones(n)
    observed = counts(b, lb, ones) - counts(a, la, ones)
    draws = np.empty((n_boot, len(concepts)))
    for i in range(n_boot):
        w = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        draws[i] = counts(b, lb, w) - counts(a, la, w)
    lo, hi = np.percentile(draws, [100 * (1 - level) / 2, 100 * (1 + level) / 2], axis=0)
    return [{"concept": c, "difference": int(observed[j]), "bootstrap_mean": float(
        draws[:, j].mean()), "ci_low": float(lo[j]), "ci_high": float(hi[j]),
        "n_images": n, "n_boot": n_boot} for j, c in enumerate(concepts)]


# -- category preference -------------------------------------------------------------------------

def _region_ids(batch, which_layers):
    return batch["layers"] if which_layers is None else batch["layers"][:, list(which_layers)]


def category_preference(model, dataset, *, layers: Sequence[int] | None = None,
                        batch_size: int = 16, device="cpu", limit: int | None = None) -> dict:
    """Saliency mass on each label's regions relative to their area, pooled over images.

    ``preference[l] = (sum of saliency inside regions of l / total saliency) /
    (pixels of l / all pixels)``, with the model's saliency map (``(B,1,H,W)``, non-negative)
    averaged down to the mask size.  1 means "as much as its area", >1 a preference.
    Returns ``{label_id: preference}``.
    """
    import torch
    import torch.nn.functional as F

    from .concepts.base import collate

    L = dataset.labels.max_id + 1
    mass = torch.zeros(L, dtype=torch.float64)
    area = torch.zeros(L, dtype=torch.float64)
    total_mass = 0.0
    total_area = 0.0
    n = len(dataset) if limit is None else min(limit, len(dataset))
    model = model.eval().to(device)
    for start in range(0, n, batch_size):
        batch = collate([dataset[i] for i in range(start, min(n, start + batch_size))])
        with torch.no_grad():
            s = model(batch["image"].to(device)).float().cpu()
        if s.dim() != 4 or s.shape[1] != 1:
            raise UserError("category preference needs a saliency model (output (B,1,H,W))")
        s = F.adaptive_avg_pool2d(s.clamp(min=0), batch["layers"].shape[-2:])[:, 0]
        regions = _region_ids(batch, layers)
        for k in range(regions.shape[1]):
            ids = regions[:, k]
            m = ids > 0
            mass += torch.bincount(ids[m], weights=s[m].double(), minlength=L)[:L]
            area += torch.bincount(ids[m], minlength=L)[:L].double()
        total_mass += float(s.sum())
        total_area += s.numel()
    return _ratio(mass, area, total_mass, total_area)


def fixation_preference(dataset, *, layers: Sequence[int] | None = None,
                        limit: int | None = None) -> dict:
    """The same ratio for the dataset's (human or synthetic) fixations: share of fixations
    inside each label's regions over the regions' share of the area."""
    import torch

    from .tally import fixation_pixels

    L = dataset.labels.max_id + 1
    hits = torch.zeros(L, dtype=torch.float64)
    area = torch.zeros(L, dtype=torch.float64)
    total_fix = 0.0
    total_area = 0.0
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in range(n):
        item = dataset[i]
        fx = item.get("fixations")
        if fx is None:
            raise UserError(f"concept set {dataset.name!r} has no fixations")
        regions = item["layers"] if layers is None else item["layers"][list(layers)]
        h, w = regions.shape[-2:]
        pix = fixation_pixels(fx, item["image"].shape[-2:], (h, w))
        for k in range(regions.shape[0]):
            ids = regions[k].reshape(-1)
            at = ids[pix]
            hits += torch.bincount(at[at > 0], minlength=L)[:L].double()
            area += torch.bincount(ids[ids > 0], minlength=L)[:L].double()
        total_fix += len(pix)
        total_area += h * w
    return _ratio(hits, area, total_fix, total_area)


def _ratio(mass, area, total_mass, total_area) -> dict:
    out = {}
    for lid in torch_nonzero(area):
        share_m = float(mass[lid]) / total_mass if total_mass > 0 else float("nan")
        share_a = float(area[lid]) / total_area
        out[int(lid)] = share_m / share_a if share_a > 0 else float("nan")
    return out


def torch_nonzero(x) -> list:
    return [int(i) for i in x.nonzero().flatten().tolist()]


# -- representation similarity -------------------------------------------------------------------

def collect_activations(model, dataset, layers: Sequence[str], *, limit: int | None = None,
                        batch_size: int = 16, device="cpu", reduce: str = "flatten") -> dict:
    """Activations of ``layers`` for the first ``limit`` images, as float32 rows per layer."""
    import torch

    from .cka import as_rows
    from .concepts.base import collate
    from .hooks import Recorder

    n = len(dataset) if limit is None else min(limit, len(dataset))
    out: dict = {layer: [] for layer in layers}
    model = model.eval().to(device)
    for start in range(0, n, batch_size):
        batch = collate([dataset[i] for i in range(start, min(n, start + batch_size))])
        with torch.no_grad(), Recorder(model, list(layers), stop=True) as rec:
            model(batch["image"].to(device))
        for layer in layers:
            out[layer].append(as_rows(rec[layer].float().cpu(), reduce).astype(np.float32))
    return {layer: np.concatenate(v) for layer, v in out.items()}


def cka_matrix(activations: Mapping[str, np.ndarray], *, unbiased: bool = True) -> list[dict]:
    """Linear CKA between every pair of named representations of the same images."""
    from .cka import linear_cka

    names = list(activations)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            rows.append({"a": a, "b": b, "cka": linear_cka(activations[a], activations[b],
                                                           unbiased=unbiased),
                         "estimator": "unbiased" if unbiased else "biased",
                         "n_images": int(activations[a].shape[0])})
    return rows
