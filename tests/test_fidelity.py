"""Fidelity (issue #18): NetDissect's five rules in netdissect mode, the study's region-NSS,
and the names users type.  Each rule on a small hand-built case, then the whole engine
against independent brute-force references (``benchmarks/references.py``)."""
from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks import references as R
from benchmarks.broden_data import make_broden
from neuroprobe.concepts import collate, open_concepts
from neuroprobe.concepts.base import Label, LabelTable
from neuroprobe.concepts.broden import BrodenDataset
from neuroprobe.concepts.maskfolder import MaskFolderDataset
from neuroprobe.concepts.synthetic import SyntheticWorld
from neuroprobe.dissect import dissect
from neuroprobe.errors import ConceptSetError, LayerNotFound
from neuroprobe.hooks import layer_aliases, resolve_layers
from neuroprobe.results import score_iou
from neuroprobe.stats import IoUTally
from neuroprobe.tally import iou_counts, labelled_categories, region_nss


@pytest.fixture(scope="module")
def broden(tmp_path_factory):
    return make_broden(tmp_path_factory.mktemp("fid") / "broden", n=30, size=32, seed=1)


def conv_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 12, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(12, 24, 3, stride=2, padding=1), nn.ReLU()).eval()


# -- rule 2: primary category --------------------------------------------------------------

def test_primary_category_from_coverage_with_later_category_on_ties(broden):
    ds = BrodenDataset(broden)
    # glass: label.csv counts say object(9);material(2), c_*.csv coverage 1.0 vs 3.0
    assert ds.labels.category(11) == "material"
    # panel: coverage 2.0 in c_object.csv and c_part.csv: NetDissect gives the later, part
    assert ds.labels.category(7) == "part"
    assert ds.labels.category(6) == "object" and ds.primary == "coverage"
    old = BrodenDataset(broden, primary="count")
    assert old.labels.category(11) == "object" and old.labels.category(7) == "object"
    assert old.config()["primary"] == "count"


# -- rule 3: rows without labels -----------------------------------------------------------

def test_rows_without_labels_are_dropped(broden):
    ds = BrodenDataset(broden)
    # rows 8, 9, 18, 19, 28, 29: no label at all, or a scene cell "0" only
    assert len(ds) == 24 and ds.dropped_rows == 6
    assert all(not r["image"].endswith(("8.jpg", "9.jpg")) for r in ds.rows)
    kept = BrodenDataset(broden, keep_empty_rows=True)
    assert len(kept) == 30 and kept.dropped_rows == 0
    assert BrodenDataset(broden, split="val").rows[0]["image"] == "gen/00007.jpg"


# -- rule 1: which images count for a category's activations ---------------------------------

def test_material_label_only_in_the_object_mask_counts_for_material():
    cat_of = torch.tensor([-1, 0, 1, 1])          # 1 object, 2-3 material
    layers = torch.zeros((2, 1, 2, 2), dtype=torch.int64)
    layers[0, 0, 0, 0] = 1                          # image 0: object label
    layers[0, 0, 1, 1] = 3                          # ... and a material label in its object mask
    layers[1, 0, 0, 0] = 1                          # image 1: object only
    whole = torch.zeros((2, 0), dtype=torch.int64)
    flags = labelled_categories(layers, whole, cat_of, 2)
    assert flags.tolist() == [[True, True], [True, False]]
    cells = torch.tensor([[True, False], [True, False]])   # index.csv: no material cell
    maps = torch.ones((2, 1, 2, 2))
    thr = torch.tensor([0.5])
    _, act = iou_counts(maps, thr, layers, whole, cells, cat_of, 4, 2, "netdissect")
    assert act.tolist() == [[8, 4]]                 # image 0 counts for material
    _, act = iou_counts(maps, thr, layers, whole, cells, cat_of, 4, 2, "annotated")
    assert act.tolist() == [[8, 0]]
    # label 0 and whole-image labels: label 0 never flags, a whole label flags its category
    flags = labelled_categories(torch.zeros((1, 1, 2, 2), dtype=torch.int64),
                                torch.tensor([[0, 2]]), cat_of, 2)
    assert flags.tolist() == [[False, True]]


# -- rules 4 and 5: dead units, empty categories, ties across categories --------------------

