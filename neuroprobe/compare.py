"""Compare variants of one model: concept shift, category preference, representation similarity.

The study (He et al., CVPR 2019) compares one encoder in several states: pretrained, frozen with a
saliency decoder, fine-tuned for saliency, fine-tuned for scene classification.  This module holds
the comparisons, each usable on its own:

* :func:`count_table` / :func:`changed_units` - detector counts per concept and layer side by side
  and the units whose label changed, from dissection run folders (``units.csv``).
* :func:`bootstrap_count_difference` - a paired bootstrap over images of the difference in
  detector counts between two runs on the same images, from the per-image counts each run's
  tally pass saved (``image_counts.npz``; no model is run again).  Each unit keeps the label its
  run assigned; the bootstrap re-estimates its IoU on resampled images, so the interval shows
  how much of a count difference the image sample alone could produce (conditional on the
  label assignment; Efron & Tibshirani 1993, percentile intervals).  Its estimate is the count
  table's difference.
* :func:`check_comparable`, :func:`check_model_files` - refuse runs that measure different
  things, and runs whose model file changed.
* :func:`category_preference` - share of predicted saliency mass (or of fixations) that falls on
  each concept region, divided by the region's share of the image area (1 = no preference).
* :func:`collect_activations` + :func:`cka_matrix` - linear CKA between variants per layer
  (:mod:`neuroprobe.cka`), the basis of the task-vs-domain analysis.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .errors import UserError
from .run import Run, load_run

__all__ = ["Run", "load_run", "count_table", "changed_units", "check_comparable",
           "check_model_files", "bootstrap_count_difference", "unit_ious", "category_preference", "fixation_preference",
           "collect_activations", "cka_matrix"]


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

#: configuration keys that must agree for runs to be compared (see :func:`check_comparable`)
COMPARABLE = ("concepts", "mode", "quantile", "iou_threshold", "denominator")
#: keys of ``config["concepts"]`` that say how the set was opened, not what it holds
_OPENED_WITH = ("spec", "root", "limit", "overrides")


def _what(cfg: dict, key: str):
    v = cfg.get(key)
    if key == "concepts" and isinstance(v, dict):
        return {k: x for k, x in v.items() if k not in _OPENED_WITH}
    return v


def _describe(cfg: dict, key: str) -> str:
    if key == "concepts":
        c = cfg.get("concepts") or {}
        return f"{c.get('name', '?')} ({c.get('n', '?')} images)"
    return repr(cfg.get(key))


def check_comparable(runs: Sequence[Run]) -> None:
    """Refuse runs made on different concept sets (or numbers of images), modes, quantiles,
    IoU thresholds or denominators: their detector counts do not measure the same thing."""
    base = runs[0].summary.get("config") or {}
    for run in runs[1:]:
        cfg = run.summary.get("config") or {}
        for key in COMPARABLE:
            if _what(cfg, key) != _what(base, key):
                raise UserError(
                    f"runs {runs[0].path} and {run.path} differ in {key.replace('_', ' ')}: "
                    f"{_describe(base, key)} vs {_describe(cfg, key)}",
                    hint="compare dissections made with the same concept set and options, or "
                    "pass --force")


def check_model_files(runs: Sequence[Run]) -> None:
    """Refuse a run whose model file changed since it was dissected (its recorded SHA-256)."""
    from .io import sha256_file

    for run in runs:
        model = (run.summary.get("config") or {}).get("model") or {}
        path, recorded = model.get("file"), model.get("sha256")
        if not path or not recorded or not Path(path).is_file():
            continue
        found = sha256_file(path)
        if found != recorded:
            raise UserError(f"the model file {path} of run {run.path} changed since the run "
                            f"(sha256 {found[:16]}, the run recorded {recorded[:16]})",
                            hint="restore the model file, or dissect the model again into a "
                            "new --out folder")


def bootstrap_weights(n: int, n_boot: int, rng) -> np.ndarray:
    """``(n_boot, n)`` resampling weights: how often each image is drawn in each resample of
    ``n`` images with replacement."""
    idx = rng.integers(0, n, (n_boot, n))
    w = np.zeros((n_boot, n))
    np.add.at(w, (np.arange(n_boot)[:, None], idx), 1.0)
    return w


def unit_ious(table: dict, pos: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``(K, U)`` IoU of every unit for its own label under ``K`` image weightings.

    ``table``: one layer of :func:`neuroprobe.image_counts.read_image_counts`; ``pos``: the
    column of ``weights`` of each data-set index.  ``IoU_u(w) = sum_b w_b inter_bu /
    (sum_b w_b act_bu + sum_b w_b truth_b,l_u - sum_b w_b inter_bu)``; with all weights one
    the IoU of units.csv, bit for bit (the same float64 division of the same integer sums).
    """
    from scipy.sparse import csr_matrix

    n = weights.shape[1]
    lab = table["label"].astype(np.int64)
    U, L = len(lab), int(max(lab.max(initial=0), table["truth_label"].max(initial=0))) + 1
    rows = pos[table["image"]]
    inter = weights @ csr_matrix((table["inter"].astype(np.float64), (rows, table["unit"])),
                                 shape=(n, U))
    act = weights @ csr_matrix((table["act"].astype(np.float64), (rows, table["unit"])),
                               shape=(n, U))
    truth = weights @ csr_matrix((table["truth"].astype(np.float64),
                                  (pos[table["truth_image"]], table["truth_label"])),
                                 shape=(n, L))
    inter, act = np.asarray(inter), np.asarray(act)
    union = act + np.asarray(truth)[:, lab] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    iou[:, (lab == 0) | ~table["counted"].astype(bool)] = 0.0
    return iou


