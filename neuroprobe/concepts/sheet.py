"""Contact sheets of a concept set: images with their label masks and fixations overlaid."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io import atomic_path
from ..figures import wrap_to_figure
from ..utils import progress, versions

# a qualitative palette (tab20-like), indexed by label order in the sheet
_PALETTE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
], dtype=np.float64) / 255.0
#: at most this many observers get their own colour (matplotlib's tab20); more share colours
_OBSERVER_COLOURS = 20


def _mask_layers(ds, layers) -> list[int]:
    """Indices of the layers that carry non-colour labels (objects, parts)."""
    out = []
    for k in range(layers.shape[0]):
        ids = np.unique(layers[k])
        ids = ids[ids > 0]
        if ids.size and any(ds.labels.category(i) not in ("color", "colour") for i in ids
                            if i in ds.labels):
            out.append(k)
    return out


def _overlay(image: np.ndarray, layer: np.ndarray, colours: dict) -> np.ndarray:
    """``image`` (H, W, 3) in [0, 1] dimmed, with label colours blended in at 65%."""
    h, w = image.shape[:2]
    ys = (np.arange(h) * layer.shape[0] // h)[:, None]
    xs = (np.arange(w) * layer.shape[1] // w)[None, :]
    up = layer[ys, xs]
    out = image * 0.45
    for lab, col in colours.items():
        m = up == lab
        out[m] = 0.35 * image[m] + 0.65 * col
    return out


def contact_sheet(dataset, out_png, n: int = 8, columns: int = 2, start: int = 0) -> Path:
    """Draw ``n`` images of ``dataset`` with their object/part masks and fixations.

    Each image gets a panel with the fixations as dots (one colour per observer, keyed at the
    bottom of the sheet) and one panel per labelled mask layer (objects, parts; at most two) as
    coloured overlays.  Only as many mask panels per image as the concept set has layers with
    labels on these images: no empty panels.  Panel titles name the image id, its whole-image
    labels (scene, texture) and the layer's category; one legend at the bottom lists every
    label's colour (the same colour on every image), with its category.

    Parameters
    ----------
    dataset : ConceptDataset
    out_png : path of the PNG to write (written atomically; the configuration and versions go
        into the PNG's metadata).
    n : number of images (from ``start``).
    columns : images per row.
    """
    out_png = Path(out_png)
    if out_png.suffix.lower() != ".png":
        raise UserError(f"contact sheet output {out_png} must end in .png")
    fig, n = sheet_figure(dataset, n, columns, start)
    meta = {"Software": f"neuroprobe {versions().get('neuroprobe')}",
            "Description": json.dumps({"dataset": dataset.config(), "n": n, "start": start,
                                       "versions": versions()}, default=str)}
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", metadata=meta)
    return out_png


def sheet_figure(dataset, n: int = 8, columns: int = 2, start: int = 0):
    """The contact sheet as a matplotlib ``Figure`` (see :func:`contact_sheet`) and the number
    of images drawn."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if n < 1:
        raise UserError(f"contact sheet needs n >= 1 images, got {n}")
    n = min(n, len(dataset) - start)
    if n < 1:
        raise UserError(f"the concept set has only {len(dataset)} images")
    items = [dataset[start + i] for i in progress(range(n), desc="drawing", unit="img")]
    kept = [_mask_layers(dataset, it["layers"].numpy())[:2] for it in items]
    label_ids = sorted({int(i) for it, ks in zip(items, kept) for k in ks
                        for i in np.unique(it["layers"][k].numpy()) if i > 0})
    colours = {lab: _PALETTE[i % len(_PALETTE)] for i, lab in enumerate(label_ids)}
    masks = max(len(ks) for ks in kept)
    column_cats = [_column_category(dataset, items, kept, j) for j in range(masks)]
    per = 1 + masks                                  # panels per image
    observers = sorted({int(o) for it in items if it.get("observers") is not None
                        and it.get("fixations") is not None and len(it["fixations"])
                        for o in it["observers"].numpy()})
    rows = (n + columns - 1) // columns
    key_rows = _key_rows(len(label_ids), len(observers), per * columns)
    h, w = items[0]["image"].shape[-2:]
    fig = Figure(figsize=(2.6 * per * columns, (2.6 * h / w + 0.45) * rows + 0.2 * key_rows
                          + 0.6), dpi=110, layout="constrained")
    grid = fig.add_gridspec(rows, per * columns)
    for i, (it, ks) in enumerate(zip(items, kept)):
        r, c = divmod(i, columns)
        img = it["image"].permute(1, 2, 0).numpy().astype(np.float64)
        layers = it["layers"].numpy()
        whole = ", ".join(dataset.labels.name(int(w)) for w in it["whole"] if int(w) > 0)
        ax = fig.add_subplot(grid[r, c * per])
        ax.imshow(img)
        if it.get("fixations") is not None and len(it["fixations"]):
            f = it["fixations"].numpy()
            obs = it["observers"].numpy() if it.get("observers") is not None else np.zeros(len(f))
            ax.scatter(f[:, 0], f[:, 1], s=9, c=obs % _OBSERVER_COLOURS, cmap="tab20",
                       edgecolors="black", linewidths=0.3, vmin=0, vmax=19)
        ax.set_title(_wrap(f"{it['id']}", whole), fontsize=8)
        ax.set_axis_off()
        for j in range(masks):
            ax2 = fig.add_subplot(grid[r, c * per + 1 + j])
            ax2.set_axis_off()
            if j >= len(ks):
                ax2.imshow(img * 0.45 + 0.55)
                ax2.set_title(f"no {column_cats[j]} masks\nin this image", fontsize=8)
                continue
            layer = layers[ks[j]]
            present = [int(v) for v in np.unique(layer) if v > 0]
            ax2.imshow(_overlay(img, layer, {p: colours[p] for p in present}))
            cat = dataset.labels.category(present[0]) if present else ""
            ax2.set_title(_wrap(f"{cat} masks", ", ".join(dataset.labels.name(p)
                                                          for p in present)), fontsize=8)
    handles = [Patch(color=colours[p], label=f"{dataset.labels.name(p)} "
                     f"({dataset.labels.category(p)})") for p in label_ids]
    if observers:
        cmap = _tab20()
        shown = observers[:_OBSERVER_COLOURS]
        handles += [Line2D([], [], marker="o", linestyle="", markersize=5,
                           markerfacecolor=cmap(o % _OBSERVER_COLOURS), markeredgecolor="black",
                           markeredgewidth=0.3, label=f"observer {o + 1}") for o in shown]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=per * columns, fontsize=8,
                   frameon=False, title=_key_title(label_ids, observers), title_fontsize=8)
    fig.suptitle(wrap_to_figure(fig, f"{dataset.config().get('name', 'concept set')}: {n} "
                                f"image{'s' if n != 1 else ''} from #{start}", 10),
                 fontsize=10)
    return fig, n


