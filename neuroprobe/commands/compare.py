"""``neuroprobe compare RUN_A RUN_B [...]``: detector counts side by side, changed units."""
from __future__ import annotations

from . import add_command
from ._common import nonnegative_int, output_folder


def register(subparsers) -> None:
    p = add_command(subparsers, "compare", "compare dissection runs of model variants: detector "
                    "counts per concept and layer, units that changed label, a difference plot",
                    _run)
    p.add_argument("runs", nargs="+", help="run folders of `neuroprobe dissect` (2 or more)")
    p.add_argument("--out", default=None, help="folder for counts.csv, changed_units.csv and "
                   "difference.png (default: print only)")
    p.add_argument("--bootstrap", type=nonnegative_int, default=0, metavar="N",
                   help="paired image bootstrap of the count differences with N resamples "
                   "(re-runs the models over the run's images; needs the same concept set)")


def _run(args) -> int:

    from ..compare import changed_units, count_table, load_run
    from ..errors import UserError
    from ..probes import _bar_plot, _csv, _md_table
    from ..utils import info

    if len(args.runs) < 2:
        raise UserError("compare needs at least two run folders")
    out = output_folder(args.out) if args.out else None
    runs = [load_run(r) for r in args.runs]
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise UserError("run folders must have distinct names", hint="rename one of them")
    table = count_table(runs)
    print(_md_table(table))
    changed = []
    for other in runs[1:]:
        changed += [{"comparison": f"{runs[0].name} -> {other.name}", **c}
                    for c in changed_units(runs[0], other)]
    print(f"{len(changed)} units changed label between {names[0]} and the others")
    if args.bootstrap:
        _bootstrap(args, runs)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _csv(out / "counts.csv", table)
        _csv(out / "changed_units.csv", changed)
        labels = sorted({r["label"] for r in table})
        diff = {}
        for r in table:
            diff[r["label"]] = diff.get(r["label"], 0) + r["difference"]
        _bar_plot(out / "difference.png", labels, {f"{names[-1]} - {names[0]}":
                                                   [diff[k] for k in labels]},
                  "difference in detector units per concept (all layers)", "units")
        info(f"wrote {out}/counts.csv, changed_units.csv, difference.png")
    return 0


def _bootstrap(args, runs) -> None:
    import numpy as np

    from ..compare import bootstrap_count_difference, per_image_tallies
    from ..concepts import open_concepts
    from ..errors import UserError
    from ..models import load
    from ..probes import _md_table
    from ..utils import resolve_device

    device = resolve_device(args.device)
    cfgs = [r.summary.get("config", {}) for r in runs]
    concept = [(c.get("concepts") or {}) for c in cfgs]
    spec = concept[0].get("spec") or concept[0].get("name")
    if not spec or any((c.get("spec") or c.get("name")) != spec for c in concept):
        raise UserError("--bootstrap needs runs on the same concept set")
    n = min(int(c.get("n") or 0) for c in concept) or None
    dataset = open_concepts(spec, limit=n)
    ids = {lab.name: lab.id for lab in dataset.labels}
    # images any run left out as unreadable are left out of every run's tallies (paired)
    skip = sorted({int(s["index"]) for r in runs for s in r.summary.get("skipped") or []})
    rows = []
    tallies = {}
    for run, cfg in zip(runs, cfgs):
        mspec = (cfg.get("model") or {}).get("spec")
        if not mspec:
            raise UserError(f"{run.path}/summary.json does not name its model")
        module, _ = load(mspec, device=device)
        for layer in sorted({u["layer"] for u in run.units}):
            us = sorted((u for u in run.units if u["layer"] == layer), key=lambda u: u["unit"])
            thr = np.array([float(u["threshold"]) for u in us])
            labs = np.array([ids.get(u["label"], 0) for u in us])
            tallies[(run.name, layer)] = (per_image_tallies(
                module, dataset, layer, thr, labs, device=device, skip=skip,
                denominator=cfg.get("denominator") or "netdissect"), [u["label"] for u in us])
    base = runs[0]
    for other in runs[1:]:
        for (name, layer), (ta, la) in list(tallies.items()):
            if name != base.name or (other.name, layer) not in tallies:
                continue
            tb, lb = tallies[(other.name, layer)]
            for r in bootstrap_count_difference(ta, tb, la, lb, base.iou_threshold,
                                                n_boot=args.bootstrap):
                rows.append({"layer": layer, "comparison": f"{other.name} - {base.name}", **r})
    print(_md_table(rows, ["layer", "comparison", "concept", "difference", "ci_low", "ci_high"]))