def _detector_counts(iou, names, labels, threshold) -> np.ndarray:
    """``(K, len(labels))`` detector units per label: IoU at least the threshold (and > 0)."""
    det = (iou >= threshold) & (iou > 0)
    return np.stack([det[:, names == c].sum(1) for c in labels], axis=1) if labels else \
        np.zeros((len(iou), 0), dtype=np.int64)


def bootstrap_count_difference(a: Run, b: Run, *, n_boot: int = 1000, seed: int = 0,
                               level: float = 0.95, rows: Sequence[dict] | None = None) -> list:
    """Paired bootstrap over images of ``count_b - count_a`` for every row of the count table.

    Resamples the per-image counts both runs saved (``image_counts.npz``, written by the tally
    pass of :func:`neuroprobe.dissect.dissect`); no model runs.  Each resample draws the
    images (the union of both runs' images) with replacement and gives both runs the same
    weights; each unit keeps its run's label and is a detector when its IoU, recomputed from the
    weighted counts, reaches the run's IoU threshold.  The estimate is the difference of the
    count table (all weights one: the runs' own tallies, so it equals ``counts.csv`` by
    construction); the interval is the percentile interval of the resampled differences
    (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13), conditional on
    the label assignment.

    Parameters
    ----------
    a, b : the runs (:func:`load_run`) on the same concept set and options.
    n_boot, seed, level : resamples, random seed, interval coverage.
    rows : the rows to estimate (default: :func:`count_table` of ``[a, b]``: the labels either
        run detects in each layer).

    Returns
    -------
    list of dict: ``layer, label, category, count_a, count_b, difference, ci_low, ci_high``.
    """
    from .image_counts import read_image_counts

    rows = count_table([a, b]) if rows is None else rows
    ca, cb = read_image_counts(a.path), read_image_counts(b.path)
    images = np.union1d(ca["images"], cb["images"])
    pos = np.zeros(int(images.max(initial=-1)) + 1, dtype=np.int64)
    pos[images] = np.arange(len(images))
    rng = np.random.default_rng(seed)
    out = []
    for layer in dict.fromkeys(r["layer"] for r in rows):
        want = [r for r in rows if r["layer"] == layer]
        labels = [r["label"] for r in want]
        counts = []
        for run, c in ((a, ca), (b, cb)):
            if layer not in c:
                raise UserError(f"run {run.path} has no per-image counts of layer {layer!r}")
            names = np.array([u["label"] for u in sorted(
                (u for u in run.units if u["layer"] == layer), key=lambda u: u["unit"])],
                dtype=object)
            one = _detector_counts(unit_ious(c[layer], pos, np.ones((1, len(images)))),
                                   names, labels, run.iou_threshold)[0]
            expected = [r[run.name] for r in want]
            if list(one) != expected:
                raise UserError(f"the per-image counts of run {run.path} do not add up to its "
                                f"units.csv in layer {layer!r}", hint="the run folder was "
                                "edited or mixed with another run; dissect again")
            counts.append((c[layer], names, run.iou_threshold, one))
        draws = []
        for s in range(0, n_boot, 100):   # bounded memory: 100 resamples at a time
            w = bootstrap_weights(len(images), min(100, n_boot - s), rng)
            ka, kb = (_detector_counts(unit_ious(t, pos, w), nm, labels, thr)
                      for t, nm, thr, _ in counts)
            draws.append(kb - ka)
        draws = np.concatenate(draws) if draws else np.zeros((0, len(labels)))
        lo, hi = np.percentile(draws, [100 * (1 - level) / 2, 100 * (1 + level) / 2], axis=0)
        for j, r in enumerate(want):
            out.append({"layer": layer, "label": r["label"], "category": r["category"],
                        "count_a": int(counts[0][3][j]), "count_b": int(counts[1][3][j]),
                        "difference": int(counts[1][3][j] - counts[0][3][j]),
                        "ci_low": float(lo[j]), "ci_high": float(hi[j])})
    return out


