"""Training throughput of the recipe (images per second, CPU), per variant.

The frozen variant runs the encoder without gradients, so it should be several times faster than
finetune-all; the ratio is reported against finetune-all measured in the same run.
"""
from __future__ import annotations

import time

import numpy as np
import torch


def _throughput(variant: str, size: int, n: int, batch: int) -> float:
    from neuroprobe.train.data import ImageSet
    from neuroprobe.train.recipe import TrainConfig, build_model, compute_loss, set_modes, \
        setup_variant
    from neuroprobe.train import losses as L

    rng = np.random.default_rng(0)
    data = ImageSet(torch.from_numpy(rng.integers(0, 255, (n, 3, size, size), dtype=np.uint8)),
                    [str(i) for i in range(n)],
                    [rng.uniform(0, size - 1, (10, 2)).astype(np.float32) for _ in range(n)])
    cfg = TrainConfig(task="saliency", encoder="small", weights="none", variant=variant,
                      input_size=(size, size), batch_size=batch)
    model, _ = build_model(cfg)
    params = setup_variant(model, variant, "small")
    opt = torch.optim.Adam(params, lr=1e-3)
    set_modes(model, variant, "small")
    weights = L.parse_loss("nss")
    idx = [torch.arange(i, min(i + batch, n)) for i in range(0, n, batch)]
    compute_loss(model, cfg, data, idx[0], weights).backward()  # warm-up
    t0 = time.perf_counter()
    for b in idx:
        loss = compute_loss(model, cfg, data, b, weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return n / (time.perf_counter() - t0)


def run(quick: bool = False) -> list[dict]:
    size, n, batch = (128, 40, 10) if quick else (224, 100, 10)
    out = []
    base = _throughput("finetune-all", size, n, batch)
    for variant in ("frozen", "finetune-last", "finetune-all"):
        v = base if variant == "finetune-all" else _throughput(variant, size, n, batch)
        out.append({"benchmark": f"train saliency small {variant}",
                    "config": f"{size}px batch {batch}, {torch.get_num_threads()} threads",
                    "value": round(v, 2), "unit": "img/s", "baseline": round(base, 2),
                    "ratio": round(v / base, 2),
                    "target": "frozen >= 2x finetune-all (encoder runs without gradients)"})
    return out


if __name__ == "__main__":  # pragma: no cover
    for row in run(quick=True):
        print(row)
