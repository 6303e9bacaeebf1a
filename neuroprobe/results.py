"""Score tallies into unit labels, and write the results of a dissection.

score
    :func:`score_iou`: IoU of every (unit, label); per category the best label with its
    intersection / activation / truth counts; overall the best label over categories; a unit
    is a detector when its IoU reaches the threshold (Bau et al., CVPR 2017).
    :func:`score_nss`: mean region-NSS per (unit, label), the best label per unit, and the
    study's table per label: mean NSS of the top units and the number of units above the NSS
    threshold (He et al., CVPR 2019).
report
    :func:`write_results`: ``units.csv``, ``summary.json``, ``region_nss.csv`` (when scored)
    ``concepts.png`` (detector units per concept and layer), ``top_images.npz`` (top-k
    images per unit, for galleries) and ``scores.npz`` (every unit's score for every label:
    the full units x labels IoU and region-NSS matrices), each written atomically.  The
    ``.npz`` files are plain numpy archives (no pickle), written byte-for-byte reproducibly;
    :func:`neuroprobe.load_run` reads them back.
"""
from __future__ import annotations

import csv
import io
import math
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

from .figures import wrap_to_figure
from .io import atomic_open, atomic_path, write_json

__all__ = ["score_iou", "score_nss", "summarise", "write_results", "TIE_RULES",
           "nss_definition", "write_npz", "write_top_images", "write_scores", "TOP_IMAGES",
           "LEGACY_TOP_IMAGES", "SCORES"]

#: the top images of every unit (``layers``; ``values_<i>``, ``index_<i>`` of layer ``i``)
TOP_IMAGES = "top_images.npz"
#: how runs before ``top_images.npz`` kept them (a torch file, read with weights_only=True)
LEGACY_TOP_IMAGES = "top_images.pt"
#: every unit's score for every label (``layers``, ``labels``, ``categories``; ``iou_<i>`` and
#: ``nss_<i>``: the ``(units, labels)`` IoU and mean region-NSS matrices of layer ``i``)
SCORES = "scores.npz"


def _f(x) -> float:
    return float(x)


#: which category wins when the best IoUs of several categories tie (see :func:`score_iou`)
TIE_RULES = ("netdissect", "first")


