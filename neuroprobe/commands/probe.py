"""``neuroprobe probe RECIPE --out DIR``: run one of the study's analyses end to end."""
from __future__ import annotations

import logging

from . import add_command
from ._common import add_concept_options, output_folder

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = add_command(subparsers, "probe", "run a probe recipe (probes/*.toml): the study's "
                    "findings on the built-in models, or on your own", _run)
    p.add_argument("recipe", help="probe name (concepts-in-pretrained, finetune-shift, popout, "
                   "task-vs-domain, ablation, ...) or path of a .toml recipe")
    p.add_argument("--out", required=True, help="output folder (report.md, CSVs, plots, runs/)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=SPEC",
                   help="replace or add a model of the recipe (repeatable), e.g. "
                   "--model frozen=my_frozen.pt")
    add_concept_options(p, concepts_help="concept set instead of the recipe's")
    p.add_argument("--no-cache", action="store_true",
                   help="decode the concept set's label files instead of using its label cache")


def _run(args) -> int:
    from ..errors import UserError
    from ..probes import run_probe
    from ..utils import resolve_device

    models = {}
    for item in args.model:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise UserError(f"--model {item!r} is not NAME=SPEC", hint="e.g. --model frozen=a.pt")
        models[name] = spec
    report = run_probe(args.recipe, output_folder(args.out), models=models, concepts=args.concepts,
                       root=args.root, limit=args.limit, device=resolve_device(args.device),
                       cache=not args.no_cache, annotations=args.annotations)
    log.info(f"wrote {report}")
    print(report.read_text())
    return 0
