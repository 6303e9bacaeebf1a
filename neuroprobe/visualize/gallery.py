"""Per-unit galleries of a dissection run: one PNG per unit, plus the HTML report.

Each unit's card shows

* its top-k data-set images (the images where the unit's maximum activation is highest, as in
  NetDissect) with the **thresholded activation region outlined**: the unit's map is upsampled
  bilinearly to the image and the boundary of ``map > threshold`` is drawn (threshold from
  ``units.csv``; for region-NSS runs, which have no threshold, the top 0.5% of the unit's values
  on its top images);
* the unit's label, category and score (IoU, or region-NSS), its threshold, and one statistic
  for every image: the **peak** of the unit's map (under each top image, for the best one and
  for the maximization image in the subtitle, with the maximization's ratio to the threshold
  and to the best image, and "threshold NOT reached" when it stays below);
* an activation-maximization image (:mod:`neuroprobe.visualize.maximize`): the units of a
  layer are optimised together, one image per unit, each until the peak of its map exceeds the
  unit's threshold or the step budget is spent (the card says "threshold NOT reached" then);
* an attribution map (integrated gradients by default, any method of
  :mod:`neuroprobe.visualize.attribute`, of the unit on its top image, through Captum) drawn
  in colour over the greyed image: signed methods blue (-) / white / red (+), Grad-CAM-like
  magnitudes in a sequential map; the method and a colour key sit under the tile.

Cards are composed with Pillow (no plotting library in the per-unit loop), so hundreds of units
take seconds once the model work is done.

Top-k images: a dissection's :class:`~neuroprobe.dissect.DissectionResult` carries them in
memory; a run folder holds them in ``top_images.npz`` (read by
:func:`neuroprobe.run.read_top_images`; older runs: ``top_images.pt``).  When both are
absent they are recomputed from the model and the concept set named in ``summary.json`` (one
forward pass over the data set).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ..engine.store import check_model
from ..errors import UserError
from ..reopen import reopen
from ..notebook import gallery_html
from ..run import load_run, read_top_images, typed_cell
from ..utils import model_device

log = logging.getLogger(__name__)

if TYPE_CHECKING:   # annotations only: PIL is imported where a card is drawn
    from PIL import Image

__all__ = ["choose_attribution", "unit_card", "outline", "read_run", "top_images",
           "unit_maps", "top_views", "TopViews", "render_units",
           "make_gallery", "unit_filename", "GalleryResult", "parse_units"]

# -- drawing ------------------------------------------------------------------------------------

OUTLINE_RGB = (255, 230, 0)


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Boundary pixels of a boolean mask (pixels of the mask with a 4-neighbour outside it),
    thickened inwards to ``width`` pixels."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    inner = ndimage.binary_erosion(mask, iterations=width, border_value=0)
    return mask & ~inner


def _to_uint8(img) -> np.ndarray:
    a = img.detach().float().cpu().numpy() if torch.is_tensor(img) else np.asarray(img)
    if a.ndim == 3 and a.shape[0] == 3:
        a = a.transpose(1, 2, 0)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
    return a


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - old Pillow
        return ImageFont.load_default()


def _resize(a: np.ndarray, tile: int) -> "Image.Image":
    from PIL import Image

    im = Image.fromarray(a)
    return im if im.size == (tile, tile) else im.resize((tile, tile), Image.BILINEAR)


def unit_card(images, maps, threshold: float, *, title: str, subtitle: str = "",
              am_image=None, attribution=None, tile: int = 96, scores=None,
              am_caption: str = "maximization", attribution_caption: str = "attribution",
              attribution_signed: bool | None = None) -> "Image.Image":
    """Compose one unit's card.

    Parameters
    ----------
    images : (k, 3, H, W) tensor in [0, 1]
        The unit's top-k images.
    maps : (k, h, w) tensor
        The unit's activation map on each image (any resolution; upsampled bilinearly).
    threshold : float
        Activation level whose region is outlined.
    title, subtitle : str
        Text lines (unit, label, score).
    am_image : (3, h, w) tensor, optional
        Activation-maximization image.
    attribution : (H, W, 3) uint8 array, optional
        Attribution overlay (see :func:`neuroprobe.visualize.attribute.overlay`).
    tile : int
        Edge of each square tile in pixels.
    scores : sequence of float, optional
        The peak of the unit's map on each image, printed under the tile ("peak 7.67").
    am_caption, attribution_caption : str
        Text under the maximization and attribution tiles (a second line may follow a "\n").
    attribution_signed : bool, optional
        Draw the attribution's colour key under its tile: blue-white-red from - to + for
        signed maps, the sequential map from 0 to max for magnitudes (None: no key).

    Returns
    -------
    PIL.Image.Image
    """
    from PIL import Image, ImageDraw

    k = len(images)
    extra = int(am_image is not None) + int(attribution is not None)
    pad, head = 4, 40
    small = _font(max(10, min(12, tile // 8)))
    line = small.size + 2 if hasattr(small, "size") else 12
    foot = 2 * line + 2
    width = pad + (k + extra) * (tile + pad) + (8 if extra else 0)
    height = head + tile + foot + pad
    card = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(card)
    draw.text((pad, 3), title, fill=(0, 0, 0), font=_font(15))
    if subtitle:
        draw.text((pad, 22), subtitle, fill=(60, 60, 60), font=_font(12))
    if k:
        up = torch.nn.functional.interpolate(
            torch.as_tensor(maps, dtype=torch.float32)[:, None], size=(tile, tile),
            mode="bilinear", align_corners=False)[:, 0].numpy()
    x = pad
    for i in range(k):
        a = np.array(_resize(_to_uint8(images[i]), tile))
        edge = outline(up[i] > threshold, width=max(1, tile // 64))
        a[edge] = OUTLINE_RGB
        card.paste(Image.fromarray(a), (x, head))
        if scores is not None:
            draw.text((x, head + tile + 1), f"peak {float(scores[i]):.3g}", fill=(60, 60, 60),
                      font=small)
        x += tile + pad
    x += 8 if extra else 0
    for img, caption in ((am_image, am_caption), (attribution, attribution_caption)):
        if img is None:
            continue
        card.paste(_resize(_to_uint8(img), tile), (x, head))
        keyed = img is attribution and attribution_signed is not None
        for n, text in enumerate(caption.split("\n")[:1 if keyed else 2]):
            draw.text((x, head + tile + 1 + n * line), text, fill=(60, 60, 60), font=small)
        if keyed:
            _colour_key(card, draw, x, head + tile + 1 + line, tile, attribution_signed, small)
        x += tile + pad
    return card


def _colour_key(card, draw, x: int, y: int, tile: int, signed: bool, font) -> None:
    """A colour bar under the attribution tile with its ends marked (- / + or 0 / max)."""
    from PIL import Image

    from .attribute import colorbar_strip

    lo, hi = ("-", "+") if signed else ("0", "max")
    wl = draw.textlength(lo, font=font)
    wh = draw.textlength(hi, font=font)
    bar_w = max(8, int(tile - wl - wh - 6))
    draw.text((x, y), lo, fill=(60, 60, 60), font=font)
    card.paste(Image.fromarray(colorbar_strip(bar_w, 8, signed)), (int(x + wl + 3), y + 3))
    draw.text((x + wl + bar_w + 6, y), hi, fill=(60, 60, 60), font=font)


# -- reading a run ----------------------------------------------------------------------------------

def unit_filename(layer: str, unit: int) -> str:
    """A file name for a unit's PNG (safe characters only)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", layer) + f"-{int(unit):04d}.png"


