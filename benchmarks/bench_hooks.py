"""Overhead of recording layers with :class:`neuroprobe.hooks.Recorder` vs a plain forward pass."""
from __future__ import annotations

import time

import torch


def _best(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(quick: bool = False) -> list[dict]:
    from torchvision.models import resnet18

    from neuroprobe.hooks import Recorder

    torch.manual_seed(0)
    model = resnet18(weights=None).eval()
    x = torch.rand(8 if quick else 32, 3, 224, 224)
    repeat = 2 if quick else 5

    def plain():
        with torch.no_grad():
            model(x)

    def hooked():
        with torch.no_grad(), Recorder(model, ["layer3", "layer4"]):
            model(x)

    def stopped():
        with torch.no_grad(), Recorder(model, ["layer3"], stop=True):
            model(x)

    plain()
    base = _best(plain, repeat)
    rows = []
    for name, fn in (("record layer3+layer4", hooked), ("record layer3, stop", stopped)):
        t = _best(fn, repeat)
        rows.append({"benchmark": f"hooks: {name}", "config": f"resnet18 batch {len(x)} 224px CPU",
                     "value": len(x) / t, "unit": "img/s", "baseline": len(x) / base,
                     "ratio": base / t, "target": "ratio >= 0.95 (record); > 1 (stop)"})
    return rows
