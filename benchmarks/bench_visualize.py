"""Speed of galleries and of activation maximization (issue 16).

Every timed command runs in a fresh child process (``python -m neuroprobe ...``: imports, model
loading, data reading, cards, report), with wall time and CPU time (user + system) of the child;
each row's baseline is a bare forward+backward loop measured in the same run, in a child too.

* ``gallery/demo-detectors``: ``neuroprobe gallery RUN --detectors-only`` on the demo run
  (``neuroprobe dissect`` with no arguments: 22 detector units of the 128 px demo model),
  maximization included (defaults: step budget 256, each unit stops at its threshold), integrated
  gradients on each unit's best image.  Also reported: how many units reached their threshold.
  Baseline: 64 forward+backward steps of a batch of 22 images of 128 px through the demo model
  (the loop a fixed-length maximization of those units would run, without transforms).
  Target: <= 60 s on the 2-core machine.
* ``gallery/resnet18-layer4-512``: ``neuroprobe gallery RUN --steps 0`` (the default attribution,
  ``auto``: on the CPU, 512 units are past the integrated-gradients budget, so input x gradient)
  for the 512 units of ``net.layer4`` of ``torchvision:resnet18?weights=none`` (seed 0) on a
  dissection of a generated Broden-format folder (:mod:`benchmarks.broden_data`, 224 px).
  Baseline: a forward+backward pass of 512 images of 224 px through the model, batch 32 (the
  floor of one gradient attribution per unit).  Target: <= 120 s on the 2-core machine.
* ``activation maximization``: units per second of :func:`maximize_units` without thresholds
  (a fixed step count), for orientation.

Set ``NEUROPROBE_BENCH_THREADS`` to choose torch's CPU threads, here and in the children
(``OMP_NUM_THREADS``; default: torch's own).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESNET = "torchvision:resnet18?weights=none"

_LOOP = r"""
import json, sys, time, torch
cfg = json.loads(sys.argv[1])
torch.manual_seed(0)
from neuroprobe.models import load
from neuroprobe.hooks import Recorder
model, _ = load(cfg["model"])
model.eval()
for p in model.parameters():
    p.requires_grad_(False)
def step(n):
    x = torch.rand(n, 3, cfg["size"], cfg["size"], requires_grad=True)
    with Recorder(model, [cfg["layer"]], detach=False, clone=False, stop=True) as rec:
        model(x)
    rec[cfg["layer"]].sum().backward()
step(2)
t0 = time.perf_counter()
for _ in range(cfg["steps"]):
    n = cfg["images"]
    while n > 0:
        step(min(n, cfg["batch"]))
        n -= cfg["batch"]
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


def _threads():
    n = os.environ.get("NEUROPROBE_BENCH_THREADS")
    if n:
        torch.set_num_threads(int(n))
    return torch.get_num_threads()


def _load() -> str:
    try:
        return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:   # pragma: no cover
        return "load unknown"


