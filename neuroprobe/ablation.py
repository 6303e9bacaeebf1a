"""Ablation: remove units and measure what the model's output loses.

Dissection says which units *look like* a concept; ablation asks whether the model *uses* them.
:func:`ablate` runs a model over a concept set with sets of units removed, one set at a time,
and measures its output on every image against the unablated model on the same image:

* **saliency models** (output ``(B, 1, H, W)``): NSS, AUC-Judd and CC against the image's
  fixations (:mod:`neuroprobe.saliency.metrics`, protocol ``exact`` by default), and, for a
  concept, the share of the map's mass inside the concept's regions (``mass_inside``) and the
  NSS of the map at the fixations inside and outside those regions (``nss_inside``,
  ``nss_outside``: the map upsampled to the image and z-scored over it with ``np.std``,
  ddof 0, as region-NSS of He et al. 2019, pooled over the image's fixations in or out of the
  concept's regions);
* **scene models** (output ``(B, C)`` logits): class accuracy where the image's scene label is
  one of the model's classes, and every class's logit.

Removal is ``"zero"`` (the units' maps set to 0, :func:`neuroprobe.hooks.ablate`) or
``"mean"`` (each unit's map set to its mean activation over the data, computed by a first pass;
the values are returned in :attr:`AblationResult.means`).  Every pass over the data goes through
:func:`neuroprobe.engine.run_pass`: the images are read once and each batch runs the unablated
model and every unit set (hooks with an ``edit``) on them.

Per-image values are kept, so every difference ``ablated - baseline`` has a **paired bootstrap
interval over images** (percentile interval, Efron & Tibshirani 1993, ch. 13; the images drawn
with replacement, the same draws for every set and measure, seeded).  An image where a measure is
undefined (no fixation inside the concept's regions, no scene label) is left out of that
measure's mean and of its resamples.

Controls: :func:`random_units` draws sets of the same size from the same layers (repeated,
seeded; the tested units excluded); :func:`top_nss_units` ranks a layer's units by region-NSS
for a concept (a dissection pass with ``score="region-nss"``).  :func:`ablate_run` is the whole
job of ``neuroprobe ablate RUN``: units from a dissection run, controls, ``ablation.csv``,
``ablation.png`` and ``summary.md``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .compare import bootstrap_weights
from .concepts.base import collate
from .dissect import dissect
from .engine import OUTPUT, forward, model_input, run_pass
from .engine.runner import probe_shapes
from .errors import UserError, suggest
from .hooks import Recorder
from .saliency.metrics import evaluate_map, ground_truths
from .tally import fixation_pixels
from .utils import model_device

__all__ = ["ablate", "AblationResult", "random_units", "top_nss_units", "concept_ids",
           "paired_bootstrap", "parse_unit_list", "SALIENCY_MEASURES", "REGION_MEASURES",
           "MEASURE_NAMES", "MODES", "RANDOM", "VERSUS"]

MODES = ("zero", "mean")
#: measures of a saliency model against the fixations
SALIENCY_MEASURES = ("nss", "auc_judd", "cc")
#: measures inside / outside the concept's regions (need a concept)
REGION_MEASURES = ("mass_inside", "nss_inside", "nss_outside")
MEASURE_NAMES = {"nss": "NSS", "auc_judd": "AUC-Judd", "cc": "CC",
                 "mass_inside": "saliency mass inside the concept",
                 "nss_inside": "NSS at fixations inside the concept",
                 "nss_outside": "NSS at fixations outside the concept",
                 "accuracy": "class accuracy"}
#: the set of the random repeats pooled (per image, the mean over repeats)
RANDOM = "random"
#: name of the rows comparing the first set with the pooled random control
VERSUS = "vs-random"


@dataclass
class AblationResult:
    """What :func:`ablate` measured.

    ``rows``: ``set, measure, baseline, ablated, difference, ci_low, ci_high, n_images`` per
    unit set and measure (``difference = ablated - baseline``, a paired bootstrap interval);
    ``values``: ``{"baseline" or set name: {measure: (N,) per-image values}}`` (NaN where
    undefined); ``sets``: ``{set name: [(layer, unit), ...]}``; ``means``: per layer the
    ``(U,)`` mean activations used by mean ablation; ``ids``: the images' ids; ``config``: the
    settings (mode, task, protocol, bootstrap, seed, ...).
    """

    rows: list
    values: dict
    sets: dict
    ids: list
    config: dict
    means: dict = field(default_factory=dict)


# -- unit sets ----------------------------------------------------------------------------------

def parse_unit_list(units) -> list:
    """``"layer:1,2"`` / ``"layer:0-3"`` / ``[(layer, unit), ...]`` -> ``[(layer, unit), ...]``
    (a unit without a layer takes the layer of the unit before it: ``block4:1,5,9``)."""
    if not isinstance(units, str):
        out = [(str(a), int(b)) for a, b in units]
        if not out:
            raise UserError("no units given", hint="e.g. --units block4:12,40")
        return out
    out, layer = [], None
    for item in (s.strip() for s in units.split(",")):
        if not item:
            continue
        lay, sep, idx = item.rpartition(":")
        layer = lay if sep else layer
        try:
            if layer is None or not idx:
                raise ValueError
            lo, dash, hi = idx.partition("-")
            out += [(layer, u) for u in (range(int(lo), int(hi) + 1) if dash else [int(lo)])]
        except ValueError:
            raise UserError(f"bad unit {item!r}", hint="write units as LAYER:I,J or LAYER:I-J, "
                            "e.g. --units block4:12,40") from None
    if not out:
        raise UserError("no units given", hint="e.g. --units block4:12,40")
    return list(dict.fromkeys(out))   # a unit named twice is removed once


def _layer_sizes(model, dataset, layers, device) -> dict:
    """``{layer: number of channels}`` from one forward pass on the first image."""
    return {k: v[0] for k, v in probe_shapes(model, dataset, list(layers), None,
                                             device).items()}


def check_units(units, sizes: Mapping[str, int]) -> None:
    """Refuse a unit index outside its layer (one line naming the unit and the range)."""
    for layer, u in units:
        if not 0 <= u < sizes[layer]:
            raise UserError(f"unit {layer}:{u} is out of range: layer {layer!r} has "
                            f"{sizes[layer]} units", hint=f"give units 0 to {sizes[layer] - 1}")


def random_units(units, sizes: Mapping[str, int], repeats: int, seed: int = 0) -> list:
    """``repeats`` random sets like ``units``: as many units of each layer, drawn without
    replacement from that layer's other units (``numpy.random.default_rng(seed)``)."""
    rng = np.random.default_rng(seed)
    per_layer: dict = {}
    for layer, u in units:
        per_layer.setdefault(layer, set()).add(int(u))
    out = []
    for _ in range(int(repeats)):
        drawn = []
        for layer, taken in per_layer.items():
            pool = np.array([u for u in range(sizes[layer]) if u not in taken])
            if len(pool) < len(taken):
                raise UserError(f"layer {layer!r} has {sizes[layer]} units: too few to draw "
                                f"{len(taken)} random units besides the {len(taken)} tested",
                                hint="test fewer units or leave out the random control")
            drawn += [(layer, int(u)) for u in np.sort(rng.choice(pool, len(taken),
                                                                  replace=False))]
        out.append(drawn)
    return out