def score_iou(layer: str, tally, thresholds, labels, iou_threshold: float,
              ties: str = "netdissect") -> list[dict]:
    """One row per unit of ``layer`` from an :class:`~neuroprobe.stats.IoUTally`.

    The naming follows NetDissect's ``score_tally_stats`` and ``generate_csv_summary``
    (``src/makeresult.py``; NetDissect-Lite's ``FeatureOperator.tally`` is the same):

    * per category, the best label is the first label (in global-number order) with the
      largest IoU of that category (``pciou.argmax``); when every IoU of the category is 0
      (a dead unit, or a category the unit never touches) the argmax falls on label 0, which
      NetDissect names ``''``: the ``<cat>-label`` cell is then empty (with IoU 0,
      intersection 0, truth 0, and the unit's activation count of that category);
    * overall, the category with the largest best IoU; of tied categories the **later** one in
      the category order wins (``score_pciou.argsort(axis=0)[::-1]``, a stable sort reversed)
      with ``ties="netdissect"``, the first one with ``ties="first"`` (neuroprobe's former rule);
    * a unit whose best IoU is 0 (a dead unit) gets an empty ``label`` and score 0: NetDissect
      writes the empty name of label 0 (neuroprobe's former rule named it after the first label);
      its ``category`` is the winner of the all-zero tie (the last category under
      ``ties="netdissect"``, as NetDissect writes it).

    A unit is a detector when its score reaches ``iou_threshold`` and is above 0.
    """
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {TIE_RULES}, got {ties!r}")
    iou = tally.iou().cpu().numpy()
    inter = tally.inter.cpu().numpy()
    act = tally.act.cpu().numpy()
    truth = tally.label.cpu().numpy()
    tcat = tally.category_of_label.cpu().numpy()
    cat_idx = labels.category_index()
    thr = thresholds.cpu().numpy()
    units = iou.shape[0]
    cats = list(labels.categories)
    best, score = {}, np.zeros((len(cats), units))
    for ci, cat in enumerate(cats):
        cols = np.nonzero(cat_idx == ci)[0]
        if len(cols):
            j = cols[np.argmax(iou[:, cols], axis=1)]
            best[cat] = j
            score[ci] = iou[np.arange(units), j]
    # the winning category per unit: the largest score; ties to the later or the first one
    order = score[::-1] if ties == "netdissect" else score
    win = np.argmax(order, axis=0)
    win = len(cats) - 1 - win if ties == "netdissect" else win
    rows = []
    for u in range(units):
        row = {"layer": layer, "unit": u, "label": "", "category": "", "score": 0.0,
               "threshold": _f(thr[u]), "detector": 0}
        per = {}
        for ci, cat in enumerate(cats):
            if cat not in best or score[ci, u] <= 0:
                c_act = 0
                if cat in best and tally.num_categories == len(cats):
                    c_act = int(act[u, ci])
                elif cat in best:   # unrestricted: one activation count for all categories
                    c_act = int(act[u, 0])
                per.update({f"{cat}-label": "", f"{cat}-iou": 0.0, f"{cat}-intersection": 0,
                            f"{cat}-activation": c_act, f"{cat}-truth": 0})
                continue
            j = int(best[cat][u])
            per.update({f"{cat}-label": labels.name(j), f"{cat}-iou": _f(iou[u, j]),
                        f"{cat}-intersection": int(inter[u, j]),
                        f"{cat}-activation": int(act[u, tcat[j]]) if tcat[j] >= 0 else 0,
                        f"{cat}-truth": int(truth[j])})
        ci = int(win[u])
        row["category"] = cats[ci] if cats else ""
        if score[ci, u] > 0:
            j = int(best[cats[ci]][u])
            row.update(label=labels.name(j), score=_f(iou[u, j]))
        row["detector"] = int(row["score"] >= iou_threshold and row["score"] > 0)
        row.update(per)
        rows.append(row)
    return rows


def score_nss(layer: str, tally, labels, nss_threshold: float, top_units: int):
    """Unit rows and region-NSS table rows of ``layer`` from a
    :class:`~neuroprobe.stats.NSSTally`."""
    mean = tally.mean().cpu().numpy()
    regions = tally.regions.cpu().numpy()
    cat_idx = labels.category_index()
    scored = np.nonzero(regions > 0)[0]
    filled = np.where(np.isnan(mean), -np.inf, mean)
    rows = []
    for u in range(mean.shape[0]):
        row = {"layer": layer, "unit": u, "label": "", "category": "", "score": 0.0,
               "threshold": float(nss_threshold), "detector": 0}
        per = {}
        top = -math.inf
        for ci, cat in enumerate(labels.categories):
            cols = scored[cat_idx[scored] == ci]
            if not len(cols):
                per.update({f"{cat}-label": "", f"{cat}-nss": ""})
                continue
            j = int(cols[np.argmax(filled[u, cols])])
            per.update({f"{cat}-label": labels.name(j), f"{cat}-nss": _f(mean[u, j])})
            if mean[u, j] > top:
                top = mean[u, j]
                row.update(label=labels.name(j), category=cat, score=_f(mean[u, j]))
        row["detector"] = int(row["score"] > nss_threshold)
        row.update(per)
        rows.append(row)
    table = []
    for j in scored:
        col = np.sort(mean[:, j])[::-1]
        k = min(top_units, len(col))
        table.append({"layer": layer, "label": labels.name(int(j)),
                      "category": labels.category(int(j)), "regions": int(regions[j]),
                      "top_units": k, "top_mean_nss": _f(col[:k].mean()),
                      "units_above": int((col > nss_threshold).sum()),
                      "nss_threshold": float(nss_threshold),
                      "best_unit": int(np.argmax(mean[:, j])), "best_nss": _f(col[0])})
    return rows, table


