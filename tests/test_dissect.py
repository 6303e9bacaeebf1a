"""The dissection engine against brute-force references and known answers."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuroprobe.concepts.base import ConceptDataset, Label, LabelTable
from neuroprobe.dissect import dissect
from neuroprobe.errors import UserError
from neuroprobe.tally import fixation_pixels, iou_counts, region_nss, upsample

CATS = ["object", "part", "scene"]
LABELS = [Label(1, "box", "object"), Label(2, "disc", "object"), Label(3, "handle", "part"),
          Label(4, "street", "scene"), Label(5, "office", "scene"), Label(7, "lid", "part")]


class Tiny(ConceptDataset):
    """Random images with two label layers (object, part), whole-image scene labels; some
    images carry no part annotation at all (their part flag is False)."""

    name = "tiny"

    def __init__(self, n=24, image=16, mask=8, seed=0, fixations=False):
        self.labels = LabelTable(LABELS, CATS)
        self.image_size, self.mask_size = (image, image), (mask, mask)
        self.n, self.seed, self.has_fixations = n, seed, fixations

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.seed * 1000 + i)
        h, w = self.mask_size
        image = torch.rand((3, *self.image_size), generator=g)
        obj = torch.randint(0, 3, (h, w), generator=g)
        obj[: h // 2] = 0                                   # unlabelled half
        part = torch.zeros((h, w), dtype=torch.int64)
        has_part = i % 3 != 0
        if has_part:
            part[obj > 0] = torch.where(torch.rand((h, w), generator=g) > 0.5, 3, 7)[obj > 0]
        whole = torch.tensor([4 + i % 2]) if i % 4 else torch.zeros(0, dtype=torch.int64)
        cats = torch.tensor([True, has_part, bool(i % 4)])
        item = {"image": image, "layers": torch.stack([obj, part]), "whole": whole,
                "categories": cats, "id": f"tiny:{i}", "fixations": None, "observers": None}
        if self.has_fixations:
            item["fixations"] = torch.rand((5, 2), generator=g) * (self.image_size[0] - 1)
            item["observers"] = torch.zeros(5, dtype=torch.int64)
        return item


def tiny_model(units=5, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.AvgPool2d(4), nn.Conv2d(3, units, 1), nn.ReLU()).eval()


def run_tiny(out_dir=None, **kw):
    """The configuration the resume test runs in a subprocess (and in-process)."""
    kw.setdefault("batch_size", 4)
    return dissect(tiny_model(), Tiny(), ["1"], out_dir=out_dir, progress=False, **kw)


# -- brute-force reference ---------------------------------------------------------------------

def np_bilinear(a: np.ndarray, size) -> np.ndarray:
    """Bilinear upsampling, pixel centres aligned, edges clamped, in float32 NumPy."""
    def axis(n_in, n_out):
        scale = np.float32(n_in) / np.float32(n_out)
        src = np.maximum(scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5))
                         - np.float32(0.5), np.float32(0))
        i0 = np.minimum(src.astype(np.int64), n_in - 1)
        w1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
        return i0, np.minimum(i0 + 1, n_in - 1), np.float32(1) - w1, w1
    y0, y1, wy0, wy1 = axis(a.shape[0], size[0])
    x0, x1, wx0, wx1 = axis(a.shape[1], size[1])
    out = np.zeros(size, np.float32)
    for y in range(size[0]):
        for x in range(size[1]):
            t0 = a[y0[y], x0[x]] * wx0[x] + a[y0[y], x1[x]] * wx1[x]
            t1 = a[y1[y], x0[x]] * wx0[x] + a[y1[y], x1[x]] * wx1[x]
            out[y, x] = t0 * wy0[y] + t1 * wy1[y]
    return out


def test_upsample_definition_and_active_cells():
    from neuroprobe.tally import active_pixels, upsample

    g = torch.Generator().manual_seed(0)
    for h, H in ((4, 8), (7, 112), (5, 13), (14, 112)):
        a = torch.randn((3, 4, h, h), generator=g)
        up = upsample(a, (H, H))
        ref = F.interpolate(a, size=(H, H), mode="bilinear", align_corners=False)
        assert (up - ref).abs().max() < 1e-5
        np.testing.assert_array_equal(up[1, 2].numpy(), np_bilinear(a[1, 2].numpy(), (H, H)))
        thr = torch.quantile(a.transpose(0, 1).reshape(4, -1), 0.9, dim=1)
        b, u, p = active_pixels(a, thr, (H, H))
        full = (up > thr[None, :, None, None]).reshape(3, 4, -1).nonzero(as_tuple=True)
        got = sorted(zip(b.tolist(), u.tolist(), p.tolist()))
        assert got == sorted(zip(*(t.tolist() for t in full))) and got


def reference(ds, model, layer, thresholds, mode, denominator):
    """Per image, per unit, per pixel loops in NumPy."""
    U = None
    L = ds.labels.max_id + 1
    cat_of = ds.labels.category_index()
    C = len(CATS)
    for i in range(len(ds)):
        item = ds[i]
        with torch.no_grad():
            a = model[:2](item["image"][None])[0]
        U = a.shape[0]
        if i == 0:
            inter = np.zeros((U, L), np.int64)
            act = np.zeros((U, C if mode == "netdissect" else 1), np.int64)
            truth = np.zeros(L, np.int64)
        layers = item["layers"].numpy()
        whole = [int(x) for x in item["whole"] if x > 0]
        hw = layers.shape[1] * layers.shape[2]
        for lay in layers:
            for lab in lay.ravel():
                if lab > 0:
                    truth[lab] += 1
        for lab in whole:
            truth[lab] += hw
        for u in range(U):
            up = np_bilinear(a[u].numpy(), ds.mask_size)
            on = up > thresholds[u]
            touched = set()
            for lay in layers:
                for y in range(on.shape[0]):
                    for x in range(on.shape[1]):
                        if on[y, x] and lay[y, x] > 0:
                            inter[u, lay[y, x]] += 1
                            touched.add(cat_of[lay[y, x]])
            count = int(on.sum())
            for lab in whole:
                inter[u, lab] += count
                if count:
                    touched.add(cat_of[lab])
            if mode == "unrestricted":
                act[u, 0] += count
            else:
                # NetDissect (count_act_with_labelcat): the image holds a label of category c
                held = {cat_of[lab] for lay in layers for lab in lay.ravel() if lab > 0}
                held |= {cat_of[lab] for lab in whole}
                for c in range(C):
                    use = {"lite": c in touched, "netdissect": c in held,
                           "annotated": bool(item["categories"][c])}[denominator]
                    if use:
                        act[u, c] += count
    return inter, act, truth


@pytest.mark.parametrize("mode,denominator", [("netdissect", None), ("netdissect", "lite"),
                                              ("netdissect", "annotated"),
                                              ("unrestricted", None)])
def test_engine_tallies_equal_brute_force(mode, denominator):
    ds, model = Tiny(n=10), tiny_model()
    res = dissect(model, ds, ["1"], mode=mode, denominator=denominator, batch_size=3,
                  progress=False)
    thr = res.thresholds["1"].numpy()
    tally = res.stats["1"]["tally"]
    inter, act, truth = reference(ds, model, "1", thr, mode, denominator or "netdissect")
    assert inter.sum() > 0
    np.testing.assert_array_equal(tally.inter.numpy(), inter)
    np.testing.assert_array_equal(tally.act.numpy(), act)
    np.testing.assert_array_equal(tally.label.numpy(), truth)
    # thresholds: exact quantiles (the sketch has not compacted this little data)
    with torch.no_grad():
        a = torch.cat([model[:2](ds[i]["image"][None]) for i in range(len(ds))])
    if mode == "netdissect":
        vals = a.transpose(0, 1).reshape(a.shape[1], -1).numpy()
        expect = np.quantile(vals, 0.995, axis=1)
    else:
        up = upsample(a, ds.mask_size)
        vals = up.transpose(0, 1).reshape(a.shape[1], -1).numpy()
        assert vals.shape[1] < 4096
        expect = np.quantile(vals, 0.99, axis=1)
    np.testing.assert_allclose(thr, expect, rtol=1e-6, atol=1e-6)
    # IoU and the best labels follow from the tallies
    cat_of = ds.labels.category_index()
    row = res.units[0]
    j = max((lab.id for lab in LABELS if lab.category == "object"),
            key=lambda l: (tally.iou()[0, l].item(), -l))
    a_ = act[0, cat_of[j]] if mode == "netdissect" else act[0, 0]
    iou = inter[0, j] / (a_ + truth[j] - inter[0, j])
    assert row["object-iou"] == pytest.approx(iou)
    # an all-zero category names no label (NetDissect's label 0, named '')
    assert row["object-label"] == (ds.labels.name(j) if iou > 0 else "")


def test_known_answer_planted_unit():
    class Planted(ConceptDataset):
        name = "planted"

        def __init__(self):
            self.labels = LabelTable([Label(1, "ground", "object"), Label(2, "X", "part")],
                                     ["object", "part"])
            self.image_size, self.mask_size = (40, 40), (20, 20)

        def __len__(self):
            return 40

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            obj = torch.zeros((20, 20), dtype=torch.int64)
            obj[10:] = 1
            part = torch.zeros((20, 20), dtype=torch.int64)
            y, x = torch.randint(0, 19, (2,), generator=g).tolist()
            part[y, x: x + 2] = 2                               # 2 of 400 pixels: 0.5 %
            image = torch.zeros((3, 40, 40))
            image[0] = (part == 2).float().repeat_interleave(2, 0).repeat_interleave(2, 1)
            image[1] = torch.rand((40, 40), generator=g)
            return {"image": image, "layers": torch.stack([obj, part]),
                    "whole": torch.zeros(0, dtype=torch.int64),
                    "categories": torch.tensor([True, True]), "id": str(i),
                    "fixations": None, "observers": None}

    conv = nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = 1.0      # unit 0 = the mask of X
        conv.weight[1, 1] = 1.0      # unit 1 = noise
    model = nn.Sequential(nn.AvgPool2d(2), conv)
    res = dissect(model, Planted(), ["1"], progress=False)
    u0, u1 = res.units
    assert (u0["label"], u0["category"]) == ("X", "part")
    assert u0["score"] >= 0.99 and u0["detector"] == 1
    assert u1["score"] < 0.04 and u1["detector"] == 0


def test_whole_image_labels_label_zero_and_denominators():
    # 2 images, 1 unit active on every pixel (4 pixels each)
    maps = torch.ones((2, 1, 2, 2))
    layers = torch.zeros((2, 1, 2, 2), dtype=torch.int64)
    layers[0, 0, 0, 0] = 1                       # image 0: one pixel of label 1 (category 0)
    whole = torch.tensor([[0], [3]])             # image 1: whole-image label 3 (category 1)
    cats = torch.tensor([[True, True], [False, True]])
    cat_of = torch.tensor([-1, 0, 0, 1])
    thr = torch.tensor([0.5])
    inter, act = iou_counts(maps, thr, layers, whole, cats, cat_of, 4, 2, "annotated")
    assert inter.tolist() == [[0, 1, 0, 4]]      # label 0 ignored; whole label: all 4 pixels
    assert act.tolist() == [[4, 8]]              # image 1 carries no category-0 annotation
    # NetDissect: image 0 holds no label of category 1 (its flag says annotated, but no label)
    inter2, act = iou_counts(maps, thr, layers, whole, cats, cat_of, 4, 2, "netdissect")
    assert torch.equal(inter2, inter) and act.tolist() == [[4, 4]]
    inter, act = iou_counts(maps, thr, layers, whole, cats, cat_of, 4, 2, "lite")
    assert act.tolist() == [[4, 4]]              # image 0 touches no category-1 label
    inter, act = iou_counts(maps, thr, layers, whole, cats, cat_of, 4, 2, "all")
    assert act.tolist() == [[8, 8]]
    # a unit whose maximum stays below threshold contributes nothing
    inter, act = iou_counts(maps * 0.4, thr, layers, whole, cats, cat_of, 4, 2, "netdissect")
    assert inter.sum() == 0 and act.sum() == 0


def test_region_nss_hand_computed():
    maps = torch.tensor([[[[0.0, 1.0], [2.0, 5.0]]]])               # 1 image, 1 unit, 2x2
    layers = torch.tensor([[[[1, 0], [2, 2]]]])                      # mask 2x2, image 4x4
    fix = [torch.tensor([[0.0, 0.0], [3.0, 3.0], [1.0, 2.0], [3.0, 0.0]])]
    assert fixation_pixels(fix[0], (4, 4), (2, 2)).tolist() == [0, 3, 2, 1]
    total, regions = region_nss(maps, torch.tensor([0.0]), torch.tensor([5.0]), layers, fix,
                                (4, 4), 3)
    # normalised map 0, .2, .4, 1: mean .4, std (ddof 1) sqrt(.56 / 3)
    std = np.sqrt(0.56 / 3)
    assert regions.tolist() == [0, 1, 1]
    assert total[0, 1].item() == pytest.approx(-0.4 / std)
    assert total[0, 2].item() == pytest.approx((0.6 / std + 0.0) / 2)
    assert total[0, 0].item() == 0.0


def test_region_nss_equals_explicit_upsampled_maps():
    g = torch.Generator().manual_seed(3)
    maps = torch.rand((2, 3, 4, 5), generator=g)
    layers = torch.randint(0, 4, (2, 2, 16, 20), generator=g)
    fix = [torch.rand((7, 2), generator=g) * torch.tensor([39.0, 31.0]), None]
    lo, hi = maps.amin((0, 2, 3)), maps.amax((0, 2, 3))
    total, regions = region_nss(maps, lo, hi, layers, fix, (32, 40), 4)
    up = upsample((maps[0] - lo[:, None, None]) / (hi - lo)[:, None, None], (16, 20))
    z = (up - up.mean((1, 2), keepdim=True)) / up.std((1, 2), keepdim=True)
    pix = fixation_pixels(fix[0], (32, 40), (16, 20))
    zf = z.reshape(3, -1)[:, pix]
    labs = layers[0].reshape(2, -1)[:, pix]
    for lab in range(1, 4):
        inside = (labs == lab).any(0)
        assert regions[lab] == int(inside.any())
        if inside.any():
            np.testing.assert_allclose(total[:, lab].numpy(), zf[:, inside].mean(1).numpy(),
                                       atol=1e-5)


def test_region_nss_engine_table(tmp_path):
    res = dissect(tiny_model(), Tiny(n=8, fixations=True), ["1"], score="region-nss",
                  top_units=2, nss_threshold=0.5, batch_size=3, out_dir=tmp_path, progress=False)
    tab = list(csv.DictReader(open(tmp_path / "region_nss.csv")))
    assert tab and {"label", "top_mean_nss", "units_above", "regions"} <= set(tab[0])
    nss = res.stats["1"]["nss"].mean().numpy()
    for row in tab:
        col = nss[:, ds_id(row["label"])]
        assert float(row["top_mean_nss"]) == pytest.approx(np.sort(col)[::-1][:2].mean())
        assert int(row["units_above"]) == int((col > 0.5).sum())
    both = dissect(tiny_model(), Tiny(n=8, fixations=True), ["1"], score="both", top_units=2,
                   nss_threshold=0.5, batch_size=3, progress=False)
    iou = dissect(tiny_model(), Tiny(n=8, fixations=True), ["1"], batch_size=3, progress=False)
    assert both.nss_table == res.nss_table
    for b, i, r in zip(both.units, iou.units, res.units):
        assert {k: v for k, v in b.items() if not k.startswith("nss-")} == i
        assert (b["nss-label"], b["nss-score"]) == (r["label"], r["score"])
    with pytest.raises(UserError, match="no fixations"):
        dissect(tiny_model(), Tiny(n=4), ["1"], score="region-nss", progress=False)


def ds_id(name):
    return next(lab.id for lab in LABELS if lab.name == name)


def test_results_files_and_config_guard(tmp_path):
    res = run_tiny(tmp_path, iou_threshold=0.01)
    rows = list(csv.DictReader(open(tmp_path / "units.csv")))
    assert len(rows) == 5
    for col in ("layer", "unit", "label", "category", "score", "threshold", "object-label",
                "object-iou", "part-label", "part-iou", "scene-iou"):
        assert col in rows[0]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["iou_threshold"] == 0.01 and summary["config"]["quantile"] == 0.005
    assert summary["config"]["model"]["sha256"] and summary["versions"]["torch"]
    assert sum(summary["detectors"].values()) == sum(int(r["detector"]) for r in rows)
    assert (tmp_path / "concepts.png").stat().st_size > 1000
    assert not (tmp_path / ".state" / "spool").exists()
    again = run_tiny(tmp_path, iou_threshold=0.01)      # same config: from the stored state
    assert again.units == res.units
    with pytest.raises(UserError, match="another configuration"):
        run_tiny(tmp_path, iou_threshold=0.05)
    run_tiny(tmp_path, iou_threshold=0.05, overwrite=True)
    assert json.loads((tmp_path / "summary.json").read_text())["config"]["iou_threshold"] == 0.05


def test_bad_input():
    model, ds = tiny_model(), Tiny(n=4)
    with pytest.raises(UserError, match="unknown layer '1x'.*closest names: 1"):
        dissect(model, ds, ["1x"], progress=False)
    flat = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4))
    with pytest.raises(UserError, match="not spatial"):
        dissect(flat, ds, ["2"], progress=False)
    fixed = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4), nn.Unflatten(1, (4, 1, 1)))
    with pytest.raises(UserError, match="do not fit"):
        dissect(fixed, ds, ["2"], progress=False)
    nan = nn.Sequential(nn.AvgPool2d(4), nn.Conv2d(3, 3, 1))
    with torch.no_grad():
        nan[1].bias[2] = float("nan")
    with pytest.raises(UserError, match="NaN activations in layer '1', unit 2"):
        dissect(nan, ds, ["1"], progress=False)
    with pytest.raises(UserError, match="quantile"):
        dissect(model, ds, ["1"], quantile=1.5, progress=False)


_KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import test_dissect as T
def hook(phase, j):
    if phase == {phase!r} and j == {batch}:
        os.kill(os.getpid(), signal.SIGKILL)
T.run_tiny({out!r}, checkpoint_every=2, after_batch=hook)
"""


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    ref = tmp_path / "ref"
    run_tiny(ref, checkpoint_every=2)
    out = tmp_path / "run"
    env = {**os.environ, "NEUROPROBE_QUIET": "1"}
    tests = str(Path(__file__).parent)
    for phase, batch in (("record", 4), ("tally", 2)):
        script = _KILL_SCRIPT.format(tests=tests, phase=phase, batch=batch, out=str(out))
        proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        state = torch.load(out / ".state" / "state.pt", weights_only=True)
        assert state["phase"] == phase and state["next_batch"] > 0
    assert not (out / "units.csv").exists()
    run_tiny(out, checkpoint_every=2)
    assert (out / "units.csv").read_text() == (ref / "units.csv").read_text()


