"""Per-unit gallery cards, top images, the gallery of a run folder and both CLI commands."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from neuroprobe.concepts.base import ConceptDataset, Label, LabelTable
from neuroprobe.errors import UserError
from neuroprobe.visualize import gallery as G


pytestmark = pytest.mark.usefixtures("one_thread")


class Squares(ConceptDataset):
    """Image i: grey with a white square of side 4 + i at a position that moves with i."""

    name = "squares"
    image_size = (32, 32)
    mask_size = (16, 16)

    def __init__(self, n=6):
        self.n = n
        self.labels = LabelTable([Label(1, "square", "object")], ["object"])

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        img = torch.full((3, 32, 32), 0.2)
        s = 4 + i
        y, x = 2 + i, 3 + 2 * i
        img[:, y:y + s, x:x + s] = 1.0
        layers = torch.zeros(1, 16, 16, dtype=torch.int64)
        layers[0, y // 2:(y + s) // 2, x // 2:(x + s) // 2] = 1
        return {"image": img, "layers": layers, "whole": torch.zeros(0, dtype=torch.int64),
                "categories": torch.tensor([True]), "fixations": None, "observers": None,
                "id": f"sq{i}"}


def _model():
    """conv 'bright' (unit 0 = mean brightness - 0.5, unit 1 = its negative), 2x downsampled."""
    conv = nn.Conv2d(3, 2, 2, stride=2)
    with torch.no_grad():
        conv.weight[:] = 0
        conv.weight[0] = 1 / 12
        conv.weight[1] = -1 / 12
        conv.bias[:] = torch.tensor([-0.5, 0.5])
    model = nn.Sequential()
    model.add_module("bright", conv)
    model.add_module("relu", nn.ReLU())
    return model.eval()


def test_outline_is_the_boundary_ring():
    m = np.zeros((10, 10), bool)
    m[2:6, 3:7] = True
    ring = G.outline(m)
    assert ring.sum() == 12 and ring[2:6, 3:7].sum() == 12
    assert not ring[3:5, 4:6].any()
    assert not G.outline(np.zeros((4, 4), bool)).any()


def test_unit_card_outlines_the_thresholded_region():
    images = torch.zeros(2, 3, 16, 16)
    maps = torch.zeros(2, 16, 16)
    maps[0, 4:8, 4:8] = 1.0
    card = G.unit_card(images, maps, 0.5, title="layer:0 square", subtitle="IoU 0.5",
                       am_image=torch.ones(3, 8, 8), attribution=np.zeros((16, 16, 3), np.uint8),
                       tile=16, scores=[1.0, 0.0])
    a = np.asarray(card)
    pad, head = 4, 40     # issue 16: a taller header and two caption lines under the tiles
    assert card.size[0] == pad + 4 * (16 + pad) + 8
    assert card.size[1] >= head + 16 + 2 * 10 + pad
    tile0 = a[head:head + 16, pad:pad + 16]
    yellow = np.all(tile0 == G.OUTLINE_RGB, axis=-1)
    assert yellow[4:8, 4:8].sum() == 12 and yellow.sum() == 12
    tile1 = a[head:head + 16, 2 * pad + 16:2 * pad + 32]
    assert not np.all(tile1 == G.OUTLINE_RGB, axis=-1).any()   # nothing above threshold
    am_tile = a[head:head + 16, 3 * pad + 32 + 8:3 * pad + 48 + 8]
    assert (am_tile == 255).all()


def test_unit_card_states_the_attribution_colour_key():
    """A signed attribution gets a blue-to-red key under its tile, a magnitude one the
    sequential map; the caption names the method."""
    from neuroprobe.visualize import attribute as at

    images, maps = torch.zeros(1, 3, 16, 16), torch.zeros(1, 16, 16)
    heat = torch.linspace(-1, 1, 96).repeat(96, 1)
    tile = at.overlay(torch.full((3, 96, 96), 0.5), heat, signed=True)
    keys = {}
    for signed in (True, False):
        card = G.unit_card(images, maps, 0.5, title="t", attribution=tile, tile=96,
                           attribution_caption="IG on #1", attribution_signed=signed)
        a = np.asarray(card).astype(int)
        x0 = 4 + 96 + 4 + 8
        foot = a[40 + 96:, x0:x0 + 96]
        keys[signed] = foot
        colourful = (foot.max(-1) - foot.min(-1)) > 100
        assert colourful.sum() > 100                            # a colour bar is drawn
    red = (keys[True][..., 0] > 150) & (keys[True][..., 2] < 100)
    blue = (keys[True][..., 2] > 150) & (keys[True][..., 0] < 100)
    assert red.any() and blue.any()
    assert not np.array_equal(keys[True], keys[False])
    # the tile itself: red right half, blue left half, greyed middle
    t = tile.astype(int)
    assert t[48, 90, 0] > t[48, 90, 2] + 40 and t[48, 5, 2] > t[48, 5, 0] + 40
    assert abs(t[48, 48, 0] - t[48, 48, 2]) < 10


def test_parse_units():
    assert G.parse_units("layer4:12, layer4:40") == [("layer4", 12), ("layer4", 40)]
    assert G.parse_units("a.b:2-4") == [("a.b", 2), ("a.b", 3), ("a.b", 4)]
    for bad in ("layer4", "layer4:x", ":3", ""):
        with pytest.raises(UserError):
            G.parse_units(bad)


def test_top_images_match_brute_force():
    model, data = _model(), Squares(6)
    top = G.top_images(model, data, ["relu"], k=3, batch_size=4, show_progress=False)
    values, index = top["relu"]
    x = torch.stack([data[i]["image"] for i in range(6)])
    with torch.no_grad():
        peak = model(x).amax((2, 3))                  # (6, 2)
    ref_v, ref_i = peak.t().sort(dim=1, descending=True, stable=True)
    torch.testing.assert_close(values, ref_v[:, :3])
    assert index[0].tolist() == ref_i[0, :3].tolist()


def _write_run(run, units, score="iou", spec="tiny"):
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "units.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["layer", "unit", "label", "category", "score", "threshold",
                                "detector"])
        w.writeheader()
        for row in units:
            w.writerow(row)
    (run / "summary.json").write_text(json.dumps({
        "config": {"model": {"spec": spec}, "concepts": {"name": "squares", "n": 6},
                   "mode": "netdissect", "score": score, "iou_threshold": 0.04},
        "versions": {"neuroprobe": "test"}}))


def test_make_gallery_end_to_end(tmp_path):
    run = tmp_path / "run"
    _write_run(run, [
        {"layer": "relu", "unit": 0, "label": "square", "category": "object", "score": 0.4,
         "threshold": 0.1, "detector": 1},
        {"layer": "relu", "unit": 1, "label": "<b>grey</b>", "category": "object",
         "score": 0.01, "threshold": "", "detector": 0}])
    res = G.make_gallery(run, model=_model(), dataset=Squares(6), top_k=3, maximize_steps=24,
                         maximize_size=16, n_steps=4, tile=32, show_progress=False)
    assert res.out_dir == run / "gallery"
    assert [p.name for p in res.pngs] == ["relu-0000.png", "relu-0001.png"]
    with Image.open(res.pngs[0]) as im:
        assert im.size[0] > 5 * 32 and im.mode == "RGB"
    e0, e1 = res.entries
    # unit 0 = mean of a white 2x2 patch - 0.5: every square holds one, so the peak is 0.5
    assert e0["top_activation"] == pytest.approx(0.5, abs=1e-5)
    # issue 16: the maximization optimises the peak of the unit's map until it exceeds the
    # threshold (0.1: a 2x2 patch brighter than 0.6), checked every 8 steps, and stops there;
    # the peak reported is the peak of the returned image's map
    assert e0["reached_threshold"] is True and e0["maximization_peak"] > 0.1
    assert e0["maximization_steps"] % 8 == 0 and 0 < e0["maximization_steps"] <= 24
    assert e0["am_activation"] == pytest.approx(e0["maximization_peak"])
    assert e1["threshold"] >= 0                           # no threshold: taken from the maps
    meta = json.loads((res.out_dir / "gallery.json").read_text())
    assert meta["versions"]["neuroprobe"] and meta["config"]["top_k"] == 3
    # numbers as numbers (issue 16), one statistic (the map's peak) for every image
    u0, u1 = meta["units"]
    assert u0["layer"] == "relu" and u0["unit"] == 0 and u0["label"] == "square"
    assert isinstance(u0["score"], float) and u0["score"] == 0.4
    assert u0["threshold"] == 0.1 and u0["detector"] is True and u1["detector"] is False
    assert u0["best_image_peak"] == pytest.approx(0.5, abs=1e-5)
    assert isinstance(u0["maximization_peak"], float)
    assert u0["reached_threshold"] is (u0["maximization_peak"] > 0.1)
    assert u0["attribution"] == "integrated_gradients" and u0["attribution_signed"] is True
    assert "RdBu_r" in meta["config"]["attribution_colour_map"]
    for unit in meta["units"]:
        for key in ("score", "threshold", "best_image_peak", "maximization_peak",
                    "am_activation", "maximization_steps"):
            assert isinstance(unit[key], (int, float)) and not isinstance(unit[key], bool), key
    page = res.report.read_text()
    assert "&lt;b&gt;grey&lt;/b&gt;" in page and "<b>grey</b>" not in page
    # only some units; a unit the run does not have is one clear error
    res = G.make_gallery(run, tmp_path / "g2", model=_model(), dataset=Squares(6),
                         units="relu:1", top_k=2, maximize_steps=0, attribution="none",
                         show_progress=False, report=False)
    assert [p.name for p in res.pngs] == ["relu-0001.png"] and res.report is None
    with pytest.raises(UserError, match="relu:7 is not in"):
        G.make_gallery(run, model=_model(), dataset=Squares(6), units="relu:7",
                       show_progress=False)


def test_top_views_keep_each_units_own_maps():
    """One pass over the union of the units' top images; each unit keeps its own maps, every
    top image a tile-size thumbnail, only best images at full size."""
    model, data = _model(), Squares(6)
    index = torch.tensor([[2, 4, -1], [0, 1, 5]])
    views = G.top_views(model, data, "relu", [0, 1], index, tile=8, batch_size=4)
    assert sorted(views.thumbs) == [0, 1, 2, 4, 5] and sorted(views.full) == [0, 2]
    assert views.thumbs[4].shape == (3, 8, 8) and views.thumbs[4].dtype == torch.uint8
    assert sorted(views.maps) == [(0, 2), (0, 4), (1, 0), (1, 1), (1, 5)]
    x = torch.stack([data[i]["image"] for i in range(6)])
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(views.maps[(1, 5)], out[5, 1])
    torch.testing.assert_close(views.full[2], x[2])
    thumb = views.thumbs[0].int()          # grey 0.2 = 51, the white square in its top left
    assert int(thumb.min()) == 51 and thumb[:, :2, :2].min() > 80 and thumb[:, 4:, 4:].max() == 51


def test_gallery_top_images_file_is_used(tmp_path):
    run = tmp_path / "run"
    _write_run(run, [{"layer": "relu", "unit": 0, "label": "square", "category": "object",
                      "score": 0.4, "threshold": 0.1, "detector": 1}])
    torch.save({"relu": {"values": torch.tensor([[9.0, 8.0], [1.0, 0.0]]),
                         "index": torch.tensor([[2, 4], [0, 1]])}}, run / "top_images.pt")
    res = G.make_gallery(run, model=_model(), dataset=Squares(6), maximize_steps=0,
                         attribution="none", show_progress=False, report=False)
    assert res.entries[0]["top_activation"] == 9.0


def test_gallery_reports_an_unreached_threshold(tmp_path):
    """A threshold the maximization cannot reach (unit 0 peaks at 0.5 at most) is reported on
    the card and in gallery.json; units in batches of one give the same cards' numbers."""
    run = tmp_path / "run"
    _write_run(run, [{"layer": "relu", "unit": u, "label": "square", "category": "object",
                      "score": 0.4, "threshold": thr, "detector": 1}
                     for u, thr in ((0, 10.0), (1, 0.05))])
    kw = dict(model=_model(), dataset=Squares(6), top_k=2, maximize_steps=16,
              maximize_size=16, attribution="gradient", tile=32, show_progress=False,
              report=False)
    res = G.make_gallery(run, **kw)
    e0, e1 = res.entries
    assert e0["reached_threshold"] is False and e0["maximization_steps"] <= 16
    assert e0["maximization_peak"] <= 0.5 + 1e-6
    assert e1["reached_threshold"] is True and e1["maximization_peak"] > 0.05
    meta = json.loads((res.out_dir / "gallery.json").read_text())
    assert [u["reached_threshold"] for u in meta["units"]] == [False, True]
    text = G._subtitle("IoU", 0.4, 10.0, 0.5, e0["maximization_peak"],
                       e0["maximization_steps"])
    assert "threshold NOT reached" in text and "x threshold" in text
    assert "NOT" not in G._subtitle("IoU", 0.4, 0.05, 0.5, 0.3, 8)
    one = G.make_gallery(run, tmp_path / "one", batch_size=1, **kw)
    for a, b in zip(res.entries, one.entries):
        assert a["maximization_steps"] == b["maximization_steps"]
        assert a["maximization_peak"] == pytest.approx(b["maximization_peak"], abs=1e-5)


