"""Contact sheets of a concept set: images with their label masks and fixations overlaid."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io import atomic_path
from ..utils import progress, versions

# a qualitative palette (tab20-like), indexed by label order in the sheet
_PALETTE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
], dtype=np.float64) / 255.0


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

    Each image gets three panels: the image with the fixations as dots (one colour per observer),
    the first mask layer (objects) and the second (parts) as coloured overlays with a legend.
    Titles name the image id and its whole-image labels (scene, texture).

    Parameters
    ----------
    dataset : ConceptDataset
    out_png : path of the PNG to write (written atomically; the configuration and versions go
        into the PNG's metadata).
    n : number of images (from ``start``).
    columns : images per row.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    from matplotlib.patches import Patch

    if n < 1:
        raise UserError(f"contact sheet needs n >= 1 images, got {n}")
    out_png = Path(out_png)
    if out_png.suffix.lower() != ".png":
        raise UserError(f"contact sheet output {out_png} must end in .png")
    n = min(n, len(dataset) - start)
    if n < 1:
        raise UserError(f"the concept set has only {len(dataset)} images")
    items = [dataset[start + i] for i in progress(range(n), desc="drawing", unit="img")]
    label_ids = sorted({int(i) for it in items for k in _mask_layers(dataset, it["layers"].numpy())
                        for i in np.unique(it["layers"][k].numpy()) if i > 0})
    colours = {lab: _PALETTE[i % len(_PALETTE)] for i, lab in enumerate(label_ids)}
    rows = (n + columns - 1) // columns
    fig = Figure(figsize=(3 * 2.4 * columns, 2.6 * rows), dpi=110)
    for i, it in enumerate(items):
        img = it["image"].permute(1, 2, 0).numpy().astype(np.float64)
        layers = it["layers"].numpy()
        r, c = divmod(i, columns)
        whole = ", ".join(dataset.labels.name(int(w)) for w in it["whole"] if int(w) > 0)
        ax = fig.add_subplot(rows, 3 * columns, r * 3 * columns + 3 * c + 1)
        ax.imshow(img)
        if it.get("fixations") is not None and len(it["fixations"]):
            f = it["fixations"].numpy()
            obs = it["observers"].numpy() if it.get("observers") is not None else np.zeros(len(f))
            ax.scatter(f[:, 0], f[:, 1], s=7, c=obs, cmap="tab20", edgecolors="black",
                       linewidths=0.3, vmin=0, vmax=19)
        ax.set_title(f"{it['id']}\n{whole}", fontsize=6.5)
        ks = _mask_layers(dataset, layers)[:2]
        for j in range(2):
            ax2 = fig.add_subplot(rows, 3 * columns, r * 3 * columns + 3 * c + 2 + j)
            if j < len(ks):
                layer = layers[ks[j]]
                present = [int(v) for v in np.unique(layer) if v > 0]
                ax2.imshow(_overlay(img, layer, {p: colours[p] for p in present}))
                cat = dataset.labels.category(present[0]) if present else ""
                ax2.set_title(f"{cat} layer", fontsize=6.5)
                handles = [Patch(color=colours[p], label=dataset.labels.name(p)) for p in present]
                if handles:
                    ax2.legend(handles=handles, fontsize=4.5, loc="lower left", framealpha=0.7,
                               borderpad=0.2, labelspacing=0.15, handlelength=0.8)
            else:
                ax2.imshow(img * 0.45)
                ax2.set_title("(no labels)", fontsize=6.5)
            ax2.set_axis_off()
        ax.set_axis_off()
    fig.tight_layout(pad=0.4)
    meta = {"Software": f"neuroprobe {versions().get('neuroprobe')}",
            "Description": json.dumps({"dataset": dataset.config(), "n": n, "start": start,
                                       "versions": versions()}, default=str)}
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", metadata=meta)
    return out_png
