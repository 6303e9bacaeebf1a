"""Dissection speed and memory on the CPU (issues 5 and 20).

resnet18 (random weights; timing does not depend on them), layers layer3 + layer4, netdissect
mode, on Broden-format 224 px images written by the synthetic world's exporter and read back
with the Broden reader, with the options of ``neuroprobe dissect`` (batch 32, one loader
process on a multi-core CPU, maps kept on disk between the passes):

* ``dissect/cache-build``: building the concept-set cache of the n images (cold), its size on
  disk beside the size of the mask PNGs it replaces;
* ``dissect/cpu-ratio-cache``: end-to-end dissection with a warm concept-set cache vs a plain
  forward loop over the same images (target: at most 1.10x); ``dissect/cpu-ratio-nocache``:
  the same without the cache (``--no-cache``: every mask PNG decoded), against the same
  baseline.  The baseline reads the images alone (``item(i, labels=False)``) through the same
  reader, loader and batch size, and records the two layers with the same hooks, as a user's
  plain loop would (contiguous tensors); ``dissect/cpu-ratio-*-vs-channels-last``: the same
  dissections against a forward loop in the engine's own memory format (channels-last model
  and images, see :func:`neuroprobe.dissect._probe`), i.e. the engine's cost beyond its
  forward passes;
* ``dissect/peak-rss*``: peak resident memory of the dissection at n and 4n images, with and
  without the cache, each in its own process (target: under 1 GiB and within 15 % between the
  sizes).  The 4n folder lists the n exported images four times in its index.csv (same reader
  work, same per-image cost; its cache holds 4n items).  Beside it, measured in the same run:
  the forward-only process, and a process that only imports everything and loads the model and
  the data index (the floor no dissection can go below).  The peak is the process's own
  ``VmHWM``: ``ru_maxrss`` of a child starts at its parent's peak (the kernel carries the
  high-water mark over ``fork``/``exec``), so a benchmark parent grown past 1 GiB would make
  every child look as large (``ru_maxrss`` stays in the output).

With ``NEUROPROBE_BENCH_DISSECT_TREES=OLD_TREE`` (a checkout of an older neuroprobe, e.g.
``git worktree add /tmp/old63 63bfe9a``) only ``dissect/trees-*`` runs: the whole
``neuroprobe --quiet dissect`` command on the n images, wall time and peak RSS of each run, the
old tree and this one (``--no-cache`` and warm cache) alternating,
``NEUROPROBE_BENCH_DISSECT_ROUNDS`` rounds (default 2); the ratio is this tree's median over
the old tree's median.

The exported folder is kept in ``<neuroprobe cache>/bench`` so that reruns skip the export;
each run builds the concept caches afresh in a temporary cache folder.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAYERS = ["net.layer3", "net.layer4"]
MODEL = "torchvision:resnet18?weights=none"
BATCH = 32   # the CLI's default

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
def cpu():   # seconds of CPU of this process and its finished children (the loader worker)
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime
c0 = cpu()
t0 = time.perf_counter()
extra = {}
if cfg["what"] == "imports":
    pass   # the floor: interpreter, torch, torchvision, neuroprobe, the model and the data index
elif cfg["what"] == "build":
    cache = ds.prepare_labels(progress=False)
    extra = {"disk_bytes": cache.disk_bytes(), "png_bytes": cache.source_bytes()}
elif cfg["what"] in ("forward", "forward-cl"):
    cl = cfg["what"] == "forward-cl"   # the engine's own memory format (channels-last)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    class Images(torch.utils.data.Dataset):   # the images alone, as the reader gives them
        def __len__(self):
            return len(ds)
        def __getitem__(self, i):
            return ds.item(i, labels=False)
    loader = torch.utils.data.DataLoader(Images(), batch_size=cfg["batch"],
                                         num_workers=cfg["workers"], collate_fn=collate)
    with torch.no_grad():
        for batch in loader:
            x = batch["image"]
            with Recorder(model, cfg["layers"], stop=True) as rec:
                model(x.contiguous(memory_format=torch.channels_last) if cl else x)
            [rec[n] for n in cfg["layers"]]
    del loader   # (its worker process ends, so its CPU time is counted)
else:
    ds.use_cache = cfg["what"] == "dissect-cache"
    dissect(model, ds, cfg["layers"], batch_size=cfg["batch"], out_dir=cfg["out"],
            num_workers=cfg["workers"], progress=False)
dt = time.perf_counter() - t0
extra["cpu_seconds"] = cpu() - c0
maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
peak = maxrss
try:   # this process's own high-water mark: ru_maxrss starts at the parent's peak (fork/exec)
    with open("/proc/self/status") as fh:
        peak = next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:")) / 1024
except (OSError, StopIteration):
    pass
print(json.dumps({"seconds": dt, "n": len(ds), "peak_rss_mib": peak, "ru_maxrss_mib": maxrss,
                  **extra}))
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


def _child(what: str, root: Path, out: Path | None = None, workers: int = 1,
           cache: Path | None = None) -> dict:
    cfg = {"what": what, "model": MODEL, "concepts": "broden", "root": str(root),
           "layers": LAYERS, "batch": BATCH, "out": str(out) if out else None,
           "workers": workers}
    env = {**os.environ, "NEUROPROBE_QUIET": "1"}
    if cache is not None:
        env["NEUROPROBE_CACHE"] = str(cache)
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cfg)], capture_output=True,
                          text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"benchmark child failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


_CLI = r"""
import sys, time
from neuroprobe.cli import main
t0 = time.perf_counter()
rc = main(sys.argv[1:])
with open("/proc/self/status") as fh:
    peak = next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:")) / 1024
