"""Per-unit galleries of a dissection run: one PNG per unit, plus the HTML report.

Each unit's card shows

* its top-k data-set images (the images where the unit's maximum activation is highest, as in
  NetDissect) with the **thresholded activation region outlined**: the unit's map is upsampled
  bilinearly to the image and the boundary of ``map > threshold`` is drawn (threshold from
  ``units.csv``; for region-NSS runs, which have no threshold, the top 0.5% of the unit's values
  on its top images);
* the unit's label, category and score (IoU, or region-NSS);
* an activation-maximization image (:mod:`neuroprobe.visualize.maximize`);
* an attribution map (integrated gradients of the unit on its top image, through Captum,
  :mod:`neuroprobe.visualize.attribute`) drawn over that image.

Cards are composed with Pillow (no plotting library in the per-unit loop), so hundreds of units
take seconds once the model work is done.

Top-k images: a dissection's :class:`~neuroprobe.dissect.DissectionResult` carries them in
memory; a run folder may hold them in ``top_images.pt`` (``{layer: {"values": (U, k),
"index": (U, k)}}``).  When the file is absent they are recomputed from the model and concept
set named in ``summary.json`` (one forward pass over the data set).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import DataFormatError, UserError
from ..io import read_csv

__all__ = ["unit_card", "outline", "read_run", "top_images", "unit_maps", "render_units",
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
              am_image=None, attribution=None, tile: int = 96, scores=None) -> "Image.Image":
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
        The unit's top activation on each image, printed under the tile.

    Returns
    -------
    PIL.Image.Image
    """
    from PIL import Image, ImageDraw

    k = len(images)
    extra = int(am_image is not None) + int(attribution is not None)
    pad, head, foot = 4, 38, 14
    width = pad + (k + extra) * (tile + pad) + (8 if extra else 0)
    height = head + tile + foot + pad
    card = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(card)
    draw.text((pad, 3), title, fill=(0, 0, 0), font=_font(14))
    if subtitle:
        draw.text((pad, 21), subtitle, fill=(70, 70, 70), font=_font(11))
    small = _font(10)
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
            draw.text((x, head + tile + 1), f"{float(scores[i]):.3g}", fill=(90, 90, 90),
                      font=small)
        x += tile + pad
    x += 8 if extra else 0
    for img, caption in ((am_image, "maximization"), (attribution, "attribution")):
        if img is None:
            continue
        card.paste(_resize(_to_uint8(img), tile), (x, head))
        draw.text((x, head + tile + 1), caption, fill=(90, 90, 90), font=small)
        x += tile + pad
    return card


# -- reading a run ----------------------------------------------------------------------------------

