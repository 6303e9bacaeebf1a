"""The static HTML report of a dissection run.

One self-contained folder (``index.html``, ``units/*.png``, ``plots/*.png``) that works when
opened from ``file://``: no server, no network, no external scripts or styles.  Unit cards are
written into the page itself (so it reads without JavaScript); a small inline script sorts them
by score, filters them by concept, layer or category, and searches units (``block4:12``) and
labels.  The state lives in the URL fragment (``index.html#concept=person%20head&sort=score``),
so a filtered view can be bookmarked.

Every text that comes from data (label names, layer names, paths, model specs) is escaped with
:func:`html.escape` before it enters the page.
"""
from __future__ import annotations

import html
import shutil
from collections import Counter
from pathlib import Path
from typing import Sequence

from ..io import atomic_path, write_text
from ..figures import wrap_to_figure

__all__ = ["write_report", "render_html", "summary_plot", "scores_figure"]


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;
background:#f6f6f4}
header{background:#23303d;color:#fff;padding:14px 22px}
header h1{margin:0 0 4px 0;font-size:20px}
header .meta{font-size:13px;opacity:.85}
main{padding:14px 22px}
.plots{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:12px}
.plots img{max-width:100%;height:auto;background:#fff;border:1px solid #ddd}
.index{display:flex;flex-wrap:wrap;gap:24px;font-size:13px;margin-bottom:10px}
.index h2{font-size:14px;margin:4px 0}
.index ul{list-style:none;padding:0;margin:0;columns:3;column-gap:18px;max-width:760px}
.index a{color:#1a5fa8;text-decoration:none;cursor:pointer}
.controls{position:sticky;top:0;background:#f6f6f4;padding:8px 0;border-bottom:1px solid #ddd;
display:flex;flex-wrap:wrap;gap:10px;align-items:center;font-size:13px;z-index:2}
.controls input,.controls select{font-size:13px;padding:3px}
#grid{display:flex;flex-direction:column;gap:10px;margin-top:10px}
.card{background:#fff;border:1px solid #ddd;border-radius:4px;padding:8px}
.card[hidden]{display:none}
.card .head{font-size:13px;margin-bottom:4px}
.card .unit{font-weight:600}
.card .label{color:#8a2c0f;font-weight:600}
.card .score{color:#555}
.card img{max-width:100%;height:auto;display:block}
.empty{color:#777;font-style:italic}
"""

_JS = r"""
(function(){
  var grid = document.getElementById('grid');
  var cards = Array.prototype.slice.call(grid.querySelectorAll('.card'));
  var sel = {concept: document.getElementById('concept'), layer: document.getElementById('layer'),
             category: document.getElementById('category'), sort: document.getElementById('sort'),
             q: document.getElementById('search')};
  var count = document.getElementById('count');
  function state(){
    return {concept: sel.concept.value, layer: sel.layer.value, category: sel.category.value,
            sort: sel.sort.value, q: sel.q.value.trim().toLowerCase()};
  }
  function apply(){
    var s = state(), shown = 0;
    cards.forEach(function(c){
      var d = c.dataset;
      var ok = (!s.concept || d.label === s.concept) && (!s.layer || d.layer === s.layer) &&
               (!s.category || d.category === s.category);
      if (ok && s.q) {
        var key = (d.layer + ':' + d.unit).toLowerCase();
        var shortKey = (d.layer.split('.').pop() + ':' + d.unit).toLowerCase();
        ok = key === s.q || shortKey === s.q || key.indexOf(s.q) >= 0 ||
             d.label.toLowerCase().indexOf(s.q) >= 0;
      }
      c.hidden = !ok;
      if (ok) shown++;
    });
    var sorted = cards.slice();
    var by = s.sort;
    sorted.sort(function(a, b){
      var x = a.dataset, y = b.dataset;
      if (by === 'score-asc') return (+x.score) - (+y.score) || (+x.order) - (+y.order);
      if (by === 'unit') return (+x.order) - (+y.order);
      if (by === 'label') return x.label.localeCompare(y.label) || (+y.score) - (+x.score);
      return (+y.score) - (+x.score) || (+x.order) - (+y.order);
    });
    sorted.forEach(function(c){ grid.appendChild(c); });
    count.textContent = shown + ' of ' + cards.length + ' units';
    document.body.setAttribute('data-shown', String(shown));
    var p = new URLSearchParams();
    ['concept','layer','category','sort'].forEach(function(k){ if (s[k]) p.set(k, s[k]); });
    if (sel.q.value.trim()) p.set('q', sel.q.value.trim());
    var h = p.toString();
    if (('#' + h) !== location.hash && (h || location.hash)) {
      try { history.replaceState(null, '', h ? '#' + h : location.pathname); }
      catch (e) { /* some browsers refuse replaceState on file:// */ }
    }
  }
  function setSelect(el, v){
    for (var i = 0; i < el.options.length; i++) { if (el.options[i].value === v) { el.value = v; return; } }
  }
  function fromHash(){
    var p = new URLSearchParams(location.hash.slice(1));
    setSelect(sel.concept, p.get('concept') || '');
    setSelect(sel.layer, p.get('layer') || '');
    setSelect(sel.category, p.get('category') || '');
    setSelect(sel.sort, p.get('sort') || 'score');
    sel.q.value = p.get('q') || '';
  }
  ['concept','layer','category','sort'].forEach(function(k){ sel[k].addEventListener('change', apply); });
  sel.q.addEventListener('input', apply);
  Array.prototype.forEach.call(document.querySelectorAll('[data-set]'), function(a){
    a.addEventListener('click', function(ev){
      ev.preventDefault();
      var what = a.getAttribute('data-set'), v = a.getAttribute('data-value');
      ['concept','layer','category'].forEach(function(k){ setSelect(sel[k], ''); });
      setSelect(sel[what], v);
      apply();
      grid.scrollIntoView();
    });
  });
  document.getElementById('reset').addEventListener('click', function(){
    ['concept','layer','category'].forEach(function(k){ setSelect(sel[k], ''); });
    sel.q.value = ''; apply();
  });
  fromHash();
  apply();
  document.body.setAttribute('data-ready', '1');
})();
"""


def _options(values: Sequence[str], counts: Counter, all_text: str) -> str:
    out = [f'<option value="">{_e(all_text)}</option>']
    for v in values:
        out.append(f'<option value="{_e(v)}">{_e(v)} ({counts[v]})</option>')
    return "".join(out)


def _index_list(kind: str, values: Sequence[str], counts: Counter) -> str:
    items = "".join(
        f'<li><a href="#{_e(kind)}={_e(v)}" data-set="{_e(kind)}" data-value="{_e(v)}">'
        f'{_e(v)}</a> ({counts[v]})</li>' for v in values)
    return f"<ul>{items}</ul>" if items else '<p class="empty">none</p>'


def _peaks_text(e: dict) -> str:
    """The card's statistics: the peak of the unit's map on the maximization image and on the
    best data-set image (one statistic for both), with the threshold."""
    best = e.get("best_image_peak", e.get("top_activation"))
    peak = e.get("maximization_peak")
    thr = e.get("threshold")
    parts = []
    if peak is not None:
        ratio = f" = {float(peak) / float(thr):.2f}x threshold" if thr else ""
        miss = "" if thr is None or float(peak) > float(thr) else ", threshold not reached"
        parts.append(f"maximization image: peak {float(peak):.3g}{ratio}{miss}")
    if best:
        parts.append(f"best data-set image: peak {float(best):.3g}")
    if thr is not None and parts:
        parts.append(f"threshold {float(thr):.3g}")
    return "".join(f" &middot; {_e(p)}" for p in parts)


def render_html(entries: list[dict], summary: dict, *, score_name: str = "IoU",
                plots: Sequence[str] = (), title: str | None = None) -> str:
    """The report page as a string (see :func:`write_report`).

    ``entries``: one dict per unit with ``layer``, ``unit``, ``label``, ``category``, ``score``
    and ``png`` (path relative to the page); ``plots``: relative paths of summary images.
    """
    cfg = summary.get("config", {}) if summary else {}
    model = (cfg.get("model") or {}).get("spec") or (cfg.get("model") or {}).get("name") or "?"
    concepts = (cfg.get("concepts") or {}).get("name") or "?"
    title = title or f"neuroprobe dissection: {model} on {concepts}"
    labels = Counter(e.get("label") or "-" for e in entries)
    layers = Counter(e["layer"] for e in entries)
    cats = Counter(e.get("category") or "" for e in entries)
    detectors = sum(1 for e in entries if str(e.get("detector", "")) in ("1", "True"))
    label_order = sorted(labels, key=lambda v: (-labels[v], v))
    layer_order = list(dict.fromkeys(e["layer"] for e in entries))
    cat_order = sorted(c for c in cats if c)
    meta = [f"model <b>{_e(model)}</b>", f"concepts <b>{_e(concepts)}</b>",
            f"mode {_e(cfg.get('mode', '?'))}", f"score {_e(score_name)}",
            f"{len(entries)} unit{'' if len(entries) == 1 else 's'}",
            f"{detectors} detector{'' if detectors == 1 else 's'}"]
    if cfg.get("iou_threshold") is not None and score_name == "IoU":
        meta.append(f"IoU threshold {_e(cfg.get('iou_threshold'))}")
    method = next((e.get("attribution") for e in entries if e.get("attribution")), None)
    if method:
        colours = ("blue negative, red positive" if entries[0].get("attribution_signed", True)
                   else "dark blue 0 to yellow max")
        meta.append(f"attribution {_e(str(method).replace('_', ' '))} ({colours})")
    meta.append("outlined: region above the unit's threshold; peak: the map's maximum")
    versions = summary.get("versions", {}) if summary else {}
    if versions.get("neuroprobe"):
        meta.append(f"neuroprobe {_e(versions['neuroprobe'])}")
    cards = []
    for i, e in enumerate(entries):
        label = e.get("label") or "-"
        cat = e.get("category") or ""
        score = float(e.get("score") or 0.0)
        extra = _peaks_text(e)
        cards.append(
            f'<div class="card" id="u-{i}" data-layer="{_e(e["layer"])}" '
            f'data-unit="{_e(e["unit"])}" data-label="{_e(label)}" data-category="{_e(cat)}" '
            f'data-score="{score!r}" data-order="{i}">'
            f'<div class="head"><span class="unit">{_e(e["layer"])}:{_e(e["unit"])}</span> '
            f'<span class="label">{_e(label)}</span> <span class="cat">{_e(cat)}</span> '
            f'<span class="score">{_e(score_name)} {score:.3f}{extra}</span></div>'
            f'<img loading="lazy" src="{_e(e["png"])}" alt="{_e(e["layer"])}:{_e(e["unit"])} '
            f'{_e(label)}"></div>')
    plot_html = "".join(f'<img src="{_e(p)}" alt="summary plot">' for p in plots)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body data-ready="0">
<header><h1>{_e(title)}</h1><div class="meta">{" &middot; ".join(meta)}</div></header>
<main>
<section class="plots">{plot_html}</section>
<section class="index">
<div><h2>By layer</h2>{_index_list("layer", layer_order, layers)}</div>
<div><h2>By concept</h2>{_index_list("concept", label_order, labels)}</div>
</section>
<div class="controls">
<label>concept <select id="concept">{_options(label_order, labels, "all concepts")}</select></label>
<label>layer <select id="layer">{_options(layer_order, layers, "all layers")}</select></label>
<label>category <select id="category">{_options(cat_order, cats, "all categories")}</select>
</label>
<label>sort <select id="sort"><option value="score">score, high first</option>
<option value="score-asc">score, low first</option><option value="unit">layer and unit</option>
<option value="label">concept</option></select></label>
<label>search <input id="search" type="search" placeholder="unit (block4:12) or label">
</label>
<button id="reset" type="button">show all</button>
<span id="count">{len(entries)} units</span>
</div>
<section id="grid">
{chr(10).join(cards) if cards else '<p class="empty">no units</p>'}
</section>
</main>
<script>{_JS}</script>
</body></html>
"""


def summary_plot(path, entries: list[dict], score_name: str = "IoU", summary: dict | None = None,
                 selection: str = "") -> None:
    """Write :func:`scores_figure` as ``path`` (a PNG, atomically)."""
    import matplotlib.pyplot as plt

    fig = scores_figure(entries, score_name, summary, selection)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def scores_figure(entries: list[dict], score_name: str = "IoU", summary: dict | None = None,
                  selection: str = ""):
    """``scores.png``: the scores of the drawn units per layer and their most
    frequent labels (bars coloured by category), titled with model, concept set, layers and
    which units were drawn (``selection``, e.g. "detector units only")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    from ..results import category_colour, run_names

    def tex(text) -> str:   # a "$" in a name would start matplotlib mathtext
        return str(text).replace("$", r"\$")

    layers = sorted(dict.fromkeys(e["layer"] for e in entries))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    which = f"{len(entries)} {'unit' if len(entries) == 1 else 'units'}" + (
        f", {selection}" if selection else "")
    scores = {layer: [float(e["score"]) for e in entries if e["layer"] == layer]
              for layer in layers}
    if len(entries) <= 60:      # few units: every unit a dot, one row per layer
        for k, layer in enumerate(layers):
            jitter = np.random.default_rng(k).uniform(-0.15, 0.15, len(scores[layer]))
            axes[0].scatter(scores[layer], k + jitter, s=22, alpha=0.75, color=f"C{k}")
        axes[0].set_yticks(range(len(layers)))
        axes[0].set_yticklabels([tex(layer) for layer in layers], fontsize=9)
        axes[0].set_ylim(-0.6, len(layers) - 0.4)
        axes[0].invert_yaxis()
    else:                       # many: histograms on shared bins
        edges = np.histogram_bin_edges([v for vs in scores.values() for v in vs], bins=30)
        for layer in layers:
            axes[0].hist(scores[layer], bins=edges, alpha=0.6, label=tex(layer))
        axes[0].set_ylabel("units", fontsize=10)
        axes[0].yaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0].legend(fontsize=8, title="layer", title_fontsize=8)
    axes[0].set_xlabel(f"{score_name} (higher is better)", fontsize=10)
    axes[0].set_title(f"{score_name} of the drawn units ({which}), per layer", fontsize=10)
    counts = Counter(e.get("label") or "-" for e in entries).most_common(15)
    cat_of = {e.get("label") or "-": e.get("category") or "" for e in entries}
    spare: dict = {}
    used = {}
    if counts:
        colours = [category_colour(cat_of[n], spare) if cat_of[n] else "#999999"
                   for n, _ in counts]
        used = {cat_of[n]: c for (n, _), c in zip(counts, colours) if cat_of[n]}
        axes[1].barh(range(len(counts)), [c for _, c in counts][::-1], color=colours[::-1])
        axes[1].set_yticks(range(len(counts)))
        axes[1].set_yticklabels([tex(n) for n, _ in counts][::-1], fontsize=9)
        # room for at least 8 bars, so that one or two labels are bars, not blocks
        axes[1].set_ylim(len(counts) - 0.5 - max(8, len(counts)), len(counts) - 0.5)
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].set_xlabel("drawn units whose best label it is", fontsize=10)
    axes[1].set_title("most frequent unit labels", fontsize=10)
    if used:
        axes[1].legend(handles=[Patch(color=c, label=k) for k, c in sorted(used.items())],
                       title="category", fontsize=8, title_fontsize=8, loc="lower right")
    model, concepts = run_names(summary or {})
    fig.suptitle(wrap_to_figure(fig, f"Gallery units: model {tex(model)}, concepts "
                                f"{tex(concepts)}, layers {tex(', '.join(layers)) or '-'}", 11),
                 fontsize=11)
    fig.tight_layout()
    return fig


def write_report(out_dir, entries: list[dict], summary: dict, *, run_dir=None,
                 score_name: str = "IoU", title: str | None = None,
                 selection: str = "") -> Path:
    """Write ``out_dir/index.html`` and its summary plots into ``out_dir/plots``.

    ``entries`` reference PNGs relative to ``out_dir`` (as :func:`~neuroprobe.visualize.gallery.
    render_units` returns them).  The run's own ``concepts.png`` is copied in when ``run_dir``
    has one, so the folder stays self-contained.  ``selection`` says which units were drawn
    ("detector units only"), for the title of ``scores.png``.
    """
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    plots = []
    summary_plot(out / "plots" / "scores.png", entries, score_name, summary, selection)
    plots.append("plots/scores.png")
    if run_dir is not None and (Path(run_dir) / "concepts.png").is_file():
        with atomic_path(out / "plots" / "concepts.png") as tmp:
            shutil.copyfile(Path(run_dir) / "concepts.png", tmp)
        plots.append("plots/concepts.png")
    page = out / "index.html"
    write_text(page, render_html(entries, summary, score_name=score_name, plots=plots,
                                 title=title))
    return page
