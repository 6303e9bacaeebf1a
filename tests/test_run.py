"""``neuroprobe.load_run``: a run folder as an object, its files, its views, and
``neuroprobe dissect --from RUN``."""
from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch

import neuroprobe
from neuroprobe.cli import main
from neuroprobe.errors import UserError
from neuroprobe.results import write_top_images
from neuroprobe.run import MissingDependency, Run, load_run, read_top_images


@pytest.fixture(scope="module")
def dissected(tmp_path_factory, one_thread):
    """A small dissection of the demo model (both scores) and its folder."""
    from neuroprobe.concepts import open_concepts
    from neuroprobe.dissect import dissect
    from neuroprobe.models import load

    model, meta = load("demo")
    data = open_concepts("synthetic", image_size=128, mask_size=64)
    out = tmp_path_factory.mktemp("run") / "demo"
    result = dissect(model, data, ["encoder.block3", "encoder.block4"], score="both", limit=8,
                     batch_size=4, out_dir=out, progress=False, top_k=5,
                     model_info={"spec": "demo"}, concepts_info={"spec": "synthetic"})
    return result, out


def _as_loaded(row: dict) -> dict:
    """An in-memory unit row as units.csv gives it back (empty number cells are None)."""
    return {k: (None if v == "" and not (k in ("label", "category") or
                                         k.endswith(("-label", "-category"))) else v)
            for k, v in row.items()}


def test_load_run_equals_the_dissection(dissected):
    result, out = dissected
    run = neuroprobe.load_run(out)
    assert isinstance(run, Run) and run.path == out and run.name == "demo"
    assert run.units == [_as_loaded(r) for r in result.units]
    assert type(run.units[0]["unit"]) is int and type(run.units[0]["score"]) is float
    assert run.summary == json.loads((out / "summary.json").read_text())
    assert run.nss_table == [_as_loaded(r) for r in result.nss_table]
    assert run.layers == ["encoder.block3", "encoder.block4"]
    assert run.label_names == result.label_names and run.label_categories == \
        result.label_categories
    for layer in run.layers:
        assert np.array_equal(run.iou[layer], result.iou[layer])
        assert np.array_equal(run.nss[layer], result.nss[layer], equal_nan=True)
        v, i = run.top_images[layer]
        assert np.array_equal(v, result.top_images[layer][0].numpy())
        assert np.array_equal(i, result.top_images[layer][1].numpy())
        assert v.shape == (result.summary["units"][layer], 5) and i.dtype == np.int64
    assert not (out / "top_images.pt").exists()


def test_iou_matrix_agrees_with_units_csv(dissected):
    """The saved matrix is the one the labels were chosen from: each unit's score is its row
    maximum, at the column of its label; each category's best IoU is that category's maximum."""
    _, out = dissected
    run = load_run(out)
    names, cats = np.array(run.label_names), np.array(run.label_categories)
    assert names[0] == "-" and cats[0] == ""
    categories = [c for c in dict.fromkeys(cats.tolist()) if c]
    labelled = 0
    for r in run.units:
        row = run.iou[r["layer"]][r["unit"]]
        assert row[0] == 0 and r["score"] == row.max()
        if r["label"]:
            labelled += 1
            j = np.nonzero((names == r["label"]) & (cats == r["category"]))[0]
            assert len(j) == 1 and row[j[0]] == r["score"]
        else:
            assert row.max() == 0
        for c in categories:
            assert r[f"{c}-iou"] == row[cats == c].max()
        nss = run.nss[r["layer"]][r["unit"]]
        assert r["nss-score"] == pytest.approx(np.nanmax(nss), abs=0) or (
            r["nss-label"] == "" and np.all(np.isnan(nss)))
    assert labelled > 0


def test_top_images_npz_round_trip_and_reproducible(tmp_path):
    top = {"a.b": (torch.tensor([[3.5, 1.0], [2.0, -1.0]]), torch.tensor([[4, 0], [1, 2]])),
           "c": (np.zeros((1, 2), np.float32), np.array([[7, 8]]))}
    write_top_images(tmp_path / "top_images.npz", top)
    first = (tmp_path / "top_images.npz").read_bytes()
    write_top_images(tmp_path / "top_images.npz", top)
    assert (tmp_path / "top_images.npz").read_bytes() == first      # same arrays, same bytes
    back = read_top_images(tmp_path)
    assert list(back) == ["a.b", "c"]
    assert np.array_equal(back["a.b"][0], top["a.b"][0].numpy())
    assert np.array_equal(back["a.b"][1], [[4, 0], [1, 2]]) and back["c"][1].dtype == np.int64
    with np.load(tmp_path / "top_images.npz", allow_pickle=False) as z:   # plain numpy
        assert set(z.files) == {"layers", "values_0", "index_0", "values_1", "index_1"}