def concept_ids(dataset, concept: str) -> list:
    """Label ids named ``concept`` in the concept set (unknown: one line with suggestions)."""
    ids = [lab.id for lab in dataset.labels if lab.name == concept]
    if not ids:
        names = sorted({lab.name for lab in dataset.labels})
        raise UserError(f"unknown concept {concept!r} in concept set "
                        f"{getattr(dataset, 'name', '?')!r}",
                        hint=suggest(concept, names, "concept"))
    return ids


def top_nss_units(model, dataset, layer: str, concept: str, k: int, *, batch_size: int = 16,
                  device=None, limit: int | None = None) -> list:
    """The ``k`` units of ``layer`` with the highest region-NSS for ``concept`` on ``dataset``
    (the study's definition, :func:`neuroprobe.dissect.dissect` with ``score="region-nss"``;
    several labels of that name: their mean).  Returns ``[(layer, unit), ...]`` best first."""

    ids = concept_ids(dataset, concept)
    res = dissect(model, dataset, [layer], score="region-nss", batch_size=batch_size,
                  device=device, limit=limit, progress=False)
    mean = next(iter(res.stats.values()))["nss"].mean().cpu().numpy()[:, ids]
    score = np.where(np.isnan(mean), -np.inf, mean).mean(1)
    if not np.isfinite(score).any():
        raise UserError(f"no fixation falls inside a {concept!r} region of concept set "
                        f"{getattr(dataset, 'name', '?')!r}, so no unit has a region-NSS for it",
                        hint="leave out the top-nss control (--control random) or use more "
                        "images")
    order = np.argsort(-score, kind="stable")[:k]
    return [(layer, int(u)) for u in order]