def read_run(run_dir) -> tuple[list[dict], dict]:
    """``units.csv`` rows (typed: unit as int, score/threshold as floats, an empty threshold
    as ``None``) and ``summary.json`` (``{}`` where absent), read by
    :func:`neuroprobe.run.load_run`."""
    run = load_run(run_dir, require_summary=False)
    return run.units, run.summary


def parse_units(text: str | Sequence[str]) -> list[tuple[str, int]]:
    """``"layer4:12,layer4:40"`` (or a list of such items; ``layer4:3-6`` is a range) ->
    ``[(layer, unit), ...]``."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        layer, sep, unit = item.rpartition(":")
        try:
            if not sep or not layer:
                raise ValueError
            if "-" in unit:
                a, b = unit.split("-", 1)
                out += [(layer, u) for u in range(int(a), int(b) + 1)]
            else:
                out.append((layer, int(unit)))
        except ValueError:
            raise UserError(f"bad unit {item!r}",
                            hint="write units as LAYER:INDEX, e.g. layer4:12,layer4:40 "
                            "(or layer4:0-15)") from None
    if not out:
        raise UserError("no units given", hint="e.g. --units layer4:12,layer4:40")
    return out


def resolve_layer_name(model, name: str) -> str:
    """A layer name as given, or the unique layer whose dotted name ends with ``.name``
    (``layer4`` -> ``encoder.layer4``)."""
    from ..hooks import layer_names, resolve_layers

    names = layer_names(model)
    if name in names:
        return name
    hits = [n for n in names if n.endswith("." + name)]
    if len(hits) == 1:
        return hits[0]
    return next(iter(resolve_layers(model, [name])))   # raises LayerNotFound with hints


# -- top images and maps -------------------------------------------------------------------------------

def top_images(model, dataset, layers: Sequence[str], k: int = 8, batch_size: int = 32,
               show_progress: bool = True) -> dict:
    """Top-``k`` images per unit by the unit's maximum activation (one pass over ``dataset``
    with :func:`neuroprobe.engine.run_pass`).

    Returns ``{layer: (values (U, k), index (U, k))}`` like
    :attr:`neuroprobe.dissect.DissectionResult.top_images`.
    """
    from ..engine import run_pass
    from ..stats import TopK

    stats = {name: TopK(k) for name in layers}

    def on_batch(acts, batch, j):
        for name in (layers if acts else ()):
            stats[name].add(acts[name].flatten(2).amax(2).float().cpu(), batch["index"])

    run_pass(model.eval(), dataset, list(layers), on_batch, batch_size=batch_size,
             device=model_device(model), labels=False, progress=show_progress,
             desc="top images")
    return {name: (s.values, s.index) for name, s in stats.items()}


def unit_maps(model, dataset, layer: str, indices: Sequence[int], batch_size: int = 32):
    """Images (N, 3, H, W) and ``layer`` outputs (N, C, h, w) for the given data-set indices
    (read and run by :func:`neuroprobe.engine.run_pass`)."""
    from ..engine import model_input, run_pass

    images, maps = [], []

    def on_batch(acts, batch, j):
        images.append(model_input(batch["image"], "cpu", False))
        maps.append(acts[layer].float().cpu())

    run_pass(model, dataset, [layer], on_batch, indices=[int(i) for i in indices],
             batch_size=batch_size, device=model_device(model), labels=False)
    return torch.cat(images), torch.cat(maps)


@dataclass
class TopViews:
    """What the cards of one layer's units need from their top images (see :func:`top_views`).

    thumbs : {data-set index: (3, tile, tile) uint8} every top image, at tile size
    full : {data-set index: (3, H, W) float} the images that are some unit's best image
    maps : {(unit, data-set index): (h, w) float} each unit's map on each of its top images
    """

    thumbs: dict = field(default_factory=dict)
    full: dict = field(default_factory=dict)
    maps: dict = field(default_factory=dict)


def top_views(model, dataset, layer: str, units: Sequence[int], index: torch.Tensor,
              tile: int, batch_size: int = 32, show_progress: bool = False) -> TopViews:
    """Read and run the top images of ``units`` once (one :func:`neuroprobe.engine.run_pass`
    over the union of their indices in ``index`` (U, k); -1 = none) and keep only what their
    cards use: tile-size thumbnails, the full-size best images (for the attributions) and each
    unit's own maps, so memory grows with units x k maps, not with images x channels."""
    import torch.nn.functional as F

    from ..engine import model_input, run_pass

    wanted: dict[int, list[int]] = {}
    for u in units:
        for i in index[u].tolist():
            if i >= 0:
                wanted.setdefault(int(i), []).append(int(u))
    best = {int(index[u, 0]) for u in units if int(index[u, 0]) >= 0}
    views = TopViews()

    def on_batch(acts, batch, j):
        x = model_input(batch["image"], "cpu", False)
        out = acts[layer].float().cpu()
        small = F.interpolate(x, size=(tile, tile), mode="bilinear", align_corners=False,
                              antialias=True)
        small = (small.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        for b, i in enumerate(batch["index"].tolist()):
            views.thumbs[i] = small[b]
            if i in best:
                views.full[i] = x[b].clone()
            for u in wanted[i]:
                views.maps[(u, i)] = out[b, u].clone()

    if wanted:
        run_pass(model, dataset, [layer], on_batch, indices=sorted(wanted),
                 batch_size=batch_size, device=model_device(model), labels=False,
                 progress=show_progress, desc=f"top images of {layer}")
    return views


# -- the gallery ---------------------------------------------------------------------------------------

@dataclass
class GalleryResult:
    """What :func:`make_gallery` wrote: the folder, one PNG per unit, the report page."""

    out_dir: Path
    pngs: list = field(default_factory=list)
    report: Path | None = None
    entries: list = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"GalleryResult({str(self.out_dir)!r}: {len(self.entries)} units"
                + (f", report {str(self.report)!r})" if self.report else ")"))

    def _repr_html_(self) -> str:
        return gallery_html(self.entries, self.out_dir)


