"""Evaluate saliency models (classical, trained checkpoints, baselines) on fixation data.

Model specs, as on the command line:

* ``itti``, ``spectral``, ``signature``, ``centre`` -- :mod:`neuroprobe.saliency.classical`;
* ``observers`` -- the inter-observer baseline: for each observer, the fixation density of the
  *other* observers (blurred as the protocol blurs its ground truth) is scored against the held-out
  observer's fixations; the image's score is the mean over observers (an upper reference);
* ``prior`` -- the data's own centre bias: the density of all fixations on the *other* images;
* ``uniform`` -- a constant map (chance: AUC 0.5, NSS 0, CC 0);
* anything else -- a trained saliency model, ``neuroprobe.models.load(spec)``: a module taking
  ``(B, 3, H, W)`` images in [0, 1] and returning ``(B, 1, H', W')`` saliency, resized back.
"""
from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io import atomic_open, atomic_path, write_json, write_text
from ..figures import wrap_to_figure
from ..utils import model_device, progress, resolve_device, versions
from . import classical
from ._workspace import Workspace
from .data import centre_prior, inter_observer
from .metrics import (
    HIGHER_IS_BETTER,
    METRICS,
    PROTOCOLS,
    GroundTruth,
    OtherFixations,
    _Map,
    blas_single_thread,
    evaluate_image,
    leave_out_density,
    metric_title,
)

BASELINES = ("observers", "prior", "uniform")

__all__ = ["NoFixationsWarning", "resolve_models", "checkpoint_model", "evaluate_dataset",
           "summarise", "write_results", "BASELINES"]


def checkpoint_model(spec: str, device: str = "cpu"):
    """A trained saliency model as a function ``image (H, W, 3) -> map (H, W)``.

    Loads ``spec`` with :func:`neuroprobe.models.load`; the image is resized to the model's
    ``input_size`` when its metadata names one, and the output map is resized to the image.
    """
    import torch
    import torch.nn.functional as F

    from ..models import load

    module, meta = load(spec, device=resolve_device(device))
    task = meta.get("task")
    if task not in (None, "saliency"):
        raise UserError(f"model {spec} is a {task} model, not a saliency model",
                        hint="give a saliency checkpoint (metadata task = saliency)")
    size = meta.get("input_size")
    dev = model_device(module)

    def run(image):
        img = classical.as_image(image)
        h, w = img.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()[None].to(dev)
        if size:
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        with torch.no_grad():
            y = module(x)
        if isinstance(y, (tuple, list)):
            y = y[0]
        if y.ndim != 4 or y.shape[1] != 1:
            raise UserError(f"model {spec} returned shape {tuple(y.shape)}, not (B, 1, H, W)",
                            hint="a saliency model returns one map per image")
        y = F.interpolate(y.float(), size=(h, w), mode="bilinear", align_corners=False)
        return y[0, 0].cpu().numpy().astype(np.float64)

    run.__name__ = Path(spec).stem
    return run


def resolve_models(specs, device: str = "auto") -> dict:
    """``name -> callable(image) -> map`` for each spec; baselines map to None (handled apart)."""
    out = {}
    for spec in specs:
        spec = spec.strip()
        if not spec:
            continue
        if spec in BASELINES:
            out[spec] = None
        elif classical.is_classical(spec):
            out[spec] = classical.get_model(spec)
        else:
            p = Path(spec)
            if p.suffix and not p.exists():
                raise UserError(f"model file {spec} does not exist",
                                hint="classical models: " + ", ".join(classical.MODELS)
                                + "; baselines: " + ", ".join(BASELINES))
            out[p.stem if p.suffix else spec] = checkpoint_model(spec, device)
    if not out:
        raise UserError("no models given", hint="e.g. --models itti,spectral,signature,centre")
    return out


def _observer_scores(fx, gt, protocols, metrics, others, baseline, rng, ws=None) -> dict:
    """Mean over observers of the leave-one-out scores of one image."""
    acc = {p: {m: [] for m in metrics} for p in protocols}
    for _, rest, held in inter_observer(fx, gt.shape, sigma=gt.sigma, cycles=gt.cycles):
        for p in protocols:
            # = rest.density(p), from the image's blur less the held-out observer's (linear)
            pred = leave_out_density(gt, held, p)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                r = evaluate_image(pred, held, metrics, (p,), baseline=baseline,
                                   other=others, rng=rng, workspace=ws)[p]
            for m in metrics:
                acc[p][m].append(r[m])
    return {p: {m: (float(np.nanmean(v)) if v and not np.all(np.isnan(v)) else float("nan"))
                for m, v in acc[p].items()} for p in protocols}


