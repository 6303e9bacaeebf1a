"""``neuroprobe visualize --model PATH --units layer4:12,layer4:40 --out DIR``.

Activation-maximization images of the given units (one PNG each plus a sheet) and, with
``--image``, attribution maps of each unit on the given images.
"""
from __future__ import annotations

import logging

from . import add_command
from ._common import (add_batch_size, add_model_options, nonnegative_int, output_folder,
                      positive_float, positive_int, seed)

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = add_command(subparsers, "visualize", "activation-maximization images (and attributions) "
                    "of units of a model", _run)
    add_model_options(p)
    p.add_argument("--units", required=True,
                   help="units as LAYER:INDEX, comma-separated (layer4:12,layer4:40; "
                   "layer4:0-7 is a range); a layer may be named by its last part")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=nonnegative_int, default=256,
                   help="optimisation steps (default 256)")
    p.add_argument("--size", type=positive_int, default=128, help="image size (default 128)")
    p.add_argument("--lr", type=positive_float, default=0.05,
                   help="Adam learning rate (default 0.05)")
    p.add_argument("--param", choices=["fourier", "pixel"], default="fourier",
                   help="image parameterization (default fourier)")
    p.add_argument("--objective", choices=["channel", "peak", "neuron"], default="channel",
                   help="channel mean (default), the peak of the channel's map (what `gallery` "
                   "optimises) or the centre neuron")
    p.add_argument("--no-decorrelate", action="store_true", help="no colour decorrelation")
    p.add_argument("--no-transforms", action="store_true",
                   help="no pad/jitter/scale/rotate robustness transforms")
    p.add_argument("--seed", type=seed, default=0)
    add_batch_size(p, 32, help="units optimised together (default 32)")
    p.add_argument("--image", action="append", default=[],
                   help="an image file to attribute each unit on (repeatable)")
    p.add_argument("--attribution", choices=["integrated_gradients", "ig", "gradient",
                                             "input_x_gradient", "smoothgrad", "occlusion",
                                             "gradient_shap", "guided_gradcam", "gradcam"],
                   default="integrated_gradients",
                   help="attribution method, through Captum (default integrated_gradients); "
                   "signed maps are drawn blue (-) / red (+), Grad-CAM in a sequential map")
    p.add_argument("--ig-steps", type=positive_int, default=32)


def _load_image(path, size):
    import numpy as np
    import torch
    from PIL import Image

    from ..imageio import read_image

    im = Image.fromarray(read_image(path, "--image")).resize((size[1], size[0]),
                                                             Image.BILINEAR)
    a = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(a).permute(2, 0, 1)


def _attributions(model, layer: str, unit: int, pics, images, out, name: str, args,
                  meta) -> list[dict]:
    """One figure per image: the unit's attribution in colour over the greyed image with a
    colour bar (:func:`neuroprobe.visualize.attribute.figure`), titled with model, layer, unit,
    method and image."""
    from ..io import atomic_path
    from ..visualize import attribute as at

    signed = at.is_signed(args.attribution)
    if args.attribution == "gradcam":
        heat = at.gradcam(model, layer, pics, unit=unit)[:, 0].detach().cpu()
    else:
        attr = at.attribute_unit(model, layer, unit, pics, method=args.attribution,
                                 n_steps=args.ig_steps)
        heat = at.attribution_map(attr, signed=signed).cpu()
    label = at.method_label(args.attribution)
    done = []
    for k, (path, _) in enumerate(images):
        aname = name[:-4] + f"-attr-{k:02d}-{path.stem[:40]}.png"
        aname = "".join(c if c.isalnum() or c in "._-" else "_" for c in aname)
        fig = at.figure(pics[k], heat[k], signed=signed, method=label,
                        smooth=pics.shape[-1] / 64.0,
                        title=f"{args.model}  {layer}:{unit}\n{label} on {path.name[:40]}")
        with atomic_path(out / aname) as tmp:
            fig.savefig(tmp, format="png")
        done.append({"image": str(path), "png": aname, "method": args.attribution,
                     "signed": signed})
    return done