def unit_filename(layer: str, unit: int) -> str:
    """A file name for a unit's PNG (safe characters only)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", layer) + f"-{int(unit):04d}.png"


def read_run(run_dir) -> tuple[list[dict], dict]:
    """``units.csv`` rows (score/threshold as floats, unit as int) and ``summary.json``."""
    import json

    run = Path(run_dir)
    units_csv, summary_json = run / "units.csv", run / "summary.json"
    if not units_csv.is_file():
        raise UserError(f"{run} is not a dissection run folder: it has no units.csv",
                        hint="run `neuroprobe dissect ... --out DIR` first")
    _, rows = read_csv(units_csv, format_hint="rerun `neuroprobe dissect` into this folder")
    try:
        summary = json.loads(summary_json.read_text(encoding="utf-8")) \
            if summary_json.is_file() else {}
    except (OSError, ValueError) as err:
        raise DataFormatError(f"cannot read {summary_json}: {err}",
                              hint="rerun `neuroprobe dissect` into this folder") from None
    missing = {"layer", "unit", "label", "score"} - set(rows[0] if rows else {})
    if rows and missing:
        raise DataFormatError(f"{units_csv} lacks the columns {sorted(missing)}")
    for r in rows:
        try:
            r["unit"] = int(r["unit"])
            r["score"] = float(r["score"] or 0.0)
            r["threshold"] = float(r["threshold"]) if r.get("threshold") not in (None, "") \
                else None
        except ValueError as err:
            raise DataFormatError(f"{units_csv}: bad number in row of unit "
                                  f"{r.get('layer')}:{r.get('unit')} ({err})") from None
    return rows, summary


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

def _loader(dataset, batch_size: int):
    from ..concepts.base import collate

    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                       collate_fn=collate)


def top_images(model, dataset, layers: Sequence[str], k: int = 8, batch_size: int = 32,
               show_progress: bool = True) -> dict:
    """Top-``k`` images per unit by the unit's maximum activation (one pass over ``dataset``).

    Returns ``{layer: (values (U, k), index (U, k))}`` like
    :attr:`neuroprobe.dissect.DissectionResult.top_images`.
    """
    from ..hooks import Recorder
    from ..stats import TopK
    from ..utils import progress

    device = _device(model)
    stats = {name: TopK(k) for name in layers}
    start = 0
    model.eval()
    loader = _loader(dataset, batch_size)
    for batch in (progress(loader, desc="top images", leave=False) if show_progress else loader):
        x = batch["image"].to(device)
        with torch.no_grad(), Recorder(model, list(layers), stop=True, clone=False) as rec:
            model(x)
        idx = torch.arange(start, start + len(x))
        for name in layers:
            stats[name].add(rec[name].flatten(2).amax(2).float().cpu(), idx)
        start += len(x)
    return {name: (s.values, s.index) for name, s in stats.items()}


def _device(model) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def unit_maps(model, dataset, layer: str, indices: Sequence[int], batch_size: int = 32):
    """Images (N, 3, H, W) and ``layer`` outputs (N, C, h, w) for the given data-set indices."""
    from ..concepts.base import collate
    from ..hooks import record

    device = _device(model)
    images, maps = [], []
    indices = [int(i) for i in indices]
    for s in range(0, len(indices), batch_size):
        batch = collate([dataset[i] for i in indices[s:s + batch_size]])
        with torch.no_grad():
            out = record(model, batch["image"].to(device), layer, clone=False)[layer]
        images.append(batch["image"])
        maps.append(out.float().cpu())
    return torch.cat(images), torch.cat(maps)


# -- the gallery ---------------------------------------------------------------------------------------

@dataclass
class GalleryResult:
    """What :func:`make_gallery` wrote: the folder, one PNG per unit, the report page."""

    out_dir: Path
    pngs: list = field(default_factory=list)
    report: Path | None = None
    entries: list = field(default_factory=list)


def render_units(model, dataset, rows: list[dict], top: dict, out_dir, *, score_name: str = "IoU",
                 maximize_steps: int = 128, maximize_size: int | None = None,
                 attribution: str = "integrated_gradients", n_steps: int = 16,
                 internal_batch_size: int | None = 64, tile: int = 96, k: int | None = None,
                 batch_size: int = 32, seed: int = 0, show_progress: bool = True) -> list[dict]:
    """Write one PNG per row of ``rows`` (units of a run) into ``out_dir/units``.

    ``top``: ``{layer: (values, index)}`` top images per unit.  Returns one entry per unit
    (the row plus ``png``, the path relative to ``out_dir``, and ``am_activation``).
    """
    from . import attribute as at
    from . import maximize as am
    from ..io import atomic_path
    from ..utils import progress

    out = Path(out_dir)
    (out / "units").mkdir(parents=True, exist_ok=True)
    entries = []
    by_layer: dict[str, list[dict]] = {}
    for r in rows:
        by_layer.setdefault(r["layer"], []).append(r)
    size = maximize_size or int(getattr(dataset, "image_size", (128, 128))[0])
    bar = progress(total=len(rows), desc="gallery") if show_progress else None
    for layer, lrows in by_layer.items():
        if layer not in top:
            raise UserError(f"no top images for layer {layer!r}")
        values, index = top[layer]
        kk = min(k or index.shape[1], index.shape[1])
        units = [r["unit"] for r in lrows]
        bad = [u for u in units if not 0 <= u < index.shape[0]]
        if bad:
            raise UserError(f"unit {layer}:{bad[0]} does not exist: the layer has "
                            f"{index.shape[0]} units in the top images",
                            hint="was units.csv made with another model?")
        needed = sorted({int(i) for u in units for i in index[u, :kk].tolist() if i >= 0})
        images, maps = unit_maps(model, dataset, layer, needed, batch_size)
        pos = {i: j for j, i in enumerate(needed)}
        am_imgs = am_acts = None
        if maximize_steps > 0:
            res = am.maximize_units(model, layer, units, size=size, steps=maximize_steps,
                                    seed=seed, batch_size=batch_size)
            am_imgs, am_acts = res.images, res.activations
        overlays = [None] * len(units)
        if attribution and attribution != "none":
            tops = torch.stack([images[pos[int(index[u, 0])]] for u in units])
            for s in range(0, len(units), batch_size):
                chunk = tops[s:s + batch_size]
                attr = at.attribute_units(model, layer, units[s:s + batch_size], chunk,
                                          method=attribution, n_steps=n_steps,
                                          internal_batch_size=internal_batch_size)
                heat = at.attribution_map(attr).cpu()
                for j in range(len(chunk)):
                    overlays[s + j] = at.overlay(chunk[j], heat[j])
        for j, r in enumerate(lrows):
            u = r["unit"]
            sel = [pos[int(i)] for i in index[u, :kk].tolist() if i >= 0]
            umaps = maps[sel, u]
            thr = r.get("threshold")
            if thr is None or not np.isfinite(thr):
                thr = float(torch.quantile(umaps.flatten(), 0.995)) if umaps.numel() else 0.0
            label = r.get("label") or "-"
            cat = r.get("category") or ""
            title = f"{layer}:{u}  {label}" + (f" ({cat})" if cat else "")
            subtitle = f"{score_name} {r['score']:.3f}   threshold {thr:.3g}"
            if am_acts is not None:
                subtitle += f"   maximization reached {float(am_acts[j]):.3g}"
            card = unit_card(images[sel], umaps, thr, title=title, subtitle=subtitle,
                             am_image=None if am_imgs is None else am_imgs[j],
                             attribution=overlays[j], tile=tile,
                             scores=values[u, :len(sel)].tolist())
            name = unit_filename(layer, u)
            with atomic_path(out / "units" / name) as tmp:
                card.save(tmp, format="PNG")
            entries.append({**r, "png": f"units/{name}",
                            "am_activation": None if am_acts is None else float(am_acts[j]),
                            "top_activation": float(values[u, 0]),
                            "threshold": thr})
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return entries


def _reopen(summary: dict, model_spec: str | None, concepts: str | None, device,
            arch: str | None = None, trust: bool = False):
    """Model and concept set of a run (from ``summary.json`` unless given)."""
    from ..concepts import open_concepts
    from ..models import load

    device = device or "cpu"
    cfg = summary.get("config", {})
    minfo = cfg.get("model") or {}
    spec = model_spec or minfo.get("spec")
    if not spec:
        raise UserError("summary.json does not name the model of this run",
                        hint="pass --model PATH")
    if spec.startswith("stand-in:") and not model_spec:
        try:   # the dissect command's documented stand-in (random weights, fixed seed)
            from ..commands.dissect import _stand_in

            model = _stand_in()[0].to(device)
        except (ImportError, AttributeError):
            raise UserError(f"cannot rebuild the run's stand-in model {spec!r}",
                            hint="pass --model PATH") from None
    else:
        model, _ = load(spec, arch=arch or (None if model_spec else minfo.get("arch")),
                        trust=trust, device=device)
    ccfg = cfg.get("concepts") or {}
    name = concepts or ccfg.get("spec") or ccfg.get("path") or ccfg.get("name")
    if not name:
        raise UserError("summary.json does not name the concept set of this run",
                        hint="pass --concepts NAME")
    dataset = None
    if not concepts:
        overrides = {k: ccfg[k] for k in ("seed", "n", "image_size", "mask_size", "observers",
                                          "root", "split") if ccfg.get(k) is not None}
        try:
            dataset = open_concepts(name, **overrides)
        except UserError:
            dataset = None
    if dataset is None:
        dataset = open_concepts(name)
    n = ccfg.get("n")
    if n is not None and len(dataset) > int(n):   # the run used the first n images
        dataset = _Subset(dataset, int(n))
    return model.eval(), dataset


class _Subset(torch.utils.data.Dataset):
    """The first ``n`` items of a concept dataset, keeping its attributes."""

    def __init__(self, dataset, n: int):
        self.dataset, self.n = dataset, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.dataset[i]

    def __getattr__(self, name):
        return getattr(self.__dict__["dataset"], name)


def make_gallery(run_dir, out_dir=None, *, model=None, dataset=None, units=None,
                 detectors_only: bool = False, max_units: int | None = None, top_k: int = 8,
                 maximize_steps: int = 128, maximize_size: int | None = None,
                 attribution: str = "integrated_gradients", n_steps: int = 16,
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
    top_k, maximize_steps, maximize_size, attribution, n_steps, tile : card content.
    top : ``{layer: (values, index)}`` top images (default: ``top_images.pt`` in the run, else
        recomputed with one pass over the data set).
    """
    from ..io import write_json
    from ..utils import info, versions

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
        m, d = _reopen(summary, model_spec, concepts, device, arch, trust)
        model = model if model is not None else m
        dataset = dataset if dataset is not None else d
    model.eval()
    layers = sorted({r["layer"] for r in rows})
    if top is None:
        top_file = run / "top_images.pt"
        if top_file.is_file():
            saved = torch.load(top_file, map_location="cpu", weights_only=True)
            top = {k: (v["values"], v["index"]) for k, v in saved.items()}
        else:
            info(f"{run} holds no top_images.pt: finding the top {top_k} images of each unit "
                 f"with one pass over {len(dataset)} images")
            top = top_images(model, dataset, layers, top_k, batch_size, show_progress)
    cfg = summary.get("config", {})
    # "both" runs label units by IoU (region-NSS columns sit beside it in units.csv)
    score_name = "region-NSS" if cfg.get("score") == "region-nss" else "IoU"
    entries = render_units(model, dataset, rows, top, out, score_name=score_name,
                           maximize_steps=maximize_steps, maximize_size=maximize_size,
                           attribution=attribution, n_steps=n_steps, tile=tile, k=top_k,
                           batch_size=batch_size, seed=seed, show_progress=show_progress)
    config = {"run": str(run), "top_k": top_k, "maximize_steps": maximize_steps,
              "maximize_size": maximize_size, "attribution": attribution, "n_steps": n_steps,
              "tile": tile, "seed": seed, "units": len(entries), "score_name": score_name,
              "run_config_hash": summary.get("config_hash")}
    write_json(out / "gallery.json", {"config": config, "versions": versions(),
                                      "units": entries})
    page = None
    if report:
        from .report import write_report

        page = write_report(out, entries, summary, run_dir=run, score_name=score_name)
    return GalleryResult(out, [out / e["png"] for e in entries], page, entries)
