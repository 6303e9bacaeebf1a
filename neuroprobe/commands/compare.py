"""``neuroprobe compare RUN_A RUN_B [...]``: detector counts side by side, changed units."""
from __future__ import annotations

import logging

from . import add_command
from ._common import nonnegative_int, output_folder

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = add_command(subparsers, "compare", "compare dissection runs of model variants: detector "
                    "counts per concept and layer, units that changed label, a difference plot",
                    _run)
    p.add_argument("runs", nargs="+", help="run folders of `neuroprobe dissect` (2 or more)")
    p.add_argument("--out", default=None, help="folder for counts.csv, changed_units.csv and "
                   "difference.png (default: print only)")
    p.add_argument("--bootstrap", type=nonnegative_int, default=0, metavar="N",
                   help="paired image bootstrap of the count differences with N resamples of "
                   "the per-image counts the runs saved (image_counts.npz; no model is run); "
                   "with --out also bootstrap.csv")
    p.add_argument("--force", action="store_true",
                   help="compare runs made on different concept sets, modes, quantiles, IoU "
                   "thresholds or denominators (refused by default)")


def _run(args) -> int:
    from ..compare import changed_units, check_comparable, check_model_files, count_table, \
        load_run
    from ..errors import UserError
    from ..probes import _bar_plot, _csv, _md_table
    if len(args.runs) < 2:
        raise UserError("compare needs at least two run folders")
    out = output_folder(args.out) if args.out else None
    runs = [load_run(r) for r in args.runs]
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise UserError("run folders must have distinct names", hint="rename one of them")
    check_model_files(runs)
    if not args.force:
        check_comparable(runs)
    table = count_table(runs)
    print(_md_table(table))
    changed = []
    for other in runs[1:]:
        changed += [{"comparison": f"{runs[0].name} -> {other.name}", **c}
                    for c in changed_units(runs[0], other)]
    print(f"{len(changed)} units changed label between {names[0]} and the others")
    boot = _bootstrap(args, runs) if args.bootstrap else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _csv(out / "counts.csv", table)
        _csv(out / "changed_units.csv", changed)
        if boot is not None:
            _csv(out / "bootstrap.csv", boot)
        labels = sorted({r["label"] for r in table})
        diff = {}
        for r in table:
            diff[r["label"]] = diff.get(r["label"], 0) + r["difference"]
        _bar_plot(out / "difference.png", labels, {f"{names[-1]} - {names[0]}":
                                                   [diff[k] for k in labels]},
                  "difference in detector units per concept (all layers)", "units")
        log.info(f"wrote {out}/counts.csv, changed_units.csv, difference.png"
                 + (", bootstrap.csv" if boot is not None else ""))
    return 0


#: the columns of bootstrap.csv (and of the printed table)
BOOTSTRAP_COLUMNS = ["layer", "label", "category", "count_a", "count_b", "difference",
                     "ci_low", "ci_high"]


def _bootstrap(args, runs) -> list:
    """Paired bootstrap of the first run against each other one, from their saved per-image
    counts; printed and returned as the rows of bootstrap.csv."""
    from ..compare import bootstrap_count_difference
    from ..probes import _md_table

    rows = []
    for other in runs[1:]:
        found = bootstrap_count_difference(runs[0], other, n_boot=args.bootstrap)
        if len(runs) > 2:
            found = [{"comparison": f"{other.name} - {runs[0].name}", **r} for r in found]
        rows += found
    columns = (["comparison"] if len(runs) > 2 else []) + BOOTSTRAP_COLUMNS
    print(f"paired bootstrap over images ({args.bootstrap} resamples, 95% percentile "
          f"intervals; count_a = {runs[0].name}):")
    print(_md_table(rows, columns))
    return [{k: r[k] for k in columns} for r in rows]