# -- the edits ----------------------------------------------------------------------------------

def _set_to(units: Sequence[int], values):
    """An ``edit`` that sets each unit's map to a constant (zero or its mean)."""
    idx = list(units)

    def fn(output, name):
        out = output.clone()
        out[:, idx] = torch.as_tensor(values, dtype=out.dtype, device=out.device)[:, None, None]
        return out

    return fn


def _edits(units, mode: str, means: dict) -> dict:
    by_layer: dict = {}
    for layer, u in units:
        by_layer.setdefault(layer, []).append(int(u))
    return {layer: _set_to(us, [0.0] * len(us) if mode == "zero" else
                           [float(means[layer][u]) for u in us]) for layer, us in by_layer.items()}


def unit_means(model, dataset, layers, *, n, batch_size, device) -> dict:
    """Each unit's mean activation over the first ``n`` images (all positions): one pass."""
    sums: dict = {layer: 0.0 for layer in layers}
    counts: dict = {layer: 0 for layer in layers}

    def on_batch(acts, batch, j):
        for layer, a in acts.items():
            sums[layer] = sums[layer] + a.double().sum((0, 2, 3)).cpu()
            counts[layer] += a.shape[0] * a.shape[2] * a.shape[3]

    run_pass(model, dataset, list(layers), on_batch, n=n, batch_size=batch_size, device=device,
             labels=False)
    return {layer: (sums[layer] / counts[layer]).numpy() for layer in layers}


# -- what is measured on one image ---------------------------------------------------------------

def _z_at(smap: np.ndarray, fx: np.ndarray) -> np.ndarray:
    """The map z-scored over the image (``np.std``, ddof 0; a constant map gives 0) at each
    fixation's nearest pixel."""
    H, W = smap.shape
    sd = smap.std()
    z = (smap - smap.mean()) / sd if sd > 0 else np.zeros_like(smap)
    cols = np.clip(np.floor(fx[:, 0] + 0.5).astype(np.int64), 0, W - 1)
    rows = np.clip(np.floor(fx[:, 1] + 0.5).astype(np.int64), 0, H - 1)
    return z[rows, cols]


def region_measures(smap: np.ndarray, pooled: np.ndarray, fx, region: np.ndarray) -> dict:
    """``mass_inside``, ``nss_inside``, ``nss_outside`` of one image.

    ``smap``: ``(H, W)`` saliency map at the image size; ``pooled``: the non-negative map
    averaged down to the mask size; ``fx``: ``(N, 2)`` fixations ``(x, y)`` in image pixels (or
    ``None``); ``region``: ``(h, w)`` bool, the concept's pixels at the mask size.  All three are
    NaN on an image without the concept; ``nss_inside`` / ``nss_outside`` are NaN where no
    fixation falls inside / outside its regions.
    """

    nan = float("nan")
    out = {"mass_inside": nan, "nss_inside": nan, "nss_outside": nan}
    if not region.any():
        return out
    total = float(pooled.sum())
    out["mass_inside"] = float(pooled[region].sum()) / total if total > 0 else nan
    if fx is None or not len(fx):
        return out
    z = _z_at(smap, fx)
    at = fixation_pixels(torch.as_tensor(fx), smap.shape, region.shape).numpy()
    inside = region.reshape(-1)[at]
    if inside.any():
        out["nss_inside"] = float(z[inside].mean())
    if (~inside).any():
        out["nss_outside"] = float(z[~inside].mean())
    return out


