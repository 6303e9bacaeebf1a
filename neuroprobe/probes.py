"""The study's findings as runnable probes (``neuroprobe probe probes/NAME.toml --out DIR``).

A probe is a TOML recipe naming models, a concept set, the scoring and the comparisons.  Four
kinds reproduce the four findings of He et al. (CVPR 2019):

``concepts``        finding 1: which concepts have detector units in the (pre)trained encoder,
                    next to a randomly initialised control of the same architecture.
``finetune-shift``  finding 2: frozen vs fine-tuned saliency models: detector counts with a
                    paired image bootstrap, units that changed label, the region-NSS table and
                    the category preference of each model's saliency next to the fixations'.
``popout``          finding 3: deep vs classical saliency models on P3-style pop-out search arrays
                    and on natural images with fixations (the synthetic world's observers).
``task-vs-domain``  finding 4: linear CKA per layer between pretrained, saliency-tuned and
                    scene-tuned encoders on the same images, with an optional domain control
                    (the same task trained on another image domain).
``ablation``        beyond the study: each model's detector units of a concept removed
                    (:mod:`neuroprobe.ablation`), against random units of the same layer and the
                    top region-NSS units, with paired bootstrap intervals over images.

Every run a probe makes lives in ``<out>/runs/<name>/`` (dissections are resumable there), and the
markdown report names the run behind every number.
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np

from .errors import UserError
from .io import write_json, write_text

log = logging.getLogger(__name__)

KINDS = ("concepts", "finetune-shift", "popout", "task-vs-domain", "ablation")


def _toml(path: Path) -> dict:
    from .io import read_toml

    return read_toml(path, "probe")


def resolve_probe(name_or_path: str) -> Path:
    """A probe file by path, or by name among the shipped ``probes/``."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    from .resources import shipped_dir

    try:
        shipped = {q.stem: q for q in shipped_dir("probes").glob("*.toml")}
    except FileNotFoundError:
        shipped = {}
    if name_or_path in shipped:
        return shipped[name_or_path]
    from .errors import suggest

    raise UserError(f"probe {name_or_path!r} not found",
                    hint=suggest(p.stem, shipped, "probe") + "; pass a .toml path")


def load_probe(name_or_path: str) -> dict:
    path = resolve_probe(name_or_path)
    spec = _toml(path)
    kind = spec.get("kind")
    if kind not in KINDS:
        raise UserError(f"probe {path} has kind {kind!r}", hint="one of " + ", ".join(KINDS))
    if kind != "popout" and not spec.get("models"):
        raise UserError(f"probe {path} names no [models]")
    spec["_path"] = str(path)
    spec.setdefault("name", path.stem)
    return spec


# -- shared pieces -------------------------------------------------------------------------------

def _open_concepts(spec: dict, root=None, limit=None, annotations=None):
    from .concepts import open_concepts

    c = dict(spec.get("concepts", {"name": "synthetic"}))
    name = c.pop("name", "synthetic")
    if root:
        c["root"] = root
    if annotations:
        c["annotations"] = list(annotations)
    if limit:
        c["limit"] = int(limit)
    return name, open_concepts(name, **c)


def _load(model_spec: str, device):
    from .models import load

    return load(model_spec, device=device)


def _dissect_runs(spec, models: dict, out: Path, dataset, concept_name, device, score):
    """Dissect each model (resumable) and return ``{name: run folder}``."""
    from .dissect import dissect
    from .io import sha256_file

    d = spec.get("dissect", {})
    runs = {}
    for name, mspec in models.items():
        module, meta = _load(mspec, device)
        layers = d.get("layers") or meta.get("layers")
        run_dir = out / "runs" / name
        info = {"spec": mspec, "variant": meta.get("variant"), "task": meta.get("task")}
        p = Path(mspec)
        if p.is_file():
            info["sha256"] = sha256_file(p)
        result = dissect(module, dataset, layers, mode=d.get("mode", "netdissect"), score=score,
                         iou_threshold=float(d.get("iou_threshold", 0.04)),
                         nss_threshold=float(d.get("nss_threshold", 1.5)),
                         batch_size=int(d.get("batch_size", 32)), device=device,
                         out_dir=run_dir, model_info=info, overwrite=True,
                         progress=True)
        result.save(run_dir)
        runs[name] = run_dir
    return runs


