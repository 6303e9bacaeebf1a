"""``neuroprobe popout``: score saliency models on synthetic pop-out search arrays (P3-style)."""
from __future__ import annotations

import logging

from . import add_command
from ._common import nonnegative_int, output_folder, positive_int, seed

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = add_command(subparsers, "popout", "score saliency models on synthetic pop-out search "
                    "arrays: GSI, fixations to target, max-saliency ratios per feature and level",
                    _popout)
    p.add_argument("--models", default="itti,spectral,signature,centre",
                   help="comma-separated classical names (itti, spectral, signature, centre) "
                   "and/or saliency checkpoint paths")
    p.add_argument("--n", type=positive_int, default=300, help="number of arrays (default 300)")
    p.add_argument("--features", default="colour,orientation,size",
                   help="subset of colour,orientation,size")
    p.add_argument("--size", type=positive_int, default=448,
                   help="array side in pixels (default 448)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--examples", type=nonnegative_int, default=6,
                   help="example arrays saved as PNG")
    p.add_argument("--out", required=True, help="output folder")


def _popout(args) -> int:
    from ..errors import UserError
    from ..saliency.popout_eval import evaluate_popout
    if args.size < 56:
        raise UserError("--size must be at least 56 pixels (8 per grid cell)")
    output_folder(args.out)
    features = [f.strip() for f in args.features.split(",") if f.strip()]
    specs = [s for s in args.models.split(",") if s.strip()]
    run = evaluate_popout(specs, args.out, n=args.n, features=features, size=args.size,
                          seed=args.seed, examples=args.examples,
                          device=getattr(args, "device", "auto"))
    print(run.markdown)
    log.info(f"wrote {run.out}/summary.csv, summary.md, per_array.csv, arrays.csv, popout_*.png")
    return 0
