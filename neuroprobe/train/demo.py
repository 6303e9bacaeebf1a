"""The built-in demo models: a small encoder pretrained on the synthetic world and its variants.

``neuroprobe dissect`` with no ``--model`` and the probes use them.  They are shipped inside the
package (``neuroprobe/_models/demo-*.pt``, fp16 weights, about 1.2 MB each) and regenerated bit
for bit on the same software and CPU by::

    python -m neuroprobe.train.demo --rebuild            # into neuroprobe/_models/
    python -m neuroprobe.train.demo --rebuild --out DIR  # anywhere else
    python -m neuroprobe.train.demo --check              # rebuild into a temporary folder and
                                                         # compare sha256 with MANIFEST.json

The recipe (:data:`RECIPE`) runs with fixed seeds, deterministic algorithms and 2 threads:

1. ``pretrained``: the ``small`` encoder trained from scratch on the synthetic world's
   multi-label recognition task (which object and part labels occur in the image; a per-class
   1x1 convolution with global max pooling, Oquab et al., CVPR 2015).  This is the offline
   stand-in for ImageNet pretraining: no ImageNet weights exist on an offline machine.
2. From that encoder, on the same images: ``frozen`` (decoder only; the study's Setup I),
   ``finetune-last`` (``block4`` too), ``finetune-all`` (saliency, negative NSS on the synthetic
   observers' fixations), and ``scene`` (scene classification with ``block4`` fine-tuned, the
   study's task control: same encoder, same images, another task).

Training images come from world seed 1; ``neuroprobe dissect`` uses seed 0, so the demo models
are dissected on images they never saw.  :func:`build_demo` returns the shipped file, or builds
the set into the cache (``neuroprobe.resources.cache_dir() / "models"``) when it is missing.
Loading a built-in model by name (:mod:`neuroprobe.models.zoo`) never trains: it only finds
these files.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import tempfile
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..io import atomic_open, sha256_file, write_json
from ..models.zoo import SHIPPED, cache_folder, demo_file
from ..utils import versions
from .data import load_synthetic
from .recipe import TrainConfig, deterministic, train

log = logging.getLogger(__name__)

VARIANTS = ("pretrained", "frozen", "finetune-last", "finetune-all", "scene")
THREADS = 2

#: The demo recipe.  Changing anything here changes the shipped files: rebuild them.
RECIPE = {
    "encoder": "small",
    "input_size": [128, 128],
    "world_seed": 1,
    "n_train": 800,
    "n_val": 100,
    "seed": 0,
    "pretrain": {"epochs": 6, "lr": 2e-3, "lr_decay": 0.85, "batch_size": 16},
    "frozen": {"epochs": 3, "lr": 5e-3, "lr_decay": 0.8, "batch_size": 10, "loss": "nss"},
    "finetune-last": {"epochs": 2, "lr": 1e-3, "lr_decay": 0.8, "batch_size": 10, "loss": "nss"},
    "finetune-all": {"epochs": 2, "lr": 1e-3, "lr_decay": 0.8, "batch_size": 10, "loss": "nss"},
    "scene": {"epochs": 2, "lr": 1e-3, "lr_decay": 0.8, "batch_size": 10,
              "variant": "finetune-last"},
}


def build_demo(variant: str) -> Path:
    """Path of the demo checkpoint ``variant`` (pretrained | frozen | finetune-last |
    finetune-all | scene): the shipped file, else the cached one, else built into the cache."""
    if variant not in VARIANTS:
        raise CheckpointError(f"unknown demo variant {variant!r}", hint=", ".join(VARIANTS))
    for folder in (SHIPPED, cache_folder()):
        path = demo_file(variant, folder)
        if path.is_file():
            return path
    log.info("the demo models are not shipped with this installation; building them into "
             f"{cache_folder()} (a few minutes, once)")
    rebuild(cache_folder())
    return demo_file(variant, cache_folder())


def rebuild(out: Path, recipe: dict | None = None, quiet: bool = False) -> dict:
    """Train the five demo models into ``out`` and write ``MANIFEST.json``; returns it."""
    r = dict(RECIPE if recipe is None else recipe)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = tuple(r["input_size"])
    n_tr, n_va = int(r["n_train"]), int(r["n_val"])
    with deterministic(THREADS):
        data = load_synthetic(n_tr + n_va, int(r["world_seed"]), size, desc="demo world")
        tr, va = data.subset(range(n_tr)), data.subset(range(n_tr, n_tr + n_va))
        desc = {"data": f"synthetic:{r['world_seed']}", "kind": "synthetic",
                "world_seed": r["world_seed"], "n_train": n_tr, "n_val": n_va}
        common = {"encoder": r["encoder"], "input_size": size, "seed": int(r["seed"]),
                  "data": f"synthetic:{r['world_seed']}", "limit": n_tr, "val": n_va}
        stages = []
        p = r["pretrain"]
        cfg = TrainConfig(task="recognition", weights="none", variant="finetune-all",
                          **common, **{k: v for k, v in p.items()})
        stages.append(("pretrained", cfg))
        pre = str(demo_file("pretrained", out))
        for v in ("frozen", "finetune-last", "finetune-all"):
            s = dict(r[v])
            stages.append((v, TrainConfig(task="saliency", weights=pre, variant=v, **common,
                                          **s)))
        s = dict(r["scene"])
        variant = s.pop("variant", "finetune-last")
        stages.append(("scene", TrainConfig(task="scene", weights=pre, variant=variant,
                                            **common, **s)))
        for name, cfg in stages:
            log.info(f"demo model {name}: {cfg.task}, {cfg.variant}, {cfg.epochs} epochs")
            path = demo_file(name, out)
            for stale in (path, Path(str(path) + ".resume.pt")):
                stale.unlink(missing_ok=True)
            train(cfg, path, data=(tr, va, desc), plot=False, save_dtype=torch.float16,
                  metadata={"variant": name, "demo": True, "recipe": r,
                            "weights_source": "demo-pretrained" if name != "pretrained"
                            else "none (trained from scratch on the synthetic world)"})
            Path(str(path) + ".resume.pt").unlink(missing_ok=True)
            canonical(path, weights="demo-pretrained" if name != "pretrained" else None)
    manifest = {"recipe": r, "threads": THREADS, "versions": versions(),
                "files": {f"demo-{v}.pt": sha256_file(demo_file(v, out)) for v in VARIANTS}}
    write_json(out / "MANIFEST.json", manifest)
    return manifest


def canonical(path: Path, weights: str | None = None) -> None:
    """Re-serialise a checkpoint through memory so that its bytes depend on its content only.

    ``torch.save`` to a file names the zip archive's root folder after the file, and the atomic
    writer saves under a random temporary name; saving to a buffer uses the fixed name
    ``archive``.  ``weights`` replaces the (folder-dependent) path of the pretrained encoder in
    the recorded training configuration.
    """
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if weights is not None:
        obj["metadata"]["train_config"]["weights"] = weights
    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_open(path, "wb") as fh:
        fh.write(buf.getvalue())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neuroprobe.train.demo",
                                     description="rebuild or check the built-in demo models")
    parser.add_argument("--rebuild", action="store_true", help="train the demo models")
    parser.add_argument("--check", action="store_true",
                        help="rebuild into a temporary folder and compare sha256 with the "
                        "shipped MANIFEST.json")
    parser.add_argument("--out", default=None, help=f"output folder (default {SHIPPED})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")   # progress lines on stderr
    if not (args.rebuild or args.check):
        parser.print_help()
        return 2
    if args.rebuild:
        m = rebuild(Path(args.out) if args.out else SHIPPED)
        for name, sha in m["files"].items():
            print(f"{sha}  {name}")
    if args.check:
        want = json.loads((SHIPPED / "MANIFEST.json").read_text())["files"]
        with tempfile.TemporaryDirectory() as tmp:
            got = rebuild(Path(tmp))["files"]
        bad = [n for n in want if want[n] != got.get(n)]
        for n in want:
            print(f"{'OK  ' if n not in bad else 'DIFF'} {n} {got.get(n)}")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