def test_a_run_with_the_old_top_images_pt_still_loads(dissected, tmp_path):
    result, out = dissected
    old = tmp_path / "old"
    shutil.copytree(out, old, ignore=shutil.ignore_patterns(".state", ".lock"))
    (old / "top_images.npz").unlink()
    torch.save({k: {"values": v, "index": i} for k, (v, i) in result.top_images.items()},
               old / "top_images.pt")
    run = load_run(old)
    for layer, (v, i) in result.top_images.items():
        assert np.array_equal(run.top_images[layer][0], v.numpy())
        assert np.array_equal(run.top_images[layer][1], i.numpy())
    # weights_only: a file that holds a pickled object is refused in one line
    torch.save({"x": {"values": Run}}, old / "top_images.pt")
    with pytest.raises(UserError, match="cannot read .*top_images.pt"):
        read_top_images(old)


def test_repr_is_one_short_line(dissected):
    result, out = dissected
    for obj in (result, load_run(out)):
        text = repr(obj)
        assert "\n" not in text and len(text) < 300 and "tensor" not in text
        assert "model demo" in text and "encoder.block4" in text and "8 images" in text
    assert repr(load_run(out)).startswith(f"Run({str(out)!r}")


def test_repr_html_escapes_and_shows_gallery_thumbnails(dissected, tmp_path):
    from PIL import Image

    from neuroprobe.visualize.gallery import GalleryResult

    _, out = dissected
    run = load_run(out)
    page = run._repr_html_()
    assert page.count("<table") == 2 and "encoder.block3" in page and "data:image" not in page
    # a label with markup is escaped; a drawn card becomes a thumbnail
    run.units[0].update(label="<b>x</b>", detector=1, score=9.0)
    gallery = tmp_path / "g"
    (gallery / "units").mkdir(parents=True)
    Image.new("RGB", (800, 120), "red").save(gallery / "units" / "card.png")
    entry = {"layer": run.units[0]["layer"], "unit": run.units[0]["unit"], "label": "<i>",
             "score": 0.5, "png": "units/card.png"}
    (gallery / "gallery.json").write_text(json.dumps({"units": [entry]}))
    shutil.copytree(gallery, out / "gallery")
    try:
        page = run._repr_html_()
    finally:
        shutil.rmtree(out / "gallery")
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page
    assert page.count("data:image/png;base64,") == 1
    shown = GalleryResult(gallery, [gallery / "units" / "card.png"], None, [entry])
    page = shown._repr_html_()
    assert "&lt;i&gt;" in page and page.count("data:image/png;base64,") == 1
    assert repr(shown) == f"GalleryResult({str(gallery)!r}: 1 units)"


def test_to_dataframe(dissected):
    pd = pytest.importorskip("pandas")
    _, out = dissected
    run = load_run(out)
    units = run.to_dataframe()
    assert len(units) == len(run.units) and units["score"].dtype == float
    iou = run.to_dataframe("iou", "encoder.block4")
    assert iou.shape[0] == len(run.iou["encoder.block4"]) and "-" not in iou.columns
    best = run.units[[r["layer"] for r in run.units].index("encoder.block4")]
    if best["label"]:
        assert iou.loc[0].max() == best["score"]
    assert isinstance(run.to_dataframe("region_nss"), pd.DataFrame)
    with pytest.raises(UserError, match="name one"):
        run.to_dataframe("iou")


def test_to_dataframe_without_pandas_says_so(dissected, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)   # import pandas raises ImportError
    with pytest.raises(MissingDependency, match="pip install pandas"):
        load_run(dissected[1]).to_dataframe()


def test_bad_run_folders_are_one_line(tmp_path):
    with pytest.raises(UserError, match="missing is not a dissection run folder"):
        load_run(tmp_path / "missing")
    with pytest.raises(UserError, match="not a dissection run folder: it has no units.csv"):
        load_run(tmp_path)
    (tmp_path / "units.csv").write_text("layer,unit,label,score\nx,1,a,0.5\n")
    with pytest.raises(UserError, match="no summary.json"):
        load_run(tmp_path)
    assert load_run(tmp_path, require_summary=False).summary == {}
    (tmp_path / "summary.json").write_text("{broken")
    with pytest.raises(UserError, match="not valid JSON"):
        load_run(tmp_path)
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "units.csv").write_text("layer,unit,label,score\nx,one,a,0.5\n")
    with pytest.raises(UserError, match="line 2.*bad number 'one' in column 'unit'"):
        load_run(tmp_path)
    (tmp_path / "units.csv").write_text("layer,unit,label,score\nx,1,a,0.5\n")
    with pytest.raises(UserError, match="no scores.npz.*run the same"):
        load_run(tmp_path).iou


