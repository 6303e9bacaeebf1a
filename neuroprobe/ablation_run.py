"""``neuroprobe ablate RUN``: a dissection run's concept units ablated, with controls, written out.

:func:`ablate_run` takes the detector units of a concept from a run folder (``units.csv``; or
the units given), reloads the run's model (refused when its fingerprint differs from the run's,
:func:`neuroprobe.engine.store.check_model`) and concept set (or ``data``), adds the controls
(random units of the same layer, repeated and seeded; the units ranked highest by region-NSS for
the concept) and calls :func:`neuroprobe.ablation.ablate`.  :func:`write_ablation` writes
``ablation.csv`` (``set,measure,baseline,ablated,difference,ci_low,ci_high,n_images``),
``ablation.png`` (the differences with their intervals), ``summary.md`` (in words),
``ablation.json`` (settings and every set's units) and ``per_image.npz`` (the per-image values
behind every row).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from .ablation import (MEASURE_NAMES, RANDOM, VERSUS, ablate, concept_ids, parse_unit_list,
                       top_nss_units)
from .compare import load_run
from .concepts import open_concepts
from .engine.store import check_model
from .errors import UserError
from .io import atomic_open, atomic_path, write_json, write_text
from .models import load
from .reopen import reopen
from .figures import wrap_to_figure

__all__ = ["ablate_run", "write_ablation", "concept_units", "CONTROLS", "CSV_COLUMNS"]

CONTROLS = ("random", "top-nss")
CSV_COLUMNS = ["set", "measure", "baseline", "ablated", "difference", "ci_low", "ci_high",
               "n_images"]
#: the name of the set of the concept's detector units (or of the units given)
CONCEPT_SET, UNITS_SET, TOP_NSS = "concept", "units", "top-nss"


def concept_units(run, concept: str, layer: str | None = None) -> tuple[str, list]:
    """The run's detector units of ``concept`` in ``layer`` (default: the layer with the most of
    them, the deepest on a tie): ``(layer, [(layer, unit), ...])``; one line where none is."""
    found: dict = {}
    order = list(dict.fromkeys(r["layer"] for r in run.units))
    for r in run.units:
        if r["detector"] and r["label"] == concept:
            found.setdefault(r["layer"], []).append((r["layer"], int(r["unit"])))
    if layer is not None:
        match = [name for name in order if name == layer or name.endswith("." + layer)]
        if not match:
            raise UserError(f"layer {layer!r} is not in run {run.path}",
                            hint="its layers: " + ", ".join(order))
        layer = match[0]
        if layer not in found:
            where = ", ".join(f"{k} ({len(v)})" for k, v in found.items()) or "none"
            raise UserError(f"run {run.path} has no detector units of {concept!r} in layer "
                            f"{layer!r} (layers with some: {where})",
                            hint="choose another --layer, or give units with --units LAYER:I,J")
        return layer, found[layer]
    if not found:
        raise UserError(f"run {run.path} has no detector units of {concept!r} in any layer",
                        hint="give units with --units LAYER:I,J, or dissect on more images")
    best = max(found, key=lambda k: (len(found[k]), order.index(k)))
    return best, found[best]


def _open(run, model_spec, arch, trust, data, root, device):

    model, dataset = reopen(run.summary, model_spec, None, device, arch, trust)
    check_model(run.summary, model, run.path)
    if data:
        dataset = open_concepts(data, **({"root": root} if root else {}))
    return model, dataset


def _controls(controls, sets, concept, model, dataset, repeats, *, limit, batch_size, device):
    """Adds the region-NSS control to ``sets``; returns (random repeats, skipped controls)."""
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise UserError(f"unknown control {unknown[0]!r}", hint="use random and/or top-nss")
    skipped = {}
    first = next(iter(sets.values()))
    layers = list(dict.fromkeys(layer for layer, _ in first))
    if "top-nss" in controls:
        if not concept:
            skipped["top-nss"] = "no concept given"
        elif not getattr(dataset, "has_fixations", False):
            skipped["top-nss"] = "the concept set has no fixations"
        elif len(layers) != 1:
            skipped["top-nss"] = "the units span several layers"
        else:
            sets[TOP_NSS] = top_nss_units(model, dataset, layers[0], concept, len(first),
                                          batch_size=batch_size, device=device, limit=limit)
    return (int(repeats) if "random" in controls else 0), skipped


def ablate_run(run_dir, *, concept: str | None = None, units=None, layer: str | None = None,
               data: str | None = None, root=None, limit: int | None = None,
               controls: Sequence[str] = CONTROLS, repeats: int = 20, seed: int = 0,
               mode: str = "zero", measures: str = "auto", n_boot: int = 1000,
               batch_size: int = 16, device="cpu", model_spec: str | None = None,
               arch: str | None = None, trust: bool = False, progress: bool = False):
    """Ablate a concept's detector units of a dissection run (see the module docstring).

    Returns ``(result, info)``: the :class:`~neuroprobe.ablation.AblationResult` and a dict
    naming the run, model, concept, layer and skipped controls (for :func:`write_ablation`).
    """

    if concept is None and units is None:
        raise UserError("nothing to ablate", hint="give --concept NAME or --units LAYER:I,J")
    run = load_run(run_dir)
    model, dataset = _open(run, model_spec, arch, trust, data, root, device)
    if concept is not None:
        concept_ids(dataset, concept)   # unknown concept: one line before anything runs
    if units is not None:
        sets = {UNITS_SET: parse_unit_list(units)}
        layer = ", ".join(dict.fromkeys(lay for lay, _ in sets[UNITS_SET]))
    else:
        layer, found = concept_units(run, concept, layer)
        sets = {CONCEPT_SET: found}
    cfg = (run.summary.get("config") or {}).get("model") or {}
    repeats, skipped = _controls(controls, sets, concept, model, dataset, repeats, limit=limit,
                                 batch_size=batch_size, device=device)
    classes = _classes(model_spec or cfg.get("spec"), arch or cfg.get("arch"), trust) \
        if getattr(model, "task", None) == "scene" else None
    result = ablate(model, sets, dataset, mode=mode, concept=concept, measures=measures,
                    random_repeats=repeats, seed=seed, n_boot=n_boot, limit=limit,
                    batch_size=batch_size, device=device, classes=classes, progress=progress)
    info = {"run": str(run.path), "model": model_spec or cfg.get("spec"),
            "fingerprint": cfg.get("fingerprint"), "concept": concept, "layer": layer,
            "concepts": getattr(dataset, "name", None), "data": data,
            "controls": list(controls), "controls_skipped": skipped}
    return result, info


def _classes(spec, arch, trust):
    """A scene model's class names from its checkpoint metadata (``None`` where absent)."""
    if not spec:
        return None
    try:
        return load(spec, arch=arch, trust=trust).metadata.get("classes")
    except UserError:
        return None