def _tally(inter, act, truth, cat_of):
    t = IoUTally(len(inter), len(truth), torch.tensor(cat_of), 2)
    t.inter = torch.tensor(inter, dtype=torch.int64)
    t.act = torch.tensor(act, dtype=torch.int64)
    t.label = torch.tensor(truth, dtype=torch.int64)
    return t


def test_dead_unit_empty_category_and_cross_category_tie():
    labels = LabelTable([Label(1, "box", "object"), Label(2, "cup", "object"),
                         Label(3, "lid", "part")], ["object", "part"])
    # unit 0: dead; unit 1: IoU 0.25 for box (object) and for lid (part): a tie;
    # unit 2: only the part category has an IoU above 0
    inter = [[0, 0, 0, 0], [0, 2, 0, 2], [0, 0, 0, 1]]
    act = [[0, 0], [4, 4], [3, 3]]
    truth = [0, 6, 5, 6]
    t = _tally(inter, act, truth, [-1, 0, 0, 1])
    u0, u1, u2 = score_iou("x", t, torch.zeros(3), labels, 0.04)
    assert (u0["label"], u0["score"], u0["detector"]) == ("", 0.0, 0)
    assert u0["category"] == "part"                # the all-zero tie, as NetDissect writes it
    assert u0["object-label"] == "" and u0["part-label"] == ""
    assert (u1["label"], u1["category"], u1["score"]) == ("lid", "part", 0.25)
    assert u1["object-label"] == "box" and u1["object-iou"] == 0.25
    assert u2["object-label"] == "" and u2["object-iou"] == 0.0
    assert u2["object-activation"] == 3 and u2["label"] == "lid"
    first = score_iou("x", t, torch.zeros(3), labels, 0.04, ties="first")
    assert (first[1]["label"], first[1]["category"]) == ("box", "object")
    assert first[0]["label"] == ""
    # within a category the first label of the largest IoU wins (NetDissect's argmax)
    t = _tally([[0, 1, 1, 0]], [[3, 0]], [0, 1, 1, 0], [-1, 0, 0, 1])
    assert score_iou("x", t, torch.zeros(1), labels, 0.04)[0]["label"] == "box"


# -- the whole engine against NetDissect's procedure -----------------------------------------

def test_engine_agrees_with_a_netdissect_reference(broden):
    model = conv_model()
    ds = BrodenDataset(broden)
    res = dissect(model, ds, ["3"], progress=False, batch_size=7)
    ref = R.read_broden(broden)
    out = R.netdissect(ref, R.activations(ref, model))
    np.testing.assert_allclose(res.thresholds["3"].numpy(), out["thresholds"], rtol=1e-6)
    tally = res.stats["3"]["tally"]
    np.testing.assert_array_equal(tally.inter.numpy(), out["ti"])
    iou = tally.iou().numpy()
    np.testing.assert_allclose(iou, out["iou"], atol=1e-12)
    for a, b in zip(res.units, out["units"]):
        assert (a["unit"], a["label"], a["category"]) == (b["unit"], b["label"], b["category"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-12)
        for cat in ref["categories"]:
            assert a[f"{cat}-label"] == b[f"{cat}-label"]
    # the former rules disagree on this data (so the comparison can fail)
    old = dissect(model, BrodenDataset(broden, primary="count", keep_empty_rows=True), ["3"],
                  progress=False, batch_size=7, denominator="annotated", ties="first")
    assert any((a["label"], a["category"]) != (b["label"], b["category"])
               or abs(a["score"] - b["score"]) > 1e-3 for a, b in zip(old.units, out["units"]))
    assert old.summary["config"]["ties"] == "first"


# -- region-NSS ----------------------------------------------------------------------------

def test_region_nss_image_resolution_two_instances_by_hand():
    maps = torch.tensor([[[[0.0, 1.0], [2.0, 5.0]]]])            # 1 image, 1 unit, 2x2
    layers = torch.tensor([[[[1, 0], [0, 1]]]])                   # label 1 twice, mask 2x2
    inst = torch.tensor([[[[1, 0], [0, 2]]]])                     # ... two instances
    fix = [torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, 3.0], [2.0, 3.0]])]
    # by hand: normalised map [[0, .2], [.4, 1]] upsampled 2 -> 4 (align_corners=False): the
    # axis weights of output 0..3 on input (0, 1) are (1, 0), (.75, .25), (.25, .75), (0, 1)
    w = np.array([[1, 0], [.75, .25], [.25, .75], [0, 1]])
    up = w @ np.array([[0, .2], [.4, 1]]) @ w.T
    z = (up - up.mean()) / up.std()                               # np.std: ddof 0
    r1 = (z[0, 0] + z[1, 1]) / 2                                  # fixations in mask pixel (0,0)
    r2 = (z[3, 3] + z[3, 2]) / 2                                  # ... in mask pixel (1,1)
    total, count = region_nss(maps, torch.tensor([0.0]), torch.tensor([5.0]), layers, fix,
                              (4, 4), 2, ddof=0, resolution="image", instances=inst)
    assert count.tolist() == [0, 2]
    assert total[0, 1].item() == pytest.approx(r1 + r2, abs=1e-12)
    merged, count = region_nss(maps, torch.tensor([0.0]), torch.tensor([5.0]), layers, fix,
                               (4, 4), 2, ddof=0, resolution="image", instances=inst,
                               regions="label")
    assert count.tolist() == [0, 1]
    assert merged[0, 1].item() == pytest.approx(z[[0, 1, 3, 3], [0, 1, 3, 2]].mean(), abs=1e-12)
    # mask resolution z-scores the 2x2 map itself
    m = np.array([[0, .2], [.4, 1]])
    zm = (m - m.mean()) / m.std()
    masked, _ = region_nss(maps, torch.tensor([0.0]), torch.tensor([5.0]), layers, fix, (4, 4),
                           2, ddof=0, resolution="mask", instances=inst)
    assert masked[0, 1].item() == pytest.approx(zm[0, 0] + zm[1, 1], abs=1e-12)


