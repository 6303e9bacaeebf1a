"""``neuroprobe dissect``: label the units of a model's layers with concepts.

With no arguments it dissects the built-in demo model on the synthetic world (the first
``DEMO_LIMIT`` images), which takes a few minutes at most on a 2-core laptop CPU.
"""
from __future__ import annotations

import logging
import os

from . import add_command
from ._common import (add_batch_size, add_concept_options, add_limit, add_model_options,
                      add_workers, finite_float, open_probability, output_folder, positive_int,
                      probability)

log = logging.getLogger(__name__)

#: images of the synthetic world used when --concepts is not given (keeps the default run short)
DEMO_LIMIT = 200
DEFAULT_CONCEPTS = "synthetic"


def register(subparsers) -> None:
    p = add_command(
        subparsers, "dissect", "label units with concepts (Network-Dissection IoU or region-NSS)",
        _run, description="Dissect layers of a model on a concept set: per-unit thresholds "
        "from pass 1, IoU or region-NSS tallies in pass 2, results in --out (units.csv, "
        "summary.json, concepts.png, region_nss.csv, scores.npz, top_images.npz).  Resumes "
        "a killed run of the same configuration; --from RUN runs a run's configuration again.")
    add_model_options(p, default="demo")
    p.set_defaults(model=None)   # None = the demo model, or its stand-in until it is installed
    p.description += ("  Without --model: the built-in demo model (until the demo models are "
                      "installed, a documented stand-in, see summary.json).")
    add_concept_options(p, limit=False, concepts_help="concept set: shipped name, .toml path, "
                        "or a data folder (a Broden folder with index.csv, a mask folder with "
                        "SegmentationClass/ or labelme files) (default: "
                        f"{DEFAULT_CONCEPTS}, first {DEMO_LIMIT} images unless --limit)")
    p.add_argument("--image-size", type=positive_int, default=None, metavar="N",
                   help="draw / resize the concept set's images to N x N, masks to N/2 (default: "
                   "the set's own size; without --concepts the model's input size)")
    p.add_argument("--layers", default=None, help="comma-separated layer names "
                   "(default: the model's dissection layers; see `neuroprobe layers`)")
    p.add_argument("--mode", choices=["netdissect", "unrestricted"], default="netdissect",
                   help="netdissect: top 0.005 of raw maps, per-category IoU denominator; "
                   "unrestricted (Bau et al. 2020): top 0.01 of upsampled maps, all pixels")
    p.add_argument("--score", choices=["auto", "iou", "region-nss", "both"], default="auto",
                   help="iou (Network Dissection), region-nss (He et al. 2019; needs fixations) "
                   "or both; auto (default): both where the concept set has fixations, else iou")
    p.add_argument("--denominator", choices=["netdissect", "annotated", "lite"], default=None,
                   help="netdissect mode: count a unit's activation for category c on images "
                   "holding a label of category c (netdissect, default, as NetDissect), on "
                   "images annotated with c (annotated: the category's index.csv cell is not "
                   "empty) or only where its active pixels touch a label of c (lite = "
                   "NetDissect-Lite)")
    p.add_argument("--ties", choices=["netdissect", "first"], default="netdissect",
                   help="when a unit's best IoUs of several categories tie, the later category "
                   "wins (netdissect, default, as NetDissect) or the first one")
    p.add_argument("--nss-resolution", choices=["image", "mask"], default="image",
                   help="region-NSS z-scores each unit's map upsampled to the image size "
                   "(image, default: the study's definition) or to the mask size (mask: faster)")
    p.add_argument("--nss-regions", choices=["instance", "label"], default="instance",
                   help="region-NSS regions: each annotated instance (instance, default: the "
                   "study's; where the concept set knows instances) or all pixels of a label "
                   "in an image (label)")
    p.add_argument("--quantile", type=open_probability, default=None,
                   help="top fraction of activations above the unit threshold "
                   "(default 0.005 netdissect, 0.01 unrestricted)")
    p.add_argument("--iou-threshold", type=probability, default=0.04,
                   help="IoU at which a unit is a detector (default 0.04)")
    p.add_argument("--nss-threshold", type=finite_float, default=1.5,
                   help="region-NSS above which a unit counts for a concept (default 1.5)")
    p.add_argument("--top-units", type=positive_int, default=10,
                   help="region-NSS table: mean NSS of this many best units (default 10)")
    add_batch_size(p, 32)
    add_limit(p)
    p.add_argument("--out", default=None, help="output folder (default: runs/dissect-<model>, "
                   "runs/dissect-<model>-<concepts> with --concepts)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run of another configuration in --out")
    p.add_argument("--no-resume", action="store_true",
                   help="start from scratch even if --out holds a checkpoint of this run")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None,
                   help="autocast the forward pass (GPU)")
    p.add_argument("--keep", choices=["auto", "disk", "memory", "recompute"], default="auto",
                   help="where pass 1's maps wait for pass 2: on disk (CPU default), in device "
                   "memory (GPU default where they fit: pass 2 then reads the labels alone) or "
                   "nowhere (pass 2 reruns the model)")
    p.add_argument("--on-bad-image", choices=["stop", "skip"], default="stop",
                   help="an image or mask of the concept set that cannot be decoded: stop the "
                   "run with one line naming the file (default), or skip such images and list "
                   "them in summary.json (skipped)")
    p.add_argument("--no-cache", action="store_true",
                   help="decode the concept set's label files instead of reading (and on first "
                   "use building) its label cache in neuroprobe's cache folder")
    add_workers(p, None, help="data-loading worker processes (default: 1 on a multi-core CPU; "
                   "on a GPU one per core but one, at most 12)")
    p.add_argument("--from", dest="from_run", default=None, metavar="RUN",
                   help="re-run the configuration of the run folder RUN (its summary.json): "
                   "model, concept set, images, layers, scoring options, batch size; options "
                   "given here override it (e.g. --model OTHER --out DIR)")
    _defer_defaults(p)