class _Measure:
    """Per-image measures of one batch of model outputs (saliency maps or logits)."""
    def __init__(self, task, dataset, concept, protocol, classes):
        self.task, self.protocol = task, protocol
        self.ids = np.array(concept_ids(dataset, concept)) if concept else None
        self.classes = list(classes) if classes else None
        self.labels = dataset.labels if task == "scene" else None

    def batch_context(self, batch) -> list:
        """What every unit set shares on each image of the batch (ground truth, regions)."""
    
        ctx = []
        H, W = batch["image"].shape[-2:]
        for b in range(len(batch["id"])):
            c = {"size": (int(H), int(W))}
            if self.task == "saliency":
                fx = batch["fixations"][b]
                c["fx"] = None if fx is None else fx.numpy().astype(np.float64)
                c["gt"] = None if c["fx"] is None or not len(c["fx"]) else \
                    ground_truths([c["fx"]], [(int(H), int(W))])[0]
                if self.ids is not None:
                    c["region"] = np.isin(batch["layers"][b].numpy(), self.ids).any(0)
            else:
                c["target"] = self._target(batch, b)
            ctx.append(c)
        return ctx

    def _target(self, batch, b):
        if self.classes is None or "whole" not in batch:
            return None
        for lid in batch["whole"][b].tolist():
            if lid and lid in self.labels and self.labels.name(lid) in self.classes:
                return self.classes.index(self.labels.name(lid))
        return None

    def __call__(self, out, ctx) -> list:
        if self.task == "scene":
            return [self._scene(out[b], c) for b, c in enumerate(ctx)]
        return self._saliency(out, ctx)

    def _scene(self, logits, c) -> dict:
        row = {"accuracy": float("nan") if c["target"] is None else
               float(int(logits.argmax()) == c["target"])}
        names = self.classes or [str(k) for k in range(len(logits))]
        row.update({f"logit:{n}": float(v) for n, v in zip(names, logits.tolist())})
        return row

    def _saliency(self, out, ctx) -> list:
    
    
        H, W = ctx[0]["size"] if ctx else out.shape[-2:]   # the maps at the image size
        maps = out.double()
        if tuple(maps.shape[-2:]) != (H, W):
            maps = F.interpolate(maps, size=(H, W), mode="bilinear", align_corners=False)
        pooled = None
        if self.ids is not None and ctx:
            pooled = F.adaptive_avg_pool2d(maps.clamp(min=0), ctx[0]["region"].shape)[:, 0]
            pooled = pooled.cpu().numpy()
        maps = maps[:, 0].cpu().numpy()
        rows = []
        for b, c in enumerate(ctx):
            if c["gt"] is None:
                row = {m: float("nan") for m in SALIENCY_MEASURES}
            else:
                row = evaluate_map(maps[b], c["gt"], self.protocol, list(SALIENCY_MEASURES))
            if pooled is not None:
                row.update(region_measures(maps[b], pooled[b], c["fx"], c["region"]))
            rows.append({k: float(v) for k, v in row.items()})
        return rows


# -- the paired bootstrap ------------------------------------------------------------------------

