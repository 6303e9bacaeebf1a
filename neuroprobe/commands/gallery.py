"""``neuroprobe gallery RUN_DIR``: one PNG per unit and the HTML report of a dissection run."""
from __future__ import annotations

from . import add_command
from ._common import (add_batch_size, add_trust_option, nonnegative_int, output_folder,
                      positive_int, seed)


def register(subparsers) -> None:
    p = add_command(subparsers, "gallery", "draw every unit of a dissection run (top images with "
                    "the activation region outlined, maximization, attribution) and write the "
                    "HTML report", _run)
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder written by `neuroprobe dissect`")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/gallery)")
    p.add_argument("--model", default=None,
                   help="model of the run (default: the one named in summary.json)")
    p.add_argument("--arch", default=None, help="architecture of a plain state dict")
    add_trust_option(p)
    p.add_argument("--concepts", default=None,
                   help="concept set of the run (default: the one named in summary.json)")
    p.add_argument("--units", default=None,
                   help="only these units, e.g. layer4:12,layer4:40 or layer4:0-15")
    p.add_argument("--detectors-only", action="store_true", help="only detector units")
    p.add_argument("--max-units", type=positive_int, default=None,
                   help="only the best N units by score")
    p.add_argument("--top-k", type=positive_int, default=8, help="top images per unit (default 8)")
    p.add_argument("--steps", type=nonnegative_int, default=256,
                   help="activation-maximization step budget per unit: each unit stops once the "
                   "peak of its map exceeds its threshold (0 = no maximization image; "
                   "default 256)")
    p.add_argument("--size", type=positive_int, default=None,
                   help="maximization image size (default: the concept set's image size)")
    p.add_argument("--attribution", default="auto",
                   choices=["auto", "integrated_gradients", "ig", "gradient", "input_x_gradient",
                            "smoothgrad", "occlusion", "gradient_shap", "guided_gradcam",
                            "none"],
                   help="attribution map on each unit's top image, through Captum (default auto: "
                   "integrated gradients on a GPU or up to 1024 interpolated images (64 units "
                   "at 16 steps), input_x_gradient beyond that on a CPU; signed maps are drawn "
                   "blue-white-red)")
    p.add_argument("--ig-steps", type=positive_int, default=16, help="integrated-gradients steps")
    p.add_argument("--tile", type=positive_int, default=96, help="tile size in pixels (default 96)")
    add_batch_size(p, 32)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--no-report", action="store_true", help="only the PNGs, no index.html")


def _run(args) -> int:
    from ..utils import resolve_device
    from ..visualize.gallery import make_gallery

    out = output_folder(args.out) if args.out else None
    device = resolve_device(getattr(args, "device", "auto"))
    res = make_gallery(args.run_dir, out, units=args.units,
                       detectors_only=args.detectors_only, max_units=args.max_units,
                       top_k=args.top_k, maximize_steps=args.steps, maximize_size=args.size,
                       attribution=args.attribution, n_steps=args.ig_steps, tile=args.tile,
                       batch_size=args.batch_size, device=device, seed=args.seed,
                       model_spec=args.model, concepts=args.concepts, arch=args.arch,
                       trust=args.trust_checkpoint, report=not args.no_report,
                       show_progress=True)
    print(f"{len(res.pngs)} unit images in {res.out_dir / 'units'}")
    if res.report is not None:
        print(f"report: {res.report}  (open it in a browser; it works from file://)")
    return 0
