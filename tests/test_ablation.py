"""Ablation (issue 21): planted models with known answers, seeded controls, the paired bootstrap
against a brute-force loop, and bad input ending in one line."""
import csv

import numpy as np
import pytest
import torch
from torch import nn

from neuroprobe.ablation import (RANDOM, VERSUS, ablate, paired_bootstrap, parse_unit_list,
                                 random_units)
from neuroprobe.cli import main
from neuroprobe.compare import bootstrap_weights
from neuroprobe.concepts import open_concepts
from neuroprobe.errors import UserError


@pytest.fixture(scope="module")
def world():
    return open_concepts("synthetic", n=6, image_size=64, mask_size=32)


class PlantedSaliency(nn.Module):
    """Unit 0 of ``features`` (brightness + 0.1, never 0) is the whole saliency map; units 1-5
    are computed but nothing reads them."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 6, 1)
        with torch.no_grad():
            self.features.weight.normal_(generator=torch.Generator().manual_seed(0))
            self.features.weight[0] = 1 / 3
            self.features.bias.zero_()
            self.features.bias[0] = 0.1
        self.decoder = nn.Conv2d(6, 1, 1, bias=False)
        with torch.no_grad():
            self.decoder.weight.zero_()
            self.decoder.weight[0, 0] = 1.0

    def forward(self, x):
        return self.decoder(torch.relu(self.features(x)))


class PlantedScene(nn.Module):
    """Logit k is the spatial mean of unit k (2 classes from 4 units)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 4, 1)
        with torch.no_grad():
            self.features.weight.fill_(0.2)
            self.features.bias.fill_(0.5)

    def forward(self, x):
        return self.features(x).mean((2, 3))[:, :2]


def test_planted_unit_carries_the_whole_map(world, one_thread):
    res = ablate(PlantedSaliency(), {"planted": "features:0"}, world, concept="person head",
                 random_repeats=4, seed=1, n_boot=50, batch_size=4)
    v = res.values
    # ablating unit 0 empties the map: a constant 0 map has NSS 0, CC 0, AUC 0.5 on every image
    # and no mass anywhere (so no mass share inside the concept: NaN)
    assert np.all(v["planted"]["nss"] == 0) and np.all(v["planted"]["cc"] == 0)
    assert np.allclose(v["planted"]["auc_judd"], 0.5)
    assert np.isnan(v["planted"]["mass_inside"]).all()
    assert np.isfinite(v["baseline"]["mass_inside"]).any()
    assert np.all(v["baseline"]["nss"] != 0)
    # random units (never unit 0) change nothing, exactly
    for k in range(1, 5):
        name = f"{RANDOM}-{k:02d}"
        assert ("features", 0) not in res.sets[name] and len(res.sets[name]) == 1
        for m, base in v["baseline"].items():
            np.testing.assert_array_equal(v[name][m], base)
    rows = {(r["set"], r["measure"]): r for r in res.rows}
    assert rows[(RANDOM, "nss")]["difference"] == 0
    assert rows[(RANDOM, "nss")]["ci_low"] == rows[(RANDOM, "nss")]["ci_high"] == 0
    r = rows[("planted", "nss")]
    assert r["ablated"] == 0 and r["difference"] == -r["baseline"]
    assert r["ci_low"] <= r["difference"] <= r["ci_high"]
    assert rows[(VERSUS, "nss")]["difference"] == pytest.approx(r["difference"])
    assert res.config["mode"] == "zero" and res.config["n_images"] == len(world)


class HalfSize(nn.Module):
    """The planted map at half the image size (``upsample=True``: brought to the image size by
    the model itself, bilinearly)."""

    def __init__(self, upsample):
        super().__init__()
        self.planted, self.upsample = PlantedSaliency(), upsample

    def forward(self, x):
        s = nn.functional.avg_pool2d(self.planted(x), 2)
        if self.upsample:
            s = nn.functional.interpolate(s, size=x.shape[-2:], mode="bilinear",
                                          align_corners=False)
        return s