#: how the gallery optimises a unit's image: the peak of the unit's map (the statistic its top
#: images are ranked by and the card reports), lucid's redirected ReLU gradient so that units
#: that are off on the starting image can start, and a check of the peak every 8 steps (the
#: unit stops once it exceeds its threshold), Adam at learning rate 0.1 (on the demo model all
#: 22 detector units reach their thresholds, the slowest after 56 steps; at 0.05 after 96)
MAXIMIZE = {"objective": "peak", "relu_redirect": True, "check_every": 8, "lr": 0.1}


def render_units(model, dataset, rows: list[dict], top: dict, out_dir, *, score_name: str = "IoU",
                 maximize_steps: int = 256, maximize_size: int | None = None,
                 attribution: str = "integrated_gradients", n_steps: int = 16,
                 internal_batch_size: int | None = 64, tile: int = 96, k: int | None = None,
                 batch_size: int = 32, seed: int = 0, show_progress: bool = True) -> list[dict]:
    """Write one PNG per row of ``rows`` (units of a run) into ``out_dir/units``.

    ``top``: ``{layer: (values, index)}`` top images per unit.  The units of a layer go in
    batches of ``batch_size`` (the top images of a layer's units are read and run once
    before, :func:`top_views`): their maximization
    images optimised together (one forward and backward pass per step, each unit until the
    peak of its map exceeds its threshold or ``maximize_steps`` are spent, see
    :func:`neuroprobe.visualize.maximize.maximize_units` and :data:`MAXIMIZE`), their
    attributions computed in one batched Captum call; the progress bar advances by units as
    each batch is written.

    Returns one entry per unit: the row (numbers as numbers), ``png`` (the path relative to
    ``out_dir``), ``threshold``, ``best_image_peak`` (the peak of the unit's map on its best
    data-set image; also kept as ``top_activation``), ``maximization_peak`` (the same statistic
    on the maximization image), ``maximization_steps``, ``reached_threshold``,
    ``am_activation`` (the optimised objective on the final image, equal to the peak),
    ``attribution`` and ``attribution_signed``.
    """
    from ..utils import progress

    out = Path(out_dir)
    (out / "units").mkdir(parents=True, exist_ok=True)
    entries = []
    by_layer: dict[str, list[dict]] = {}
    for r in rows:
        by_layer.setdefault(r["layer"], []).append(r)
    size = maximize_size or int(getattr(dataset, "image_size", (128, 128))[0])
    bar = progress(total=len(rows), desc="gallery", unit="unit") if show_progress else None
    opts = dict(score_name=score_name, maximize_steps=maximize_steps, size=size,
                attribution=attribution, n_steps=n_steps,
                internal_batch_size=internal_batch_size, tile=tile, batch_size=batch_size,
                seed=seed)
    for layer, lrows in by_layer.items():
        if layer not in top:
            raise UserError(f"no top images for layer {layer!r}")
        values, index = top[layer]
        bad = [r["unit"] for r in lrows if not 0 <= r["unit"] < index.shape[0]]
        if bad:
            raise UserError(f"unit {layer}:{bad[0]} does not exist: the layer has "
                            f"{index.shape[0]} units in the top images",
                            hint="was units.csv made with another model?")
        kk = min(k or index.shape[1], index.shape[1])
        views = top_views(model, dataset, layer, [r["unit"] for r in lrows], index[:, :kk],
                          tile, batch_size, show_progress)
        for s in range(0, len(lrows), batch_size):
            chunk = lrows[s:s + batch_size]
            entries += _render_batch(model, layer, chunk, values, index[:, :kk], views, out,
                                     **opts)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return entries