def _md_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "_(none)_\n"
    columns = columns or list(rows[0])
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _csv(path: Path, rows: list[dict]) -> None:
    from .io import atomic_open

    if not rows:
        return
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_open(path, "w") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def _runs_section(runs: dict, out: Path) -> str:
    rows = []
    for name, path in runs.items():
        s = json.loads((path / "summary.json").read_text())
        cfg = s.get("config", {})
        model = cfg.get("model", {})
        rows.append({"run": f"`{path.relative_to(out)}`", "model": model.get("spec", ""),
                     "variant": model.get("variant", ""),
                     "images": (cfg.get("concepts") or {}).get("n", ""),
                     "config hash": s.get("config_hash", "")})
    return "## Runs\n\n" + _md_table(rows)


def _bar_plot(path: Path, labels, series: dict, title: str, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .io import atomic_path

    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(labels) * max(1, len(series))), 4))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(labels))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + i * width, values, width, label=name)
    ax.set_xticks(x + width * (len(series) - 1) / 2)
    ax.set_xticklabels(labels, rotation=45, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


# -- kinds ---------------------------------------------------------------------------------------

def _kind_concepts(spec, models, out, dataset, concept_name, device) -> str:
    from .compare import count_table, load_run

    runs = _dissect_runs(spec, models, out, dataset, concept_name, device, "iou")
    loaded = [load_run(p) for p in runs.values()]
    table = count_table(loaded)
    _csv(out / "counts.csv", table)
    focus = spec.get("focus", [])
    names = [r.name for r in loaded]
    per_label: dict = {}
    for r in table:
        per_label.setdefault(r["label"], {n: 0 for n in names})
        for n in names:
            per_label[r["label"]][n] += r[n]
    labels = sorted(per_label, key=lambda k: -max(per_label[k].values()))
    _bar_plot(out / "counts.png", labels, {n: [per_label[k][n] for k in labels] for n in names},
              "detector units per concept (all dissected layers)", "units")
    focus_rows = [{"concept": f, **{n: per_label.get(f, {}).get(n, 0) for n in names}}
                  for f in focus]
    text = [_runs_section(runs, out), "## Detector units per concept and layer\n",
            "Counts from `units.csv` of each run (IoU >= the run's threshold); difference = "
            f"{names[-1]} - {names[0]}. "
            f"Source: `counts.csv`; plot `counts.png`.\n", _md_table(table)]
    if focus:
        text += ["\n## The study's focus concepts (all layers)\n", _md_table(focus_rows)]
    return "\n".join(text)


def _kind_finetune_shift(spec, models, out, dataset, concept_name, device) -> str:
    from .compare import (bootstrap_count_difference, category_preference, changed_units,
                          count_table, fixation_preference, load_run)
    from .engine import check_model

    runs = _dissect_runs(spec, models, out, dataset, concept_name, device, "both")
    loaded = [load_run(p) for p in runs.values()]
    table = count_table(loaded)
    _csv(out / "counts.csv", table)
    text = [_runs_section(runs, out), "## Detector units per concept and layer (IoU)\n",
            _md_table(table)]
    # paired bootstrap over images, first model vs each other, from the runs' saved counts
    cmp = spec.get("compare", {})
    n_boot = int(cmp.get("bootstrap", 200))
    base = loaded[0]
    boot_rows = []
    if n_boot > 0:
        for other in loaded[1:]:
            boot_rows += [{"comparison": f"{other.name} - {base.name}", **row}
                          for row in bootstrap_count_difference(base, other, n_boot=n_boot)]
        _csv(out / "bootstrap.csv", boot_rows)
        text += [f"\n## Count differences with 95% bootstrap intervals ({n_boot} paired "
                 "resamples of the images; each unit keeps its run's label)\n",
                 _md_table(boot_rows, ["layer", "comparison", "label", "count_a", "count_b",
                                       "difference", "ci_low", "ci_high"])]
    changed = []
    for other in loaded[1:]:
        for c in changed_units(base, other):
            changed.append({"comparison": f"{base.name} -> {other.name}", **c})
    _csv(out / "changed_units.csv", changed)
    text += [f"\n## Units that changed label\n\n{len(changed)} units (all rows in "
             "`changed_units.csv`).\n"]
    # region-NSS tables side by side
    nss_rows = []
    for r in loaded:
        f = r.path / "region_nss.csv"
        if f.is_file():
            with open(f, newline="") as fh:
                for row in csv.DictReader(fh):
                    nss_rows.append({"run": r.name, **row})
    if nss_rows:
        _csv(out / "region_nss.csv", nss_rows)
        text += ["\n## Region-NSS (He et al. 2019, Table 2 layout)\n",
                 _nss_pivot(nss_rows, spec.get("compare", {}).get("nss_labels"))]
    # category preference
    if cmp.get("preference", True) and dataset.has_fixations:
        limit = int(cmp.get("preference_images", 200))
        prefs = {}
        runs_by_name = {r.name: r for r in loaded}
        for name, mspec in models.items():
            module, meta = _load(mspec, device)
            if name in runs_by_name:   # the network its run dissected, or refuse
                check_model(runs_by_name[name].summary, module, runs_by_name[name].path)
            if meta.get("task") == "saliency":
                prefs[name] = category_preference(module, dataset, limit=limit, device=device)
        prefs["fixations"] = fixation_preference(dataset, limit=limit)
        cats = cmp.get("preference_categories", ["object", "part"])
        ids = sorted(i for i in set().union(*[set(p) for p in prefs.values()])
                     if not cats or dataset.labels.category(i) in cats)
        rows = [{"label": dataset.labels.name(i), **{n: p.get(i, float("nan"))
                                                      for n, p in prefs.items()}} for i in ids]
        _csv(out / "preference.csv", rows)
        _bar_plot(out / "preference.png", [r["label"] for r in rows],
                  {n: [r[n] for r in rows] for n in prefs},
                  "saliency (or fixation) share over area share", "preference (1 = area)")
        text += [f"\n## Category preference (first {limit} images; 1 = as much as the "
                 "region's area)\n", _md_table(rows)]
    return "\n".join(text)


def _nss_pivot(rows: list[dict], labels=None) -> str:
    """Per label: mean NSS of the top units / number of units above the threshold, for each run
    at its deepest dissected layer (every layer is in region_nss.csv)."""
    from .concepts.base import STUDY_CATEGORIES

    runs = list(dict.fromkeys(r["run"] for r in rows))
    deepest = {}
    for r in rows:
        deepest[r["run"]] = r["layer"]  # rows come in layer order; the last one is the deepest
    labels = labels or [lab for lab in STUDY_CATEGORIES
                        if any(r["label"] == lab for r in rows)] or sorted(
        {r["label"] for r in rows})
    index = {(r["run"], r["label"]): r for r in rows if r["layer"] == deepest[r["run"]]}
    out = []
    for lab in labels:
        row = {"concept": lab}
        for run in runs:
            r = index.get((run, lab))
            row[f"{run}: top-{r['top_units'] if r else 10} NSS"] = (
                f"{float(r['top_mean_nss']):.2f}" if r else "")
            row[f"{run}: units > {r['nss_threshold'] if r else ''}"] = r["units_above"] if r \
                else ""
        out.append(row)
    layers = ", ".join(f"{run} `{deepest[run]}`" for run in runs)
    return (f"Layer per run: {layers}. Mean region-NSS of the top units and the number of units "
            "above the NSS threshold, per concept; all layers and labels in `region_nss.csv`.\n\n"
            + _md_table(out))


def _kind_task_vs_domain(spec, models, out, dataset, concept_name, device) -> str:
    from .compare import cka_matrix, collect_activations

    layers = spec.get("layers")
    limit = int(spec.get("images", 300))
    acts = {}
    for name, mspec in models.items():
        module, meta = _load(mspec, device)
        lays = layers or meta.get("layers")
        acts[name] = collect_activations(module, dataset, lays, limit=limit, device=device,
                                         reduce=spec.get("reduce", "flatten"))
    rows = []
    common = sorted(set.intersection(*[set(a) for a in acts.values()]))
    for layer in common:
        for r in cka_matrix({n: a[layer] for n, a in acts.items()},
                            unbiased=bool(spec.get("unbiased", True))):
            rows.append({"layer": layer, **r})
    _csv(out / "cka.csv", rows)
    n_used = min(limit, len(dataset))
    text = [f"## Linear CKA between variants ({n_used} images of `{concept_name}`, "
            f"{'unbiased' if spec.get('unbiased', True) else 'biased'} HSIC)\n",
            "Models: " + ", ".join(f"`{n}` = {m}" for n, m in models.items()) + "\n",
            _md_table(rows, ["layer", "a", "b", "cka", "n_images"])]
    q = spec.get("question")
    if q:
        by = {(r["layer"], frozenset((r["a"], r["b"]))): r["cka"] for r in rows}
        lines = []
        for layer in common:
            vals = {f"{a}~{b}": by.get((layer, frozenset((a, b)))) for a, b in q}
            lines.append(f"- `{layer}`: " + ", ".join(
                f"CKA({k}) = {v:.3f}" for k, v in vals.items() if v is not None))
        text += ["\n## The task-vs-domain question\n", "\n".join(lines) + "\n"]
    return "\n".join(text)


def _popout_compact(path: Path) -> str:
    """Per model and feature: GSI and fixations to the target, averaged over difference levels."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    gsi_key = next(k for k in rows[0] if k.lower().startswith("gsi"))
    fix_key = next(k for k in rows[0] if k.lower().startswith("fixations"))
    agg: dict = {}
    for r in rows:
        a = agg.setdefault((r["model"], r["feature"]), {"gsi": [], "fix": [], "n": 0})
        a["gsi"].append(float(r[gsi_key]))
        a["fix"].append(float(r[fix_key]))
        a["n"] += int(r.get("n") or 0)
    features = list(dict.fromkeys(r["feature"] for r in rows))
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        row = {"model": model}
        for f in features:
            a = agg.get((model, f))
            if a:
                row[f"{f}: GSI"] = f"{np.mean(a['gsi']):.3f}"
                row[f"{f}: fixations"] = f"{np.mean(a['fix']):.1f}"
        out.append(row)
    return ("Mean over the difference levels (GSI: higher = target more salient than "
            "distractors; fixations to reach the target, 100 = not found). Per level: "
            "`runs/popout/summary.md`.\n\n" + _md_table(out))


def _kind_popout(spec, models, out, dataset, concept_name, device) -> str:
    from .saliency.popout_eval import evaluate_popout

    p = spec.get("popout", {})
    model_list = list(p.get("classical", ["itti", "spectral", "signature", "centre"]))
    deep = dict(models)
    paths = {}
    for name, mspec in deep.items():
        from .models.checkpoint import builtin_file
        from .models.zoo import is_builtin

        paths[name] = str(builtin_file(mspec)) if is_builtin(mspec) else mspec
    evaluate_popout(model_list + list(paths.values()), out / "runs" / "popout",
                    n=int(p.get("n", 60)), seed=int(p.get("seed", 0)), device=str(device))
    summary = _popout_compact(out / "runs" / "popout" / "summary.csv")
    # natural images: the dataset's own fixations
    from .engine import model_input, run_pass
    from .saliency import classical
    from .saliency.evaluate import checkpoint_model
    from .saliency.metrics import evaluate_map

    n = int(p.get("natural_images", 100))
    fns = {m: classical.get_model(m) for m in model_list}
    for name, path in paths.items():
        fns[name] = checkpoint_model(path, str(device))
    scores = {m: {"nss": [], "auc_judd": []} for m in fns}

    def on_batch(acts, batch, j):   # a data-only pass: images and fixations, no model hooks
        images = model_input(batch["image"], "cpu", False)
        for b, index in enumerate(batch["index"].tolist()):
            fx = (batch.get("fixations") or [None] * len(images))[b]
            if fx is None:
                raise UserError(f"concept set {concept_name} has no fixations for the "
                                "natural-image part of the pop-out probe")
            img = images[b].permute(1, 2, 0).numpy()
            for m, fn in fns.items():
                r = evaluate_map(fn(img), fx.numpy(), "exact", ["nss", "auc_judd"], rng=index)
                for k in scores[m]:
                    scores[m][k].append(r[k])

    run_pass(None, dataset, (), on_batch, n=min(n, len(dataset)), batch_size=16)
    nat = [{"model": m, "NSS": float(np.nanmean(v["nss"])),
            "AUC-Judd": float(np.nanmean(v["auc_judd"])), "images": len(v["nss"])}
           for m, v in scores.items()]
    _csv(out / "natural.csv", nat)
    return "\n".join([
        "## Pop-out search arrays (run `runs/popout`)\n", summary,
        f"\n## Natural images with fixations ({concept_name}, first {n} images, "
        "protocol `exact`)\n", _md_table(nat)])


def _ablation_sets(a: dict, run_dir, model, dataset, device, limit):
    """The tested set of one model: its run's detector units of the concept, or (where it has
    none and the recipe sets ``fallback_top``) its top region-NSS units; with the set's name."""
    from .ablation import top_nss_units
    from .ablation_run import CONCEPT_SET, TOP_NSS, concept_units
    from .compare import load_run

    concept, layer = a["concept"], a.get("layer")
    try:
        _, units = concept_units(load_run(run_dir), concept, layer)
        return {CONCEPT_SET: units}, "", list(a.get("controls", ["random", "top-nss"]))
    except UserError as err:
        k = int(a.get("fallback_top", 0))
        if not k:
            return None, err.message, []
        units = top_nss_units(model, dataset, layer, concept, k, device=device, limit=limit)
        note = (f"no IoU detector units of {concept!r} in `{layer}`; tested instead: the {k} "
                f"units with the highest region-NSS for it (selected on the same images)")
        return {TOP_NSS: units}, note, [c for c in a.get("controls", ["random"])
                                        if c == "random"]


