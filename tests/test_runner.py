"""The pass runner, the run store and what they bring: runs that know their model, a compare
whose bootstrap agrees with its count table, seeded random torchvision networks."""
from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from neuroprobe.cli import main
from neuroprobe.concepts import open_concepts
from neuroprobe.dissect import DissectConfig, dissect
from neuroprobe.engine import model_fingerprint, run_pass
from neuroprobe.models import load
from neuroprobe.stats import IoUTally, MinMax, NSSTally, Quantile, StatSet, TopK, from_state

sys.path.insert(0, str(Path(__file__).parent))
from test_dissect import Tiny, run_tiny, tiny_model  # noqa: E402

#: the demo runs of these tests: 24 synthetic images at 64 px (seconds on a laptop CPU)
DEMO = ["--limit", "24", "--image-size", "64", "--score", "iou", "--batch-size", "12"]


def cli(argv, capsys):
    rc = main(["--quiet", *[str(a) for a in argv]])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_line(rc, err, *words):
    assert rc not in (0, None), err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("neuroprobe: error: "), err
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# -- the runner ----------------------------------------------------------------------------------

def test_run_pass_batches_shards_and_indices(one_thread):
    ds = Tiny(n=10)
    model = tiny_model()
    seen = []
    run_pass(model, ds, ["1"], lambda acts, b, j: seen.append((j, b["index"].tolist(),
                                                              tuple(acts["1"].shape))),
             batch_size=4, labels=False)
    assert [s[:2] for s in seen] == [(0, [0, 1, 2, 3]), (1, [4, 5, 6, 7]), (2, [8, 9])]
    assert seen[0][2][0] == 4

    class Rank:   # rank 1 of 2: every other batch
        rank, world, active, is_main = 1, 2, True, False
    seen.clear()
    run_pass(model, ds, ["1"], lambda acts, b, j: seen.append((j, b["index"].tolist())),
             batch_size=3, labels=False, dctx=Rank())
    assert seen == [(1, [3, 4, 5]), (3, [9])]
    seen.clear()
    run_pass(model, ds, ["1"], lambda acts, b, j: seen.append(b["index"].tolist()),
             indices=[7, 2, 5], batch_size=2, labels=False)
    assert seen == [[7, 2], [5]]
    ends = []
    run_pass(model, ds, ["1"], lambda *a: None, batch_size=2, labels=False,
             checkpoint=lambda done, last: ends.append((done, last)), checkpoint_every=2,
             after_batch=lambda phase, j: ends.append((phase, j)), phase="p")
    assert ends[:3] == [("p", 0), (2, False), ("p", 1)] and ends[-2:] == [(5, True), ("p", 4)]


def test_run_pass_images_equal_the_float_items(one_thread):
    """The runner reads 8-bit images and converts them on the device: the model sees exactly
    the float images of the concept set."""
    ds = open_concepts("synthetic", limit=4, image_size=32, mask_size=16)
    got = []
    run_pass(nn.Identity(), ds, (), lambda acts, b, j: got.append(acts["output"]),
             batch_size=4, labels=False)
    want = torch.stack([ds[i]["image"] for i in range(4)])
    assert torch.equal(got[0], want)


# -- statistics ------------------------------------------------------------------------------------

def test_one_autotuned_shape_per_pass(monkeypatch):
    """cuDNN autotuning (where the caller turned it on) is off for the probe's single image
    and for the short last batch, on for the full batches, and restored afterwards."""
    from neuroprobe.engine.runner import probe_shapes

    seen = []

    class Watch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            seen.append((len(x), torch.backends.cudnn.benchmark))
            return self.conv(x)

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    probe_shapes(Watch(), Tiny(n=10), ["conv"], None, "cpu")
    run_pass(Watch(), Tiny(n=10), ["conv"], lambda acts, batch, j: None, batch_size=4)
    assert seen == [(1, False), (4, True), (4, True), (2, False)]
    assert torch.backends.cudnn.benchmark is True