def _sheet(path, sheet, records, args) -> None:
    """``maximization.png``: every unit's maximization image, titled with its layer, unit and
    the activation it reached, under a title naming the model and the optimisation."""
    import math

    import matplotlib.pyplot as plt

    from ..io import atomic_path
    from ..figures import wrap_to_figure

    cols = min(6, len(sheet))
    nrow = math.ceil(len(sheet) / cols)
    fig, axes = plt.subplots(nrow, cols, figsize=(2.3 * cols, 2.5 * nrow + 0.6), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < len(sheet):
            r = records[k]
            ax.imshow(sheet[k])
            what = {"channel": "mean activation", "peak": "peak"}.get(args.objective,
                                                                      "centre neuron")
            ax.set_title(f"{r['layer'].replace('$', chr(92) + '$')}:{r['unit']}\n"
                         f"{what} reached {r['activation']:.3g}", fontsize=8)
    fig.suptitle(wrap_to_figure(fig, f"Activation maximization: model {args.model}, "
                                f"{args.steps} steps, {args.param} parameterization, seed "
                                f"{args.seed}", 10), fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _run(args) -> int:
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image

    from ..errors import UserError
    from ..io import atomic_path, write_json
    from ..utils import progress, versions
    from ..visualize import maximize as am
    from ..visualize.gallery import parse_units, resolve_layer_name, unit_filename
    from .layers import load_model_from_args

    if args.size < 8:   # the ranges of the numbers were checked while parsing (_common.py)
        raise UserError("--size must be at least 8 pixels")
    out = output_folder(args.out)
    units = parse_units(args.units)
    images = [(Path(p), None) for p in args.image]
    for p, _ in images:
        if not p.is_file():
            raise UserError(f"image {p} does not exist")
    model, meta = load_model_from_args(args)
    model.eval()
    by_layer: dict[str, list[int]] = {}
    for layer, u in units:
        by_layer.setdefault(resolve_layer_name(model, layer), []).append(u)
    from ..hooks import record

    with torch.no_grad():   # check every unit against its layer's width before optimising
        probe = record(model, torch.zeros(1, 3, args.size, args.size,
                                          device=next(model.parameters()).device),
                       list(by_layer), clone=False)
    for layer, lunits in by_layer.items():
        width = probe[layer].shape[1] if probe[layer].dim() > 1 else 1
        bad = [u for u in lunits if not 0 <= u < width]
        if bad:
            raise UserError(f"unit {bad[0]} is out of range for layer {layer!r} with "
                            f"{width} channels")
    out.mkdir(parents=True, exist_ok=True)
    in_size = tuple(meta.get("input_size") or (args.size, args.size))
    pics = torch.stack([_load_image(p, in_size) for p, _ in images]) if images else None
    records = []
    sheet = []
    bar = progress(total=len(units), desc="visualize")
    for layer, lunits in by_layer.items():
        res = am.maximize_units(model, layer, lunits, size=args.size, steps=args.steps,
                                lr=args.lr, param=args.param, objective=args.objective,
                                decorrelate=not args.no_decorrelate,
                                transforms=None if args.no_transforms else "standard",
                                seed=args.seed, batch_size=args.batch_size)
        for j, u in enumerate(lunits):
            img = (res.images[j].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
            name = unit_filename(layer, u)
            with atomic_path(out / name) as tmp:
                Image.fromarray(img).save(tmp, format="PNG")
            sheet.append(img)
            rec = {"layer": layer, "unit": u, "png": name, "objective": args.objective,
                   "activation": float(res.activations[j]), "attributions": []}
            if pics is not None:
                rec["attributions"] = _attributions(model, layer, u, pics, images, out, name,
                                                    args, meta)
            records.append(rec)
            bar.update(1)
        config = res.config
    bar.close()
    if sheet:
        _sheet(out / "maximization.png", sheet, records, args)
    write_json(out / "visualize.json", {
        "config": {"model": args.model, "arch": args.arch, "units": args.units,
                   "steps": args.steps, "size": args.size, "lr": args.lr, "param": args.param,
                   "objective": args.objective, "decorrelate": not args.no_decorrelate,
                   "transforms": not args.no_transforms, "seed": args.seed,
                   "batch_size": args.batch_size, "attribution": args.attribution,
                   "ig_steps": args.ig_steps, "images": [str(p) for p, _ in images],
                   "maximize": config},
        "versions": versions(), "units": records})
    for r in records:
        print(f"{r['layer']}:{r['unit']}  activation reached {r['activation']:.4g}  "
              f"-> {out / r['png']}")
    log.info(f"sheet: {out / 'maximization.png'}")
    return 0
