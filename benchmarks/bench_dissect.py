"""Dissection speed and memory on the CPU (issue 5's measured targets).

resnet18 (random weights; timing does not depend on them), layers layer3 + layer4, netdissect
mode, on Broden-format 224 px images written by the synthetic world's exporter and read back
with the Broden reader:

* ``dissect/cpu-ratio``: end-to-end dissection time vs the forward passes alone over the same
  images through the same reader and loader (target: at most 1.5x);
* ``dissect/peak-rss``: peak resident memory of the dissection at n and 4n images, each in its
  own process (target: under 1 GiB and within 15 % of each other).  The 4n folder lists the n
  exported images four times in its index.csv (same reader work, same per-image cost).  Beside
  it, measured in the same run: the forward-only process, and a process that only imports
  everything and loads the model and the data index (the floor no dissection can go below).
  The peak is the process's own ``VmHWM``: ``ru_maxrss`` of a child starts at its parent's
  peak (the kernel carries the high-water mark over ``fork``/``exec``), so a benchmark parent
  grown past 1 GiB would make every child look as large (``ru_maxrss`` stays in the output).

The exported folder is cached in ``<neuroprobe cache>/bench`` so that reruns skip the export.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

LAYERS = ["net.layer3", "net.layer4"]
MODEL = "torchvision:resnet18?weights=none"
BATCH = 16

_CHILD = r"""
import json, resource, sys, time, torch
from neuroprobe.concepts import open_concepts
from neuroprobe.concepts.base import collate
from neuroprobe.hooks import Recorder
from neuroprobe.models import load
from neuroprobe.dissect import dissect
cfg = json.loads(sys.argv[1])
torch.manual_seed(0)
model, meta = load(cfg["model"])
ds = open_concepts(cfg["concepts"], root=cfg["root"])
t0 = time.perf_counter()
if cfg["what"] == "imports":
    pass   # the floor: interpreter, torch, torchvision, neuroprobe, the model and the data index
elif cfg["what"] == "forward":
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg["batch"], num_workers=cfg["workers"],
                                         collate_fn=collate)
    with torch.no_grad():
        for batch in loader:
            with Recorder(model, cfg["layers"], stop=True) as rec:
                model(batch["image"])
            [rec[n] for n in cfg["layers"]]
else:
    dissect(model, ds, cfg["layers"], batch_size=cfg["batch"], out_dir=cfg["out"],
            num_workers=cfg["workers"], keep="disk", progress=False)
dt = time.perf_counter() - t0
maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
peak = maxrss
try:   # this process's own high-water mark: ru_maxrss starts at the parent's peak (fork/exec)
    with open("/proc/self/status") as fh:
        peak = next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:")) / 1024
except (OSError, StopIteration):
    pass
print(json.dumps({"seconds": dt, "n": len(ds), "peak_rss_mib": peak, "ru_maxrss_mib": maxrss}))
"""


def _export(n: int) -> Path:
    from neuroprobe.concepts import open_concepts
    from neuroprobe.concepts.export import export_broden
    from neuroprobe.resources import cache_dir

    root = cache_dir() / "bench" / f"broden-synthetic-{n}"
    if (root / "index.csv").is_file():
        return root
    if root.exists():
        shutil.rmtree(root)
    export_broden(open_concepts("synthetic"), root, n, workers=2)
    return root


def _repeat(root: Path, times: int, dest: Path) -> Path:
    """A Broden folder whose index.csv lists every image of ``root`` ``times`` times."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in root.iterdir():
        if p.name == "index.csv":
            lines = p.read_text().splitlines()
            (dest / "index.csv").write_text("\n".join([lines[0]] + lines[1:] * times) + "\n")
        elif p.is_dir():
            (dest / p.name).symlink_to(p.resolve(), target_is_directory=True)
        else:
            shutil.copy(p, dest / p.name)
    return dest


def _child(what: str, root: Path, out: Path | None = None, workers: int = 1) -> dict:
    cfg = {"what": what, "model": MODEL, "concepts": "broden", "root": str(root),
           "layers": LAYERS, "batch": BATCH, "out": str(out) if out else None,
           "workers": workers}
    env = {**os.environ, "NEUROPROBE_QUIET": "1"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cfg)], capture_output=True,
                          text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"benchmark child failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[dict]:
    n = 96 if quick else 2000
    root = _export(n)
    conf = f"resnet18 {'+'.join(l.split('.')[-1] for l in LAYERS)}, {n} Broden-format 224px " \
           f"synthetic images, netdissect, batch {BATCH}, CPU threads {os.cpu_count()}"
    rows = []
    with tempfile.TemporaryDirectory(prefix="neuroprobe-bench-") as tmp:
        tmp = Path(tmp)
        floor = _child("imports", root)
        fwd = _child("forward", root)
        full = _child("dissect", root, tmp / "out-n")
        rows.append({"benchmark": "dissect/cpu-ratio", "config": conf,
                     "value": full["seconds"], "unit": "s", "baseline": fwd["seconds"],
                     "ratio": full["seconds"] / fwd["seconds"],
                     "target": "ratio <= 1.5 (dissection end to end vs forward passes alone)"})
        big = _child("dissect", _repeat(root, 4, tmp / "x4"), tmp / "out-4n")
        rows.append({"benchmark": "dissect/peak-rss", "config":
                     f"{conf}; peak RSS of the main process at {n} images (baseline: the "
                     "forward-only run; imports + model + data index alone: "
                     f"{floor['peak_rss_mib']:.0f} MiB; the forked loader worker shares pages "
                     "and is not counted)",
                     "value": full["peak_rss_mib"], "unit": "MiB",
                     "baseline": fwd["peak_rss_mib"],
                     "ratio": full["peak_rss_mib"] / fwd["peak_rss_mib"],
                     "target": "< 1024 MiB"})
        rows.append({"benchmark": "dissect/peak-rss-4x", "config":
                     f"same at {4 * n} images ({big['seconds']:.0f} s)",
                     "value": big["peak_rss_mib"], "unit": "MiB",
                     "baseline": full["peak_rss_mib"],
                     "ratio": big["peak_rss_mib"] / full["peak_rss_mib"],
                     "target": "ratio within 0.85..1.15 (flat in data size)"})
    return rows


if __name__ == "__main__":  # pragma: no cover
    for row in run(quick="--quick" in sys.argv):
        print(row)