#: the options ``--from RUN`` fills from the run's configuration unless they are given
FROM_OPTIONS = ("model", "arch", "concepts", "root", "annotations", "limit", "image_size",
                "layers", "mode",
                "score", "denominator", "ties", "nss_resolution", "nss_regions", "quantile",
                "iou_threshold", "nss_threshold", "top_units", "batch_size", "amp",
                "on_bad_image")


class _Unset:
    """The parsed value of an option that was not given (``--from`` fills it, else the
    option's default)."""

    def __repr__(self):
        return "unset"


UNSET = _Unset()


def _defer_defaults(p) -> None:
    """Parse :data:`FROM_OPTIONS` as :data:`UNSET` when absent, keeping their defaults aside,
    so that ``--from`` can tell an option given on the command line from a default."""
    defaults = {}
    for action in p._actions:
        if action.dest in FROM_OPTIONS:
            defaults[action.dest] = action.default
            action.default = UNSET
    p.set_defaults(_from_defaults=defaults)


def _from_config(run_dir) -> tuple[dict, dict]:
    """``(options, extra)`` of run folder ``run_dir``: the command-line options that re-run it
    (by dest) and the library options the command line does not have (``top_k``,
    ``sketch_capacity``, the concept set's image and mask size)."""
    from pathlib import Path

    from ..errors import UserError
    from ..io import read_json
    from ..run import model_spec

    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise UserError(f"--from {run_dir}: the run folder does not exist",
                        hint="pass the --out folder of an earlier `neuroprobe dissect`")
    if not (run / "summary.json").is_file():
        raise UserError(f"--from {run_dir}: not a finished dissection run (no summary.json)",
                        hint="pass the --out folder of an earlier `neuroprobe dissect`")
    summary = read_json(run / "summary.json", "run summary")
    cfg = summary.get("config") if isinstance(summary, dict) else None
    if not isinstance(cfg, dict) or not cfg.get("layers"):
        raise UserError(f"--from {run_dir}: its summary.json holds no dissection configuration",
                        hint="pass the --out folder of an earlier `neuroprobe dissect`")
    minfo, ccfg = cfg.get("model") or {}, cfg.get("concepts") or {}
    spec = model_spec(minfo)   # a path relative to another working folder: the absolute one
    opts = {"model": None if str(spec).startswith("stand-in:") else spec,
            "arch": minfo.get("arch"),
            "concepts": ccfg.get("spec") or ccfg.get("path") or (
                ccfg.get("root") if ccfg.get("source") in ("broden", "mask-folder") else None)
            or ccfg.get("name"),
            "root": ccfg.get("root"),
            "annotations": ccfg.get("annotations"),
            "limit": ccfg.get("limit") or ccfg.get("n"),
            "layers": ",".join(cfg["layers"]),
            "denominator": None if cfg.get("mode") == "unrestricted" else cfg.get("denominator"),
            "batch_size": (summary.get("timing") or {}).get("batch_size")}
    opts.update({k: cfg[k] for k in ("mode", "score", "ties", "nss_resolution", "nss_regions",
                                     "quantile", "iou_threshold", "nss_threshold", "top_units",
                                     "amp", "on_bad_image") if k in cfg})
    extra = {"top_k": cfg.get("top_k"), "sketch_capacity": (cfg.get("sketch") or {}).get(
        "capacity"), "image_size": ccfg.get("image_size"), "mask_size": ccfg.get("mask_size"),
        "stand_in": str(spec).startswith("stand-in:")}
    return {k: v for k, v in opts.items() if v is not None or k == "model"}, extra