def _render_batch(model, layer: str, rows: list[dict], values, index, views: TopViews,
                  out: Path, *, score_name, maximize_steps, size, attribution, n_steps,
                  internal_batch_size, tile, batch_size, seed) -> list[dict]:
    """Cards of one batch of units of ``layer`` (see :func:`render_units`)."""
    from . import attribute as at
    from . import maximize as am
    from ..io import atomic_path

    units = [r["unit"] for r in rows]
    tops = [[int(i) for i in index[u].tolist() if i >= 0] for u in units]
    umaps = [torch.stack([views.maps[(u, i)] for i in t]) if t else torch.zeros(0, 1, 1)
             for u, t in zip(units, tops)]
    thrs = [_threshold(r.get("threshold"), m) for r, m in zip(rows, umaps)]
    res = None
    if maximize_steps > 0:
        res = am.maximize_units(model, layer, units, size=size, steps=maximize_steps, seed=seed,
                                batch_size=batch_size, thresholds=thrs, **MAXIMIZE)
    method = at.canonical_method(attribution) if attribution and attribution != "none" else None
    signed = method is not None and at.is_signed(method)
    overlays = [None] * len(units)
    have = [j for j, t in enumerate(tops) if t]
    if method is not None and have:
        firsts = torch.stack([views.full[tops[j][0]] for j in have])
        attr = at.attribute_units(model, layer, [units[j] for j in have], firsts,
                                  method=method, n_steps=n_steps,
                                  internal_batch_size=internal_batch_size)
        heat = at.attribution_map(attr, signed=signed).cpu()
        for n, j in enumerate(have):
            overlays[j] = at.overlay(firsts[n], heat[n], signed=signed,
                                     smooth=_blur(firsts.shape[-1]), **_DISPLAY)
    entries = []
    for j, (r, u, t, thr) in enumerate(zip(rows, units, tops, thrs)):
        best = float(values[u, 0])
        am_peak = None if res is None else float(res.peaks[j])
        am_steps = None if res is None else int(res.steps_used[j])
        label = r.get("label") or "-"
        cat = r.get("category") or ""
        title = f"{layer}:{u}  {label}" + (f" ({cat})" if cat else "")
        thumbs = torch.stack([views.thumbs[i] for i in t]).float() / 255 if t else \
            torch.zeros(0, 3, tile, tile)
        card = unit_card(thumbs, umaps[j], thr, title=title,
                         subtitle=_subtitle(score_name, r["score"], thr, best, am_peak,
                                            am_steps),
                         am_image=None if res is None else res.images[j],
                         attribution=overlays[j], tile=tile,
                         scores=values[u, :len(t)].tolist(),
                         am_caption="maximization" + (
                             "" if am_peak is None else f"\npeak {am_peak:.3g}"),
                         attribution_caption="" if method is None else
                         at.method_label(method, short=True) + " on #1",
                         attribution_signed=None if method is None else signed)
        name = unit_filename(layer, u)
        with atomic_path(out / "units" / name) as tmp:   # zlib level 1: half the time of 6
            card.save(tmp, format="PNG", compress_level=1)
        entries.append(_entry(r, png=f"units/{name}", threshold=thr, best_image_peak=best,
                              maximization_peak=am_peak, maximization_steps=am_steps,
                              am_activation=None if res is None else float(res.activations[j]),
                              attribution=method, attribution_signed=signed))
    return entries