def nss_definition(config: dict) -> dict:
    """How the region-NSS scores of a run were computed, in words and settings (written into
    ``summary.json`` as ``region_nss_definition``)."""
    res = config.get("nss_resolution", "mask")
    rule = config.get("nss_regions", "label")
    return {
        "reference": "He, Tavakoli, Borji, Mi & Pugeault, Understanding and Visualizing Deep "
                     "Visual Saliency Models, CVPR 2019",
        "normalisation": "each unit's map divided into [0, 1] by the unit's data-set min and max",
        "resolution": res,
        "upsampling": ("bilinear (align_corners=False) to the image size" if res == "image"
                       else "bilinear (align_corners=False) to the mask size"),
        "z_score": f"over all pixels of the upsampled map, std with ddof={config.get('nss_ddof')}",
        "regions": rule,
        "region": ("one annotated instance (the pixels of one label with one instance id); "
                   "where the concept source knows no instances, all pixels of the label in "
                   "the image" if rule == "instance" else
                   "all pixels of one label in one image (instances merged)"),
        "region_nss": "mean z-score at the fixations inside the region (regions without a "
                      "fixation are not scored)",
        "aggregation": "per region, then the mean over all scored regions of the label "
                       "across the data set",
    }


def summarise(units, config, key, versions, layers, labels, table=None) -> dict:
    """The summary: configuration, versions, and detector counts per concept and layer."""
    per_label = {layer: {} for layer in layers}
    per_cat = {layer: {} for layer in layers}
    for row in units:
        if row["detector"]:
            per_label[row["layer"]][row["label"]] = per_label[row["layer"]].get(
                row["label"], 0) + 1
            per_cat[row["layer"]][row["category"]] = per_cat[row["layer"]].get(
                row["category"], 0) + 1
    per_label = {k: dict(sorted(v.items(), key=lambda kv: (-kv[1], kv[0])))
                 for k, v in per_label.items()}
    units_per_layer = Counter(row["layer"] for row in units)
    out = {
        "config_hash": key,
        "config": config,
        "versions": versions,
        "units": {layer: units_per_layer[layer] for layer in layers},
        "detectors": {layer: sum(per_cat[layer].values()) for layer in layers},
        "detectors_per_concept": per_label,
        "detectors_per_category": per_cat,
        "unique_concepts": {layer: len(per_label[layer]) for layer in layers},
    }
    if table is not None:
        out["region_nss"] = table
        out["region_nss_definition"] = nss_definition(config)
    note = (config.get("model") or {}).get("note")
    if note:
        out["note"] = note
    return out


def _csv(path: Path, rows: list[dict]) -> None:
    fields = list(rows[0]) if rows else ["layer", "unit", "label", "category", "score",
                                         "threshold"]
    with atomic_open(path, "w") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})


#: one colour per concept category in every figure (matplotlib's tab10 order)
CATEGORY_COLOURS = {"object": "#1f77b4", "part": "#ff7f0e", "scene": "#2ca02c",
                    "material": "#d62728", "texture": "#9467bd", "color": "#8c564b",
                    "colour": "#8c564b", "nss": "#e377c2"}
_OTHER_COLOURS = ["#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78"]


def category_colour(category: str, seen: dict) -> str:
    """The colour of a concept category (fixed for the usual ones, then a spare palette)."""
    if category in CATEGORY_COLOURS:
        return CATEGORY_COLOURS[category]
    if category not in seen:
        seen[category] = _OTHER_COLOURS[len(seen) % len(_OTHER_COLOURS)]
    return seen[category]


def run_names(summary: dict) -> tuple[str, str]:
    """``(model, concept set)`` names of a run from its summary ("?" where absent)."""
    cfg = summary.get("config") or {}
    model = cfg.get("model") or {}
    concepts = cfg.get("concepts") or {}
    return (str(model.get("spec") or model.get("name") or "?"),
            str(concepts.get("name") or concepts.get("spec") or "?"))