def test_every_statistic_is_rebuilt_from_its_state():
    torch.manual_seed(0)
    x = torch.randn(50, 3)
    q, m, t = Quantile(8), MinMax(), TopK(2)
    q.add(x), m.add(x), t.add(x, torch.arange(50))
    for s in (q, m, t):
        back = from_state(s.state_dict())
        assert type(back) is type(s)
    assert torch.equal(from_state(q.state_dict()).quantile(0.9), q.quantile(0.9))
    assert torch.equal(from_state(t.state_dict()).index, t.index)
    r = run_tiny()
    tally = r.stats["1"]["tally"]
    back = from_state(tally.state_dict())
    assert isinstance(back, IoUTally) and torch.equal(back.iou(), tally.iou())
    with pytest.raises(ValueError, match="unknown statistic kind"):
        from_state({"kind": "Nope"})


def test_nss_tally_state_keeps_its_region_rules():
    """A region-NSS tally rebuilt from its state alone (a torchrun merge) scores with the same
    resolution and region rule (issue 18's options, saved as ``resolution``/``region_rule``)."""
    torch.manual_seed(0)
    maps = torch.rand(2, 3, 4, 4)
    layers = torch.zeros(2, 1, 8, 8, dtype=torch.int64)
    layers[:, 0, :4] = 1
    layers[:, 0, 4:] = 2
    inst = torch.zeros_like(layers)
    inst[:, 0, :4, :4], inst[:, 0, :4, 4:] = 1, 2       # label 1 as two instances
    fix = [torch.tensor([[2.0, 3.0], [13.0, 2.0], [9.0, 12.0]])] * 2
    lo, hi = maps.amin((0, 2, 3)), maps.amax((0, 2, 3))
    for res, rule in (("image", "instance"), ("mask", "label")):
        t = NSSTally(3, 3, ddof=0, resolution=res, regions=rule)
        t.add(maps, lo, hi, layers, fix, (16, 16), inst)
        sd = t.state_dict()
        assert (sd["resolution"], sd["region_rule"]) == (res, rule)
        back = from_state(sd)
        assert (back.resolution, back.region_rule, back.ddof) == (res, rule, 0)
        back.total = back.regions = back.images = None
        back.add(maps, lo, hi, layers, fix, (16, 16), inst)
        assert torch.equal(back.total, t.total) and torch.equal(back.regions, t.regions)
    # two instances of label 1 are two regions under "instance", one under "label"
    a = NSSTally(3, 3, resolution="image", regions="instance")
    b = NSSTally(3, 3, resolution="image", regions="label")
    for t in (a, b):
        t.add(maps, lo, hi, layers, fix, (16, 16), inst)
    assert a.regions[1] == 4 and b.regions[1] == 2


