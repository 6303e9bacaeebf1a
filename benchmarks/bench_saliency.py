"""Saliency benchmarks: all metrics in both protocols on OSIE, classical models at 800x600.

Targets (issue 6): all metrics in both protocols for the 700 OSIE images in at most 30 s on the
project's 2-core machine; each classical model at least 20 images/s at 800x600.
Uses the real OSIE data in ``../shared/data/osie`` where present, otherwise synthetic fixations.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

OSIE = Path(__file__).resolve().parents[2] / "shared" / "data" / "osie"


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


def run(quick: bool = False) -> list[dict]:
    from neuroprobe.saliency import classical as C
    from neuroprobe.saliency import metrics as M

    results = []
    n = 100 if quick else 700
    fixes, source = _fixations(n)
    n = len(fixes)
    smap = C.image_signature(_images(1)[0])  # one real, non-trivial map reused for every image
    t0 = time.perf_counter()
    rows = M.evaluate_batch(lambda i: smap, fixes, M.PROTOCOLS, M.METRICS)
    dt = time.perf_counter() - t0
    assert len(rows) == 2 * n
    results.append({"benchmark": "saliency metrics, all 8, mit+exact",
                    "config": f"{n} {source} images 800x600 (incl. ground-truth blurs)",
                    "value": dt * 700 / n, "unit": "s per 700 images",
                    "target": "<= 30 s for the 700 OSIE images"})
    imgs = _images(5 if quick else 20)
    for name, fn in C.MODELS.items():
        fn(imgs[0])
        t0 = time.perf_counter()
        for im in imgs:
            fn(im)
        dt = time.perf_counter() - t0
        results.append({"benchmark": f"classical model {name}", "config": f"{len(imgs)} images "
                        "800x600 uint8", "value": len(imgs) / dt, "unit": "images/s",
                        "target": ">= 20 images/s at 800x600"})
    return results


if __name__ == "__main__":  # pragma: no cover
    for r in run(quick=False):
        print(f"{r['benchmark']:<40} {r['config']:<50} {r['value']:8.2f} {r['unit']}")