def _kind_ablation(spec, models, out, dataset, concept_name, device) -> str:
    from .ablation import ablate, top_nss_units
    from .ablation_run import TOP_NSS, write_ablation

    a = spec.get("ablation", {})
    concept, limit = a["concept"], a.get("images")
    runs = _dissect_runs(spec, models, out, dataset, concept_name, device, "iou")
    rows, notes = [], []
    focus = a.get("measures", ["nss", "mass_inside", "nss_inside", "nss_outside", "accuracy"])
    for name, mspec in models.items():
        module, meta = _load(mspec, device)
        sets, note, controls = _ablation_sets(a, runs[name], module, dataset, device, limit)
        if note:
            notes.append(f"- `{name}`: {note}.")
        if sets is None:
            continue
        tested = next(iter(sets.values()))
        if "top-nss" in controls:
            sets[TOP_NSS] = top_nss_units(module, dataset, tested[0][0], concept, len(tested),
                                          device=device, limit=limit)
        res = ablate(module, sets, dataset, mode=a.get("mode", "zero"), concept=concept,
                     random_repeats=int(a.get("repeats", 20)) if "random" in controls else 0,
                     seed=int(a.get("seed", 0)), n_boot=int(a.get("bootstrap", 1000)),
                     limit=limit, batch_size=int(a.get("batch_size", 16)), device=device,
                     classes=meta.get("classes"), progress=True)
        write_ablation(res, {"run": str(runs[name]), "model": mspec, "concept": concept,
                             "layer": tested[0][0], "concepts": concept_name,
                             "controls": controls, "controls_skipped": {}},
                       out / "ablation" / name)
        for r in res.rows:
            if (r["measure"] in focus or r["measure"].startswith("logit:")) and \
                    not r["set"].startswith("random-"):
                rows.append({"model": name, "units": len(tested), **r})
    _csv(out / "ablation.csv", rows)
    table = [{**{k: r[k] for k in ("model", "set", "units", "measure", "n_images")},
              "baseline": f"{r['baseline']:.3f}", "ablated": f"{r['ablated']:.3f}",
              "difference [95% CI]": f"{r['difference']:+.3f} [{r['ci_low']:+.3f}, "
              f"{r['ci_high']:+.3f}]"} for r in rows]
    return "\n".join([
        _runs_section(runs, out),
        f"## Ablation of {concept!r} units in `{a.get('layer')}` ({a.get('mode', 'zero')} "
        f"ablation, first {limit or len(dataset)} images of `{concept_name}`)\n",
        "Per model: its IoU detector units of the concept removed (`concept`), the same number "
        "of the layer's units with the highest region-NSS for it (`top-nss`), random units of "
        f"the layer (`random`: per image the mean of {a.get('repeats', 20)} draws) and "
        "`vs-random` = concept set minus random (ablated values). Differences are ablated - "
        "baseline with 95% paired bootstrap intervals over images. Each model's files: "
        "`ablation/<model>/` (ablation.csv with every draw, ablation.png, summary.md).\n",
        "\n".join(notes) + ("\n" if notes else ""), _md_table(table)])


