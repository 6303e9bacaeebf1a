"""Scoring saliency models on synthetic pop-out search arrays and writing the results.

:func:`evaluate_popout` draws ``n`` search arrays (:func:`neuroprobe.saliency.popout.generate`),
scores every model on every array with the P3 metrics of
:func:`neuroprobe.saliency.popout.score_array` (Kotseruba, Wloka, Rasouli & Tsotsos, BMVC 2019:
global saliency index, fixations to reach the target, max-saliency ratios), and writes into the
output folder:

* ``per_array.csv`` (one row per array and model), ``arrays.csv`` (the arrays' metadata),
* ``summary.csv`` and ``summary.md`` (:func:`summarise_popout`, :func:`popout_markdown`: per
  model, feature and difference level the mean GSI, the mean fixations to the target, how often
  the target was found or was the first fixation, the median max-saliency ratios),
* ``config.json``, one plot per feature ``popout_<feature>.png`` (:func:`plot_popout`) and
  ``popout_examples.png`` (:func:`plot_examples`).

``neuroprobe popout`` and the pop-out probe (``neuroprobe probe popout``) both call it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UserError
from ..io import atomic_path, write_json, write_text
from ..utils import progress, versions
from . import popout as P
from .evaluate import BASELINES, _write_csv, resolve_models

__all__ = ["evaluate_popout", "PopoutRun", "summarise_popout", "popout_markdown", "plot_popout",
           "plot_examples"]

@dataclass
class PopoutRun:
    """What :func:`evaluate_popout` returns.

    rows : one dict per array and model (the rows of ``per_array.csv``)
    summary : one dict per model, feature and difference level (``summary.csv``)
    markdown : the summary as a markdown table (the start of ``summary.md``)
    config : the settings (``config.json`` without the versions)
    out : the output folder
    """

    rows: list
    summary: list
    markdown: str
    config: dict = field(default_factory=dict)
    out: Path | None = None


def evaluate_popout(models: Sequence[str], out_dir, *, n: int = 300,
                    features: Sequence[str] = P.FEATURES, size: int = 448, seed: int = 0,
                    examples: int = 6, device="auto") -> PopoutRun:
    """Score saliency models on ``n`` pop-out search arrays and write the results.

    Parameters
    ----------
    models : sequence of str
        Classical model names (``itti``, ``spectral``, ``signature``, ``centre``) and/or saliency
        checkpoints (paths or built-in names), resolved by
        :func:`neuroprobe.saliency.evaluate.resolve_models`; a checkpoint given as a path is
        named after the file's stem.
    out_dir : path
        Output folder (created).
    n : int
        Number of arrays, cycling over the features and their difference levels.
    features : sequence of str
        Subset of ``colour``, ``orientation``, ``size``.
    size : int
        Side of an array in pixels (at least 56: 8 per grid cell).
    seed : int
        Seeds the arrays (array ``i`` depends on ``(seed, i)`` only).
    examples : int
        Number of arrays drawn in ``popout_examples.png`` with every model's map.
    device : str
        Where checkpoints run (``auto``, ``cpu``, ``cuda``).

    Returns
    -------
    PopoutRun
    """
    if n < 1:
        raise UserError(f"the number of pop-out arrays must be at least 1, not {n}")
    if size < 56:
        raise UserError(f"pop-out arrays need at least 56 pixels a side (8 per grid cell), "
                        f"not {size}")
    features = list(features)
    for s in models:
        if s.strip() in BASELINES:   # observers, prior, uniform: made of fixations
            raise UserError(f"{s} needs fixation data; it is not a model for pop-out arrays")
    fns = resolve_models(models, device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, drawn = _score_arrays(fns, n, features, size, seed, examples)
    _write_csv(out / "per_array.csv", rows)
    meta_rows = [dict(a.meta) for a in P.generate(n, features, seed=seed, size=size)] \
        if n <= 2000 else []
    if meta_rows:
        _write_csv(out / "arrays.csv", meta_rows)
    summary = summarise_popout(rows)
    _write_csv(out / "summary.csv", summary)
    md = popout_markdown(summary)
    config = {"command": "popout", "models": list(fns), "n": n, "features": features,
              "size": size, "seed": seed, "levels": {f: P.LEVELS[f] for f in features},
              "ior_radius": "half a grid cell", "hit_radius": "a quarter cell around the target",
              "max_fixations": 100}
    write_text(out / "summary.md", md + "\n" + f"Configuration: {config}\n")
    write_json(out / "config.json", {**config, "versions": versions()})
    plot_popout(summary, features, out)
    plot_examples(drawn, fns, out)
    return PopoutRun(rows, summary, md, config, out)


def _score_arrays(models: dict, n: int, features, size: int, seed: int, examples: int):
    """Per-array score rows for every model, and the first ``examples`` arrays."""
    rows, drawn = [], []
    for arr in progress(P.generate(n, features, seed=seed, size=size),
                        total=n, desc="pop-out arrays", unit="array"):
        meta = arr.meta
        if len(drawn) < examples:
            drawn.append(arr)
        for name, fn in models.items():
            sc = P.score_array(fn(arr.image), arr)
            rows.append({"index": meta["index"], "model": name, "feature": meta["feature"],
                         "difference": meta["difference"], **sc,
                         "target_position": meta["target_position"], "seed": meta["seed"]})
    return rows, drawn


def summarise_popout(rows: list[dict]) -> list[dict]:
    """Per model, feature and difference level (in order of appearance): ``n`` arrays, mean GSI
    (NaN where no array had a finite one), mean fixations to the target, ``found_pct`` and
    ``top1_pct`` (target found at all / at the first fixation, in percent) and the medians of
    the finite max-saliency ratios ``msr_distractor`` and ``msr_background``."""
    out = []
    keys = list(dict.fromkeys((r["model"], r["feature"], r["difference"]) for r in rows))
    for model, feat, diff in keys:
        sel = [r for r in rows if r["model"] == model and r["feature"] == feat
               and r["difference"] == diff]
        g = np.array([r["gsi"] for r in sel], float)
        fx = np.array([r["fixations"] for r in sel], float)
        md = np.array([r["msr_distractor"] for r in sel], float)
        mb = np.array([r["msr_background"] for r in sel], float)
        fin = (lambda a: a[np.isfinite(a)])
        out.append({"model": model, "feature": feat, "difference": diff, "n": len(sel),
                    "gsi": float(np.nanmean(g)) if np.isfinite(g).any() else float("nan"),
                    "fixations": float(fx.mean()),
                    "found_pct": 100.0 * float(np.mean([r["found"] for r in sel])),
                    "msr_distractor": float(np.median(fin(md))) if fin(md).size else float("nan"),
                    "msr_background": float(np.median(fin(mb))) if fin(mb).size else float("nan"),
                    "top1_pct": 100.0 * float(np.mean(fx == 1))})
    return out


def popout_markdown(summary: list[dict]) -> str:
    """The summary rows of :func:`summarise_popout` as a markdown table with a heading."""
    lines = ["## Pop-out search arrays", "",
             "GSI: mean; fixations: mean number to reach the target (100 = not found); "
             "top1: target is the first fixation; MSR: medians.", "",
             "| model | feature | difference | n | GSI ↑ | fixations ↓ | top1 % | found % | "
             "MSR target/distractor | MSR target/background |", "|---" * 10 + "|"]
    for r in summary:
        lines.append(f"| {r['model']} | {r['feature']} | {r['difference']:g} | {r['n']} | "
                     f"{r['gsi']:.3f} | {r['fixations']:.1f} | {r['top1_pct']:.0f} | "
                     f"{r['found_pct']:.0f} | {r['msr_distractor']:.2f} | "
                     f"{r['msr_background']:.2f} |")
    return "\n".join(lines) + "\n"


def plot_popout(summary: list[dict], features, out) -> None:
    """``popout_<feature>.png`` in ``out`` for each feature: GSI, fixations to the target and the
    target/distractor max-saliency ratio against the difference level, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in summary))
    for feat in features:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
        for name in models:
            sel = sorted((r for r in summary if r["model"] == name and r["feature"] == feat),
                         key=lambda r: r["difference"])
            if not sel:
                continue
            x = [r["difference"] for r in sel]
            axes[0].plot(x, [r["gsi"] for r in sel], marker="o", label=name)
            axes[1].plot(x, [r["fixations"] for r in sel], marker="o", label=name)
            axes[2].plot(x, [r["msr_distractor"] for r in sel], marker="o", label=name)
        for ax, t in zip(axes, ("GSI (mean)", "fixations to target (mean)",
                                "max target / max distractor (median)")):
            ax.set_xlabel(P.UNITS[feat])
            ax.set_title(t, fontsize=9)
        axes[1].set_yscale("log")
        axes[2].axhline(1.0, color="grey", lw=0.5)
        if axes[0].get_legend_handles_labels()[0]:  # a feature with no arrays draws no lines
            axes[0].legend(fontsize=7)
        fig.suptitle(f"pop-out: {feat}")
        fig.tight_layout()
        with atomic_path(Path(out) / f"popout_{feat}.png", suffix=".png") as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)


def plot_examples(arrays, models: dict, out) -> None:
    """``popout_examples.png`` in ``out``: each array beside every model's map of it, with the
    target outlined (nothing is written for no arrays)."""
    if not arrays:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 1 + len(models)
    fig, axes = plt.subplots(len(arrays), cols, figsize=(2.2 * cols, 2.2 * len(arrays)),
                             squeeze=False)
    for i, arr in enumerate(arrays):
        axes[i][0].imshow(arr.image)
        axes[i][0].set_title(f"{arr.meta['feature']} {arr.meta['difference']:g}", fontsize=7)
        for j, (name, fn) in enumerate(models.items(), start=1):
            axes[i][j].imshow(fn(arr.image), cmap="magma")
            axes[i][j].contour(arr.target_mask, levels=[0.5], colors="c", linewidths=0.6)
            axes[i][j].set_title(name, fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(Path(out) / "popout_examples.png", suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