def test_read_run_errors(tmp_path):
    with pytest.raises(UserError, match="no units.csv"):
        G.read_run(tmp_path)
    (tmp_path / "units.csv").write_text("layer,unit,label,score\nx,notanint,a,0.1\n")
    with pytest.raises(UserError, match="bad number"):
        G.read_run(tmp_path)


def test_cli_gallery_and_visualize(tmp_path, capsys):
    """Both commands on a saved small saliency model and a tiny synthetic world."""
    from neuroprobe.cli import main
    from neuroprobe.models import build_saliency, save

    torch.manual_seed(0)
    ckpt = tmp_path / "small.pt"
    save(ckpt, build_saliency("small"), {"builder": "saliency",
                                         "kwargs": {"encoder": "small", "decoder": "conv1x1"}},
         {"input_size": [32, 32]})
    run = tmp_path / "run"
    _write_run(run, [{"layer": "encoder.block4", "unit": u, "label": "x", "category": "object",
                      "score": 0.1 * u, "threshold": 0.0, "detector": 1} for u in range(3)],
               spec=str(ckpt))
    summary = json.loads((run / "summary.json").read_text())
    summary["config"]["concepts"] = {"name": "synthetic", "n": 5, "seed": 0,
                                     "image_size": [32, 32], "mask_size": [16, 16]}
    (run / "summary.json").write_text(json.dumps(summary))
    rc = main(["--quiet", "--device", "cpu", "gallery", str(run), "--top-k", "2", "--steps", "3",
               "--ig-steps", "2", "--tile", "24"])
    assert rc == 0
    assert sorted(p.name for p in (run / "gallery" / "units").iterdir()) == [
        "encoder.block4-0000.png", "encoder.block4-0001.png", "encoder.block4-0002.png"]
    assert (run / "gallery" / "index.html").is_file()

    img = tmp_path / "pic.png"
    Image.fromarray((np.random.default_rng(0).random((20, 20, 3)) * 255).astype(np.uint8)).save(img)
    out = tmp_path / "vis"
    rc = main(["--quiet", "visualize", "--model", str(ckpt), "--units", "block4:3,block4:7",
               "--out", str(out), "--steps", "3", "--size", "24", "--image", str(img),
               "--ig-steps", "2"])
    assert rc == 0
    meta = json.loads((out / "visualize.json").read_text())
    assert [(u["layer"], u["unit"]) for u in meta["units"]] == [("encoder.block4", 3),
                                                                ("encoder.block4", 7)]
    assert meta["versions"]["torch"] and meta["config"]["steps"] == 3
    for u in meta["units"]:
        with Image.open(out / u["png"]) as im:
            assert im.size == (24, 24)
        # issue 16: each attribution is a figure with colour (a diverging map for IG)
        (att,) = u["attributions"]
        assert att["signed"] is True and att["method"] == "integrated_gradients"
        with Image.open(out / att["png"]) as im:
            rgb = np.asarray(im.convert("RGB")).astype(int)
        saturated = (rgb.max(-1) - rgb.min(-1)) > 80
        assert saturated.sum() > 200                    # the colour bar at least
        assert (out / u["attributions"][0]["png"]).is_file()
    assert (out / "maximization.png").is_file()
    rc = main(["--quiet", "visualize", "--model", str(ckpt), "--units", "block4:3",
               "--out", str(tmp_path / "vis2"), "--steps", "2", "--size", "24", "--image",
               str(img), "--attribution", "gradcam"])
    assert rc == 0
    meta = json.loads((tmp_path / "vis2" / "visualize.json").read_text())
    assert meta["units"][0]["attributions"][0]["signed"] is False
    capsys.readouterr()
    assert main(["visualize", "--model", str(ckpt), "--units", "block4:999", "--out",
                 str(out), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out of range" in err[0]
    assert main(["gallery", str(tmp_path / "nope")]) == 2
    assert "no units.csv" in capsys.readouterr().err


def test_auto_attribution_is_integrated_gradients_while_affordable(tmp_path, monkeypatch, caplog):
    """``auto``: integrated gradients on an accelerator or up to AUTO_IG_IMAGES interpolated
    images on the CPU, input x gradient beyond; gallery.json records what was used."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    limit = G.AUTO_IG_IMAGES
    assert G.choose_attribution("auto", limit // 16, 16, cpu) == "integrated_gradients"
    assert G.choose_attribution("auto", limit // 16 + 1, 16, cpu) == "input_x_gradient"
    assert G.choose_attribution("auto", 512, 16, cuda) == "integrated_gradients"
    assert G.choose_attribution("ig", 512, 16, cpu) == "integrated_gradients"   # as asked
    assert G.choose_attribution("none", 1, 16, cpu) == "none"
    with pytest.raises(UserError, match="unknown attribution"):
        G.choose_attribution("lime", 1, 16, cpu)
    run = tmp_path / "run"
    _write_run(run, [{"layer": "relu", "unit": u, "label": "square", "category": "object",
                      "score": 0.4, "threshold": 0.1, "detector": 1} for u in (0, 1)])
    monkeypatch.setattr(G, "AUTO_IG_IMAGES", 7)             # 2 units x 4 steps > 7
    with caplog.at_level("INFO", logger="neuroprobe"):
        res = G.make_gallery(run, model=_model(), dataset=Squares(6), top_k=2,
                             maximize_steps=0, n_steps=4, tile=32, show_progress=False)
    assert "input x gradient for 2 units" in caplog.text
    meta = json.loads((res.out_dir / "gallery.json").read_text())
    assert meta["config"]["attribution"] == "input_x_gradient"
    assert meta["config"]["attribution_requested"] == "auto"
    assert {u["attribution"] for u in meta["units"]} == {"input_x_gradient"}
    assert "input x gradient" in res.report.read_text()