# -- category preference -------------------------------------------------------------------------

def _region_ids(batch, which_layers):
    return batch["layers"] if which_layers is None else batch["layers"][:, list(which_layers)]


def category_preference(model, dataset, *, layers: Sequence[int] | None = None,
                        batch_size: int = 16, device="cpu", limit: int | None = None) -> dict:
    """Saliency mass on each label's regions relative to their area, pooled over images.

    ``preference[l] = (sum of saliency inside regions of l / total saliency) /
    (pixels of l / all pixels)``, with the model's saliency map (``(B,1,H,W)``, non-negative)
    averaged down to the mask size.  1 means "as much as its area", >1 a preference.
    One pass of :func:`neuroprobe.engine.run_pass` over the first ``limit`` images.
    Returns ``{label_id: preference}``.
    """
    import torch
    import torch.nn.functional as F

    from .engine import OUTPUT, run_pass

    L = dataset.labels.max_id + 1
    mass = torch.zeros(L, dtype=torch.float64)
    area = torch.zeros(L, dtype=torch.float64)
    total = {"mass": 0.0, "area": 0.0}
    n = len(dataset) if limit is None else min(limit, len(dataset))

    def on_batch(acts, batch, j):
        if not acts:
            return
        s = acts[OUTPUT].float().cpu()
        if s.dim() != 4 or s.shape[1] != 1:
            raise UserError("category preference needs a saliency model (output (B,1,H,W))")
        s = F.adaptive_avg_pool2d(s.clamp(min=0), batch["layers"].shape[-2:])[:, 0]
        regions = _region_ids(batch, layers)
        for k in range(regions.shape[1]):
            ids = regions[:, k]
            m = ids > 0
            mass.add_(torch.bincount(ids[m], weights=s[m].double(), minlength=L)[:L])
            area.add_(torch.bincount(ids[m], minlength=L)[:L].double())
        total["mass"] += float(s.sum())
        total["area"] += s.numel()

    run_pass(model.eval().to(device), dataset, (), on_batch, n=n, batch_size=batch_size,
             device=device)
    return _ratio(mass, area, total["mass"], total["area"])


def fixation_preference(dataset, *, layers: Sequence[int] | None = None,
                        limit: int | None = None) -> dict:
    """The same ratio for the dataset's (human or synthetic) fixations: share of fixations
    inside each label's regions over the regions' share of the area."""
    import torch

    from .engine import run_pass
    from .tally import fixation_pixels

    L = dataset.labels.max_id + 1
    hits = torch.zeros(L, dtype=torch.float64)
    area = torch.zeros(L, dtype=torch.float64)
    total = {"fix": 0.0, "area": 0.0}
    n = len(dataset) if limit is None else min(limit, len(dataset))

    def on_batch(acts, batch, j):
        for b, fx in enumerate(batch.get("fixations") or ()):
            if fx is None:
                raise UserError(f"concept set {dataset.name!r} has no fixations")
            regions = batch["layers"][b] if layers is None else batch["layers"][b][list(layers)]
            h, w = regions.shape[-2:]
            pix = fixation_pixels(fx, batch["image"].shape[-2:], (h, w))
            for k in range(regions.shape[0]):
                ids = regions[k].reshape(-1)
                at = ids[pix]
                hits.add_(torch.bincount(at[at > 0], minlength=L)[:L].double())
                area.add_(torch.bincount(ids[ids > 0], minlength=L)[:L].double())
            total["fix"] += len(pix)
            total["area"] += h * w

    run_pass(None, dataset, (), on_batch, n=n, batch_size=16)   # the data alone, no model
    return _ratio(hits, area, total["fix"], total["area"])


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
    """Activations of ``layers`` for the first ``limit`` images, as float32 rows per layer
    (one pass of :func:`neuroprobe.engine.run_pass`)."""
    from .cka import as_rows
    from .engine import run_pass

    n = len(dataset) if limit is None else min(limit, len(dataset))
    out: dict = {layer: [] for layer in layers}

    def on_batch(acts, batch, j):
        for layer in (layers if acts else ()):
            out[layer].append(as_rows(acts[layer].float().cpu(), reduce).astype(np.float32))

    run_pass(model.eval().to(device), dataset, list(layers), on_batch, n=n,
             batch_size=batch_size, device=device, labels=False)
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
