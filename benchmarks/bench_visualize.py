"""Speed of activation maximization and of gallery generation.

* Activation maximization: units per second for 256 steps at 128x128 (Fourier parameterization,
  decorrelated colour, the standard transforms), ``encoder.block4`` of the small saliency model
  (the demo architecture; random weights cost the same), 32 units per batch; on the CPU, and on
  the GPU when one is visible.
* Gallery generation for 512 units (``encoder.layer3`` and ``layer4`` of a ResNet-18 saliency
  model, random weights) of a run over 64 synthetic images: top images, per-unit cards with outlined regions, a gradient
  attribution per unit and the HTML report -- on the CPU; target <= 2 minutes.  The maximization
  images are left out of this row (``--steps 0``): their cost is the first row's units/s.

Set ``NEUROPROBE_BENCH_THREADS`` to choose torch's CPU threads (default: torch's own).
"""
from __future__ import annotations

import csv
import json
import os
import tempfile
import time
from pathlib import Path

import torch


def _threads():
    n = os.environ.get("NEUROPROBE_BENCH_THREADS")
    if n:
        torch.set_num_threads(int(n))
    return torch.get_num_threads()


def _am_rate(model, device, units: int, steps: int, size: int) -> float:
    from neuroprobe.visualize import maximize as am

    model = model.to(device)
    am.maximize_units(model, "encoder.block4", list(range(2)), size=size, steps=2)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    am.maximize_units(model, "encoder.block4", list(range(units)), size=size, steps=steps,
                      batch_size=32)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return units / (time.perf_counter() - t0)


def _gallery_seconds(quick: bool) -> tuple[float, int]:
    from neuroprobe.concepts import open_concepts
    from neuroprobe.models import build_saliency
    from neuroprobe.visualize.gallery import make_gallery

    torch.manual_seed(0)
    model = build_saliency("resnet18").eval()   # layer3 + layer4 = 512 units
    n_img = 16 if quick else 64
    data = open_concepts("synthetic", n=n_img, image_size=112, mask_size=56)
    from neuroprobe.hooks import record

    candidates = ["encoder.layer4", "encoder.layer3", "encoder.layer2", "encoder.layer1"]
    with torch.no_grad():
        widths = {k: v.shape[1] for k, v in record(model, torch.zeros(1, 3, 112, 112),
                                                    candidates).items()}
    want, plan = (64 if quick else 512), []
    for layer in candidates:          # the deepest layers first, until 512 units
        take = min(widths[layer], want - sum(n for _, n in plan))
        if take > 0:
            plan.append((layer, take))
    with tempfile.TemporaryDirectory(prefix="np-bench-gallery-") as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        with open(run / "units.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["layer", "unit", "label", "category", "score", "threshold", "detector"])
            for layer, n in plan:
                for u in range(n):
                    w.writerow([layer, u, f"concept {u % 17}", "object", (u % 50) / 100, "",
                                1])
        (run / "summary.json").write_text(json.dumps({"config": {
            "model": {"spec": "bench"}, "concepts": {"name": "synthetic", "n": n_img},
            "mode": "netdissect", "score": "iou", "iou_threshold": 0.04}}))
        t0 = time.perf_counter()
        res = make_gallery(run, model=model, dataset=data, top_k=6, maximize_steps=0,
                           attribution="gradient", tile=96, show_progress=False)
        seconds = time.perf_counter() - t0
    return seconds, len(res.pngs)


def run(quick: bool = False) -> list[dict]:
    from neuroprobe.models import build_saliency

    threads = _threads()
    rows = []
    torch.manual_seed(0)
    model = build_saliency("small").eval()
    steps, size = (32, 64) if quick else (256, 128)
    units = 8 if quick else 32
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available()
                                       else [])
    for dev in devices:
        n = units if dev.type == "cpu" else (64 if quick else 256)
        rate = _am_rate(model, dev, n, steps, size)
        where = "CPU %d threads" % threads if dev.type == "cpu" else torch.cuda.get_device_name(0)
        rows.append({"benchmark": "activation maximization",
                     "config": f"small saliency encoder.block4, {n} units, {steps} steps, "
                               f"{size}px, fourier, {where}",
                     "value": rate, "unit": "units/s", "target": "report (no target)"})
    seconds, count = _gallery_seconds(quick)
    rows.append({"benchmark": "gallery generation",
                 "config": f"{count} units of resnet18 saliency, {16 if quick else 64} synthetic images 112px, top-6, gradient "
                           f"attribution, no maximization, CPU {threads} threads",
                 "value": seconds, "unit": "s", "target": "<= 120 s for 512 units on CPU"})
    return rows