def _synthetic():
    return SyntheticWorld(seed=3, n=10, image_size=64, mask_size=32, observers=6)


def test_region_nss_engine_agrees_with_the_study_reference(tmp_path):
    ds = _synthetic()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()).eval()
    res = dissect(model, ds, ["3"], score="region-nss", progress=False, batch_size=4,
                  out_dir=tmp_path / "run")
    got = res.stats["3"]["nss"].mean().numpy()
    items = [ds[i] for i in range(len(ds))]
    with torch.no_grad():   # batched as in the engine (float32 convolutions depend on it)
        images = torch.stack([it["image"] for it in items])
        maps = list(torch.cat([model(images[s:s + 4]) for s in range(0, len(items), 4)]).numpy())
    args = ([it["layers"].numpy() for it in items], [it["instances"].numpy() for it in items],
            [it["fixations"].numpy() for it in items], ds.image_size, ds.labels.max_id + 1)
    ref = R.region_nss_reference(maps, *args)
    assert np.array_equal(np.isnan(ref), np.isnan(got))
    assert np.nanmax(np.abs(got - ref)) < 1e-6
    # two people are two regions: more head regions than images with a fixated head
    assert int(res.stats["3"]["nss"].regions[1]) > 0
    merged = R.region_nss_reference(maps, args[0], [None] * len(items), *args[2:])
    assert np.nanmax(np.abs(merged - ref)) > 1e-3        # instances matter on this data
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["config"]["nss_resolution"] == "image"
    assert summary["config"]["nss_regions"] == "instance"
    assert summary["config"]["nss_ddof"] == 0
    assert "mean over all scored regions" in summary["region_nss_definition"]["aggregation"]


def test_instances_of_the_sources_and_collate(tmp_path):
    from tests.test_maskfolder import make_voc

    items = [_synthetic()[i] for i in range(2)]
    for it in items:
        inst, lay = it["instances"], it["layers"]
        assert inst.shape == lay.shape and (inst[2] == 0).all()
        assert ((inst[:2] > 0) == (lay[:2] > 0)).all()      # every object pixel has an id
    batch = collate([items[0], {**items[1], "instances": None}])
    assert torch.equal(batch["instances"][0], items[0]["instances"])
    assert (batch["instances"][1] == 0).all()
    assert "instances" not in collate([{k: v for k, v in it.items() if k != "instances"}
                                       for it in items])
    from tests.test_maskfolder import H, W

    truth = make_voc(tmp_path / "voc")
    item = MaskFolderDataset(tmp_path / "voc", image_size=(H, W))[0]
    want = np.zeros((H, W), np.int64)
    want[2:6, 2:8], want[7:11, 5:12] = 1, 2           # the two SegmentationObject instances
    want[truth[0]["mask"] == 0] = 0                   # void and background carry none
    assert np.array_equal(item["instances"][0].numpy(), want)