def _threshold(thr, umaps: torch.Tensor) -> float:
    """The unit's threshold from ``units.csv``; for runs without one (region-NSS), the top
    0.5% of the unit's values on its top images."""
    if thr is not None and np.isfinite(thr):
        return float(thr)
    return float(torch.quantile(umaps.flatten().float(), 0.995)) if umaps.numel() else 0.0


def _subtitle(score_name: str, score: float, thr: float, best: float,
              am_peak: float | None, am_steps: int | None = None) -> str:
    """The card's second line: score, threshold, and the peaks of the best data-set image and
    of the maximization image with their ratios (one statistic for both)."""
    text = (f"{score_name} {score:.3f} (higher is better)   threshold {thr:.3g}   "
            f"peak of best image {best:.3g}")
    if am_peak is not None:
        ratio = f"{am_peak / thr:.2f}x threshold" if thr > 0 else "threshold 0"
        rel = f", {am_peak / best:.2f}x best image" if best > 0 else ""
        after = "" if am_steps is None else f"; {am_steps} steps"
        text += (f"   maximization peak {am_peak:.3g} ({ratio}{rel}"
                 + ("" if am_peak > thr else "; threshold NOT reached") + after + ")")
    return text


_TEXT_FIELDS = {"layer", "label", "category", "png", "attribution"}