def test_small_maps_are_measured_at_the_image_size(world, one_thread):
    small, full = (ablate(HalfSize(up), "planted.features:1", world, concept="person head",
                          n_boot=0) for up in (False, True))
    for m, v in full.values["baseline"].items():
        # float32 (the model) against float64 (ablate) interpolation
        np.testing.assert_allclose(small.values["baseline"][m], v, rtol=2e-4, atol=1e-6)


def test_mean_ablation_uses_each_units_data_mean(world, one_thread):
    model = PlantedSaliency()
    res = ablate(model, "features:0,3", world, mode="mean", n_boot=0, batch_size=4)
    with torch.no_grad():
        feats = torch.cat([model.features(world[i]["image"][None]) for i in range(len(world))])
    np.testing.assert_allclose(res.means["features"], feats.double().mean((0, 2, 3)).numpy(),
                               rtol=1e-6)
    # the map is now constant (unit 0 at its mean): NSS and CC 0, and no interval asked for
    assert np.all(res.values["units"]["nss"] == 0)
    assert all(np.isnan(r["ci_low"]) for r in res.rows)
    assert res.config["mode"] == "mean" and res.config["mean_over"]


class Normalised(nn.Module):
    """The planted network with a linear read-out of all units, normalised to [0, 1] per image
    (the study's decoder): a constant added to a unit's map cancels."""

    def __init__(self):
        super().__init__()
        self.planted = PlantedSaliency()
        with torch.no_grad():
            self.planted.decoder.weight.normal_(generator=torch.Generator().manual_seed(1))

    def forward(self, x):
        s = self.planted(x)
        lo, hi = s.amin((2, 3), keepdim=True), s.amax((2, 3), keepdim=True)
        return (s - lo) / (hi - lo)


def test_zero_and_mean_ablation_agree_before_a_per_image_normalisation(world, one_thread):
    kw = dict(concept="person head", n_boot=0, batch_size=6)
    zero = ablate(Normalised(), "features:1,4", world, mode="zero", **kw)
    mean = ablate(Normalised(), "features:1,4", world, mode="mean", **kw)
    assert min(mean.means["features"][1], mean.means["features"][4]) != 0
    for m, v in zero.values["units"].items():
        np.testing.assert_allclose(mean.values["units"][m], v, rtol=1e-4, atol=1e-6)
    assert not np.allclose(zero.values["units"]["nss"], zero.values["baseline"]["nss"])


def test_scene_measures(world, one_thread):
    res = ablate(PlantedScene(), "features:0", world, n_boot=20, classes=["a", "b"])
    v = res.values
    assert res.config["task"] == "scene"
    np.testing.assert_array_equal(v["units"]["logit:a"], 0)
    np.testing.assert_array_equal(v["units"]["logit:b"], v["baseline"]["logit:b"])
    assert np.isnan(v["baseline"]["accuracy"]).all()   # no scene label is one of the classes


def test_random_control_reproducible_by_seed():
    units = parse_unit_list("block4:3,7,9")
    sizes = {"block4": 32}
    a = random_units(units, sizes, 6, seed=5)
    assert a == random_units(units, sizes, 6, seed=5)
    assert a != random_units(units, sizes, 6, seed=6)
    for draw in a:
        assert len(draw) == 3 and all(layer == "block4" for layer, _ in draw)
        assert not {3, 7, 9} & {u for _, u in draw} and len({u for _, u in draw}) == 3


def test_random_control_through_ablate_is_seeded(world, one_thread):
    kw = dict(random_repeats=3, n_boot=30, batch_size=6)
    a = ablate(PlantedSaliency(), "features:2", world, seed=4, **kw)
    b = ablate(PlantedSaliency(), "features:2", world, seed=4, **kw)
    assert a.sets == b.sets and a.rows == b.rows


