"""HTML views for Jupyter: compact tables of a dissection result and of a gallery.

``_repr_html_`` of :class:`~neuroprobe.run.Run`, :class:`~neuroprobe.dissect.DissectionResult`
and :class:`~neuroprobe.visualize.gallery.GalleryResult` call :func:`result_html` and
:func:`gallery_html`.  Every name and path is HTML-escaped; thumbnails of unit cards are
embedded as small PNG data URIs (so the notebook stays self-contained), made with Pillow where a
gallery drew the unit.

The module imports the standard library only (Pillow where a thumbnail is made).
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

__all__ = ["result_html", "gallery_html", "thumbnail_uri", "read_gallery", "html_table"]

#: rows of the top-units table of a result, and of a gallery table
MAX_ROWS = 12
#: the largest thumbnail of a unit card (width, height) in pixels
THUMB = (440, 76)


def _fmt(value) -> str:
    """A table cell as escaped text: numbers with 4 significant digits, None empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return html.escape(str(value))


def thumbnail_uri(png, size: tuple = THUMB) -> str | None:
    """A ``data:image/png;base64,...`` URI of ``png`` shrunk to fit ``size``; ``None`` where the
    file is missing or not an image."""
    try:
        from PIL import Image

        with Image.open(png) as im:
            im = im.convert("RGB")
            im.thumbnail(size)
            buf = io.BytesIO()
            im.save(buf, format="PNG", optimize=True)
    except (OSError, ValueError, ImportError):
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(png) -> str:
    uri = thumbnail_uri(png) if png else None
    return f'<img src="{uri}" alt="unit card" style="max-height:{THUMB[1]}px">' if uri else ""


def html_table(columns: list[str], rows: list[list], raw: tuple = ()) -> str:
    """An HTML table; cells are escaped except those of the ``raw`` column names (HTML the
    caller built from escaped parts, e.g. a thumbnail)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(
        f"<td>{cell if col in raw else _fmt(cell)}</td>" for col, cell in zip(columns, row))
        + "</tr>" for row in rows)
    return (f'<table class="neuroprobe" style="font-size:90%"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


def read_gallery(folder) -> list[dict]:
    """The entries of ``folder/gallery.json`` with ``png`` made absolute (``[]`` where the
    file is missing or unreadable: a view must not fail on a half-made gallery)."""
    file = Path(folder) / "gallery.json"
    try:
        entries = json.loads(file.read_text(encoding="utf-8")).get("units") or []
    except (OSError, ValueError, AttributeError):
        return []
    folder = Path(folder).resolve()
    return [{**e, "png": str(folder / e["png"])} for e in entries
            if isinstance(e, dict) and e.get("png")]


def result_html(view) -> str:
    """A dissection result as HTML: one line on the run, detector counts per layer, and the
    best units by score (detectors first) with a thumbnail of their card where a gallery
    exists."""
    cards = {(e.get("layer"), e.get("unit")): e["png"] for e in view.gallery_entries()}
    where = getattr(view, "path", None)
    title = (f"<b>{html.escape(type(view).__name__)}</b>"
             + (f" <code>{html.escape(str(where))}</code>" if where else ""))
    per_layer = []
    for layer in view.layers:
        rows = [r for r in view.units if r["layer"] == layer]
        det = [r for r in rows if r.get("detector")]
        labels: dict = {}
        for r in det:
            labels[r["label"]] = labels.get(r["label"], 0) + 1
        top = sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        per_layer.append([layer, len(rows), len(det), len(labels),
                          ", ".join(f"{k} {v}" for k, v in top)])
    best = sorted(view.units, key=lambda r: (not r.get("detector"), -(r.get("score") or 0)))
    columns = ["layer", "unit", "label", "category", "score", "detector"]
    shown = [[r.get(c) for c in columns] + [_img(cards.get((r["layer"], r["unit"])))]
             for r in best[:MAX_ROWS]]
    more = len(view.units) - len(shown)
    note = f"<p>{more} more units: <code>.units</code>, <code>.to_dataframe()</code></p>" \
        if more > 0 else ""
    return ('<div class="neuroprobe-result">'
            f"<p>{title}: {html.escape(view._what())}</p>"
            + html_table(["layer", "units", "detectors", "concepts", "most frequent"],
                         per_layer)
            + f"<p>best units{' (cards from the gallery)' if cards else ''}:</p>"
            + html_table(columns + ["card"], shown, raw=("card",)) + note + "</div>")


def gallery_html(entries: list[dict], out_dir=None) -> str:
    """A gallery as HTML: one row per drawn unit (up to :data:`MAX_ROWS`) with its card as a
    thumbnail, score, threshold, the peak on its best image and on the maximization image."""
    columns = ["card", "layer", "unit", "label", "score", "threshold", "best_image_peak",
               "maximization_peak", "reached_threshold"]
    rows = []
    for e in entries[:MAX_ROWS]:
        png = e.get("png")
        if png and out_dir is not None and not Path(png).is_absolute():
            png = Path(out_dir) / png
        rows.append([_img(png)] + [e.get(c) for c in columns[1:]])
    more = len(entries) - len(rows)
    where = f" <code>{html.escape(str(out_dir))}</code>" if out_dir is not None else ""
    return ('<div class="neuroprobe-gallery">'
            f"<p><b>Gallery</b>{where}: {len(entries)} units</p>"
            + html_table(columns, rows, raw=("card",))
            + (f"<p>{more} more units in gallery.json</p>" if more > 0 else "") + "</div>")