def evaluate_dataset(dataset, models: dict, protocols=PROTOCOLS, metrics=METRICS, *,
                     seed: int = 0, n_other: int = 10, show_progress: bool = True) -> list[dict]:
    """Score every model on every image of a :class:`~neuroprobe.saliency.data.FixationDataset`.

    Returns rows ``{"image", "model", "protocol", "n_fixations", <metric>: value}``.  The ground
    truth of each image is built once and shared by all models and protocols; the random parts of
    image ``i`` use ``default_rng([seed, i])`` for every model, so models see the same splits.
    """
    gts = [GroundTruth.from_fixations(f, f.size) for f in dataset.fixations]
    _check_fixations(dataset, gts)
    with blas_single_thread():  # see neuroprobe.saliency.metrics.blas_single_thread
        return _evaluate_loop(dataset, models, gts, protocols, metrics, seed, n_other,
                              show_progress)


class NoFixationsWarning(RuntimeWarning):
    """Some images have no usable fixation (all NaN or outside the image): their scores are
    n/a and the means leave them out."""


def _check_fixations(dataset, gts) -> None:
    """Refuse a data set in which no image has a fixation inside it (all NaN, all outside the
    image: every score would be n/a); warn, naming them, when only some images have none."""
    from ..errors import DataFormatError

    empty = [dataset.fixations[i].image for i, gt in enumerate(gts) if len(gt) == 0]
    if not empty:
        return
    examples = ", ".join(str(e) for e in empty[:3]) + (", ..." if len(empty) > 3 else "")
    if len(empty) == len(gts):
        raise DataFormatError(f"{dataset.name} data in {dataset.root}: no image has a fixation "
                              f"inside its bounds (all NaN or outside the image; {examples})",
                              hint="check the x, y columns (pixels, 0-based for csv) and the "
                              "image sizes")
    warnings.warn(f"{len(empty)} of {len(gts)} images have no fixation inside the image (all "
                  f"NaN or outside): their scores are n/a and left out of the means ({examples})",
                  NoFixationsWarning, stacklevel=3)


def _evaluate_loop(dataset, models, gts, protocols, metrics, seed, n_other,
                   show_progress) -> list[dict]:
    rows = []
    base_cache: dict = {}
    ws = Workspace()  # image-sized buffers reused from image to image
    other_sets = OtherFixations(gts)
    for i in progress(range(len(gts)), desc=f"{dataset.name}: evaluating", unit="img",
                      disable=not show_progress or None):
        gt, fx = gts[i].lend(ws), dataset.fixations[i]
        if gt.shape not in base_cache:
            base_cache[gt.shape] = _Map(classical.centre_bias(gt.shape))
        baseline = base_cache[gt.shape]
        others = ({p: other_sets(i, p, n_other, rng=[seed, i, 1]) for p in protocols}
                  if "sauc" in metrics else None)
        image = None
        for name, fn in models.items():
            rng = np.random.default_rng([seed, i])
            if name == "observers":
                res = _observer_scores(fx, gt, protocols, metrics,
                                       None if others is None else others, baseline, rng, ws) \
                    if len(gt) else {p: {m: float("nan") for m in metrics} for p in protocols}
            else:
                if name == "uniform":
                    smap = np.ones(gt.shape)
                elif name == "prior":
                    smap = centre_prior(dataset.fixations, gt.shape, exclude=i)
                elif fn is classical.centre_bias:
                    smap = classical.centre_bias(gt.shape)
                else:
                    if image is None:
                        image = dataset.load_image(i)
                    smap = fn(image)
                res = evaluate_image(smap, gt, metrics, protocols, baseline=baseline,
                                     other=others, rng=rng, workspace=ws)
            for p in protocols:
                rows.append({"image": gt.image or fx.image, "model": name, "protocol": p,
                             "n_fixations": len(gt), **res[p]})
        gt.release()  # its cached densities (~27 MB at 800x600) are not needed any more
    return rows


def _ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float, int]:
    """Mean and half-width of the Student-t confidence interval, ignoring NaN."""
    from scipy import stats

    v = values[np.isfinite(values)]
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), 0
    if n == 1:
        return float(v[0]), float("nan"), 1
    half = stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n)
    return float(v.mean()), float(half), n