def test_paired_bootstrap_matches_brute_force():
    rng = np.random.default_rng(0)
    n, k = 37, 400
    base = rng.normal(size=n)
    abl = base + rng.normal(0.3, 1.0, size=n)
    base[[2, 11]] = np.nan        # undefined images are left out of means and resamples
    abl[20] = np.nan
    w = bootstrap_weights(n, k, np.random.default_rng(9))
    got = paired_bootstrap(base, abl, w, level=0.9)
    idx = np.random.default_rng(9).integers(0, n, (k, n))   # the same draws, looped over
    ok = np.isfinite(base) & np.isfinite(abl)
    draws = []
    for row in idx:
        keep = [i for i in row if ok[i]]
        draws.append(np.mean([abl[i] - base[i] for i in keep]))
    lo, hi = np.percentile(draws, [5, 95])
    assert got["ci_low"] == pytest.approx(lo, abs=1e-12)
    assert got["ci_high"] == pytest.approx(hi, abs=1e-12)
    assert got["difference"] == pytest.approx(np.mean((abl - base)[ok]), abs=1e-14)
    assert got["baseline"] == pytest.approx(np.mean(base[ok])) and got["n_images"] == n - 3
    # a constant difference has a degenerate interval at that constant
    c = paired_bootstrap(np.arange(5.0), np.arange(5.0) - 2, bootstrap_weights(
        5, 100, np.random.default_rng(1)))
    assert c["difference"] == c["ci_low"] == c["ci_high"] == -2


def test_library_bad_input(world, one_thread):
    with pytest.raises(UserError, match="out of range"):
        ablate(PlantedSaliency(), "features:6", world, n_boot=0)
    with pytest.raises(UserError, match="unknown concept"):
        ablate(PlantedSaliency(), "features:1", world, concept="persn head", n_boot=0)
    with pytest.raises(UserError, match="not a saliency map"):
        ablate(PlantedScene(), "features:1", world, measures="saliency", n_boot=0)
    with pytest.raises(UserError, match="bad unit"):
        parse_unit_list("features")


# -- the command ---------------------------------------------------------------------------------