# -- paths recorded so that a run opens from any working folder --------------------------------

def test_gallery_of_a_run_made_with_relative_paths_from_another_folder(tmp_path, monkeypatch,
                                                                        capsys, one_thread):
    from neuroprobe.models import zoo

    work, other = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    other.mkdir()
    (work / "my.toml").write_text('source = "synthetic"\nseed = 0\nn = 8\nimage_size = 128\n'
                                  "mask_size = 64\n")
    shutil.copy(zoo.builtin_path("demo"), work / "model.pt")
    monkeypatch.chdir(work)
    assert main(["--quiet", "dissect", "--model", "model.pt", "--concepts", "my.toml",
                 "--layers", "encoder.block4", "--limit", "4", "--batch-size", "4",
                 "--out", "run"]) == 0
    cfg = json.loads((work / "run" / "summary.json").read_text())["config"]
    assert cfg["concepts"]["spec"] == str(work / "my.toml")
    assert cfg["model"]["file"] == str(work / "model.pt") and cfg["model"]["spec"] == "model.pt"
    monkeypatch.chdir(other)
    capsys.readouterr()
    assert main(["--quiet", "gallery", os.path.join("..", "work", "run"), "--max-units", "1",
                 "--steps", "0", "--attribution", "none", "--top-k", "2", "--no-report",
                 "--out", "g"]) == 0, capsys.readouterr().err
    assert len(list((other / "g" / "units").glob("*.png"))) == 1


# -- dissect --from RUN ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("from") / "a"
    assert main(["--quiet", "dissect", "--limit", "6", "--batch-size", "3", "--layers",
                 "encoder.block3", "--iou-threshold", "0.05", "--ties", "first",
                 "--out", str(out)]) == 0
    return out


def test_from_reproduces_the_run(cli_run, tmp_path, capsys):
    again = tmp_path / "b"
    assert main(["--quiet", "dissect", "--from", str(cli_run), "--out", str(again)]) == 0
    for name in ("units.csv", "top_images.npz", "scores.npz", "region_nss.csv"):
        assert (again / name).read_bytes() == (cli_run / name).read_bytes(), name
    a, b = (json.loads((d / "summary.json").read_text()) for d in (cli_run, again))
    assert a["config_hash"] == b["config_hash"] and a["config"] == b["config"]


def test_from_with_overrides(cli_run, tmp_path):
    out = tmp_path / "c"
    assert main(["--quiet", "dissect", "--from", str(cli_run), "--iou-threshold", "0.2",
                 "--limit", "3", "--out", str(out)]) == 0
    cfg = json.loads((out / "summary.json").read_text())["config"]
    base = json.loads((cli_run / "summary.json").read_text())["config"]
    assert cfg["iou_threshold"] == 0.2 and cfg["concepts"]["n"] == 3
    assert cfg["layers"] == ["encoder.block3"] and cfg["ties"] == "first"
    assert cfg["concepts"]["image_size"] == base["concepts"]["image_size"]
    assert cfg["model"]["sha256"] == base["model"]["sha256"]


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "the run folder does not exist"),
    (lambda p: p, "not a finished dissection run (no summary.json)"),
    (lambda p: ((p / "summary.json").write_text("[]"), p)[1],
     "holds no dissection configuration"),
    (lambda p: ((p / "summary.json").write_text('{"config": {"layers": ["x"]}}'), p)[1],
     "names no model (pass --model as well)"),
])
def test_from_a_bad_run_is_one_line(tmp_path, capsys, make, message):
    assert main(["dissect", "--from", str(make(tmp_path)), "--out",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("neuroprobe: error: --from") and message in err[0]
    assert not (tmp_path / "out").exists()


def test_matrix_errors(dissected):
    run = load_run(dissected[1])
    with pytest.raises(UserError, match="name one"):
        run.matrix("iou")
    with pytest.raises(UserError, match="not in this run"):
        run.matrix("iou", "nope")
    assert run.matrix("nss", "encoder.block3") is run.nss["encoder.block3"]
