"""Saliency benchmarks: all metrics in both protocols on OSIE, classical models at 800x600.

Targets: all metrics in both protocols for the 700 OSIE images in at most 30 s on the project's
2-core machine (issue 6) and at least 5x faster than pysaliency's six metrics (AUC, sAUC, NSS,
CC, KL, SIM) in one protocol on the same images and maps (issue 20); each classical model at
least 20 images/s at 800x600.  Uses the real OSIE data in ``../shared/data/osie`` where present,
otherwise synthetic fixations.

Baselines, each measured in the same run: the implementation before the first speed-up
(``neuroprobe/saliency/{metrics,classical}.py`` at commit :data:`BASELINE_COMMIT`), the one
before the ground-truth sharing of issue 20 (:data:`BEFORE_COMMIT`; its ``metrics.py`` is the
single-module version), both loaded from git; and pysaliency (``pip install pysaliency``, run
the benchmark with that interpreter) where it is importable, through its model API with a
cached ``FixationMap`` ground truth, as a user would call it.  ``ratio`` = baseline time / new
time.  Without git, the commit or pysaliency, the row says so.  Wall and CPU seconds are both
given: the machine is shared, so wall time moves with the load; CPU time much less.
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
BEFORE_COMMIT = "63bfe9a"  # metrics.py before issue 20 (ground truth shared, one sort)


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


def _baseline_module(name: str, commit: str = BASELINE_COMMIT):
    """``neuroprobe.saliency.<name>`` as it was at ``commit``, or None."""
    try:
        src = subprocess.run(["git", "-C", str(REPO), "show",
                              f"{commit}:neuroprobe/saliency/{name}.py"],
                             capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    mod = types.ModuleType(f"neuroprobe.saliency._baseline_{name}_{commit[:7]}")
    mod.__package__ = "neuroprobe.saliency"
    sys.modules[mod.__name__] = mod
    exec(compile(src, f"{BASELINE_COMMIT[:7]}:{name}.py", "exec"), mod.__dict__)
    return mod


def _pysaliency_six(fixes, maps):
    """Callable running pysaliency's six metrics (AUC, sAUC, NSS, CC, KL, SIM) over ``fixes``
    with ``maps[i % len(maps)]`` as image ``i``'s map, or None where pysaliency is missing.

    The stimuli are blank images of each image's size (marked with their index so that their
    content hashes differ); the model returns the precomputed map (no caching: the map costs
    nothing); the ground truth of CC, KL and SIM is pysaliency's ``FixationMap`` blurred with
    the same sigma as neuroprobe's (cached by pysaliency, so built once per image).  Fixations
    are given at their pixels (``round(x)``, which pysaliency's ``x_int`` keeps).
    """
    try:
        import pysaliency
    except ImportError:
        return None
    from neuroprobe.saliency.metrics import mit_sigma

    class Precomputed(pysaliency.SaliencyMapModel):
        def __init__(self):
            super().__init__(caching=False)

        def _saliency_map(self, stimulus):
            return maps[int(stimulus[0, 0]) + 256 * int(stimulus[0, 1])]

    stims, xs, ys, ns = [], [], [], []
    for i, f in enumerate(fixes):
        st = np.zeros(f.size, dtype=np.uint8)
        st[0, 0], st[0, 1] = (i % len(maps)) % 256, (i % len(maps)) // 256
        st[1, 0], st[1, 1] = i % 256, i // 256  # a distinct content hash per image
        stims.append(st)
        xs.append(np.round(f.x))
        ys.append(np.round(f.y))
        ns.append(np.full(len(f.x), i))
    stimuli = pysaliency.Stimuli(stims)
    fixations = pysaliency.Fixations.create_without_history(
        np.concatenate(xs), np.concatenate(ys), np.concatenate(ns).astype(int))
    sigma = mit_sigma(fixes[0].size)

    def run():
        model = Precomputed()
        gold = pysaliency.FixationMap(stimuli, fixations, kernel_size=sigma)
        return [model.AUCs(stimuli, fixations, nonfixations="uniform"),
                model.AUCs(stimuli, fixations, nonfixations="shuffled"),
                model.NSSs(stimuli, fixations), model.CCs(stimuli, gold),
                model.image_based_kl_divergences(stimuli, gold), model.SIMs(stimuli, gold)]

    return run


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


def _metric_rows(M, old_m, fixes, maps, n, n_base, source, before=True) -> list[dict]:
    """All metrics in both protocols against the earlier implementations (``before=False``:
    without the one at :data:`BEFORE_COMMIT`) and pysaliency."""
    def batch(mod, k):
        rows = mod.evaluate_batch(lambda i: maps[i % 3], fixes[:k], mod.PROTOCOLS, mod.METRICS)
        assert len(rows) == 2 * k

    scale = 700 / n
    load0 = _load()
    wall, cpu = _time(lambda: batch(M, n))
    new = {"benchmark": "saliency metrics, all 8, mit+exact",
           "config": f"{n} {source} images 800x600 (incl. ground-truth blurs); "
                     f"{load0}->{_load()}; CPU {cpu * scale:.1f} s",
           "value": wall * scale, "cpu": cpu * scale, "unit": "s per 700 images",
           "target": "<= 30 s; >= 5x pysaliency's six"}
    rows = [new]
    if old_m is not None:
        k = min(n, n_base)
        bw, _ = _time(lambda: batch(old_m, k))
        new["baseline"] = bw * 700 / k
        new["ratio"] = new["baseline"] / new["value"]
    before = _baseline_module("metrics", BEFORE_COMMIT) if before else None
    if before is not None:
        bw, bc = _time(lambda: batch(before, n))
        rows.append({"benchmark": f"  same, metrics.py at {BEFORE_COMMIT} (before)",
                     "config": f"CPU {bc * scale:.1f} s; CPU ratio {bc / cpu:.2f}",
                     "value": bw * scale, "cpu": bc * scale, "unit": "s per 700 images",
                     "baseline": bw * scale, "ratio": bw / wall})
    six = _pysaliency_six(fixes[:n], maps)
    if six is None:
        rows.append({"benchmark": "  pysaliency six metrics, one protocol",
                     "config": "pysaliency not importable: compare with the 85 s of issue 20",
                     "value": float("nan"), "unit": "s per 700 images"})
        return rows
    pw, pc = _time(six)
    rows.append({"benchmark": "  pysaliency six metrics, one protocol",
                 "config": f"CPU {pc * scale:.1f} s; CPU ratio {pc / cpu:.2f}",
                 "value": pw * scale, "cpu": pc * scale, "unit": "s per 700 images",
                 "baseline": pw * scale, "ratio": pw / wall, "target": "ratio >= 5"})
    return rows


def _data(n: int):
    from neuroprobe.saliency import classical as C

    fixes, source = _fixations(n)
    imgs = _images(3)
    maps = [C.image_signature(imgs[0]), C.itti_koch(imgs[1]), C.spectral_residual(imgs[2])]
    return fixes, source, maps


def run_pysaliency(quick: bool = False) -> list[dict]:
    """Only neuroprobe's full evaluation and pysaliency's six metrics, on the same 700 images and
    maps in one process (``python benchmarks/bench_saliency.py --pysaliency``): the issue-20
    ratio without the slow earlier implementations."""
    from neuroprobe.saliency import metrics as M

    fixes, source, maps = _data(60 if quick else 700)
    return _metric_rows(M, None, fixes, maps, len(fixes), 0, source, before=False)


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

    results += _metric_rows(M, old_m, fixes, maps, n, n_base, source)

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
    sys.path.insert(0, str(REPO))
    bench = run_pysaliency if "--pysaliency" in sys.argv else run
    for r in bench(quick="--quick" in sys.argv):
        extra = f"  baseline {r['baseline']:.2f} ratio {r['ratio']:.2f}" if "baseline" in r else ""
        print(f"{r['benchmark']:<36} {r['value']:8.2f} {r['unit']:<18}{extra}  [{r['config']}]")
