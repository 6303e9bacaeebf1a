"""Fidelity against independent implementations (issue #18), on data no test uses.

* **NetDissect**: a Broden-format folder from :func:`benchmarks.broden_data.make_broden` (224 px
  images, 112 px masks; cross-category labels, material labels inside object masks, rows
  without labels), ResNet-18 with random weights (``torch.manual_seed(weight seed)``), layers
  ``layer3`` and ``layer4`` named bare (they resolve to ``net.layer3`` / ``net.layer4``), data
  and weight seeds (0, 0) and (1, 1), 24 images each (``--quick``: (0, 0) only).  neuroprobe's netdissect mode against
  :func:`benchmarks.references.netdissect` (NetDissect's procedure restated): the share of
  units with the same best (category, label) and the largest |IoU difference| of the best
  label.  The rules before issue #18 (``primary="count"``, ``keep_empty_rows``,
  ``denominator="annotated"``, ``ties="first"``) are measured on the same data beside it.
* **Region-NSS**: the synthetic world at 224 px (fixations and per-object instances),
  ResNet-18 ``layer3``; neuroprobe's default (image resolution, per-instance regions) against
  :func:`benchmarks.references.region_nss_reference` (the study's definition, brute force);
  beside it the former default (mask resolution, one region per label) against the same
  reference.

Run: ``python -m benchmarks fidelity`` (``--quick``: one seed pair, fewer images).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from . import references as R
from .broden_data import make_broden


def _resnet18(seed: int):
    import torchvision

    from neuroprobe.models.adapters import ImageClassifier

    torch.manual_seed(seed)
    return ImageClassifier(torchvision.models.resnet18(weights=None)).eval()


def _forward(model, layer):
    from neuroprobe.hooks import Recorder

    def run(x):
        with Recorder(model, [layer], stop=True) as rec:
            model(x)
        return rec[layer]
    return run


def _compare(units, ref_units):
    same = [(a["label"], a["category"]) == (b["label"], b["category"])
            for a, b in zip(units, ref_units)]
    d = [abs(a["score"] - b["score"]) for a, b in zip(units, ref_units)]
    return 100.0 * float(np.mean(same)), float(np.max(d))


def netdissect_rows(quick: bool) -> list[dict]:
    from neuroprobe.concepts.broden import BrodenDataset
    from neuroprobe.dissect import dissect

    n = 24
    pairs = [(0, 0)] if quick else [(0, 0), (1, 1)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for data_seed, weight_seed in pairs:
            root = Path(tmp) / f"broden-{data_seed}"
            if not root.exists():
                make_broden(root, n=n, size=224, seed=data_seed)
            ref_ds = R.read_broden(root)
            model = _resnet18(weight_seed)
            for layer in ("layer3", "layer4"):
                t0 = time.perf_counter()
                ref = R.netdissect(ref_ds, R.activations(ref_ds, _forward(model, f"net.{layer}")))
                new = dissect(model, BrodenDataset(root), [layer], progress=False,
                              batch_size=16)
                old = dissect(model, BrodenDataset(root, primary="count", keep_empty_rows=True),
                              [layer], progress=False, batch_size=16, denominator="annotated",
                              ties="first")
                cfg = f"data seed {data_seed}, weights seed {weight_seed}, {layer}, {n} images"
                a_new, d_new = _compare(new.units, ref["units"])
                a_old, d_old = _compare(old.units, ref["units"])
                rows.append({"benchmark": "fidelity", "config": f"netdissect agreement: {cfg}",
                             "value": round(a_new, 2), "unit": "% units",
                             "baseline": round(a_old, 2), "target": ">= 99.5"})
                rows.append({"benchmark": "fidelity", "config": f"netdissect max |dIoU|: {cfg}",
                             "value": float(f"{d_new:.3g}"), "unit": "IoU",
                             "baseline": float(f"{d_old:.3g}"), "target": "<= 0.002",
                             "seconds": round(time.perf_counter() - t0, 1)})
    return rows


def region_nss_rows(quick: bool) -> list[dict]:
    from neuroprobe.concepts.synthetic import SyntheticWorld
    from neuroprobe.dissect import dissect

    n = 6 if quick else 8
    ds = SyntheticWorld(seed=7, n=n, image_size=224, mask_size=112, observers=15)
    model = _resnet18(0)
    items = [ds[i] for i in range(n)]
    fwd = _forward(model, "net.layer3")
    with torch.no_grad():   # batched as in the engine (float32 convolutions depend on it)
        images = torch.stack([it["image"] for it in items])
        maps = list(torch.cat([fwd(images[s:s + 8]) for s in range(0, n, 8)]).numpy())
    ref = R.region_nss_reference(maps, [it["layers"].numpy() for it in items],
                                 [it["instances"].numpy() for it in items],
                                 [it["fixations"].numpy() for it in items], ds.image_size,
                                 ds.labels.max_id + 1)
    out = {}
    for res_, reg in (("image", "instance"), ("mask", "label")):
        r = dissect(model, ds, ["layer3"], score="region-nss", progress=False, batch_size=8,
                    nss_resolution=res_, nss_regions=reg)
        got = r.stats["layer3"]["nss"].mean().numpy()
        both = ~np.isnan(ref) & ~np.isnan(got)
        best_same = np.mean([np.argmax(got[:, j]) == np.argmax(ref[:, j])
                             for j in np.nonzero(both.any(0))[0]])
        out[res_] = (float(np.nanmax(np.abs(got - ref))), 100.0 * float(best_same))
    cfg = f"synthetic world 224 px, {n} images, ResNet-18 layer3"
    return [{"benchmark": "fidelity", "config": f"region-NSS max |d| vs the study: {cfg}",
             "value": float(f"{out['image'][0]:.3g}"), "unit": "NSS",
             "baseline": float(f"{out['mask'][0]:.3g}"), "target": "<= 1e-4"},
            {"benchmark": "fidelity", "config": f"region-NSS same best unit per label: {cfg}",
             "value": round(out["image"][1], 1), "unit": "% labels",
             "baseline": round(out["mask"][1], 1)}]


def run(quick: bool = False) -> list[dict]:
    """Rows for the benchmark runner (``baseline``: the rules before issue #18)."""
    return netdissect_rows(quick) + region_nss_rows(quick)


if __name__ == "__main__":   # pragma: no cover
    for row in run():
        print(row)