def _column_category(dataset, items, kept, j: int) -> str:
    """The most common category of the ``j``-th mask panel over the sheet's images."""
    from collections import Counter

    cats = Counter()
    for it, ks in zip(items, kept):
        if j < len(ks):
            ids = [int(v) for v in np.unique(it["layers"][ks[j]].numpy()) if v > 0]
            if ids:
                cats[dataset.labels.category(ids[0])] += 1
    return cats.most_common(1)[0][0] if cats else "labelled"


def _tab20():
    import matplotlib

    return matplotlib.colormaps["tab20"].resampled(_OBSERVER_COLOURS)


def _key_rows(labels: int, observers: int, columns: int) -> int:
    entries = labels + min(observers, _OBSERVER_COLOURS)
    return -(-entries // max(1, columns)) + 1 if entries else 0


def _key_title(label_ids, observers) -> str:
    parts = []
    if label_ids:
        parts.append("mask colours: label (category)")
    if observers:
        more = (f"; {len(observers)} observers, colours repeat every {_OBSERVER_COLOURS}"
                if len(observers) > _OBSERVER_COLOURS else "")
        parts.append(f"dots: fixations, one colour per observer{more}")
    return "   |   ".join(parts)


def _wrap(first: str, second: str, width: int = 34) -> str:
    """A two-line panel title: ``first`` and ``second`` shortened to ``width`` characters
    (a "$" escaped, it would start matplotlib mathtext)."""
    if len(second) > width:
        second = second[:width - 3].rstrip(", ") + "..."
    return (first + ("\n" + second if second else "")).replace("$", r"\$")