def _apply_from(args) -> dict:
    """Fill the options not given on the command line: from ``--from RUN`` where given, else
    their defaults.  Returns the library options of the run (``{}`` without ``--from``)."""
    defaults = getattr(args, "_from_defaults", {})
    given = {d for d in defaults if getattr(args, d, UNSET) is not UNSET}
    opts, extra = _from_config(args.from_run) if args.from_run else ({}, {})
    if args.from_run and "model" not in given and not opts.get("model") and \
            not extra.get("stand_in"):
        from ..errors import UserError

        raise UserError(f"--from {args.from_run}: its summary.json names no model",
                        hint="pass --model as well")
    if "concepts" in given:
        opts.pop("root", None)   # the run's data folder belongs to the run's concept set
        opts.pop("annotations", None)
    for dest, default in defaults.items():
        if dest not in given:
            setattr(args, dest, opts.get(dest, default))
    if "image_size" in given or "concepts" in given:
        extra.pop("image_size", None)   # the sizes of the run's set do not carry over
        extra.pop("mask_size", None)
    if "model" in given:
        extra.pop("stand_in", None)
    return {k: v for k, v in extra.items() if v is not None}


def default_workers(device) -> int:
    """Loader processes when ``--workers`` is not given: on a CPU one (the model needs the other
    cores), on a GPU enough to decode images as fast as the GPU consumes them (up to 12)."""
    cores = os.cpu_count() or 1
    if str(device).startswith("cuda"):
        return max(1, min(12, cores - 1))
    return 1 if cores > 1 else 0