def run_probe(name_or_path: str, out_dir, *, models: dict | None = None,
              concepts: str | None = None, root=None, limit: int | None = None,
              device="cpu", cache: bool = True, annotations=None) -> Path:
    """Run a probe and write ``<out>/report.md`` (+ CSVs and plots); returns the report path.
    ``cache=False``: decode the concept set's label files instead of using its label cache;
    ``annotations``: COCO json files of a coco-parts concept set (``--annotations``)."""
    from .utils import versions

    spec = load_probe(name_or_path)
    if concepts:
        spec["concepts"] = {"name": concepts}
    spec_models = dict(spec.get("models", {}))
    for name, mspec in (models or {}).items():
        spec_models[name] = mspec
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"output folder {out} is a file", hint="choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    concepts_spec = dict(spec.get("concepts", {"name": "synthetic"}))
    if concepts_spec.get("name", "synthetic") == "synthetic" and "image_size" not in \
            concepts_spec and spec_models:
        # the procedural world is drawn at the models' input size (as `neuroprobe dissect` does)
        size = _load(next(iter(spec_models.values())), "cpu").metadata.get("input_size")
        if size and size[0] == size[1]:
            concepts_spec.update(image_size=int(size[0]), mask_size=int(size[0]) // 2)
    spec["concepts"] = concepts_spec
    concept_name, dataset = _open_concepts(spec, root,
                                           limit or spec.get("concepts", {}).get("limit"),
                                           annotations)
    dataset.use_cache = cache
    kind = spec["kind"]
    fn = {"concepts": _kind_concepts, "finetune-shift": _kind_finetune_shift,
          "popout": _kind_popout, "task-vs-domain": _kind_task_vs_domain,
          "ablation": _kind_ablation}[kind]
    log.info(f"probe {spec['name']} ({kind}) on {concept_name}, {len(dataset)} images")
    body = fn(spec, spec_models, out, dataset, concept_name, device)
    head = [f"# Probe: {spec['name']}\n", spec.get("description", "").strip() + "\n",
            f"Recipe `{spec['_path']}`; concept set `{concept_name}` ({len(dataset)} images); "
            f"neuroprobe {versions()['neuroprobe']}.\n"]
    if spec.get("expectation"):
        head.append(f"What the study found: {spec['expectation'].strip()}\n")
    write_text(out / "report.md", "\n".join(head) + "\n" + body)
    write_json(out / "probe.json", {"probe": {k: v for k, v in spec.items()},
                                    "models": spec_models, "versions": versions()})
    return out / "report.md"