def summarise(rows: list[dict], metrics) -> list[dict]:
    """Per model and protocol: mean, 95% t-interval and count of every metric."""
    out = []
    keys = []
    for r in rows:
        k = (r["model"], r["protocol"])
        if k not in keys:
            keys.append(k)
    for model, protocol in keys:
        sel = [r for r in rows if r["model"] == model and r["protocol"] == protocol]
        rec = {"model": model, "protocol": protocol}
        for m in metrics:
            mean, half, n = _ci(np.array([r[m] for r in sel], dtype=np.float64))
            rec[m] = mean
            rec[m + "_ci95"] = half
            rec[m + "_n"] = n
        out.append(rec)
    return out


def markdown_table(summary: list[dict], metrics, title: str = "") -> str:
    """One table per protocol: models as rows, ``mean ± CI half-width`` per metric."""
    lines = [f"## {title}", ""] if title else []
    for protocol in dict.fromkeys(r["protocol"] for r in summary):
        lines.append(f"Protocol: `{protocol}` (mean ± 95% CI half-width over images)")
        lines.append("")
        head = [m + (" ↑" if HIGHER_IS_BETTER.get(m, True) else " ↓") for m in metrics]
        lines.append("| model | " + " | ".join(head) + " |")
        lines.append("|---" * (len(metrics) + 1) + "|")
        for r in summary:
            if r["protocol"] != protocol:
                continue
            cells = []
            for m in metrics:
                mean, half = r[m], r[m + "_ci95"]
                cells.append("n/a" if not np.isfinite(mean) else
                             f"{mean:.3f}" + (f" ± {half:.3f}" if np.isfinite(half) else ""))
            lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _write_csv(path, rows: list[dict]) -> None:
    cols = list(rows[0]) if rows else []
    with atomic_open(path, "w") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def plot_summary(summary: list[dict], metrics, path, title: str = "") -> None:
    """Bar chart: one panel per metric (titled with its name and whether higher or lower is
    better), models grouped, one bar per protocol, 95% CI bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in summary))
    protocols = list(dict.fromkeys(r["protocol"] for r in summary))
    cols = min(4, len(metrics))
    nrow = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(nrow, cols, figsize=(3.2 * cols, 2.8 * nrow), squeeze=False)
    width = 0.8 / max(1, len(protocols))
    for k, m in enumerate(metrics):
        ax = axes[k // cols][k % cols]
        for j, p in enumerate(protocols):
            vals = [next((r[m] for r in summary if r["model"] == mo and r["protocol"] == p),
                         np.nan) for mo in models]
            errs = [next((r[m + "_ci95"] for r in summary if r["model"] == mo and
                          r["protocol"] == p), np.nan) for mo in models]
            ax.bar(np.arange(len(models)) + j * width, vals, width, yerr=np.nan_to_num(errs),
                   label=p, capsize=2)
        ax.set_xticks(np.arange(len(models)) + width * (len(protocols) - 1) / 2)
        ax.set_xticklabels(models, rotation=45, ha="right", fontsize=8)
        ax.set_title(metric_title(m), fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    for k in range(len(metrics), nrow * cols):
        axes[k // cols][k % cols].axis("off")
    axes[0][0].legend(fontsize=7, title="protocol", title_fontsize=7)
    fig.suptitle(wrap_to_figure(fig, (f"{title}: " if title else "")
                                + "mean per image with 95% intervals", 10), fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_results(out, rows, summary, metrics, config: dict, title: str = "") -> dict:
    """``per_image.csv``, ``summary.csv``, ``summary.md``, ``summary.png`` and ``config.json``
    (configuration and versions) in ``out``, each written atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "per_image.csv", rows)
    _write_csv(out / "summary.csv", summary)
    md = markdown_table(summary, metrics, title)
    write_text(out / "summary.md", md + "\n" + _config_note(config))
    plot_summary(summary, metrics, out / "summary.png", title)
    write_json(out / "config.json", {**config, "versions": versions()})
    return {"per_image": out / "per_image.csv", "summary": out / "summary.csv",
            "markdown": out / "summary.md", "plot": out / "summary.png"}


def _config_note(config: dict) -> str:
    items = ", ".join(f"{k}={v}" for k, v in config.items() if not isinstance(v, (dict, list)))
    return f"Configuration: {items}\n"