def test_public_signature_lists_every_option():
    import inspect

    public = inspect.signature(dissect)
    assert public == inspect.signature(dissect.__wrapped__)  # the lock wrapper hides nothing
    assert not any(p.kind is p.VAR_KEYWORD for p in public.parameters.values())
    assert {"mode", "quantile", "out_dir", "keep", "top_k"} <= set(public.parameters)
    assert "Parameters" in (dissect.__doc__ or "")


def test_checkpoints_by_time_when_no_batch_interval(tmp_path):
    def watch(out, seen):
        """After every batch: the (phase, next batch) of the checkpoint, when it changed."""
        def hook(phase, j):
            path = out / ".state" / "state.pt"
            if path.is_file() and path.stat().st_mtime_ns != seen.get("mtime"):
                seen["mtime"] = path.stat().st_mtime_ns
                state = torch.load(path, weights_only=True)
                seen.setdefault("saved", []).append(state["phase"])
        return hook

    slow, fast = {}, {}
    run_tiny(tmp_path / "slow", checkpoint_seconds=1e9,
             after_batch=watch(tmp_path / "slow", slow))
    assert slow["saved"] == ["tally", "done"]          # only the end of each pass
    run_tiny(tmp_path / "fast", checkpoint_seconds=0.0,
             after_batch=watch(tmp_path / "fast", fast))
    assert fast["saved"].count("record") >= 2 and fast["saved"].count("tally") >= 2
    assert (tmp_path / "fast" / "units.csv").read_text() == \
        (tmp_path / "slow" / "units.csv").read_text()


