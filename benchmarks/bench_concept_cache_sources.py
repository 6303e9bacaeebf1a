"""The concept-set cache on COCO and EyeCrowd (issue 20): labels per second from the cache
against decoding them, and the whole ``neuroprobe dissect --model demo --concepts eyecrowd``
command with a warm cache against ``--no-cache`` (runs alternated in one session; the output
files of both are compared byte for byte).

Needs ``../shared/data/eyecrowd`` (and ``coco-sample`` for its rows); a private cache folder in
a temporary directory is used, so nothing of the user's cache is touched.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]
OUTPUTS = ("units.csv", "region_nss.csv", "scores.npz", "top_images.npz")


def _label_rates(ds, name: str, reps: int) -> list[dict]:
    """Cold build time, then labels/s decoded from the files and read from the cache."""
    t0 = time.perf_counter()
    cache = ds.prepare_labels(progress=False)
    build = time.perf_counter() - t0
    n = len(ds)
    t0 = time.perf_counter()
    for k in range(reps):
        ds.decode_labels(k % n)
    decode = reps / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for k in range(reps):
        assert ds.cached_labels(k % n) is not None
    cached = reps / (time.perf_counter() - t0)
    return [
        {"benchmark": f"{name}_cache_build", "config": f"{n} images, cold",
         "value": build, "unit": "s",
         "target": f"informative; {cache.disk_bytes() / 1e6:.1f} MB on disk, "
                   f"{cache.decoded_bytes() / 1e6:.1f} MB as int64 masks"},
        {"benchmark": f"{name}_labels_cached", "config": f"{n} images, one process",
         "value": cached, "unit": "img/s", "baseline": decode, "ratio": cached / decode,
         "target": "informative; baseline = decode_labels from the annotations"},
    ]


def _dissect(root: Path, out: Path, env: dict, cache: bool, limit: int | None) -> float:
    cmd = [sys.executable, "-m", "neuroprobe", "--quiet", "dissect", "--model", "demo",
           "--concepts", "eyecrowd", "--root", str(root), "--out", str(out)]
    cmd += [] if cache else ["--no-cache"]
    cmd += [] if limit is None else ["--limit", str(limit)]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def run(quick: bool = False) -> list[dict]:
    from neuroprobe.concepts import load_spec, open_concepts
    from neuroprobe.concepts.coco import CocoParts

    rows = []
    root = SHARED / "eyecrowd"
    if not (root / "labels.mat").is_file():
        return [{"benchmark": "concept_cache_sources", "config": "skipped", "value": float("nan"),
                 "unit": "", "target": f"no EyeCrowd at {root}"}]
    limit = 24 if quick else None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old = os.environ.get("NEUROPROBE_CACHE")
        os.environ["NEUROPROBE_CACHE"] = str(tmp / "cache")
        try:
            ec = open_concepts("eyecrowd", root=str(root), limit=limit)
            rows += _label_rates(ec, "eyecrowd", 48 if quick else 400)
            coco_json = SHARED / "coco-sample" / "test_coco.json"
            if coco_json.is_file():
                spec = load_spec("coco-parts")
                coco = CocoParts([coco_json], spec["map"], images=coco_json.parent,
                                 head=spec["head"])
                rows += _label_rates(coco, "coco_sample", 16 if quick else 80)
        finally:
            if old is None:
                os.environ.pop("NEUROPROBE_CACHE", None)
            else:
                os.environ["NEUROPROBE_CACHE"] = old
        env = {**os.environ, "NEUROPROBE_CACHE": str(tmp / "cache"),
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        # the cache the command uses, built ahead as a user would (the dissect runs below
        # then find it warm; --limit there only shortens the runs)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "neuroprobe", "--quiet", "concepts", "cache",
                        "eyecrowd", "--root", str(root)], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        rows.append({"benchmark": "eyecrowd_concepts_cache_command",
                     "config": f"{len(open_concepts('eyecrowd', root=str(root)))} images, "
                               "cold, whole command", "value": time.perf_counter() - t0,
                     "unit": "s", "target": "informative"})
        times = {True: [], False: []}
        for k, cache in enumerate((False, True, True, False)):   # alternated: load drifts
            times[cache].append(_dissect(root, tmp / f"out{k}", env, cache, limit))
        same = all((tmp / "out0" / f).read_bytes() == (tmp / f"out{k}" / f).read_bytes()
                   for k in (1, 2, 3) for f in OUTPUTS if (tmp / "out0" / f).exists())
        warm, cold = statistics.median(times[True]), statistics.median(times[False])
        n = limit or len(ec)
        rows.append({"benchmark": "eyecrowd_dissect_warm_cache",
                     "config": f"demo model, {n} images, median of 2 "
                               f"({', '.join(f'{t:.1f}' for t in times[True])} s)",
                     "value": warm, "unit": "s", "baseline": cold, "ratio": cold / warm,
                     "target": "speed-up = ratio; baseline = --no-cache, median of 2 "
                               f"({', '.join(f'{t:.1f}' for t in times[False])} s); "
                               f"outputs byte-identical: {'yes' if same else 'NO'}"})
    return rows