def _number(key: str, value):
    """A ``units.csv`` cell as JSON wants it: numbers as numbers, detector flags as booleans,
    empty cells as null, names as strings (:func:`neuroprobe.run.typed_cell`)."""
    flag = key == "detector" or key.endswith("-detector")
    if flag and value in ("True", "true", "False", "false"):
        return value in ("True", "true")
    value = typed_cell(key, value, text=_TEXT_FIELDS)
    return bool(value) if flag and isinstance(value, int) else value


def _entry(row: dict, **fields) -> dict:
    """One unit of ``gallery.json``: the ``units.csv`` row with numbers as numbers, plus what
    the card shows (``best_image_peak``, ``maximization_peak``, ``reached_threshold``)."""
    e = {k: _number(k, v) for k, v in row.items()}
    e.update(fields)
    e["top_activation"] = fields["best_image_peak"]          # the name before issue 16
    peak, thr = fields.get("maximization_peak"), fields["threshold"]
    e["reached_threshold"] = None if peak is None else bool(peak > thr)
    return e


#: how cards draw attribution maps: colour saturates at the 96th percentile of |map|, colour
#: weight |h| ** 0.5 (weak regions stay visible at tile size)
_DISPLAY = {"percentile": 96.0, "gamma": 0.5}


def _blur(edge: int) -> float:
    """Display blur of attribution maps on cards: 1/42 of the image edge (3 px at 128 px)."""
    return edge / 42.0


#: how many interpolated images integrated gradients may put through the model for a gallery on
#: the CPU before ``attribution="auto"`` switches to input x gradient (one image per unit):
#: 64 units at the default 16 steps
AUTO_IG_IMAGES = 1024


def choose_attribution(requested: str | None, n_units: int, n_steps: int, device) -> str:
    """The attribution method a gallery uses.

    ``"auto"`` (the default) is integrated gradients (Sundararajan et al. 2017) whenever it is
    affordable: on an accelerator, or when ``n_units * n_steps`` interpolated images stay within
    :data:`AUTO_IG_IMAGES`.  Beyond that on a CPU it is input x gradient, the one-step integrated
    gradients from the same zero baseline (signed, same units), at ``1 / n_steps`` of the
    cost: 512 ResNet-18 units with 16-step integrated gradients take over five minutes on a
    2-core machine.  Any other value is returned in canonical form (``"none"`` stays).
    """
    from . import attribute as at

    if not requested or requested == "none":
        return "none"
    if requested != "auto":
        return at.canonical_method(requested)
    cheap = torch.device(device).type == "cpu" and n_units * n_steps > AUTO_IG_IMAGES
    return "input_x_gradient" if cheap else "integrated_gradients"


def _colour_map_note(attribution) -> str | None:
    from . import attribute as at

    if not attribution or attribution == "none":
        return None
    how = ("map summed over colour channels, blurred (Gaussian sigma 1/42 of the image edge), "
           "colour saturated at the 96th percentile of its absolute value")
    if at.is_signed(attribution):
        return f"{at.CMAP_SIGNED} (diverging: blue negative, white 0, red positive); {how}"
    return f"{at.CMAP_MAGNITUDE} (sequential: 0 to max); {how}"