def test_concepts_figure_explains_itself():
    """concepts.png (issue 16): model and concept set in the title, integer unit axes, bars
    coloured by category with a legend, singular "1 concept"."""
    import matplotlib.colors as mc
    import matplotlib.pyplot as plt

    from neuroprobe.results import CATEGORY_COLOURS, counts_figure

    summary = {"config": {"model": {"spec": "demo"}, "concepts": {"name": "synthetic"}},
               "detectors_per_concept": {"b2": {"head": 3, "red": 1}, "b3": {"car": 1},
                                         "b4": {}},
               "detectors": {"b2": 4, "b3": 1, "b4": 0}, "units": {"b2": 8, "b3": 8, "b4": 8}}
    units = [{"label": "head", "category": "part", "detector": True},
             {"label": "red", "category": "color", "detector": True},
             {"label": "car", "category": "object", "detector": True}]
    fig = counts_figure(summary, "netdissect mode", units)
    try:
        head = fig._suptitle.get_text()
        assert "demo" in head and "synthetic" in head and "netdissect" in head
        axes = [ax for ax in fig.axes if ax.get_title()]
        assert [ax.get_title().split("\n")[0] for ax in axes] == ["b2", "b3", "b4"]
        assert "1 concept" in axes[1].get_title() and "1 concepts" not in axes[1].get_title()
        for ax in axes:
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks)
        colours = {ax.get_yticklabels()[i].get_text(): mc.to_hex(bar.get_facecolor())
                   for ax in axes[:2] for i, bar in enumerate(ax.patches)}
        assert colours == {"head": CATEGORY_COLOURS["part"], "red": CATEGORY_COLOURS["color"],
                           "car": CATEGORY_COLOURS["object"]}
        legend = fig.legends[0]
        assert sorted(t.get_text() for t in legend.get_texts()) == ["color", "object", "part"]
        assert axes[2].texts[0].get_text() == "no detector units"
    finally:
        plt.close(fig)