# -- names users type -----------------------------------------------------------------------

def test_concepts_accepts_a_broden_or_mask_folder(broden, tmp_path):
    from tests.test_maskfolder import make_voc

    ds = open_concepts(str(broden))
    assert isinstance(ds, BrodenDataset) and len(ds) == 24
    assert open_concepts(str(broden), limit=5).config()["n"] == 5
    make_voc(tmp_path / "voc")
    assert isinstance(open_concepts(str(tmp_path / "voc")), MaskFolderDataset)
    (tmp_path / "junk").mkdir()
    with pytest.raises(ConceptSetError, match="neither a Broden folder"):
        open_concepts(str(tmp_path / "junk"))


class Wrapped(nn.Module):
    """Like neuroprobe's torchvision wrapper: normalisation in front of ``net``."""

    def __init__(self):
        super().__init__()
        self.normalize = nn.Identity()
        self.net = nn.Sequential(OrderedDict(
            layer1=nn.Conv2d(3, 6, 3, stride=2, padding=1), relu=nn.ReLU(),
            layer2=nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU())))

    def forward(self, x):
        return self.net(self.normalize(x))


def test_bare_layer_names_resolve_and_name_the_results(broden):
    model = Wrapped().eval()
    assert list(resolve_layers(model, ["layer1"])) == ["net.layer1"]
    assert layer_aliases(model, ["layer1", "net.relu", "layer2.*"]) == OrderedDict(
        [("net.layer1", "layer1"), ("net.relu", "net.relu"), ("net.layer2.0", "layer2.0"),
         ("net.layer2.1", "layer2.1")])
    with pytest.raises(LayerNotFound, match="unknown layer 'layer9'"):
        resolve_layers(model, ["layer9"])
    twice = nn.Module()
    twice.a, twice.b = Wrapped(), Wrapped()
    with pytest.raises(LayerNotFound, match="ambiguous"):
        resolve_layers(twice, ["net"])
    res = dissect(model, BrodenDataset(broden, limit=8), ["layer2"], progress=False)
    assert {r["layer"] for r in res.units} == {"layer2"}
    assert res.summary["config"]["layers"] == ["layer2"] and "layer2" in res.thresholds
    same = dissect(model, BrodenDataset(broden, limit=8), ["net.layer2"], progress=False)
    assert [r["score"] for r in same.units] == [r["score"] for r in res.units]


def test_recorder_answers_to_the_names_given():
    from neuroprobe.hooks import Recorder, ablate

    model = Wrapped().eval()
    x = torch.rand((1, 3, 16, 16))
    with Recorder(model, ["layer1", "net.layer2"], edit={"layer1": ablate([0])}) as rec:
        model(x)
    assert "layer1" in rec and rec["layer1"].shape == (1, 6, 8, 8)
    assert torch.equal(rec["layer1"], rec["net.layer1"]) and (rec["layer1"][:, 0] == 0).all()
    assert rec.keys() == ["net.layer1", "net.layer2"]


def test_cli_options_and_a_broden_folder(broden, tmp_path, capsys):
    from neuroprobe.cli import main

    out = tmp_path / "run"
    code = main(["--quiet", "dissect", "--concepts", "synthetic", "--limit", "3",
                 "--batch-size", "3", "--score", "region-nss", "--nss-resolution", "mask",
                 "--nss-regions", "label", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["config"]["nss_resolution"], summary["config"]["nss_regions"]) == (
        "mask", "label")
    assert summary["region_nss_definition"]["resolution"] == "mask"
    out = tmp_path / "broden"
    code = main(["--quiet", "dissect", "--concepts", str(broden), "--limit", "4",
                 "--denominator", "annotated", "--ties", "first", "--image-size", "128",
                 "--out", str(out)])
    assert code == 0
    cfg = json.loads((out / "summary.json").read_text())["config"]
    assert cfg["concepts"]["source"] == "broden" and cfg["concepts"]["n"] == 4
    assert (cfg["denominator"], cfg["ties"]) == ("annotated", "first")
    assert cfg["concepts"]["primary"] == "coverage" and cfg["concepts"]["dropped_rows"] == 6