def cli(argv, capsys):
    rc = main(["--quiet", *[str(a) for a in argv]])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_line(rc, err, *words):
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("neuroprobe: error: "), err
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("ablate-runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for name in ("demo-finetune-last", "demo-scene"):
        rc = main(["--quiet", "dissect", "--model", name, "--limit", "8", "--layers",
                   "encoder.block4", "--out", str(d / name)])
        assert rc == 0
    yield d
    torch.set_num_threads(threads)


def _no_detector_label(run_dir):
    with open(run_dir / "units.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    detected = {r["label"] for r in rows if r["detector"] == "1"}
    return next(n for n in ("vehicle", "drink", "food", "plant", "text", "symbol")
                if n not in detected)


def test_cli_writes_the_outputs(runs, tmp_path, capsys):
    out = tmp_path / "ab"
    rc, text, err = cli(["ablate", runs / "demo-finetune-last", "--units",
                         "encoder.block4:0,5,9", "--concept", "person head", "--repeats", "2",
                         "--bootstrap", "40", "--out", out], capsys)
    assert rc == 0, err
    with open(out / "ablation.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:7] == ["set", "measure", "baseline", "ablated", "difference",
                                 "ci_low", "ci_high"]
    sets = {r["set"] for r in rows}
    assert {"units", "top-nss", RANDOM, VERSUS, f"{RANDOM}-01", f"{RANDOM}-02"} <= sets
    assert {r["measure"] for r in rows} == {"nss", "auc_judd", "cc", "mass_inside",
                                            "nss_inside", "nss_outside"}
    for name in ("ablation.png", "summary.md", "ablation.json", "per_image.npz"):
        assert (out / name).is_file()
    assert "zero ablation" in (out / "summary.md").read_text()


def test_cli_refuses_another_model(runs, tmp_path, capsys):
    rc, _, err = cli(["ablate", runs / "demo-finetune-last", "--units", "encoder.block4:0",
                      "--model", "demo-frozen", "--out", tmp_path / "x"], capsys)
    one_line(rc, err, "not the network")


@pytest.mark.parametrize("case", ["unknown-concept", "no-detectors", "out-of-range",
                                  "scene-run-saliency", "nothing"])
def test_cli_bad_input_is_one_line(runs, tmp_path, capsys, case):
    ft, scene = runs / "demo-finetune-last", runs / "demo-scene"
    argv, words = {
        "unknown-concept": (["--concept", "persn head"], ["unknown concept", "person head"]),
        "no-detectors": (["--concept", _no_detector_label(ft)], ["no detector units"]),
        "out-of-range": (["--units", "encoder.block4:128"], ["out of range", "128 units"]),
        "scene-run-saliency": (["--units", "encoder.block4:0", "--measures", "saliency"],
                               ["not a saliency map"]),
        "nothing": ([], ["nothing to ablate"]),
    }[case]
    run = scene if case == "scene-run-saliency" else ft
    out = tmp_path / "out"
    rc, _, err = cli(["ablate", run, *argv, "--bootstrap", "0", "--control", "none",
                      "--out", out], capsys)
    one_line(rc, err, *words)
    assert not out.exists()   # nothing written


# -- the probe and real data ---------------------------------------------------------------------

def test_ablation_probe_on_the_demo_models(tmp_path, one_thread):
    from neuroprobe.probes import resolve_probe, run_probe

    recipe = tmp_path / "ablation.toml"   # the shipped recipe with fewer draws and resamples
    recipe.write_text(resolve_probe("ablation").read_text().replace("repeats = 20", "repeats = 3")
                      .replace("bootstrap = 1000", "bootstrap = 100"))
    report = run_probe(str(recipe), tmp_path, limit=8).read_text()
    assert "## Ablation of 'person head' units" in report
    with open(tmp_path / "ablation.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    done = {r["model"] for r in rows}
    for model in ("frozen", "finetune-last", "scene"):   # ablated, or said why not
        assert model in done or f"`{model}`: " in report
        if model in done:
            assert (tmp_path / "ablation" / model / "ablation.csv").is_file()
    scene = {r["measure"] for r in rows if r["model"] == "scene"}
    assert not scene or scene == {"accuracy"} | {f"logit:{c}" for c in (
        "street", "office", "portrait", "park", "kitchen", "shop")}


EYECROWD = __import__("pathlib").Path(__file__).resolve().parents[1] / ".." / "shared" / \
    "data" / "eyecrowd"


@pytest.mark.skipif(not (EYECROWD / "fixations.mat").is_file(),
                    reason="EyeCrowd is not in ../shared/data/eyecrowd")
def test_ablation_on_eyecrowd_faces(one_thread):
    from neuroprobe.models import load

    data = open_concepts("eyecrowd", root=str(EYECROWD), limit=4, image_size=96)
    model = load("demo-finetune-last").module
    res = ablate(model, "encoder.block4:0-3", data, concept="person head", random_repeats=2,
                 n_boot=20, batch_size=4)
    assert res.config["n_images"] == 4
    rows = {(r["set"], r["measure"]): r for r in res.rows}
    assert np.isfinite(rows[("units", "nss")]["baseline"])
    assert rows[("units", "mass_inside")]["n_images"] >= 1   # every EyeCrowd image has faces


def test_concept_units_picks_the_layer_with_most_detectors(tmp_path):
    from neuroprobe.ablation_run import concept_units
    from neuroprobe.compare import Run

    rows = [{"layer": lay, "unit": u, "label": lab, "detector": det}
            for lay, u, lab, det in [("net.a", 0, "head", 1), ("net.a", 1, "head", 1),
                                     ("net.b", 0, "head", 1), ("net.b", 1, "head", 1),
                                     ("net.b", 2, "text", 1), ("net.b", 3, "head", 0)]]
    run = Run(tmp_path, rows, {})
    assert concept_units(run, "head") == ("net.b", [("net.b", 0), ("net.b", 1)])  # tie: deeper
    assert concept_units(run, "head", "a") == ("net.a", [("net.a", 0), ("net.a", 1)])
    with pytest.raises(UserError, match="no detector units of 'text' in layer 'net.a'"):
        concept_units(run, "text", "net.a")
    with pytest.raises(UserError, match="not in run"):
        concept_units(run, "head", "net.c")
