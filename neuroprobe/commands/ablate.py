"""``neuroprobe ablate RUN --concept NAME --out DIR``: remove a concept's units, measure the loss."""
from __future__ import annotations

import logging

from . import add_command
from ._common import (add_batch_size, add_limit, add_trust_option, nonnegative_int,
                      output_folder, positive_int, seed)

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = add_command(subparsers, "ablate", "remove a concept's detector units of a dissection "
                    "run (or given units) and measure what the model's output loses, against "
                    "random units and the top region-NSS units, with paired bootstrap intervals",
                    _run)
    p.add_argument("run_dir", metavar="RUN", help="folder written by `neuroprobe dissect`")
    p.add_argument("--concept", default=None, help='concept whose detector units are removed '
                   '(e.g. "person head"); with --units, the concept of the region measures')
    p.add_argument("--layer", default=None, help="layer of the concept's units (default: the "
                   "run's layer with the most of them)")
    p.add_argument("--units", default=None, metavar="LAYER:I,J",
                   help="remove these units instead, e.g. block4:3,17 or block4:0-7")
    p.add_argument("--data", default=None, metavar="SPEC",
                   help="concept set to measure on (default: the run's)")
    p.add_argument("--root", default=None, help="data folder of --data")
    add_limit(p)
    p.add_argument("--control", action="append", default=None, metavar="NAME",
                   choices=["random", "top-nss", "none"],
                   help="control sets: random (same number of random units of the same layer) "
                   "and/or top-nss (the units ranked highest by region-NSS for the concept); "
                   "repeatable; default both, none for neither")
    p.add_argument("--repeats", type=positive_int, default=20,
                   help="random control draws (default 20)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the random units and the "
                   "bootstrap (default 0)")
    p.add_argument("--mode", choices=["zero", "mean"], default="zero",
                   help="zero: units set to 0 (default); mean: each unit set to its mean "
                   "activation over the data")
    p.add_argument("--measures", choices=["auto", "saliency", "scene"], default="auto",
                   help="saliency (NSS, AUC-Judd, CC, region measures) or scene (accuracy, "
                   "logits); default from the model's output")
    p.add_argument("--bootstrap", type=nonnegative_int, default=1000, metavar="N",
                   help="paired bootstrap resamples of the images (default 1000; 0: none)")
    add_batch_size(p, 16)
    p.add_argument("--model", default=None,
                   help="model of the run (default: the one named in summary.json)")
    p.add_argument("--arch", default=None, help="architecture of a plain state dict")
    add_trust_option(p)
    p.add_argument("--out", required=True, help="output folder (ablation.csv, ablation.png, "
                   "summary.md, ablation.json, per_image.npz)")


def _run(args) -> int:
    from ..ablation_run import CONTROLS, ablate_run, write_ablation
    from ..utils import resolve_device

    out = output_folder(args.out)
    controls = CONTROLS if args.control is None else \
        tuple(c for c in args.control if c != "none")
    result, meta = ablate_run(
        args.run_dir, concept=args.concept, units=args.units, layer=args.layer, data=args.data,
        root=args.root, limit=args.limit, controls=controls, repeats=args.repeats,
        seed=args.seed, mode=args.mode, measures=args.measures, n_boot=args.bootstrap,
        batch_size=args.batch_size, device=resolve_device(getattr(args, "device", "auto")),
        model_spec=args.model, arch=args.arch, trust=args.trust_checkpoint, progress=True)
    files = write_ablation(result, meta, out)
    print((out / "summary.md").read_text())
    log.info("wrote " + ", ".join(str(f) for f in files))
    return 0
