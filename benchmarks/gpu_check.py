"""One prepared GPU call: CUDA-vs-CPU checks on a small set, then the ResNet-50 timing.

Usage (on the GPU machine, from the repository root)::

    python benchmarks/gpu_check.py --n 63305 --distinct 4000 --out $OUT/gpu.json
    python benchmarks/gpu_check.py --quick            # a CPU smoke test of the script itself

1. Data: ``--distinct`` synthetic images are exported in the Broden format (224 px images,
   112 px masks) with all cores, and an index listing them until ``--n`` rows exist (the
   reader then does the full per-image work ``--n`` times).
2. Checks: on 64 images, (a) the tallies of the same activations on CUDA and on the CPU are
   equal (integer counts, one upsampling formula), (b) a full dissection on CUDA and on the
   CPU agree (thresholds within 1e-3 relative, same best labels for >= 95 % of units; cuDNN
   and the CPU differ in float rounding).
3. Timing: ResNet-50 (random weights) layer4, netdissect, end to end on ``--n`` images, and
   the forward passes alone over the same loader, with ``--amp`` autocast.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


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
    from neuroprobe.dissect import dissect
    from neuroprobe.models import load
    from neuroprobe.stats import IoUTally

    ds = open_concepts("broden", root=str(root), limit=64)
    model, _ = load("torchvision:resnet18?weights=none")
    torch.manual_seed(0)
    cpu = dissect(model.cpu(), ds, ["net.layer4"], batch_size=32, device="cpu", progress=False)
    gpu = dissect(model, ds, ["net.layer4"], batch_size=32, device=device, keep="recompute",
                  progress=False)
    t_cpu, t_gpu = cpu.thresholds["net.layer4"], gpu.thresholds["net.layer4"]
    rel = float(((t_cpu - t_gpu).abs() / t_cpu.abs().clamp(min=1e-6)).max())
    same = sum(a["label"] == b["label"] for a, b in zip(cpu.units, gpu.units)) / len(cpu.units)
    # identical activations -> identical tallies on both devices
    from neuroprobe.concepts.base import collate

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
            "same_best_label_fraction": same,
            "ok": bool(exact and rel < 1e-3 and same >= 0.95)}


def _timing(root: Path, device, amp, batch: int, workers: int) -> dict:
    import torch

    from neuroprobe.concepts import open_concepts
    from neuroprobe.concepts.base import collate
    from neuroprobe.dissect import dissect
    from neuroprobe.hooks import Recorder
    from neuroprobe.models import load

    ds = open_concepts("broden", root=str(root))
    model, _ = load("torchvision:resnet50?weights=none", device=device)
    model = model.to(memory_format=torch.channels_last)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers,
                                         collate_fn=collate, pin_memory=torch.cuda.is_available())
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if amp else torch.autocast("cpu",
                                                                                 enabled=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad(), ctx:
        for b in loader:
            with Recorder(model, ["net.layer4"], stop=True) as rec:
                model(b["image"].to(device, non_blocking=True))
            rec["net.layer4"].float().sum().item()
    fwd = time.perf_counter() - t0
    t0 = time.perf_counter()
    dissect(model, ds, ["net.layer4"], batch_size=batch, device=device, amp="bf16" if amp else None,
            num_workers=workers, keep="recompute", progress=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    total = time.perf_counter() - t0
    return {"images": len(ds), "end_to_end_s": total, "forward_only_s": fwd,
            "ratio": total / fwd,
            "peak_gpu_mib": (torch.cuda.max_memory_allocated() / 2 ** 20
                             if torch.cuda.is_available() else None)}


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=63305)
    p.add_argument("--distinct", type=int, default=4000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--quick", action="store_true", help="tiny sizes on any device")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.distinct, args.batch, args.workers = 96, 64, 32, 1
    os.environ.setdefault("NEUROPROBE_QUIET", "1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
              "torch": torch.__version__, "n": args.n, "distinct": args.distinct}
    tmp = Path(tempfile.mkdtemp(prefix="neuroprobe-gpu-"))
    try:
        t0 = time.perf_counter()
        root = _data(tmp, args.distinct, args.n)
        result["export_s"] = time.perf_counter() - t0
        result["checks"] = _checks(root, device)
        print(json.dumps(result["checks"]), flush=True)
        result["timing"] = _timing(root, device, not args.no_amp and device == "cuda",
                                   args.batch, args.workers)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0 if result["checks"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
