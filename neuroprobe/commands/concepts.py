"""``neuroprobe concepts list|info|export|show``."""
from __future__ import annotations

from . import add_command, add_subcommand_group
from ._common import (add_annotations, add_limit, nonnegative_int, output_file, output_folder,
                      positive_int, seed)


def register(subparsers) -> None:
    _, group = add_subcommand_group(subparsers, "concepts", "list, inspect, export and show "
                                    "concept sets")
    add_command(group, "list", "list the shipped concept sets", _list)
    p = add_command(group, "info", "describe a concept set: source, labels, categories", _info)
    p.add_argument("name", help="shipped name or path of a concept-set .toml file")
    p.add_argument("--labels", action="store_true", help="print every label")
    _source_options(p)
    p = add_command(group, "export", "write a concept set to disk in a standard format", _export)
    p.add_argument("name")
    p.add_argument("--n", type=positive_int, default=100, help="number of images (default 100)")
    p.add_argument("--out", required=True, help="output folder (created; must be empty)")
    p.add_argument("--format", default="broden", choices=["broden"])
    p.add_argument("--workers", type=nonnegative_int, default=1,
                   help="processes drawing images in parallel (output identical)")
    p.add_argument("--seed", type=seed, default=None, help="world seed (synthetic sets)")
    _source_options(p)
    p = add_command(group, "cache", "build (or check, or clear) a concept set's label cache",
                    _cache, description="Decode every label file of a concept set once into "
                    "neuroprobe's cache folder (resumable; safe to run twice at once); later "
                    "runs read it instead of the PNGs.  Prints its size beside the size of the "
                    "files it replaces.")
    p.add_argument("name")
    p.add_argument("--verify", action="store_true",
                   help="also re-check every cached item against its files and rebuild the "
                   "chunks whose files changed or were touched")
    p.add_argument("--clear", action="store_true", help="delete this set's cache instead")
    _source_options(p)
    p = add_command(group, "show", "contact sheet of images with masks and fixations", _show)
    p.add_argument("name")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--n", type=positive_int, default=8, help="number of images (default 8)")
    p.add_argument("--seed", type=seed, default=None)
    _source_options(p)


def _source_options(p) -> None:
    p.add_argument("--root", help="local data folder (Broden folder or zip, COCO images, "
                   "EyeCrowd, mask folder)")
    add_annotations(p)
    add_limit(p)
    p.add_argument("--split", default=None, help="data split where the source has one")


def _list(args) -> int:
    from ..concepts import list_concept_sets, load_spec

    for name, path in list_concept_sets().items():
        spec = load_spec(str(path))
        print(f"{name:<14} {spec['source']:<12} {spec.get('description', '')}")
    return 0


def _info(args) -> int:
    from ..concepts import load_spec, open_concepts

    spec = load_spec(args.name)
    print(f"concept set: {spec['name']}  ({spec['_path']})")
    print(f"source:      {spec['source']}")
    if spec.get("description"):
        print(f"about:       {spec['description']}")
    ds = open_concepts(args.name, **_overrides(args))
    print(f"images:      {len(ds)}  image size {tuple(ds.image_size)}  mask size "
          f"{tuple(ds.mask_size)}  fixations: {'yes' if ds.has_fixations else 'no'}")
    for cat in ds.categories:
        labels = ds.labels.labels_of(cat)
        print(f"category {cat!r}: {len(labels)} labels")
        if args.labels:
            for lab in labels:
                print(f"  {lab.id:>5}  {lab.name}")
    return 0


def _overrides(args) -> dict:
    keys = ("seed", "root", "limit", "split", "annotations")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def _export(args) -> int:
    from ..concepts import open_concepts
    from ..concepts.export import export_broden

    out = output_folder(args.out)
    ds = open_concepts(args.name, **_overrides(args))
    export_broden(ds, out, n=args.n, workers=args.workers)
    return 0


def _show(args) -> int:
    from ..concepts import open_concepts
    from ..concepts.sheet import contact_sheet

    out = output_file(args.out)
    ds = open_concepts(args.name, **_overrides(args))
    contact_sheet(ds, out, n=args.n)
    return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _cache(args) -> int:
    import shutil

    from ..concepts import open_concepts
    from ..concepts.cache import build, cache_folder
    from ..errors import UserError

    ds = open_concepts(args.name, **_overrides(args))
    if ds.cache_spec() is None:
        raise UserError(f"concept set {args.name!r} ({type(ds).__name__}) has no label cache",
                        hint="Broden, coco-parts, box sets (eyecrowd) and mask folders are "
                        "cached; generated sets are not (see README, concept-set cache)")
    folder = cache_folder(ds)
    if args.clear:
        existed = folder.exists()
        shutil.rmtree(folder, ignore_errors=True)
        print(f"{'removed' if existed else 'no cache at'} {folder}")
        return 0
    cache = build(ds, verify=args.verify, progress=True)
    print(f"concept cache of {ds.name} ({cache.built_items():,} images): {folder}")
    if cache.source_bytes():
        print(f"  {_mb(cache.disk_bytes())} on disk; the label files it replaces: "
              f"{_mb(cache.source_bytes())}")
    else:   # COCO, box sets: labels decoded from annotations parsed when the set is opened
        print(f"  {_mb(cache.disk_bytes())} on disk; it replaces decoding the annotations "
              f"into {_mb(cache.decoded_bytes())} of int64 label and instance masks")
    return 0