def plot_counts(path: Path, summary: dict, title: str = "", units=None,
                max_concepts: int = 20) -> None:
    """Write :func:`counts_figure` as a PNG (atomically)."""
    import matplotlib.pyplot as plt

    fig = counts_figure(summary, title, units, max_concepts)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def counts_figure(summary: dict, title: str = "", units=None, max_concepts: int = 20):
    """Detector units per concept: one panel per layer, horizontal bars coloured by concept
    category with a legend, integer unit axes, the figure titled with model, concept set and
    the detector rule.  ``units``: the unit rows (they map labels to categories; without them
    every bar is grey); ``max_concepts``: the most frequent concepts shown per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    per = summary["detectors_per_concept"]
    layers = list(per)
    if layers and not any(per.values()):
        return _no_detectors_figure(summary, title, plt)
    cat_of = {r["label"]: r["category"] for r in (units or []) if r.get("detector")}
    shown = {layer: list(per[layer].items())[:max_concepts] for layer in layers}
    rows_max = max([len(v) for v in shown.values()] + [1])
    cols = min(len(layers), 3) or 1
    nrow = -(-len(layers) // cols) if layers else 1
    width = 4.4 * cols + 0.8
    model, concepts = run_names(summary)
    height = 1.0 + nrow * (1.4 + 0.3 * max(rows_max, 4))
    fig, axes = plt.subplots(nrow, cols, figsize=(width, height), squeeze=False)
    head = wrap_to_figure(fig, f"Detector units per concept: model {model}, concepts "
                          f"{concepts}" + (f"\n{title}" if title else ""), 11)
    height += 0.2 * max(0, head.count("\n") - 1)        # room for a title of over 2 lines
    fig.set_size_inches(width, height)
    spare: dict = {}
    used = {}
    for k, layer in enumerate(layers):
        ax = axes[k // cols][k % cols]
        items = shown[layer]
        if items:
            cats = [cat_of.get(name, "") for name, _ in items]
            colours = [category_colour(c, spare) if c else "#999999" for c in cats]
            used.update({c: col for c, col in zip(cats, colours) if c})
            y = [rows_max - 1 - i for i in range(len(items))]     # from the top down
            ax.barh(list(y), [v for _, v in items], color=colours)
            ax.set_yticks(list(y))
            # a "$" in a label would start matplotlib mathtext
            ax.set_yticklabels([n.replace("$", r"\$") for n, _ in items], fontsize=9)
            ax.set_ylim(-0.6, rows_max - 0.4)
            for yy, (_, v) in zip(y, items):
                ax.text(v, yy, f" {v}", va="center", fontsize=8)
            ax.set_xlim(0, max(v for _, v in items) * 1.15 + 0.5)
        else:
            ax.text(0.5, 0.5, "no detector units", ha="center", va="center",
                    transform=ax.transAxes, fontsize=10)
            ax.set_yticks([])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("detector units", fontsize=9)
        n_det, n_units = summary["detectors"][layer], summary["units"][layer]
        n_con = len(per[layer])
        more = f", top {len(items)} shown" if n_con > len(items) else ""
        are = "units is a detector" if n_det == 1 else "units are detectors"
        ax.set_title(f"{layer.replace('$', chr(92) + '$')}\n{n_det} of {n_units} {are}, "
                     f"{n_con} {'concept' if n_con == 1 else 'concepts'}{more}", fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    for k in range(len(layers), nrow * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle(head, fontsize=11)
    if used:
        fig.legend(handles=[Patch(color=c, label=k) for k, c in sorted(used.items())],
                   title="category", fontsize=9, title_fontsize=9, loc="lower center",
                   ncol=min(6, len(used)), frameon=False)
    fig.tight_layout(rect=(0, 0.55 / height if used else 0, 1, 1))
    return fig


def _no_detectors_figure(summary: dict, title: str, plt):
    """``concepts.png`` of a run without any detector unit: one short figure that says so per
    layer, instead of a row of empty axes."""

    model, concepts = run_names(summary)
    layers = list(summary["detectors_per_concept"])
    lines = ["no detector units in any layer"] + [
        f"{layer}: 0 of {summary['units'].get(layer, '?')} units" for layer in layers]
    fig = plt.figure(figsize=(6.4, 1.0))
    head = wrap_to_figure(fig, f"Detector units per concept: model {model}, concepts "
                          f"{concepts}" + (f"\n{title}" if title else ""), 11)
    top = 0.15 + 0.22 * (head.count("\n") + 1)          # inches taken by the title
    height = top + 0.25 + 0.26 * len(lines)
    fig.set_size_inches(6.4, height)
    fig.suptitle(head, fontsize=11, y=1 - 0.08 / height)
    fig.text(0.5, 1 - (top + 0.15) / height, "\n".join(lines).replace("$", r"\$"),
             ha="center", va="top", fontsize=10, linespacing=1.5)
    return fig


def write_results(result, out_dir) -> Path:
    """Write ``units.csv``, ``summary.json``, ``concepts.png``, ``top_images.npz``,
    ``scores.npz`` (where the result holds score matrices) and, for region-NSS,
    ``region_nss.csv`` into ``out_dir`` (atomically each)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _csv(out / "units.csv", result.units)
    if result.nss_table is not None:
        _csv(out / "region_nss.csv", result.nss_table)
    cfg = result.summary["config"]
    what = "region-NSS > {}".format(cfg["nss_threshold"]) if cfg["score"] == "region-nss" \
        else "IoU >= {}".format(cfg["iou_threshold"])
    plot_counts(out / "concepts.png", result.summary,
                f"{cfg['mode']} mode, detectors: {what}", units=result.units)
    write_top_images(out / TOP_IMAGES, result.top_images)
    (out / LEGACY_TOP_IMAGES).unlink(missing_ok=True)   # a resumed older run: one copy only
    if getattr(result, "iou", None) or getattr(result, "nss", None):
        write_scores(out / SCORES, result.iou, result.nss, result.label_names,
                     result.label_categories)
    write_json(out / "summary.json", result.summary)
    return out