def test_concepts_figure_title_fits_a_one_layer_figure():
    """A long model spec over a single narrow panel: the title wraps inside the figure instead
    of running off both edges (seen in a gallery report of torchvision:resnet18?weights=none)."""
    import matplotlib.pyplot as plt

    from neuroprobe.results import counts_figure

    spec = "torchvision:resnet18?weights=none&seed=12345"
    summary = {"config": {"model": {"spec": spec}, "concepts": {"name": "broden"}},
               "detectors_per_concept": {"net.layer4": {"wheel": 2, "food": 1}},
               "detectors": {"net.layer4": 3}, "units": {"net.layer4": 512}}
    fig = counts_figure(summary, "netdissect mode, detectors: IoU >= 0.04")
    try:
        fig.canvas.draw()
        box = fig._suptitle.get_window_extent(fig.canvas.get_renderer())
        assert 0 <= box.x0 and box.x1 <= fig.bbox.width
        text = fig._suptitle.get_text()
        assert spec in text.replace("\n", " ") and text.count("\n") >= 2
    finally:
        plt.close(fig)


def test_concepts_figure_without_any_detector_is_one_short_message():
    """No detector in any layer: no row of empty axes, one line per layer saying so."""
    import matplotlib.pyplot as plt

    from neuroprobe.results import counts_figure

    summary = {"config": {"model": {"spec": "demo"}, "concepts": {"name": "eyecrowd"}},
               "detectors_per_concept": {"layer1": {}, "layer2": {}, "layer3": {}},
               "detectors": {"layer1": 0, "layer2": 0, "layer3": 0},
               "units": {"layer1": 16, "layer2": 32, "layer3": 64}}
    fig = counts_figure(summary, "netdissect mode")
    try:
        assert fig.axes == [] and fig.get_figheight() < 3
        text = fig.texts[-1].get_text()
        assert "no detector units in any layer" in text and "layer3: 0 of 64 units" in text
        assert "demo" in fig._suptitle.get_text()
    finally:
        plt.close(fig)