# -- writing -------------------------------------------------------------------------------------

def _fmt(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else \
        (f"{v:.6g}" if isinstance(v, float) else str(v))


def write_ablation(result, info: dict, out_dir) -> list:
    """``ablation.csv``, ``ablation.png``, ``summary.md``, ``ablation.json``,
    ``per_image.npz`` into ``out_dir`` (each written atomically); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / "ablation.csv", "w") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for r in result.rows:
            w.writerow([_fmt(r[c]) for c in CSV_COLUMNS])
    plot_ablation(result, info, out / "ablation.png")
    write_text(out / "summary.md", summary_text(result, info))
    write_json(out / "ablation.json", {**info, "config": result.config,
                                       "sets": {k: [f"{a}:{b}" for a, b in v]
                                                for k, v in result.sets.items()},
                                       "means": result.means})
    arrays = {"ids": np.array(result.ids, dtype=str)}
    for s, d in result.values.items():
        for m, v in d.items():
            arrays[f"{s}/{m}"] = v
    with atomic_path(out / "per_image.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return [out / n for n in ("ablation.csv", "ablation.png", "summary.md", "ablation.json",
                              "per_image.npz")]


def _plotted_sets(result) -> list:
    return [s for s in dict.fromkeys(r["set"] for r in result.rows)
            if s == RANDOM or (not s.startswith(RANDOM + "-") and s != VERSUS)]


def plot_ablation(result, info: dict, path) -> None:
    """One panel per measure: each set's difference (ablated - baseline) with its interval."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    sets = _plotted_sets(result)
    measures = list(dict.fromkeys(r["measure"] for r in result.rows))
    index = {(r["set"], r["measure"]): r for r in result.rows}
    cols = min(3, len(measures))
    rows_n = math.ceil(len(measures) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 0.5 + 0.45 * len(sets) * rows_n
                                                    + 1.1 * rows_n), squeeze=False)
    colours = plt.get_cmap("tab10")
    labels = [_set_label(s, result) for s in sets]
    for k, m in enumerate(measures):
        ax = axes[k // cols][k % cols]
        for i, s in enumerate(sets):
            r = index[(s, m)]
            d = r["difference"]
            if not math.isfinite(d):
                continue
            err = [[max(0.0, d - r["ci_low"])], [max(0.0, r["ci_high"] - d)]] \
                if math.isfinite(r["ci_low"]) else None
            ax.barh(i, d, color=colours(i), xerr=err, capsize=3)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(sets)))
        ax.set_yticklabels(labels if k % cols == 0 else [""] * len(sets), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(MEASURE_NAMES.get(m, m), fontsize=9)
        ax.set_xlabel("ablated - baseline", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    for k in range(len(measures), rows_n * cols):
        axes[k // cols][k % cols].axis("off")
    cfg = result.config
    fig.suptitle(wrap_to_figure(
        fig, f"Ablation in {info.get('model')}: {info.get('concept') or 'given'} units, "
        f"layer {info.get('layer')}\n{cfg['mode']} ablation, {cfg['n_images']} images, "
        f"{int(cfg['level'] * 100)}% paired bootstrap intervals ({cfg['n_boot']} resamples)",
        10), fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _set_label(s: str, result) -> str:
    n = len(result.sets.get(s, result.sets.get(f"{RANDOM}-01", [])))
    if s == RANDOM:
        return f"random ({result.config['random_repeats']} draws of {n})"
    return f"{s} ({n} units)"


def _ci(r) -> str:
    if not math.isfinite(r["ci_low"]):
        return "no interval"
    return f"95% interval [{r['ci_low']:+.3g}, {r['ci_high']:+.3g}]"


def _verdict(r) -> str:
    if not math.isfinite(r["ci_low"]):
        return "undetermined"
    if r["ci_high"] < 0:
        return "a drop"
    if r["ci_low"] > 0:
        return "a rise"
    return "no clear change (the interval includes 0)"


def summary_text(result, info: dict) -> str:
    """``summary.md``: the settings and every set's changes in words."""
    cfg = result.config
    index = {(r["set"], r["measure"]): r for r in result.rows}
    measures = list(dict.fromkeys(r["measure"] for r in result.rows))
    first = next(iter(result.sets))
    mean_note = (" (each unit's map replaced by its mean activation over "
                 f"{cfg['mean_over']})" if cfg["mode"] == "mean" else " (each unit's map set to 0)")
    lines = [f"# Ablation: {info.get('concept') or 'given'} units of {info.get('model')}\n",
             f"Run `{info.get('run')}`; layer {info.get('layer')}; concept set "
             f"`{info.get('concepts')}`, {cfg['n_images']} images; {cfg['mode']} ablation"
             f"{mean_note}; {cfg['task']} measures"
             + (f" (protocol `{cfg['protocol']}`)" if cfg["task"] == "saliency" else "")
             + f"; paired bootstrap over images, {cfg['n_boot']} resamples, seed "
             f"{cfg['seed']}. Every number below is `ablated - baseline` on the same images, "
             "with its 95% percentile interval.\n"]
    if cfg["task"] == "saliency" and info.get("concept"):
        lines.append(f"Region measures use the images showing {info['concept']!r}: the share "
                     "of the map's mass inside its regions and the NSS of the map at the "
                     "fixations inside and outside them (map z-scored over the image).\n")
    for name, why in (info.get("controls_skipped") or {}).items():
        lines.append(f"Control `{name}` not run: {why}.\n")
    for s in _plotted_sets(result):
        lines.append(f"## {_set_label(s, result)}\n")
        if s == TOP_NSS:
            overlap = len(set(result.sets[s]) & set(result.sets[first]))
            lines.append(f"The {len(result.sets[s])} units of the layer with the highest "
                         f"region-NSS for the concept on these images, so chosen with the data "
                         f"they are tested on ({overlap} of them are also in the `{first}` "
                         "set).\n")
        for m in measures:
            r = index[(s, m)]
            if not math.isfinite(r["difference"]):
                lines.append(f"- {MEASURE_NAMES.get(m, m)}: undefined on every image.")
                continue
            lines.append(f"- {MEASURE_NAMES.get(m, m)}: {r['baseline']:.4g} -> "
                         f"{r['ablated']:.4g}, difference {r['difference']:+.3g} "
                         f"({_ci(r)}; {r['n_images']} images): {_verdict(r)}.")
        lines.append("")
    if any(r["set"] == VERSUS for r in result.rows):
        lines.append(f"## `{first}` against random units of the same layer\n")
        lines.append(f"Per image, the `{first}` set's ablated value minus the mean over the "
                     "random draws' ablated values:\n")
        for m in measures:
            r = index[(VERSUS, m)]
            if math.isfinite(r["difference"]):
                verdict = {"a drop": "lower than after random ablation",
                           "a rise": "higher than after random ablation"}.get(_verdict(r),
                                                                              _verdict(r))
                lines.append(f"- {MEASURE_NAMES.get(m, m)}: {r['difference']:+.3g} ({_ci(r)})"
                             f": {verdict}.")
        lines.append("")
    lines.append("Files: `ablation.csv` (every set, every random draw), `ablation.png`, "
                 "`ablation.json` (settings, units of every set), `per_image.npz`.")
    return "\n".join(lines) + "\n"