def _child(args: list[str], cache: Path) -> tuple[float, float, str]:
    """Run ``python ARGS``; returns (wall seconds, CPU seconds of the child, stdout)."""
    env = {**os.environ, "NEUROPROBE_CACHE": str(cache), "NEUROPROBE_QUIET": "1"}
    if os.environ.get("NEUROPROBE_BENCH_THREADS"):
        env["OMP_NUM_THREADS"] = os.environ["NEUROPROBE_BENCH_THREADS"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(f"benchmark child {args[:3]} failed: {proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def _loop(cache: Path, **cfg) -> tuple[float, float]:
    wall, cpu, out = _child(["-c", _LOOP, json.dumps(cfg)], cache)
    return json.loads(out.strip().splitlines()[-1])["seconds"], cpu


def _demo(tmp: Path, quick: bool) -> list[dict]:
    cache = tmp / "cache"
    run = tmp / "demo"
    _child(["-m", "neuroprobe", "--quiet", "dissect", "--out", str(run)], cache)
    steps = ["--steps", "32"] if quick else []
    wall, cpu, _ = _child(["-m", "neuroprobe", "--quiet", "gallery", str(run),
                           "--detectors-only", *steps], cache)
    units = json.loads((run / "gallery" / "gallery.json").read_text())["units"]
    reached = sum(1 for u in units if u["reached_threshold"])
    most = max(u["maximization_steps"] for u in units)
    loop_steps = 8 if quick else 64
    base, _ = _loop(cache, model="demo", layer="encoder.block4", size=128, images=22,
                    batch=22, steps=loop_steps)
    return [{"benchmark": "gallery/demo-detectors",
             "config": f"neuroprobe gallery RUN --detectors-only{' --steps 32' if quick else ''}"
                       f" (demo run, {len(units)} units, maximization + integrated gradients); "
                       f"{reached}/{len(units)} units reached their threshold (slowest: {most} "
                       f"steps); CPU time of the command {cpu:.0f} s; {_load()}",
             "value": wall, "unit": "s", "baseline": base, "ratio": wall / base,
             "target": f"<= 60 s; >= 80% of units reach threshold (baseline: {loop_steps} "
                       "fwd+bwd steps of 22 images 128 px, demo model)"}]


def _resnet(tmp: Path, quick: bool) -> list[dict]:
    from .broden_data import make_broden

    cache = tmp / "cache"
    n = 40 if quick else 200
    root = make_broden(tmp / "broden", n=n, size=224)
    run = tmp / "resnet"
    _child(["-m", "neuroprobe", "--quiet", "dissect", "--model", RESNET, "--concepts", "broden",
            "--root", str(root), "--layers", "net.layer4", "--out", str(run)], cache)
    units = ["--max-units", "64"] if quick else []
    wall, cpu, _ = _child(["-m", "neuroprobe", "--quiet", "gallery", str(run), "--steps", "0",
                           *units], cache)
    meta = json.loads((run / "gallery" / "gallery.json").read_text())
    count, method = len(meta["units"]), meta["config"]["attribution"]
    base, _ = _loop(cache, model=RESNET, layer="net.layer4", size=224, images=count, batch=32,
                    steps=1)
    return [{"benchmark": "gallery/resnet18-layer4-512",
             "config": f"neuroprobe gallery RUN --steps 0 (attribution auto -> {method}; {count} units "
                       f"of resnet18 net.layer4, random weights seed 0, {n} Broden-format 224 px "
                       f"images, top-8); CPU time of the command {cpu:.0f} s; {_load()}",
             "value": wall, "unit": "s", "baseline": base, "ratio": wall / base,
             "target": f"<= 120 s for 512 units (baseline: fwd+bwd of {count} images 224 px to "
                       "layer4, batch 32)"}]


def _am_rate(quick: bool, threads: int) -> dict:
    from neuroprobe.models import build_saliency
    from neuroprobe.visualize import maximize as am

    torch.manual_seed(0)
    model = build_saliency("small").eval()
    steps, size, units = (16, 64, 8) if quick else (64, 128, 32)
    am.maximize_units(model, "encoder.block4", [0, 1], size=size, steps=2)   # warm-up
    t0 = time.perf_counter()
    am.maximize_units(model, "encoder.block4", list(range(units)), size=size, steps=steps,
                      batch_size=32, objective="peak", relu_redirect=True)
    rate = units / (time.perf_counter() - t0)
    return {"benchmark": "activation maximization",
            "config": f"small saliency encoder.block4, {units} units in one batch, {steps} steps "
                      f"(no threshold stop), {size}px, fourier, peak objective, CPU {threads} "
                      f"threads; {_load()}",
            "value": rate, "unit": "units/s", "target": "report (no target)"}


def run(quick: bool = False) -> list[dict]:
    threads = _threads()
    with tempfile.TemporaryDirectory(prefix="np-bench-visualize-") as tmp:
        tmp = Path(tmp)
        rows = _demo(tmp, quick) + _resnet(tmp, quick)
    rows.append(_am_rate(quick, threads))
    return rows


if __name__ == "__main__":  # pragma: no cover
    for row in run(quick="--quick" in sys.argv):
        print(row)