def make_gallery(run_dir, out_dir=None, *, model=None, dataset=None, units=None,
                 detectors_only: bool = False, max_units: int | None = None, top_k: int = 8,
                 maximize_steps: int = 256, maximize_size: int | None = None,
                 attribution: str = "auto", n_steps: int = 16,
                 tile: int = 96, batch_size: int = 32, device=None, seed: int = 0,
                 top: dict | None = None, model_spec: str | None = None,
                 concepts: str | None = None, arch: str | None = None, trust: bool = False,
                 report: bool = True, show_progress: bool = True) -> GalleryResult:
    """Gallery and HTML report of a dissection run folder.

    Parameters
    ----------
    run_dir : path of a run written by ``neuroprobe dissect`` (units.csv, summary.json)
    out_dir : where to write (default ``run_dir/gallery``): ``units/*.png``, ``gallery.json``
        and the report (``index.html``).
    model, dataset : the run's model and concept set (default: reopened from summary.json, or
        ``model_spec`` / ``concepts``).
    units : ``[(layer, unit)]`` or ``"layer:unit,..."`` to draw (default: all units of the run).
    detectors_only, max_units : restrict to detector units / the best ``max_units`` by score.
    top_k, maximize_steps, maximize_size, attribution, n_steps, tile : card content;
        ``attribution="auto"``: see :func:`choose_attribution` (``gallery.json`` records the
        method used).
    top : ``{layer: (values, index)}`` top images (default: ``top_images.npz`` in the run, else
        recomputed with one pass over the data set).
    """
    from ..io import write_json
    from ..utils import versions

    run = Path(run_dir)
    rows, summary = read_run(run)
    out = Path(out_dir) if out_dir is not None else run / "gallery"
    if units is not None:
        want = set(parse_units(units) if isinstance(units, str) else
                   [(str(a), int(b)) for a, b in units])
        have = {(r["layer"], r["unit"]) for r in rows}
        missing = sorted(want - have)
        if missing:
            raise UserError(f"unit {missing[0][0]}:{missing[0][1]} is not in {run / 'units.csv'}",
                            hint="layers: " + ", ".join(sorted({r['layer'] for r in rows})))
        rows = [r for r in rows if (r["layer"], r["unit"]) in want]
    if detectors_only:
        rows = [r for r in rows if str(r.get("detector", "1")) not in ("0", "False", "")]
    if max_units is not None:
        rows = sorted(rows, key=lambda r: -r["score"])[:max_units]
    if not rows:
        raise UserError(f"no units to draw from {run}", hint="check --units / --detectors-only")
    if model is None or dataset is None:
        m, d = reopen(summary, model_spec, concepts, device, arch, trust)
        if model is None:   # a model loaded by name must be the network the run dissected
            check_model(summary, m, run)
        model = model if model is not None else m
        dataset = dataset if dataset is not None else d
    model.eval()
    layers = sorted({r["layer"] for r in rows})
    if top is None:
        top = {k: (torch.from_numpy(v), torch.from_numpy(i))
               for k, (v, i) in read_top_images(run).items()}
        if not top:
            log.info(f"{run} holds no top_images.npz: finding the top {top_k} images of each unit "
                     f"with one pass over {len(dataset)} images")
            top = top_images(model, dataset, layers, top_k, batch_size, show_progress)
    requested = attribution
    attribution = choose_attribution(attribution, len(rows), n_steps, model_device(model))
    if requested == "auto" and attribution != "integrated_gradients":
        log.info(f"attribution: input x gradient for {len(rows)} units on the CPU (integrated "
                 f"gradients would cost {n_steps} passes per unit; --attribution ig forces it)")
    cfg = summary.get("config", {})
    # "both" runs label units by IoU (region-NSS columns sit beside it in units.csv)
    score_name = "region-NSS" if cfg.get("score") == "region-nss" else "IoU"
    entries = render_units(model, dataset, rows, top, out, score_name=score_name,
                           maximize_steps=maximize_steps, maximize_size=maximize_size,
                           attribution=attribution, n_steps=n_steps, tile=tile, k=top_k,
                           batch_size=batch_size, seed=seed, show_progress=show_progress)
    config = {"run": str(run), "top_k": top_k, "maximize_steps": maximize_steps,
              "maximize_size": maximize_size, "attribution": attribution,
              "attribution_requested": requested, "n_steps": n_steps,
              "tile": tile, "seed": seed, "units": len(entries), "score_name": score_name,
              "attribution_colour_map": _colour_map_note(attribution),
              "run_config_hash": summary.get("config_hash")}
    write_json(out / "gallery.json", {"config": config, "versions": versions(),
                                      "units": entries})
    page = None
    if report:
        from .report import write_report

        picked = [w for w, on in (("detector units only", detectors_only),
                                   (f"the best {max_units} by score", max_units is not None),
                                   ("units chosen with --units", units is not None)) if on]
        page = write_report(out, entries, summary, run_dir=run, score_name=score_name,
                            selection="; ".join(picked))
    return GalleryResult(out, [out / e["png"] for e in entries], page, entries)
