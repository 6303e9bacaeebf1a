"""Evaluate trained saliency models against the centre-bias and classical baselines.

``python -m neuroprobe.train.evaluate --osie [DIR] --out FOLDER`` trains a frozen-encoder saliency
model on OSIE's first 500 images (sorted by name) and evaluates it, at the original 800x600
resolution, on the other 200 with :func:`neuroprobe.saliency.metrics.evaluate_batch`, next to the
centre bias and the classical models of :mod:`neuroprobe.saliency.classical`.  It writes
``osie_eval.json`` (configuration, versions, per-model means) and ``osie_eval.md`` (the table).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..imageio import read_image
from ..io import write_json, write_text
from ..saliency.classical import get_model
from ..saliency.metrics import evaluate_batch, ground_truths
from ..utils import versions
from .data import load_osie
from .recipe import TrainConfig, build_model, fit, predict

log = logging.getLogger(__name__)

EVAL_METRICS = ("auc_judd", "sauc", "nss", "cc", "kl", "sim")


def model_maps(model, data, batch_size: int = 16):
    """``i -> map`` at the original image size (bilinear upsampling of the model's output)."""
    maps = predict(model, data, batch_size, desc="saliency maps")

    def get(i):
        size = data.original[i].size
        m = F.interpolate(maps[i][None, None].double(), size=size, mode="bilinear",
                          align_corners=False)[0, 0]
        return m.numpy()

    return get


def classical_maps(name: str, data):
    """``i -> map`` of a classical model on the original image."""

    fn = get_model(name)

    def get(i):
        if name.startswith("centre"):
            return fn(tuple(data.original[i].size))
        return fn(read_image(data.paths[i]))

    return get


def evaluate_models(models: dict, data, protocols=("mit",), metrics=EVAL_METRICS,
                    seed: int = 0) -> dict:
    """Mean (and standard error) of each metric for each ``name -> (i -> map)``; every model
    shares the same ground truths (computed once)."""
    gts = ground_truths(data.original)
    out = {}
    for name, get in models.items():
        t0 = time.time()
        rows = evaluate_batch(get, gts, protocols, metrics, seed=seed, progress=True)
        res = {}
        for p in protocols:
            sel = [r for r in rows if r["protocol"] == p]
            res[p] = {m: {"mean": float(np.nanmean([r[m] for r in sel])),
                          "sem": float(np.nanstd([r[m] for r in sel], ddof=1)
                                       / np.sqrt(max(len(sel), 1)))} for m in metrics}
        out[name] = res
        log.info(f"{name}: " + ", ".join(f"{m}={res[protocols[0]][m]['mean']:.3f}"
                                     for m in metrics) + f" ({time.time() - t0:.0f} s)")
    return out


def table(results: dict, protocol: str, metrics=EVAL_METRICS) -> str:
    head = "| model | " + " | ".join(metrics) + " |"
    lines = [head, "|" + "---|" * (len(metrics) + 1)]
    for name, res in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{res[protocol][m]['mean']:.3f}"
                                                 for m in metrics) + " |")
    return "\n".join(lines)


def run_osie(root: str | None, out: Path, *, encoder: str = "small", weights: str = "demo",
             epochs: int = 5, input_size=(224, 224), lr: float = 5e-3, batch_size: int = 5,
             classical=("centre", "spectral", "signature", "itti"), protocols=("mit",),
             train_limit: int | None = None, test_limit: int | None = None) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train_set, test_set = load_osie(root, input_size, limit=train_limit)
    if test_limit:
        test_set = test_set.subset(range(min(test_limit, len(test_set))))
    cfg = TrainConfig(task="saliency", encoder=encoder, weights=weights, variant="frozen",
                      data=f"osie:{root}" if root else "osie", epochs=epochs, lr=lr,
                      batch_size=batch_size, input_size=tuple(input_size), limit=train_limit)
    model, arch = build_model(cfg)
    # validate on a few training-split images only: the 200 test images stay unseen
    summary = fit(model, arch, cfg, train_set, None, out / f"osie-{encoder}-frozen.pt",
                  metadata={"data": {"data": "osie", "n_train": len(train_set)}})
    t_train = time.time() - t0
    models = {f"{encoder} ({weights}) frozen, trained on OSIE {len(train_set)}":
              model_maps(model, test_set)}
    for name in classical:
        models[name] = classical_maps(name, test_set)
    results = evaluate_models(models, test_set, protocols)
    report = {"config": cfg.to_dict(), "n_train": len(train_set), "n_test": len(test_set),
              "protocols": list(protocols), "metrics": list(EVAL_METRICS),
              "train_seconds": round(t_train, 1), "total_seconds": round(time.time() - t0, 1),
              "history": summary["history"], "results": results, "versions": versions()}
    write_json(out / "osie_eval.json", report)
    md = [f"OSIE: trained on images 1-{len(train_set)} (sorted), evaluated on "
          f"{len(test_set)} others at 800x600; protocol {p}.\n\n" + table(results, p)
          for p in protocols]
    write_text(out / "osie_eval.md", "\n\n".join(md) + "\n")
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neuroprobe.train.evaluate",
                                     description="train a frozen-encoder saliency model on OSIE "
                                     "and compare it with the baselines")
    parser.add_argument("--osie", nargs="?", const="", default="", help="OSIE folder")
    parser.add_argument("--out", default="osie-eval")
    parser.add_argument("--encoder", default="small")
    parser.add_argument("--weights", default="demo")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--classical", default="centre,spectral,signature,itti")
    parser.add_argument("--protocols", default="mit")
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--train-limit", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")   # progress lines on stderr
    torch.manual_seed(0)
    report = run_osie(args.osie or None, Path(args.out), encoder=args.encoder,
                      weights=args.weights, epochs=args.epochs, lr=args.lr,
                      input_size=(args.input_size, args.input_size),
                      classical=[c for c in args.classical.split(",") if c],
                      protocols=tuple(args.protocols.split(",")),
                      test_limit=args.test_limit, train_limit=args.train_limit)
    for p in report["protocols"]:
        print(table(report["results"], p))
    print(f"total {report['total_seconds']} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