print(f"{time.perf_counter() - t0} {peak} {rc}", file=sys.stderr)
"""


def _cli(tree: Path, root: Path, out: Path, cache: Path, extra=()) -> tuple:
    """Wall seconds (interpreter start to exit), peak RSS (MiB) and CPU seconds (with its
    loader worker) of ``neuroprobe --quiet dissect`` run from ``tree``."""
    args = ["--quiet", "dissect", "--model", MODEL, "--concepts", "broden", "--root", str(root),
            "--layers", ",".join(LAYERS), "--out", str(out), *extra]
    env = {**os.environ, "PYTHONPATH": str(tree), "NEUROPROBE_CACHE": str(cache)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CLI, *args], capture_output=True, text=True,
                          env=env, cwd=str(out.parent))
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)   # the command and its loader worker
    cpu = sum(getattr(after, f) - getattr(before, f) for f in ("ru_utime", "ru_stime"))
    last = proc.stderr.strip().splitlines()[-1].split() if proc.stderr.strip() else ["", "", "1"]
    if proc.returncode or last[2] != "0":
        raise RuntimeError(f"dissect from {tree} failed: {proc.stderr[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return wall, float(last[1]), cpu


def run_trees(old: Path, n: int, rounds: int) -> list[dict]:
    """The whole command on an older tree and on this one, alternating (see the module's
    docstring)."""
    root = _export(n)
    new = Path(__file__).resolve().parents[1]
    times = {"old": [], "new --no-cache": [], "new, warm cache": []}
    peaks = {k: [] for k in times}
    cpus = {k: [] for k in times}
    with tempfile.TemporaryDirectory(prefix="neuroprobe-bench-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        # the concept cache, built once beforehand (not timed)
        subprocess.run([sys.executable, "-m", "neuroprobe", "--quiet", "concepts", "cache",
                        "broden", "--root", str(root)], check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(new), "NEUROPROBE_CACHE": str(cache)})
        for _ in range(rounds):
            for what, tree, extra in (("old", old, ()), ("new --no-cache", new, ("--no-cache",)),
                                      ("new, warm cache", new, ())):
                wall, peak, cpu = _cli(tree, root, tmp / "out", cache, extra)
                times[what].append(wall)
                peaks[what].append(peak)
                cpus[what].append(cpu)
    base = statistics.median(times["old"])
    conf = f"resnet18 layer3+layer4, {n} Broden-format images, CLI defaults"
    return [{"benchmark": f"dissect/trees-{what.split(',')[0].replace(' ', '')}",
             "config": f"{conf}; {what} from {tree}; runs {', '.join(f'{t:.1f}' for t in v)} s; "
             f"peak RSS {max(peaks[what]):.0f} MiB; CPU seconds "
             f"{', '.join(f'{c:.1f}' for c in cpus[what])} (old: "
             f"{', '.join(f'{c:.1f}' for c in cpus['old'])}); {_load()}",
             "value": statistics.median(v), "unit": "s", "baseline": base,
             "ratio": statistics.median(v) / base, "target": "ratio <= 1 (issue 15)"}
            for (what, v), tree in zip(times.items(), (old, new, new))]


def _median(runs: list) -> dict:
    """The run of median wall time (its own CPU seconds and peak beside it)."""
    return sorted(runs, key=lambda r: r["seconds"])[(len(runs) - 1) // 2]


def _load() -> str:
    try:
        return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:   # pragma: no cover
        return "load unknown"


def run(quick: bool = False) -> list[dict]:
    # NEUROPROBE_BENCH_DISSECT_N: another size (a machine too loaded for the full one)
    n = int(os.environ.get("NEUROPROBE_BENCH_DISSECT_N") or (96 if quick else 2000))
    if os.environ.get("NEUROPROBE_BENCH_DISSECT_TREES"):
        return run_trees(Path(os.environ["NEUROPROBE_BENCH_DISSECT_TREES"]), n,
                         int(os.environ.get("NEUROPROBE_BENCH_DISSECT_ROUNDS") or 2))
    root = _export(n)
    conf = f"resnet18 {'+'.join(l.split('.')[-1] for l in LAYERS)}, {n} Broden-format 224px " \
           f"synthetic images, netdissect, batch {BATCH}, CPU threads {os.cpu_count()}"
    rows = []
    with tempfile.TemporaryDirectory(prefix="neuroprobe-bench-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        floor = _child("imports", root)
        build = _child("build", root, cache=cache)
        rows.append({"benchmark": "dissect/cache-build", "config": f"{conf}; {_load()}",
                     "value": build["seconds"], "unit": "s",
                     "target": f"size on disk {build['disk_bytes'] / 1e6:.1f} MB, mask PNGs "
                     f"it replaces {build['png_bytes'] / 1e6:.1f} MB"})
        # NEUROPROBE_BENCH_DISSECT_ROUNDS: forward, warm cache, no cache alternating, medians
        runs = {"forward": [], "forward-cl": [], "cache": [], "nocache": []}
        for _ in range(int(os.environ.get("NEUROPROBE_BENCH_DISSECT_ROUNDS") or 1)):
            runs["forward"].append(_child("forward", root))
            runs["forward-cl"].append(_child("forward-cl", root))
            runs["cache"].append(_child("dissect-cache", root, tmp / "out-cache", cache=cache))
            runs["nocache"].append(_child("dissect-nocache", root, tmp / "out-plain",
                                          cache=cache))
            for d in ("out-cache", "out-plain"):
                shutil.rmtree(tmp / d, ignore_errors=True)
        fwd, fcl, warm, plain = (_median(runs[k]) for k in ("forward", "forward-cl", "cache",
                                                            "nocache"))
        cl_runs = ", ".join(f"{x['seconds']:.1f}" for x in runs["forward-cl"])
        for what, r, target in (("cache", warm, "ratio <= 1.10"),
                                ("nocache", plain, "report (issue 5: <= 1.5)")):
            each = ", ".join(f"{x['seconds']:.1f}" for x in runs[what])
            base = ", ".join(f"{x['seconds']:.1f}" for x in runs["forward"])
            rows.append({"benchmark": f"dissect/cpu-ratio-{what}",
                         "config": f"{conf}; runs {each} s vs forward {base} s; {_load()}",
                         "value": r["seconds"], "unit": "s", "baseline": fwd["seconds"],
                         "ratio": r["seconds"] / fwd["seconds"],
                         "target": target + " (end to end vs forward passes alone)"})
            rows.append({"benchmark": f"dissect/cpu-ratio-{what}-vs-channels-last",
                         "config": f"{conf}; the same runs against a forward loop with the "
                         f"engine's own memory format (channels-last model and images): "
                         f"{cl_runs} s",
                         "value": r["seconds"], "unit": "s", "baseline": fcl["seconds"],
                         "ratio": r["seconds"] / fcl["seconds"],
                         "target": "report (the engine's overhead beyond its forward passes)"})
            rows.append({"benchmark": f"dissect/cpu-seconds-{what}",
                         "config": f"{conf}; CPU seconds of the process and its loader worker "
                         "(less sensitive to other work on the machine than wall time)",
                         "value": r["cpu_seconds"], "unit": "s CPU",
                         "baseline": fwd["cpu_seconds"],
                         "ratio": r["cpu_seconds"] / fwd["cpu_seconds"], "target": "report"})
        # NEUROPROBE_BENCH_DISSECT_FLAT=0: not the 4n runs (a machine too loaded for them)
        flat = os.environ.get("NEUROPROBE_BENCH_DISSECT_FLAT", "1") != "0"
        if flat:
            big_root = _repeat(root, 4, tmp / "x4")
            _child("build", big_root, cache=cache)
            big = {"cache": _child("dissect-cache", big_root, tmp / "out-4n-c", cache=cache),
                   "nocache": _child("dissect-nocache", big_root, tmp / "out-4n-p", cache=cache)}
        for what, r in (("cache", warm), ("nocache", plain)):
            rows.append({"benchmark": f"dissect/peak-rss-{what}", "config":
                         f"{conf}; peak RSS of the main process at {n} images (baseline: the "
                         "forward-only run; imports + model + data index alone: "
                         f"{floor['peak_rss_mib']:.0f} MiB; the forked loader worker shares "
                         "pages and is not counted)",
                         "value": r["peak_rss_mib"], "unit": "MiB",
                         "baseline": fwd["peak_rss_mib"],
                         "ratio": r["peak_rss_mib"] / fwd["peak_rss_mib"],
                         "target": "< 1024 MiB"})
            if not flat:
                continue
            b = big[what]
            rows.append({"benchmark": f"dissect/peak-rss-4x-{what}", "config":
                         f"same at {4 * n} images ({b['seconds']:.0f} s; {_load()})",
                         "value": b["peak_rss_mib"], "unit": "MiB",
                         "baseline": r["peak_rss_mib"],
                         "ratio": b["peak_rss_mib"] / r["peak_rss_mib"],
                         "target": "ratio within 0.85..1.15 (flat in data size)"})
    return rows


if __name__ == "__main__":  # pragma: no cover
    for row in run(quick="--quick" in sys.argv):
        print(row)