def test_statset_is_one_line_per_statistic_and_round_trips():
    s = StatSet(["a", "b"], {"top": lambda layer: TopK(2), "range": lambda layer: MinMax()})
    assert set(s) == {"a", "b"} and set(s["a"]) == {"top", "range"}
    s["a"]["range"].add(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
    t = StatSet(["a", "b"], {"top": lambda layer: TopK(2), "range": lambda layer: MinMax()})
    t.load_state_dict(s.state_dict(drop=("top",)))
    assert torch.equal(t["a"]["range"].max, torch.tensor([3.0, 2.0]))


def test_image_counts_skip_the_temporary_files_of_a_killed_write(tmp_path):
    """A run killed inside an atomic write leaves ``.NAME.XXXX.pt``; the per-image counts a
    resumed run reads back are the finished batch files only."""
    from neuroprobe.stats import ImageCounts

    ic = ImageCounts(2, 3, tmp_path / "images")
    (tmp_path / "images").mkdir()
    torch.save({}, tmp_path / "images" / "0000000000.pt")
    (tmp_path / "images" / ".0000000004.pt.abc123.pt").write_bytes(b"PK\x03")   # partial
    assert [p.name for p in ic.files()] == ["0000000000.pt"]


def test_image_counts_add_up_to_the_tally(tmp_path):
    """Per-image counts summed over the images equal the tally of each unit's own label, under
    each denominator."""
    from neuroprobe.image_counts import read_image_counts

    for i, kw in enumerate(({}, {"denominator": "lite"}, {"denominator": "annotated"},
                            {"mode": "unrestricted"})):
        r = run_tiny(tmp_path / str(i), **kw)
        t = read_image_counts(tmp_path / str(i))["1"]
        tally = r.stats["1"]["tally"]
        lab = t["label"].astype(np.int64)
        u = np.arange(len(lab))
        cat = tally.category_of_label.numpy()
        assert np.array_equal(np.bincount(t["unit"], t["inter"], len(lab)),
                              tally.inter.numpy()[u, lab])
        assert np.array_equal(np.bincount(t["unit"], t["act"], len(lab)),
                              np.where(cat[lab] >= 0, tally.act.numpy()[u, cat[lab]], 0))
        for label in set(lab.tolist()) - {0}:
            assert t["truth"][t["truth_label"] == label].sum() == tally.label[label]
        names = [row["label"] for row in r.units]
        # a unit whose best IoU is 0 has no label (id 0; units.csv leaves it empty, issue 18)
        assert names == [Tiny().labels.name(int(x)) if x else "" for x in lab]
    # the per-batch files are gone; a finished run run again keeps its counts
    assert not (tmp_path / "0" / ".state" / "images").exists()
    saved = (tmp_path / "0" / "image_counts.npz").read_bytes()
    run_tiny(tmp_path / "0")
    assert (tmp_path / "0" / "image_counts.npz").read_bytes() == saved


def test_dissect_config_equals_the_keywords(tmp_path):
    a = run_tiny(batch_size=4)
    b = dissect(tiny_model(), Tiny(), ["1"], config=DissectConfig(batch_size=4, progress=False))
    assert a.units == b.units


# -- runs know their model -------------------------------------------------------------------------

def test_torchvision_random_weights_are_seeded(tmp_path, one_thread):
    pytest.importorskip("torchvision")
    spec = "torchvision:resnet18?weights=none"
    a, b = load(spec).module, load(spec).module
    assert model_fingerprint(a) == model_fingerprint(b)
    assert model_fingerprint(load(spec + "&seed=1").module) != model_fingerprint(a)
    before = torch.random.get_rng_state()
    load(spec)
    assert torch.equal(torch.random.get_rng_state(), before)   # the caller's RNG untouched
    argv = ["dissect", "--model", spec, "--layers", "net.layer3", "--concepts", "synthetic",
            "--limit", "6", "--image-size", "64", "--batch-size", "6", "--score", "iou"]
    assert main(["--quiet", *argv, "--out", str(tmp_path / "a")]) == 0
    assert main(["--quiet", *argv, "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "units.csv").read_text() == (tmp_path / "b" / "units.csv").read_text()
    model = json.loads((tmp_path / "a" / "summary.json").read_text())["config"]["model"]
    assert model["seed"] == 0 and model["fingerprint"] == model_fingerprint(a)


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    """Dissections of demo-frozen and demo-finetune-last, and a frozen one from a copied file."""
    root = tmp_path_factory.mktemp("runs")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in ("demo-frozen", "demo-finetune-last"):
            assert main(["--quiet", "dissect", "--model", name, *DEMO,
                         "--out", str(root / name)]) == 0
        from neuroprobe.models import zoo

        copy = root / "model.pt"
        shutil.copy(zoo.builtin_path("demo-frozen"), copy)
        assert main(["--quiet", "dissect", "--model", str(copy), *DEMO,
                     "--out", str(root / "copied")]) == 0
    finally:
        torch.set_num_threads(n)
    return root


def test_bootstrap_estimate_is_the_count_difference(demo_runs, tmp_path, capsys):
    a, b = demo_runs / "demo-frozen", demo_runs / "demo-finetune-last"
    rc, out, err = cli(["compare", a, b, "--bootstrap", "60", "--out", tmp_path], capsys)
    assert rc == 0, err
    counts = {(r["layer"], r["label"]): r for r in rows(tmp_path / "counts.csv")}
    boot = rows(tmp_path / "bootstrap.csv")
    assert list(boot[0]) == ["layer", "label", "category", "count_a", "count_b", "difference",
                             "ci_low", "ci_high"]
    assert {(r["layer"], r["label"]) for r in boot} == set(counts)   # no other rows
    for r in boot:
        c = counts[(r["layer"], r["label"])]
        assert int(r["count_a"]) == int(c["demo-frozen"])
        assert int(r["count_b"]) == int(c["demo-finetune-last"])
        assert int(r["difference"]) == int(c["difference"])
        assert float(r["ci_low"]) <= int(r["difference"]) <= float(r["ci_high"]), r
    # the printed table says the same
    for r in boot:
        assert f"| {r['layer']} | {r['label']} | {r['category']} | {r['count_a']} | " \
               f"{r['count_b']} | {r['difference']} |" in out


def test_compare_refuses_runs_that_measure_different_things(demo_runs, tmp_path, capsys):
    other = tmp_path / "more"
    assert main(["--quiet", "dissect", "--model", "demo-frozen", *DEMO[2:], "--limit", "12",
                 "--out", str(other)]) == 0
    rc, _, err = cli(["compare", demo_runs / "demo-frozen", other], capsys)
    one_line(rc, err, "differ in concepts", "24 images", "12 images", "--force")
    rc, _, err = cli(["compare", demo_runs / "demo-frozen", other, "--force"], capsys)
    assert rc == 0, err


def test_gallery_and_compare_refuse_a_run_whose_model_changed(demo_runs, tmp_path, capsys):
    from neuroprobe.models import zoo

    run = tmp_path / "copied"
    shutil.copytree(demo_runs / "copied", run)
    model = Path(json.loads((run / "summary.json").read_text())["config"]["model"]["file"])
    saved = model.read_bytes()
    try:
        shutil.copy(zoo.builtin_path("demo-finetune-last"), model)
        rc, _, err = cli(["compare", run, demo_runs / "demo-frozen"], capsys)
        one_line(rc, err, "changed", str(model), "sha256", "dissect the model again")
        rc, _, err = cli(["gallery", run, "--units", "encoder.block4:0", "--out",
                          tmp_path / "g"], capsys)
        one_line(rc, err, "is not the network", "fingerprint", "dissect the model again")
        assert not (tmp_path / "g").exists()
    finally:
        model.write_bytes(saved)


def test_lock_removes_the_temporaries_a_killed_run_left(tmp_path):
    """A SIGKILL between mkstemp and the rename leaves ``.NAME.XXXXXXXX.SUFFIX`` files; the
    next run into the folder removes them once it holds the lock, and nothing else."""
    import tempfile

    from neuroprobe.engine.store import RunStore

    out = tmp_path / "run"
    (out / ".state" / "spool").mkdir(parents=True)
    leftovers = []
    for folder, name in ((out / ".state", "state.pt"), (out / ".state" / "spool", "0000003.pt"),
                         (out, "units.csv"), (out, "image_counts.npz")):
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=Path(name).suffix, dir=folder)
        os.close(fd)
        leftovers.append(Path(tmp))
    kept = [out / ".hidden-notes.txt", out / "units.csv", out / ".state" / "state.pt",
            out / ".mydata.abcdefgh.csv"]   # a user's dotfile shaped like a temp, not ours
    for p in kept:
        p.write_text("keep")
    with RunStore.lock(out):
        pass
    assert not any(p.exists() for p in leftovers)
    assert all(p.exists() for p in kept)


def test_layers_tallied_side_by_side_give_the_results_of_one_layer_alone(tmp_path):
    """With ``tally_threads=2`` on the CPU, pass 2 tallies the layers in parallel threads:
    units, tallies and per-image counts are those of each layer dissected alone (one
    thread; the same thread count for the forward passes, whose float sums depend on it)."""
    from neuroprobe.image_counts import read_image_counts

    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run = {name: dissect(tiny_model(), Tiny(), layers, out_dir=tmp_path / name,
                             batch_size=4, progress=False, tally_threads=2)
               for name, layers in (("both", ["1", "2"]), ("1", ["1"]), ("2", ["2"]))}
    finally:
        torch.set_num_threads(n)
    assert run["both"].units == run["1"].units + run["2"].units and len(run["both"].units) == 10
    both = read_image_counts(tmp_path / "both")
    for layer in ("1", "2"):
        for f in ("inter", "act", "label"):
            assert torch.equal(getattr(run["both"].stats[layer]["tally"], f),
                               getattr(run[layer].stats[layer]["tally"], f))
        alone = read_image_counts(tmp_path / layer)[layer]
        assert all(np.array_equal(both[layer][k], alone[k]) for k in alone)


def test_image_counts_file_round_trips_with_equal_bytes(tmp_path):
    """image_counts.npz (deflated at level 1, fixed entry dates) reads back the arrays written,
    dtypes included, and equal counts give equal bytes."""
    from neuroprobe.image_counts import read_image_counts, write_image_counts

    rng = np.random.default_rng(0)
    table = {"label": np.array([0, 3, 5], np.int32), "counted": np.array([False, True, True]),
             "unit": rng.integers(0, 3, 50).astype(np.int32),
             "inter": rng.integers(0, 9, 50).astype(np.int32),
             "images": np.arange(10, dtype=np.int64)}
    write_image_counts(tmp_path / "a" / "image_counts.npz", {"net.layer4": table})
    write_image_counts(tmp_path / "b" / "image_counts.npz", {"net.layer4": table})
    assert (tmp_path / "a" / "image_counts.npz").read_bytes() == \
        (tmp_path / "b" / "image_counts.npz").read_bytes()
    back = read_image_counts(tmp_path / "a")
    assert np.array_equal(back["images"], table["images"])
    for k, v in table.items():
        if k != "images":
            got = back["net.layer4"][k]
            assert got.dtype == v.dtype and np.array_equal(got, v)


def test_check_finite_names_the_first_bad_unit_and_accepts_an_overflowing_sum():
    from neuroprobe.engine.runner import check_finite
    from neuroprobe.errors import UserError

    big = torch.full((2, 3, 4, 4), 3e38)   # finite values whose float32 sum overflows
    check_finite("x", big, ["a", "b"])
    for value, kind in ((float("nan"), "NaN"), (float("inf"), "infinite"),
                        (float("-inf"), "infinite")):
        a = torch.zeros(2, 3, 4, 4)
        a[1, 2, 3, 0] = value
        with pytest.raises(UserError, match=f"{kind} activations in layer 'x', unit 2, "
                           "image 'b'"):
            check_finite("x", a, ["a", "b"])


def test_intra_op_threads_sets_and_restores_the_count():
    from neuroprobe.utils import intra_op_threads

    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with intra_op_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(KeyError):
            with intra_op_threads(1):
                raise KeyError("x")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(n)


@pytest.mark.parametrize("tally_threads", [1, 2])
def test_cpu_statistics_run_on_one_thread_and_the_forward_on_all(monkeypatch, tmp_path,
                                                                 tally_threads):
    """On the CPU the per-batch statistics of both passes run with one intra-op thread (issue
    20: many short operations that wait for a busy second core), the forward pass with the
    process's count, which is restored at the end; the results are those of a run that never
    changes the count."""
    import neuroprobe.dissect as dissect_module
    import neuroprobe.engine.runner as runner

    seen = {"forward": set(), "record": set(), "tally": set()}

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            seen[name].add(torch.get_num_threads())
            return fn(*args, **kwargs)
        return wrapped

    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        plain = dissect(tiny_model(), Tiny(), ["1", "2"], batch_size=4, progress=False)
        monkeypatch.setattr(runner, "forward", spy("forward", runner.forward))
        monkeypatch.setattr(dissect_module, "check_finite",
                            spy("record", dissect_module.check_finite))
        monkeypatch.setattr(IoUTally, "add", spy("tally", IoUTally.add))
        res = dissect(tiny_model(), Tiny(), ["1", "2"], batch_size=4, progress=False,
                      out_dir=tmp_path / "run", tally_threads=tally_threads)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(n)
    assert seen == {"forward": {2}, "record": {1}, "tally": {1}}
    assert res.units == plain.units
    for layer in ("1", "2"):
        assert torch.equal(res.stats[layer]["tally"].inter, plain.stats[layer]["tally"].inter)