def paired_bootstrap(baseline, ablated, weights: np.ndarray | None, level: float = 0.95) -> dict:
    """Mean of ``baseline``, of ``ablated`` and of their paired difference over the images where
    both are defined, with a percentile interval of the difference over resamples of the images.

    ``weights``: ``(K, N)`` resampling weights (how often each image is drawn in each resample,
    :func:`neuroprobe.compare.bootstrap_weights`); the difference in resample ``k`` is
    ``sum_i w_ki d_i / sum_i w_ki`` over the defined images (a resample that draws none of them
    is left out).  ``None``: no interval (NaN).
    """
    b, a = np.asarray(baseline, np.float64), np.asarray(ablated, np.float64)
    ok = np.isfinite(b) & np.isfinite(a)
    nan = float("nan")
    out = {"baseline": nan, "ablated": nan, "difference": nan, "ci_low": nan, "ci_high": nan,
           "n_images": int(ok.sum())}
    if not ok.any():
        return out
    d = a[ok] - b[ok]
    out.update(baseline=float(b[ok].mean()), ablated=float(a[ok].mean()),
               difference=float(d.mean()))
    if weights is not None and len(weights):
        w = weights[:, ok]
        tot = w.sum(1)
        draws = (w @ d)[tot > 0] / tot[tot > 0]
        if len(draws):
            lo, hi = np.percentile(draws, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
            out.update(ci_low=float(lo), ci_high=float(hi))
    return out


def _pooled(values: dict, names: list) -> dict:
    """Per image and measure, the mean over the random repeats (NaN where all are NaN)."""
    out = {}
    for m in values[names[0]]:
        stack = np.stack([values[n][m] for n in names])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN images stay NaN
            out[m] = np.nanmean(stack, 0)
    return out


def _rows(values: dict, first: str, named: list, randoms: list, weights, level) -> list:
    rows = []
    order = list(named) + ([RANDOM, VERSUS] if randoms else []) + list(randoms)
    for name in order:
        base, abl = ("baseline", name) if name != VERSUS else (RANDOM, first)
        for m in values["baseline"]:
            r = paired_bootstrap(values[base][m], values[abl][m], weights, level)
            rows.append({"set": name, "measure": m, **r})
    return rows


# -- the job -------------------------------------------------------------------------------------

def _task(model, dataset, measures: str, device) -> str:
    """``"saliency"`` or ``"scene"`` from the model's output on the first image; the one line
    where the requested measures do not fit the output."""

    x = model_input(collate([dataset[0]])["image"], device, False)
    shape = tuple(forward(model, x, ())[OUTPUT].shape)
    found = "saliency" if len(shape) == 4 and shape[1] == 1 else \
        "scene" if len(shape) == 2 else None
    if measures not in ("auto", "saliency", "scene"):
        raise UserError(f"unknown measures {measures!r}", hint="use auto, saliency or scene")
    want = found if measures == "auto" else measures
    if want is None or want != found:
        what = {"saliency": "a saliency map (batch, 1, H, W)",
                "scene": "class logits (batch, classes)"}
        raise UserError(
            f"the model outputs shape {shape}, not {what[want or 'saliency']}"
            + ("" if want else " or " + what["scene"]),
            hint=f"{want or 'these'} measures need a model with such an output"
            + (f"; this one suits --measures {found}" if found else ""))
    if want == "saliency" and not getattr(dataset, "has_fixations", False):
        raise UserError(f"concept set {getattr(dataset, 'name', '?')!r} has no fixations; "
                        "saliency measures need them",
                        hint="use a concept set with fixations (synthetic, eyecrowd, ...)")
    return want


def _measure_pass(model, dataset, edits, measure, *, n, batch_size, device, progress):
    """One pass (:func:`neuroprobe.engine.run_pass`, data only): each batch runs the model
    unablated and with every set's edit; ``{set: {measure: [values]}}`` and the image ids."""

    values: dict = {}
    ids: list = []

    def on_batch(acts, batch, j):
        if not batch["id"]:
            return
        x = model_input(batch["image"], device, False)
        ctx = measure.batch_context(batch)
        outs = {"baseline": forward(model, x, ())[OUTPUT]}
        for name, edit in edits.items():
            with Recorder(model, list(edit), outputs=False, edit=edit):
                outs[name] = forward(model, x, ())[OUTPUT]
        for name, out in outs.items():
            dest = values.setdefault(name, {})
            for row in measure(out.float().cpu(), ctx):
                for m, v in row.items():
                    dest.setdefault(m, []).append(v)
        ids.extend(batch["id"])

    run_pass(None, dataset, (), on_batch, n=n, batch_size=batch_size, progress=progress,
             desc="ablation")
    return {s: {m: np.asarray(v, np.float64) for m, v in d.items()} for s, d in values.items()}, \
        ids


def ablate(model, units, dataset, *, mode: str = "zero", concept: str | None = None,
           measures: str = "auto", random_repeats: int = 0, seed: int = 0, n_boot: int = 1000,
           level: float = 0.95, limit: int | None = None, batch_size: int = 16, device=None,
           protocol: str = "exact", classes: Sequence[str] | None = None,
           progress: bool = False) -> AblationResult:
    """Remove sets of units and measure the change of the model's output on ``dataset``.

    Parameters
    ----------
    model : nn.Module taking images in ``[0, 1]``; a saliency model (``(B, 1, H, W)``) or a
        classifier (``(B, C)`` logits).
    units : the units to remove: ``"layer:i,j"``, ``[(layer, unit), ...]``, or
        ``{set name: units}`` for several sets (each ablated on its own; the first one is the
        set under test that random controls match).
    dataset : a concept set (with fixations for saliency measures).
    mode : ``"zero"`` or ``"mean"`` (each unit's mean activation over the data, one more pass).
    concept : label name whose regions the region measures use (saliency models).
    measures : ``"auto"`` (from the model's output), ``"saliency"`` or ``"scene"``.
    random_repeats, seed : random sets of the first set's size from the same layers
        (:func:`random_units`, seeded); pooled as set ``"random"`` (per image, the mean over
        repeats) and compared with the first set (``"vs-random"``: first - random).
    n_boot, level : paired bootstrap resamples of the images (0: no intervals) and coverage;
        the resamples are drawn once from ``seed`` and shared by every set and measure.
    limit, batch_size, device : the first ``limit`` images; batching; device.
    protocol : saliency-metric protocol (``"exact"`` or ``"mit"``).
    classes : class names of a scene model's outputs (default ``model.metadata["classes"]``
        where present): accuracy counts images whose scene label is one of them.

    Returns
    -------
    AblationResult
    """

    if mode not in MODES:
        raise UserError(f"unknown ablation mode {mode!r}", hint="use zero or mean")
    sets = {k: parse_unit_list(v) for k, v in units.items()} if isinstance(units, Mapping) \
        else {"units": parse_unit_list(units)}
    first = next(iter(sets))
    device = torch.device(device) if device is not None else model_device(model)
    model = model.eval().to(device)
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    layers = list(dict.fromkeys(layer for us in sets.values() for layer, _ in us))
    sizes = _layer_sizes(model, dataset, layers, device)
    for us in sets.values():
        check_units(us, sizes)
    task = _task(model, dataset, measures, device)
    randoms = []
    for k, us in enumerate(random_units(sets[first], sizes, random_repeats, seed)):
        randoms.append(f"{RANDOM}-{k + 1:02d}")
        sets[randoms[-1]] = us
    means = unit_means(model, dataset, layers, n=n, batch_size=batch_size, device=device) \
        if mode == "mean" else {}
    if classes is None:
        classes = (getattr(model, "metadata", None) or {}).get("classes")
    measure = _Measure(task, dataset, concept if task == "saliency" else None, protocol,
                       classes)
    edits = {name: _edits(us, mode, means) for name, us in sets.items()}
    values, ids = _measure_pass(model, dataset, edits, measure, n=n, batch_size=batch_size,
                                device=device, progress=progress)
    if randoms:
        values[RANDOM] = _pooled(values, randoms)
    weights = bootstrap_weights(len(ids), n_boot, np.random.default_rng(seed)) \
        if n_boot > 0 else None
    named = [s for s in sets if s not in randoms]
    rows = _rows(values, first, named, randoms, weights, level)
    config = {"mode": mode, "task": task, "concept": concept, "protocol": protocol,
              "n_images": len(ids), "n_boot": int(n_boot), "level": level, "seed": int(seed),
              "random_repeats": int(random_repeats), "layers": layers, "classes": classes,
              "mean_over": f"the {n} images measured, at every position, from a first pass"
              if mode == "mean" else None}
    return AblationResult(rows, values, {k: list(v) for k, v in sets.items()}, ids, config,
                          {k: v.tolist() for k, v in means.items()})
