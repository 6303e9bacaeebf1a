"""One prepared GPU call: CUDA-vs-CPU checks on a small set, then the GPU timings of issues 5/10.

Usage (on the GPU machine, from the repository root)::

    PYTHONUNBUFFERED=1 python benchmarks/gpu_check.py --out $OUT/gpu.json
    python benchmarks/gpu_check.py --quick            # a CPU smoke test of the script itself

1. Data: ``--distinct`` synthetic images are exported in the Broden format (224 px images,
   112 px masks) with all cores, and an index lists them until ``--n`` rows exist (the reader
   does the full per-image work ``--n`` times: JPEG and PNG decoding, label checks).
2. Checks: on 64 images, (a) the tallies of the same activations on CUDA and on the CPU are
   equal (integer counts, one upsampling formula), (b) a full dissection on CUDA and on the CPU
   agree (thresholds within 1e-3 relative, same best labels for >= 95 % of units; cuDNN and the
   CPU differ in float rounding); (c) bf16 autocast vs float32 on CUDA: the fraction of units
   with the same best label (reported, not gated).
3. Timing, ResNet-50 (random weights; the time does not depend on them) layer4, netdissect,
   bf16 autocast, channels-last, batch 256:
   - the bare forward pass on random tensors (no data), images/s;
   - the loader alone (images only, uint8), images/s;
   - forward-only over the data: one pass over the images through the same loader;
   - ``dissect`` end to end on ``--n`` images (both passes, per-pass seconds), and on ``n/4``
     images first (warm-up, and the memory figures at two data sizes);
   - the IoU tally alone on real layer4 maps and masks, images/s.
4. Gallery (issue 16): ``neuroprobe dissect`` of ResNet-18 (random weights, seed 0) ``net.layer4``
   on ``--gallery-images`` of the distinct images, then ``neuroprobe gallery RUN`` with its
   defaults (all 512 units, maximization until each unit's threshold with the 256-step budget,
   integrated gradients on the GPU), timed as a fresh command; also how many units reached
   their threshold.  Target: <= 5 minutes.  ``--skip-gallery`` leaves it out.
Each step's figures are written to ``--out`` as soon as they exist, so a run cut short by the
time limit still returns what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LAYER = "net.layer4"


class _RSS:
    """Peak resident memory of this process over a block (sampled every 20 ms)."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            try:
                with open("/proc/self/status") as fh:
                    for line in fh:
                        if line.startswith("VmRSS:"):
                            self.peak = max(self.peak, int(line.split()[1]) // 1024)
            except OSError:
                return
            self._stop.wait(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _data(tmp: Path, distinct: int, n: int) -> Path:
    from neuroprobe.concepts import open_concepts
    from neuroprobe.concepts.export import export_broden

    from benchmarks.bench_dissect import _repeat

    src = export_broden(open_concepts("synthetic"), tmp / "distinct", distinct,
                        workers=max(1, (os.cpu_count() or 2) - 1))
    times = -(-n // distinct)
    root = _repeat(Path(src), times, tmp / "full")
    lines = (root / "index.csv").read_text().splitlines()
    (root / "index.csv").write_text("\n".join(lines[: n + 1]) + "\n")
    return root


def _checks(root: Path, device) -> dict:
    import torch

    from neuroprobe.concepts import open_concepts
    from neuroprobe.concepts.base import collate
    from neuroprobe.dissect import dissect
    from neuroprobe.models import load
    from neuroprobe.stats import IoUTally

    ds = open_concepts("broden", root=str(root), limit=64)
    torch.manual_seed(0)
    model, _ = load("torchvision:resnet18?weights=none")
    cpu = dissect(model.cpu(), ds, [LAYER], batch_size=32, device="cpu", progress=False)
    tf32 = dissect(model, ds, [LAYER], batch_size=32, device=device, keep="recompute",
                   progress=False)   # PyTorch's default: TF32 convolutions on Ampere and later
    if device != "cpu":   # float32 arithmetic proper for the comparison with the CPU
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    gpu = dissect(model, ds, [LAYER], batch_size=32, device=device, keep="recompute",
                  progress=False)
    torch.backends.cudnn.allow_tf32 = True
    bf16 = dissect(model, ds, [LAYER], batch_size=32, device=device, keep="recompute",
                   amp="bf16" if device != "cpu" else None, progress=False)
    t_cpu, t_gpu = cpu.thresholds[LAYER], gpu.thresholds[LAYER]
    rel = float(((t_cpu - t_gpu).abs() / t_cpu.abs().clamp(min=1e-6)).max())
    same = sum(a["label"] == b["label"] for a, b in zip(cpu.units, gpu.units)) / len(cpu.units)
    t_tf32 = tf32.thresholds[LAYER]
    rel_tf32 = float(((t_cpu - t_tf32).abs() / t_cpu.abs().clamp(min=1e-6)).max())
    same_tf32 = sum(a["label"] == b["label"]
                    for a, b in zip(cpu.units, tf32.units)) / len(cpu.units)
    same_bf16 = sum(a["label"] == b["label"]
                    for a, b in zip(gpu.units, bf16.units)) / len(gpu.units)
    # identical activations -> identical tallies on both devices
    batch = collate([ds[i] for i in range(16)])
    g = torch.Generator().manual_seed(1)
    maps = torch.rand((16, 64, 7, 7), generator=g) ** 4
    thr = torch.full((64,), 0.6)
    cat = torch.from_numpy(ds.labels.category_index())
    tallies = []
    for dev in ("cpu", device):
        t = IoUTally(64, ds.labels.max_id + 1, cat, len(ds.categories))
        t.add(maps.to(dev), thr.to(dev), batch["layers"].to(dev), batch["whole"].to(dev),
              batch["categories"].to(dev))
        tallies.append(t)
    exact = all(torch.equal(getattr(tallies[0], f).cpu(), getattr(tallies[1], f).cpu())
                for f in IoUTally.fields)
    return {"tally_cpu_equals_cuda": exact, "threshold_max_rel_diff": rel,
            "same_best_label_fraction": same, "bf16_vs_fp32_same_label_fraction": same_bf16,
            "tf32_threshold_max_rel_diff": rel_tf32, "tf32_same_label_fraction": same_tf32,
            "ok": bool(exact and rel < 1e-3 and same >= 0.95)}


def _bare_forward(model, device, amp, batch: int, steps: int) -> float:
    import torch

    from neuroprobe.hooks import Recorder

    x = torch.rand((batch, 3, 224, 224), device=device)
    if device != "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=amp)
    with torch.no_grad(), ctx:
        for i in range(steps + 3):
            if i == 3:
                _sync()
                t0 = time.perf_counter()
            with Recorder(model, [LAYER], stop=True):
                model(x)
    _sync()
    return steps * batch / (time.perf_counter() - t0)


def _loader(ds, batch, workers, labels, device):
    import functools

    import torch

    from neuroprobe.concepts.base import collate
    from neuroprobe.engine.runner import ItemView as _View

    return torch.utils.data.DataLoader(
        _View(ds, labels), batch_size=batch, num_workers=workers,
        collate_fn=functools.partial(collate, label_dtype=torch.int16),
        pin_memory=device != "cpu")


def _tally_rate(model, ds, device, amp, batch: int, workers: int, thr) -> float:
    """Images/s of ``IoUTally.add`` alone on real layer4 maps and masks (4 batches)."""
    import torch

    from neuroprobe.engine.runner import forward as _forward, model_input as _model_input
    from neuroprobe.stats import IoUTally

    cat = torch.from_numpy(ds.labels.category_index())
    batches = []
    for i, b in enumerate(_loader(ds, batch, workers, True, device)):
        acts = _forward(model, _model_input(b["image"], torch.device(device), device != "cpu"),
                        [LAYER], "bf16" if amp else None, torch.device(device))
        batches.append((acts[LAYER].float(), b["layers"].to(device).long(),
                        b["whole"].to(device), b["categories"].to(device)))
        if i == 3:
            break
    t = IoUTally(batches[0][0].shape[1], ds.labels.max_id + 1, cat, len(ds.categories))
    t.add(*batches[0][:1], thr, *batches[0][1:])   # warm-up
    _sync()
    t0 = time.perf_counter()
    for a, lay, whole, cats in batches:
        t.add(a, thr, lay, whole, cats)
    _sync()
    return sum(len(b[0]) for b in batches) / (time.perf_counter() - t0)


def _child(cfg: dict) -> None:
    """One dissection in this process; prints its figures as one JSON line."""
    import resource

    import torch

    from neuroprobe.concepts import open_concepts
    from neuroprobe.dissect import dissect
    from neuroprobe.models import load

    device = cfg["device"]
    if device != "cpu":
        torch.backends.cudnn.benchmark = True
    ds = open_concepts("broden", root=cfg["root"])
    torch.manual_seed(0)   # the same random weights as the parent's model
    model, _ = load("torchvision:resnet50?weights=none", device=device)
    _sync()
    t0 = time.perf_counter()
    res = dissect(model, ds, [LAYER], batch_size=cfg["batch"], device=device,
                  amp="bf16" if cfg["amp"] else None, num_workers=cfg["workers"],
                  keep=cfg.get("keep", "recompute"), limit=cfg["limit"], progress=False)
    _sync()
    seconds = time.perf_counter() - t0
    print(json.dumps({
        "images": res.summary["config"]["concepts"]["n"], "seconds": seconds,
        "passes": res.summary["timing"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mib": (torch.cuda.max_memory_allocated() / 2 ** 20 if device != "cpu"
                         else None),
        "detectors": sum(bool(u.get("detector")) for u in res.units),
        "thresholds": res.thresholds[LAYER].tolist()}))


def _timing(root: Path, device, amp, batch: int, workers: int, report) -> dict:
    import torch

    from neuroprobe.concepts import open_concepts
    from neuroprobe.engine.runner import forward as _forward, model_input as _model_input
    from neuroprobe.models import load

    out = report.setdefault("timing", {})
    dev = torch.device(device)
    if device != "cpu":
        torch.backends.cudnn.benchmark = True
    ds = open_concepts("broden", root=str(root))
    torch.manual_seed(0)
    model, _ = load("torchvision:resnet50?weights=none", device=device)
    model = model.eval()
    if device != "cpu":
        model = model.to(memory_format=torch.channels_last)
    out["bare_forward_img_s"] = _bare_forward(model, device, amp, batch,
                                              30 if device != "cpu" else 1)
    report.save()

    t0 = time.perf_counter()
    seen = 0
    for b in _loader(ds, batch, workers, False, device):
        seen += len(b["image"])
    out["loader_images_only_img_s"] = seen / (time.perf_counter() - t0)
    report.save()

    with _RSS() as rss:
        _sync()
        t0 = time.perf_counter()
        for b in _loader(ds, batch, workers, False, device):
            _ = _forward(model, _model_input(b["image"], dev, device != "cpu"), [LAYER],
                         "bf16" if amp else None, dev)[LAYER]
        _sync()
        out["forward_only_s"] = time.perf_counter() - t0
    out["forward_only_peak_rss_mib"] = rss.peak
    out["forward_only_img_s"] = len(ds) / out["forward_only_s"]
    report.save()

    t0 = time.perf_counter()
    seen = 0
    sub = open_concepts("broden", root=str(root), limit=min(len(ds), 32 * batch))
    for b in _loader(sub, batch, workers, True, device):
        seen += len(b["image"])
    out["loader_with_labels_img_s"] = seen / (time.perf_counter() - t0)
    report.save()

    runs = {}
    # recompute: pass 2 runs the model again (peak memory flat in the data size); memory (the
    # GPU default where the maps fit): pass 2 tallies the maps kept from pass 1 and reads the
    # labels alone
    for label, limit, keep in (("quarter", len(ds) // 4, "recompute"),
                               ("full", len(ds), "recompute"), ("full_memory", len(ds), "auto")):
        # each size in a fresh process, so that one run's caches do not count in the other's
        # peak memory (ru_maxrss of the child; CUDA context and cuDNN autotuning included)
        cfg = {"root": str(root), "device": device, "amp": amp, "batch": batch,
               "workers": workers, "limit": limit, "keep": keep}
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(proc.stderr[-3000:])
        runs[label] = json.loads(proc.stdout.strip().splitlines()[-1])
        got = runs[label].pop("thresholds")
        if label == "full":   # (the tally rate below uses these)
            thresholds = got
        out["dissect_" + label] = runs[label]
        report.save()
    out["end_to_end_s"] = runs["full"]["seconds"]
    out["end_to_end_memory_s"] = runs["full_memory"]["seconds"]
    out["ratio_to_forward_only"] = runs["full"]["seconds"] / out["forward_only_s"]
    out["gpu_peak_ratio_full_vs_quarter"] = (
        runs["full"]["peak_gpu_mib"] / runs["quarter"]["peak_gpu_mib"] if device != "cpu"
        else None)
    out["rss_peak_ratio_full_vs_quarter"] = runs["full"]["peak_rss_mib"] / max(
        1, runs["quarter"]["peak_rss_mib"])
    report.save()
    thr = torch.tensor(thresholds, device=device)   # those of the full run
    out["tally_only_img_s"] = _tally_rate(model, ds, device, amp, batch, workers, thr)
    report.save()
    return out


class _Report(dict):
    def __init__(self, path):
        super().__init__()
        self.path = path

    def save(self):
        print(json.dumps(self, indent=1, default=str)[-1500:], flush=True)
        if self.path:
            tmp = Path(str(self.path) + ".tmp")
            tmp.write_text(json.dumps(self, indent=2, default=str))
            os.replace(tmp, self.path)


def _gallery(root: Path, device, report, quick: bool) -> None:
    """Step 4: the 512-unit ResNet-18 layer4 gallery with maximization, as commands."""
    run = root.parent / "gallery-run"
    model = "torchvision:resnet18?weights=none&seed=0"
    base = [sys.executable, "-m", "neuroprobe", "--quiet", "--device", device]
    images = report["gallery_images"]
    t0 = time.perf_counter()
    subprocess.run([*base, "dissect", "--model", model, "--concepts", "broden", "--root",
                    str(root), "--layers", LAYER, "--limit",
                    str(images), "--out", str(run)], check=True)
    dissect_s = time.perf_counter() - t0
    extra = ["--max-units", "8", "--steps", "16"] if quick else []
    t0 = time.perf_counter()
    subprocess.run([*base, "gallery", str(run), *extra], check=True)
    seconds = time.perf_counter() - t0
    units = json.loads((run / "gallery" / "gallery.json").read_text())
    rows = units["units"]
    report["gallery"] = {
        "command": "neuroprobe gallery RUN" + (" " + " ".join(extra) if extra else ""),
        "dissect_s": dissect_s, "seconds": seconds, "units": len(rows),
        "reached_threshold": sum(bool(r.get("reached_threshold")) for r in rows),
        "max_steps_used": max((r.get("maximization_steps") or 0) for r in rows),
        "attribution": units["config"]["attribution"], "target_s": 300}
    report.save()


def main(argv=None) -> int:
    import torch

    from neuroprobe.commands.dissect import default_workers

    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=63305)
    p.add_argument("--distinct", type=int, default=4000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--skip-checks", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--quick", action="store_true", help="tiny sizes on any device")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--keep-data", default=None, help="move the generated Broden folder here")
    p.add_argument("--skip-gallery", action="store_true")
    p.add_argument("--gallery-images", type=int, default=2000,
                   help="images dissected for the gallery step (default 2000)")
    args = p.parse_args(argv)
    if args.child:
        _child(json.loads(args.child))
        return 0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.workers is None:
        args.workers = default_workers(device)
    if args.quick:
        args.n, args.distinct, args.batch, args.workers = 96, 48, 16, 1
        args.gallery_images = 48
    os.environ.setdefault("NEUROPROBE_QUIET", "1")
    report = _Report(args.out)
    report.update({"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                   "torch": torch.__version__, "cuda": torch.version.cuda,
                   "cpu_cores": os.cpu_count(), "n": args.n, "distinct": args.distinct,
                   "batch": args.batch, "workers": args.workers, "amp": not args.no_amp,
                   "gallery_images": min(args.gallery_images, args.distinct)})
    tmp = Path(tempfile.mkdtemp(prefix="neuroprobe-gpu-"))
    t_all = time.perf_counter()
    try:
        t0 = time.perf_counter()
        root = _data(tmp, args.distinct, args.n)
        report["export_s"] = time.perf_counter() - t0
        report.save()
        if not args.skip_checks:
            t0 = time.perf_counter()
            report["checks"] = _checks(root, device)
            report["checks_s"] = time.perf_counter() - t0
            report.save()
        _timing(root, device, not args.no_amp and device == "cuda", args.batch, args.workers,
                report)
        if not args.skip_gallery:
            _gallery(tmp / "distinct", device, report, args.quick)
    finally:
        if args.keep_data and (tmp / "full").is_dir():
            shutil.move(str(tmp), args.keep_data)
            link = Path(args.keep_data) / "full" / "images"
            link.unlink()
            link.symlink_to(Path("..") / "distinct" / "images", target_is_directory=True)
        shutil.rmtree(tmp, ignore_errors=True)
        report["total_s"] = time.perf_counter() - t_all
        report.save()
    return 0 if report.get("checks", {"ok": True})["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