def _run(args) -> int:
    from pathlib import Path

    from ..concepts import open_concepts
    from ..dissect import dissect
    from ..errors import UserError
    from ..io import sha256_file
    from ..models.standin import demo_installed, stand_in
    from ..utils import resolve_device
    from .layers import load_model_from_args

    device = resolve_device(getattr(args, "device", "auto"))
    extra = _apply_from(args)
    if (args.model is None and not demo_installed()) or extra.get("stand_in"):
        module, meta, model_info = stand_in()
        module = module.to(device)
        log.info(model_info["note"])
        model_name = "stand-in"
    else:
        if args.model is None:
            args.model = "demo"
        module, meta = load_model_from_args(args)
        model_info = {"spec": args.model, "arch": args.arch}
        path = Path(args.model)
        if not path.is_file():
            try:
                from ..models import zoo

                if zoo.is_builtin(args.model):
                    path = Path(zoo.builtin_path(args.model))
            except Exception:  # pragma: no cover - reported by the loader already
                pass
        if path.is_file():
            model_info["file"] = str(path.resolve())   # found from any working folder
            model_info["sha256"] = sha256_file(path)
        model_name = args.model.replace(":", "-").split("?")[0]
        if path.is_file() and Path(args.model).is_file():
            model_name = path.stem
    model_info.update({k: meta.get(k) for k in ("task", "variant", "input_size")})
    if meta.get("seed") is not None:   # torchvision:NAME?weights=none: the seeded network
        model_info["seed"] = meta["seed"]
    concepts = args.concepts or DEFAULT_CONCEPTS
    limit = args.limit
    if args.concepts is None and limit is None:
        limit = DEMO_LIMIT
    overrides = {"root": args.root} if args.root else {}
    if args.annotations:
        overrides["annotations"] = list(args.annotations)
    size = meta.get("input_size")
    image_size = args.image_size
    if image_size is None and args.concepts is None and size and size[0] == size[1]:
        image_size = int(size[0])   # the procedural world is drawn at the model's input size
    if image_size:
        overrides.update(image_size=image_size, mask_size=image_size // 2)
    dataset = _open_sized(open_concepts, concepts, overrides, extra)
    dataset.use_cache = not args.no_cache
    layers = [s.strip() for s in args.layers.split(",") if s.strip()] if args.layers else \
        list(meta.get("layers") or [])
    if not layers:
        raise UserError(f"model {args.model or model_name!r} names no default layers to dissect",
                        hint="pass --layers a,b (see `neuroprobe layers --model ...`)")
    if size and tuple(size) != tuple(dataset.image_size):
        log.info(f"note: the model was made for {tuple(size)} inputs, the concept set has "
                 f"{tuple(dataset.image_size)} images")
    out = output_folder(args.out) if args.out else Path("runs") / (
        f"dissect-{model_name}" + ("" if args.concepts is None else f"-{Path(concepts).stem}"))
    workers = args.workers
    if workers is None:
        workers = default_workers(device)
    if str(device).startswith("cuda"):
        import torch

        torch.backends.cudnn.benchmark = True   # one input size for the whole run
    score = args.score
    if score == "auto":
        score = "both" if getattr(dataset, "has_fixations", False) else "iou"
    result = dissect(
        module, dataset, layers, mode=args.mode, score=score, quantile=args.quantile,
        iou_threshold=args.iou_threshold, denominator=args.denominator,
        nss_threshold=args.nss_threshold, top_units=args.top_units,
        batch_size=args.batch_size, device=device, amp=args.amp, limit=limit, out_dir=out,
        resume=not args.no_resume, overwrite=args.overwrite, keep=args.keep,
        num_workers=workers, model_info=model_info, on_bad_image=args.on_bad_image,
        nss_resolution=args.nss_resolution, nss_regions=args.nss_regions, ties=args.ties,
        top_k=extra.get("top_k", 16), sketch_capacity=extra.get("sketch_capacity", 4096),
        concepts_info={"spec": concepts, "root": str(args.root) if args.root else None,
                       "limit": limit, "annotations": getattr(dataset, "annotation_files", None)
                       if args.annotations else None})
    if os.environ.get("RANK", "0") == "0":   # under torchrun: rank 0 reports
        _print_summary(result, out)
    return 0


def _open_sized(open_concepts, concepts: str, overrides: dict, extra: dict):
    """Open the concept set; under ``--from`` at the run's image and mask size where the set's
    own size differs (the run was made with ``--image-size`` or at the demo model's size)."""
    dataset = open_concepts(concepts, **overrides)
    want = {k: tuple(extra[k]) for k in ("image_size", "mask_size") if extra.get(k)}
    have = {"image_size": tuple(dataset.image_size), "mask_size": tuple(dataset.mask_size)}
    if want and any(have[k] != v for k, v in want.items()):
        dataset = open_concepts(concepts, **overrides, **want)
    return dataset


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _print_summary(result, out) -> None:
    s = result.summary
    cfg = s["config"]
    what = "region-NSS > {}".format(cfg["nss_threshold"]) if cfg["score"] == "region-nss" \
        else "IoU >= {}".format(cfg["iou_threshold"])
    n, skipped = cfg["concepts"]["n"], int(s.get("n_skipped") or 0)
    count = f"{n - skipped} of {n}" if skipped else f"{n}"
    print(f"dissected {count} images of {cfg['concepts'].get('name')} "
          f"({cfg['mode']} mode, {cfg['score']}; detectors: {what})")
    if skipped:
        noun = "image" if skipped == 1 else "images"
        print(f"skipped {skipped} {noun} that could not be read (listed in summary.json)")
    for layer in s["units"]:
        top = ", ".join(f"{k} {v}" for k, v in list(s["detectors_per_concept"][layer].items())[:6])
        print(f"  {layer}: {s['detectors'][layer]}/{s['units'][layer]} units, "
              f"{_plural(s['unique_concepts'][layer], 'concept')}" + (f" ({top})" if top else ""))
    if result.nss_table:
        layers = list(s["units"])
        print(f"  region-NSS (mean NSS of the top {cfg['top_units']} units / units with NSS > "
              f"{cfg['nss_threshold']}):")
        print("    " + f"{'label':<16}" + "".join(f"{l[-16:]:>18}" for l in layers))
        cell = {(r["label"], r["layer"]): r for r in result.nss_table}
        for label in dict.fromkeys(r["label"] for r in result.nss_table):
            parts = []
            for layer in layers:
                r = cell.get((label, layer))
                parts.append(f"{r['top_mean_nss']:>12.3f} /{r['units_above']:>4d}" if r
                             else f"{'-':>18}")
            print(f"    {label:<16}" + "".join(parts))
    if s.get("note"):
        print(f"  note: {s['note']}")
    print(f"results in {out}/ (units.csv, summary.json, concepts.png"
          + (", region_nss.csv)" if result.nss_table else ")"))