class _ViewNet(nn.Module):
    """A convolution whose output goes through ``view``, which channels-last tensors refuse."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        y = self.conv(F.avg_pool2d(x, 4))
        return self.act(y.view(y.shape[0], -1).view(y.shape))


def test_memory_format_of_the_run_and_the_model_given_back():
    """A convolutional network runs channels-last (recorded in the configuration, its numbers
    those of a contiguous run up to rounding) and comes back with contiguous parameters; a
    network that cannot take channels-last tensors runs contiguous."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.AvgPool2d(4), nn.Conv2d(3, 5, 3, padding=1), nn.ReLU()).eval()
    res = dissect(model, Tiny(n=12), ["2"], batch_size=4, progress=False)
    assert res.summary["config"]["memory_format"] == "channels_last"
    assert all(p.is_contiguous() for p in model.parameters())
    assert not model[1].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():   # the thresholds of a contiguous forward pass, up to rounding
        a = torch.cat([model[:2](Tiny(n=12)[i]["image"][None]) for i in range(12)])
    expect = np.quantile(a.transpose(0, 1).reshape(5, -1).numpy(), 0.995, axis=1)
    np.testing.assert_allclose(res.thresholds["2"].numpy(), expect, rtol=1e-5, atol=1e-6)

    view = _ViewNet().eval()
    res = dissect(view, Tiny(n=8), ["act"], batch_size=4, progress=False)
    assert res.summary["config"]["memory_format"] == "contiguous"
    assert all(p.is_contiguous() for p in view.parameters())
    assert len(res.units) == 4