def write_npz(path, arrays: dict, compress: bool = True) -> None:
    """An ``.npz`` archive of ``arrays`` (``{name: array}``, read with ``np.load(path,
    allow_pickle=False)``), written atomically and reproducibly: the same arrays give the same
    bytes (fixed zip time stamps, unlike ``np.savez``), so a rerun's files compare equal."""
    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for name, value in arrays.items():
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type = method
            entry.external_attr = 0o644 << 16
            with zf.open(entry, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)
    with atomic_path(Path(path)) as tmp:
        Path(tmp).write_bytes(buf.getvalue())


def _numpy(x) -> np.ndarray:
    """A tensor or array as a numpy array (on the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def write_top_images(path: Path, top_images: dict) -> None:
    """``top_images``: ``{layer: (values (U, k), index (U, k))}``, the top-k images of every
    unit (best first) with the unit's peak activation on each, as :data:`TOP_IMAGES`
    (``layers``; ``values_<i>`` and ``index_<i>`` for the ``i``-th layer)."""
    arrays = {"layers": np.array(list(top_images), dtype=str)}
    for i, (values, index) in enumerate(top_images.values()):
        arrays[f"values_{i}"] = _numpy(values)
        arrays[f"index_{i}"] = _numpy(index).astype(np.int64)
    write_npz(path, arrays)


def write_scores(path: Path, iou: dict, nss: dict, label_names, label_categories) -> None:
    """The full score matrices of a run as :data:`SCORES`: per layer ``i`` ``iou_<i>`` (the
    ``(units, labels)`` IoU of every unit with every label id, as units.csv's labels were
    chosen from) and ``nss_<i>`` (mean region-NSS, NaN where a label has no fixated region);
    ``labels`` and ``categories`` name the columns (label id = column; id 0 is unlabelled)."""
    layers = list(dict.fromkeys([*(iou or {}), *(nss or {})]))
    arrays = {"layers": np.array(layers, dtype=str),
              "labels": np.array(list(label_names), dtype=str),
              "categories": np.array(list(label_categories), dtype=str)}
    for i, layer in enumerate(layers):
        if iou and layer in iou:
            arrays[f"iou_{i}"] = _numpy(iou[layer])
        if nss and layer in nss:
            arrays[f"nss_{i}"] = _numpy(nss[layer])
    write_npz(path, arrays)
