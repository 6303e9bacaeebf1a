"""``neuroprobe popout``: score saliency models on synthetic pop-out search arrays (P3-style)."""
from __future__ import annotations

from . import add_command
from ._common import nonnegative_int, output_folder, positive_int, seed


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
    import numpy as np

    from ..errors import UserError
    from ..io import write_json, write_text
    from ..saliency import popout as P
    from ..saliency.evaluate import _write_csv, resolve_models
    from ..utils import info, progress, versions

    if args.size < 56:
        raise UserError("--size must be at least 56 pixels (8 per grid cell)")
    output_folder(args.out)
    features = [f.strip() for f in args.features.split(",") if f.strip()]
    specs = [s for s in args.models.split(",") if s.strip()]
    for s in specs:
        if s.strip() in ("observers", "prior", "uniform"):
            raise UserError(f"{s} needs fixation data; it is not a model for pop-out arrays")
    models = resolve_models(specs, getattr(args, "device", "auto"))

    out = output_folder(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    examples = []
    for arr in progress(P.generate(args.n, features, seed=args.seed, size=args.size),
                        total=args.n, desc="pop-out arrays", unit="array"):
        meta = arr.meta
        if len(examples) < args.examples:
            examples.append(arr)
        for name, fn in models.items():
            smap = fn(arr.image)
            sc = P.score_array(smap, arr)
            rows.append({"index": meta["index"], "model": name, "feature": meta["feature"],
                         "difference": meta["difference"], **sc,
                         "target_position": meta["target_position"], "seed": meta["seed"]})
    _write_csv(out / "per_array.csv", rows)
    meta_rows = [dict(a.meta) for a in P.generate(args.n, features, seed=args.seed,
                                                  size=args.size)] if args.n <= 2000 else []
    if meta_rows:
        _write_csv(out / "arrays.csv", meta_rows)
    summary = _summary(rows)
    _write_csv(out / "summary.csv", summary)
    md = _markdown(summary)
    config = {"command": "popout", "models": list(models), "n": args.n, "features": features,
              "size": args.size, "seed": args.seed, "levels": {f: P.LEVELS[f] for f in features},
              "ior_radius": "half a grid cell", "hit_radius": "a quarter cell around the target",
              "max_fixations": 100}
    write_text(out / "summary.md", md + "\n" + f"Configuration: {config}\n")
    write_json(out / "config.json", {**config, "versions": versions()})
    _plots(summary, features, out)
    _examples(examples, models, out)
    print(md)
    info(f"wrote {out}/summary.csv, summary.md, per_array.csv, arrays.csv, popout_*.png")
    del np
    return 0


def _summary(rows):
    import numpy as np

    out = []
    keys = list(dict.fromkeys((r["model"], r["feature"], r["difference"]) for r in rows))
    for model, feat, diff in keys:
        sel = [r for r in rows if r["model"] == model and r["feature"] == feat
               and r["difference"] == diff]
        g = np.array([r["gsi"] for r in sel], float)
        fx = np.array([r["fixations"] for r in sel], float)
        md = np.array([r["msr_distractor"] for r in sel], float)
        mb = np.array([r["msr_background"] for r in sel], float)
        fin = (lambda a: a[np.isfinite(a)])
        out.append({"model": model, "feature": feat, "difference": diff, "n": len(sel),
                    "gsi": float(np.nanmean(g)) if np.isfinite(g).any() else float("nan"),
                    "fixations": float(fx.mean()),
                    "found_pct": 100.0 * float(np.mean([r["found"] for r in sel])),
                    "msr_distractor": float(np.median(fin(md))) if fin(md).size else float("nan"),
                    "msr_background": float(np.median(fin(mb))) if fin(mb).size else float("nan"),
                    "top1_pct": 100.0 * float(np.mean(fx == 1))})
    return out


def _markdown(summary) -> str:
    lines = ["## Pop-out search arrays", "",
             "GSI: mean; fixations: mean number to reach the target (100 = not found); "
             "top1: target is the first fixation; MSR: medians.", "",
             "| model | feature | difference | n | GSI ↑ | fixations ↓ | top1 % | found % | "
             "MSR target/distractor | MSR target/background |", "|---" * 10 + "|"]
    for r in summary:
        lines.append(f"| {r['model']} | {r['feature']} | {r['difference']:g} | {r['n']} | "
                     f"{r['gsi']:.3f} | {r['fixations']:.1f} | {r['top1_pct']:.0f} | "
                     f"{r['found_pct']:.0f} | {r['msr_distractor']:.2f} | "
                     f"{r['msr_background']:.2f} |")
    return "\n".join(lines) + "\n"


def _plots(summary, features, out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path
    from ..saliency.popout import UNITS

    models = list(dict.fromkeys(r["model"] for r in summary))
    for feat in features:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
        for name in models:
            sel = sorted((r for r in summary if r["model"] == name and r["feature"] == feat),
                         key=lambda r: r["difference"])
            if not sel:
                continue
            x = [r["difference"] for r in sel]
            axes[0].plot(x, [r["gsi"] for r in sel], marker="o", label=name)
            axes[1].plot(x, [r["fixations"] for r in sel], marker="o", label=name)
            axes[2].plot(x, [r["msr_distractor"] for r in sel], marker="o", label=name)
        for ax, t in zip(axes, ("GSI (mean)", "fixations to target (mean)",
                                "max target / max distractor (median)")):
            ax.set_xlabel(UNITS[feat])
            ax.set_title(t, fontsize=9)
        axes[1].set_yscale("log")
        axes[2].axhline(1.0, color="grey", lw=0.5)
        if axes[0].get_legend_handles_labels()[0]:  # a feature with no arrays draws no lines
            axes[0].legend(fontsize=7)
        fig.suptitle(f"pop-out: {feat}")
        fig.tight_layout()
        with atomic_path(out / f"popout_{feat}.png", suffix=".png") as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)


def _examples(arrays, models, out) -> None:
    if not arrays:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    cols = 1 + len(models)
    fig, axes = plt.subplots(len(arrays), cols, figsize=(2.2 * cols, 2.2 * len(arrays)),
                             squeeze=False)
    for i, arr in enumerate(arrays):
        axes[i][0].imshow(arr.image)
        axes[i][0].set_title(f"{arr.meta['feature']} {arr.meta['difference']:g}", fontsize=7)
        for j, (name, fn) in enumerate(models.items(), start=1):
            axes[i][j].imshow(fn(arr.image), cmap="magma")
            axes[i][j].contour(arr.target_mask, levels=[0.5], colors="c", linewidths=0.6)
            axes[i][j].set_title(name, fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(out / "popout_examples.png", suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
