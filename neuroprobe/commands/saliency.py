"""``neuroprobe saliency eval``: score saliency models on real fixation data, both protocols."""
from __future__ import annotations

import logging

from . import add_command, add_subcommand_group
from ._common import output_folder, positive_int, seed

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    _, group = add_subcommand_group(subparsers, "saliency", "evaluate saliency models on "
                                    "eye-fixation data")
    p = add_command(group, "eval", "score models on fixation data: every metric, both "
                    "protocols, per image and mean with 95%% CIs", _eval)
    p.add_argument("--data", required=True,
                   help="NAME or NAME:PATH; NAME is osie, eyecrowd, salicon-2015, salicon-2017, "
                   "mit1003 or csv (e.g. osie:../shared/data/osie)")
    p.add_argument("--root", default=None, help="data location when --data gives only the NAME")
    p.add_argument("--images", default=None, help="image folder (sources whose files hold only "
                   "fixations: salicon, mit1003, csv)")
    p.add_argument("--models", default="itti,spectral,signature,centre,observers",
                   help="comma-separated: itti, spectral, signature, centre, observers (inter-"
                   "observer), prior (data centre bias), uniform (chance), or checkpoint paths")
    p.add_argument("--protocols", default="mit,exact", help="mit, exact or both (default both)")
    p.add_argument("--metrics", default=None, help="comma-separated subset (default: all; add emd "
                   "with the optional package POT)")
    p.add_argument("--n", type=positive_int, default=None, help="only the first N images")
    p.add_argument("--seed", type=seed, default=0, help="seed of the random parts (default 0)")
    p.add_argument("--out", required=True, help="output folder")


def _eval(args) -> int:
    import warnings

    from ..errors import UserError
    from ..saliency.data import open_dataset
    from ..saliency.evaluate import (NoFixationsWarning, evaluate_dataset, resolve_models,
                                     summarise, write_results)
    from ..saliency.metrics import METRICS, PROTOCOLS, _check_metrics
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad or not protocols:
        raise UserError(f"unknown protocol(s) {', '.join(bad) or '(none)'} in --protocols",
                        hint="use mit, exact or mit,exact")
    metrics = tuple(m.strip() for m in args.metrics.split(",")) if args.metrics else METRICS
    _check_metrics(metrics)
    if "emd" in metrics:
        from ..saliency.metrics import has_emd

        if not has_emd():
            raise UserError("--metrics emd needs the optional package POT", hint="pip install pot")
    output_folder(args.out)
    ds = open_dataset(args.data, root=args.root, images=args.images).subset(args.n)
    models = resolve_models(args.models.split(","), getattr(args, "device", "auto"))
    log.info(f"{ds.name}: {len(ds)} images, models {', '.join(models)}, protocols "
             f"{', '.join(protocols)}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        rows = evaluate_dataset(ds, models, protocols, metrics, seed=args.seed)
    notes = sorted({str(w.message) for w in caught})
    for message in sorted({str(w.message) for w in caught
                           if issubclass(w.category, NoFixationsWarning)}):
        log.warning(message)   # shown under --quiet too
    for note in notes[:5]:
        log.info(f"note: {note}")
    summary = summarise(rows, metrics)
    config = {"command": "saliency eval", "data": args.data, "dataset": ds.name,
              "root": str(ds.root), "n_images": len(ds), "models": list(models),
              "protocols": protocols, "metrics": list(metrics), "seed": args.seed,
              "coordinates": ds.convention, "ci": "95% Student t over images",
              "sauc_negatives": {"mit": "union of 10 other images' fixated pixels",
                                 "exact": "all fixations of all other images"},
              "ig_baseline": "centre_bias (Gaussian, sigma 0.25 of height and width)",
              "exact_density_sigma": "MIT-equivalent sigma of the image size",
              "warnings": notes}
    title = f"{ds.name}: {len(ds)} images"
    paths = write_results(args.out, rows, summary, metrics, config, title)
    print(paths["markdown"].read_text(encoding="utf-8"))
    log.info(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