def test_compiled_tally_and_tensor_tally_give_the_same_run(tmp_path, monkeypatch):
    """A dissection counted by the compiled CPU loop (two threads of image groups) writes the
    same results, byte for byte, as one counted with tensor operations."""
    pytest.importorskip("numba", reason="the compiled tally needs Numba")
    import neuroprobe.tally as T

    def run(out):
        dissect(tiny_model(), Tiny(n=20), ["1"], batch_size=6, out_dir=out, progress=False,
                denominator="annotated")
        return {name: (out / name).read_bytes()
                for name in ("units.csv", "scores.npz", "image_counts.npz", "top_images.npz")}

    before = torch.get_num_threads()
    torch.set_num_threads(2)   # (the compiled loop splits each batch into 2 image groups)
    try:
        compiled = run(tmp_path / "compiled")
    finally:
        torch.set_num_threads(before)
    monkeypatch.setattr(T._kernel, "available", lambda: False)
    tensor = run(tmp_path / "tensor")
    assert compiled == tensor


def test_maps_kept_in_memory_give_the_run_of_maps_kept_on_disk(tmp_path):
    """keep="memory": pass 2 reads the labels alone and tallies the maps kept from pass 1;
    the results equal those of the spool on disk and of a second forward pass, byte for byte,
    also in skip mode with an unreadable item and after a resume from a checkpoint in pass 1
    (whose maps are gone: that run recomputes them)."""
    def files(out):
        return {name: (out / name).read_bytes()
                for name in ("units.csv", "scores.npz", "image_counts.npz", "top_images.npz")}

    class Reads(Tiny):
        """Counts what is read: whole items and labels alone."""
        def __init__(self, **kw):
            super().__init__(**kw)
            self.items, self.alone = 0, 0

        def item(self, index, **kw):
            self.items += 1
            return super().item(index, **kw)

        def labels_of(self, index):   # (not through item: what a cached source does)
            self.alone += 1
            out = dict(self[index])
            del out["image"]
            return out

    runs = {}
    for keep in ("disk", "memory", "recompute"):
        ds = Reads(n=14)
        dissect(tiny_model(), ds, ["1"], batch_size=4, out_dir=tmp_path / keep, keep=keep,
                progress=False)
        runs[keep] = files(tmp_path / keep)
        if keep == "memory":   # pass 1 reads the 14 items, pass 2 their labels alone
            assert (ds.items, ds.alone) == (14, 14)
    assert runs["memory"] == runs["disk"] == runs["recompute"]

    class Broken(Tiny):
        """Item 5's mask cannot be decoded."""
        def __getitem__(self, i):
            if i == 5:
                from neuroprobe.errors import DataFormatError
                raise DataFormatError("mask of tiny:5 is truncated")
            return super().__getitem__(i)

    skipped = {}
    for keep in ("disk", "memory"):
        res = dissect(tiny_model(), Broken(n=14), ["1"], batch_size=4, keep=keep,
                      out_dir=tmp_path / f"skip-{keep}", on_bad_image="skip", progress=False)
        assert [s["index"] for s in res.skipped] == [5]
        skipped[keep] = files(tmp_path / f"skip-{keep}")
    assert skipped["memory"] == skipped["disk"]

    class Stop(Exception):
        pass

    def stop_in_record(phase, j):
        if phase == "record" and j == 1:
            raise Stop

    out = tmp_path / "resumed"
    with pytest.raises(Stop):
        dissect(tiny_model(), Tiny(n=14), ["1"], batch_size=4, out_dir=out, keep="memory",
                checkpoint_every=1, after_batch=stop_in_record, progress=False)
    dissect(tiny_model(), Tiny(n=14), ["1"], batch_size=4, out_dir=out, keep="memory",
            progress=False)
    assert files(out) == runs["disk"]
