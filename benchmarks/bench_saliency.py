"""Saliency benchmarks: all metrics in both protocols on OSIE, classical models at 800x600.

Targets (issue 6): all metrics in both protocols for the 700 OSIE images in at most 30 s on the
project's 2-core machine; each classical model at least 20 images/s at 800x600.
Uses the real OSIE data in ``../shared/data/osie`` where present, otherwise synthetic fixations.

Each row carries ``baseline``: the same work done by the implementation before the speed-up
(``neuroprobe/saliency/{metrics,classical}.py`` at commit :data:`BASELINE_COMMIT`, loaded from git
in the same run), and ``ratio`` = new speed / baseline speed.  Without git or that commit the
rows have no baseline.  The load average at the start and end of the run is in ``config``
(the machine is shared, so absolute figures move with the load; the ratio much less).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

OSIE = Path(__file__).resolve().parents[2] / "shared" / "data" / "osie"
REPO = Path(__file__).resolve().parents[1]
BASELINE_COMMIT = "0789f09230144e692b4fc2b25606e2ae21c24e80"


def _fixations(n: int):
    from neuroprobe.saliency.fixations import Fixations

    if (OSIE / "fixations.mat").is_file():
        from neuroprobe.saliency.data import load_osie

        return load_osie(OSIE).fixations[:n], "OSIE"
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        k = 140
        out.append(Fixations(f"{i}.jpg", rng.normal(400, 150, k).clip(0, 799),
                             rng.normal(300, 100, k).clip(0, 599), np.arange(k) % 15,
                             size=(600, 800)))
    return out, "synthetic"


def _images(n: int):
    if (OSIE / "stimuli").is_dir():
        from skimage.io import imread

        files = sorted((OSIE / "stimuli").glob("*.jpg"))[:n]
        return [imread(str(f)) for f in files]
    rng = np.random.default_rng(1)
    return [(rng.random((600, 800, 3)) * 255).astype(np.uint8) for _ in range(n)]


def _baseline_module(name: str):
    """``neuroprobe.saliency.<name>`` as it was at BASELINE_COMMIT, or None."""
    try:
        src = subprocess.run(["git", "-C", str(REPO), "show",
                              f"{BASELINE_COMMIT}:neuroprobe/saliency/{name}.py"],
                             capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    mod = types.ModuleType(f"neuroprobe.saliency._baseline_{name}")
    mod.__package__ = "neuroprobe.saliency"
    sys.modules[mod.__name__] = mod
    exec(compile(src, f"{BASELINE_COMMIT[:7]}:{name}.py", "exec"), mod.__dict__)
    return mod


def _load() -> str:
    try:
        return "load %.1f" % os.getloadavg()[0]
    except OSError:  # pragma: no cover
        return "load ?"


def _time(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def run(quick: bool = False) -> list[dict]:
    from neuroprobe.saliency import classical as C
    from neuroprobe.saliency import metrics as M

    old_m, old_c = _baseline_module("metrics"), _baseline_module("classical")
    results = []
    n = 60 if quick else 700
    n_base = 30 if quick else 100  # the baseline is slow: time it on a prefix, scale per image
    fixes, source = _fixations(n)
    n = len(fixes)
    imgs = _images(3)
    maps = [C.image_signature(imgs[0]), C.itti_koch(imgs[1]), C.spectral_residual(imgs[2])]

    def new_metrics(k):
        rows = M.evaluate_batch(lambda i: maps[i % 3], fixes[:k], M.PROTOCOLS, M.METRICS)
        assert len(rows) == 2 * k

    def old_metrics(k):
        old_m.evaluate_batch(lambda i: maps[i % 3], fixes[:k], old_m.PROTOCOLS, old_m.METRICS)

    load0 = _load()
    wall, cpu = _time(lambda: new_metrics(n))
    row = {"benchmark": "saliency metrics, all 8, mit+exact",
           "config": f"{n} {source} images 800x600 (incl. ground-truth blurs); "
                     f"{load0}->{_load()}; CPU {cpu * 700 / n:.1f} s",
           "value": wall * 700 / n, "unit": "s per 700 images",
           "target": "<= 30 s for the 700 OSIE images"}
    if old_m is not None:
        bw, _ = _time(lambda: old_metrics(min(n, n_base)))
        row["baseline"] = bw * 700 / min(n, n_base)
        row["ratio"] = row["baseline"] / row["value"]
    results.append(row)

    imgs = _images(5 if quick else 20)
    for name, fn in C.MODELS.items():
        old_fn = getattr(old_c, "MODELS", {}).get(name) if old_c is not None else None
        fn(imgs[0])
        load0 = _load()
        wall, cpu = _time(lambda: [fn(im) for im in imgs])
        row = {"benchmark": f"classical model {name}",
               "config": f"{len(imgs)} images 800x600 uint8; {load0}; CPU "
                         f"{len(imgs) / cpu:.1f} img/s",
               "value": len(imgs) / wall, "unit": "images/s",
               "target": ">= 20 images/s at 800x600"}
        if old_fn is not None:
            old_fn(imgs[0])
            bw, _ = _time(lambda: [old_fn(im) for im in imgs])
            row["baseline"] = len(imgs) / bw
            row["ratio"] = row["value"] / row["baseline"]
        results.append(row)
    return results


if __name__ == "__main__":  # pragma: no cover
    for r in run(quick="--quick" in sys.argv):
        extra = f"  baseline {r['baseline']:.2f} ratio {r['ratio']:.2f}" if "baseline" in r else ""
        print(f"{r['benchmark']:<36} {r['value']:8.2f} {r['unit']:<18}{extra}  [{r['config']}]")
