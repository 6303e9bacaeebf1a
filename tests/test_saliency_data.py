"""Fixation readers (each tested on a file written here in the exact format), baselines, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio

from neuroprobe.cli import main
from neuroprobe.errors import DataFormatError, UserError
from neuroprobe.saliency import data as D
from neuroprobe.saliency.fixations import Fixations

SHARED = Path(__file__).parents[2] / "shared" / "data"


def test_salicon_2015_json_row_col_one_based(tmp_path):
    doc = {"images": [{"id": 7, "file_name": "COCO_val2014_000000000007.jpg", "width": 640,
                       "height": 480}],
           "annotations": [{"image_id": 7, "worker_id": 99, "fixations": [[1, 1], [480, 640]]},
                           {"image_id": 7, "worker_id": 12, "fixations": [[10, 20]]}]}
    p = tmp_path / "fixations_val2014.json"
    p.write_text(json.dumps(doc))
    ds = D.read_salicon_json(p)
    f = ds.fixations[0]
    assert f.size == (480, 640) and f.image.endswith("07.jpg")
    assert f.x.tolist() == [0, 639, 19] and f.y.tolist() == [0, 479, 9]  # x = col-1, y = row-1
    assert f.observer.tolist() == [0, 0, 1]
    p.write_text(json.dumps({"images": []}))
    with pytest.raises(DataFormatError, match="not a SALICON 2015"):
        D.read_salicon_json(p)


def test_salicon_2017_mat_gaze_x_y_one_based(tmp_path):
    gaze = np.zeros((2,), dtype=[("location", object), ("timestamp", object), ("fixations", object)])
    gaze[0]["fixations"] = np.array([[1.0, 1.0], [640.0, 480.0]])
    gaze[1]["fixations"] = np.array([[11.0, 21.0]])
    for g in gaze:
        g["location"] = np.zeros((0, 2))
        g["timestamp"] = np.zeros(0)
    sio.savemat(tmp_path / "COCO_train2014_000000000009.mat",
                {"image": "COCO_train2014_000000000009", "resolution": np.array([480, 640]),
                 "gaze": gaze})
    ds = D.read_salicon_mat(tmp_path)
    f = ds.fixations[0]
    assert f.image == "COCO_train2014_000000000009.jpg" and f.size == (480, 640)
    assert f.x.tolist() == [0, 639, 10] and f.y.tolist() == [0, 479, 20]
    assert f.observer.tolist() == [0, 0, 1]
    sio.savemat(tmp_path / "bad.mat", {"something": np.ones(3)})
    with pytest.raises(DataFormatError, match="not a SALICON 2017"):
        D.read_salicon_mat(tmp_path / "bad.mat")


def test_mit1003_extracted_files_drop_first(tmp_path):
    from PIL import Image

    Image.new("RGB", (100, 80)).save(tmp_path / "i1.jpeg")
    fixdir = tmp_path / "fix"
    fixdir.mkdir()
    sio.savemat(fixdir / "i1.jpeg_CNG.mat", {"fixations": np.array([[50.0, 40.0], [1.0, 2.0],
                                                                     [100.0, 80.0]])})
    sio.savemat(fixdir / "i1.jpeg_ajs.mat", {"fixations": np.array([[50.0, 40.0], [5.0, 6.0]])})
    ds = D.read_mit1003(fixdir, images_root=tmp_path)
    f = ds.fixations[0]
    assert f.size == (80, 100)
    # first fixation (the central cross) dropped; 1-based -> 0-based; observers by sorted name
    assert sorted(zip(f.x.tolist(), f.y.tolist())) == [(0, 1), (4, 5), (99, 79)]
    assert D.read_mit1003(fixdir, drop_first=False).fixations[0].x.size == 5
    sio.savemat(fixdir / "i2.jpeg_x.mat", {"eyeData": np.ones((3, 2))})
    with pytest.raises(DataFormatError, match="no variable 'fixations'"):
        D.read_mit1003(fixdir)


def test_csv_reader_and_bad_layout(tmp_path):
    p = tmp_path / "fix.csv"
    p.write_text("image,x,y,observer,width,height\na.png,0,0,0,8,6\na.png,7.5,5,1,8,6\n"
                 "b.png,3,3,0,8,6\n")
    ds = D.read_csv(p)
    assert ds.images == ["a.png", "b.png"] and ds.fixations[0].size == (6, 8)
    assert ds.fixations[0].x.tolist() == [0, 7.5]  # 0-based, unchanged
    p.write_text("img,col,row\na.png,1,2\n")
    with pytest.raises(DataFormatError) as err:
        D.read_csv(p)
    assert "image,x,y,observer" in str(err.value) and "\n" not in str(err.value)
    p.write_text("image,x,y,observer\na.png,one,2,0\n")
    with pytest.raises(DataFormatError, match="line 2"):
        D.read_csv(p)


def test_osie_layout_written_here(tmp_path):
    from PIL import Image

    (tmp_path / "stimuli").mkdir()
    Image.new("RGB", (800, 600)).save(tmp_path / "stimuli" / "1001.jpg")
    subj = np.zeros((2,), dtype=[("fix_x", object), ("fix_y", object), ("fix_duration", object)])
    subj[0] = (np.array([1.0, 800.0]), np.array([1.0, 600.0]), np.array([200.0, 300.0]))
    subj[1] = (np.array([400.5]), np.array([300.5]), np.array([250.0]))
    rec = np.zeros((2,), dtype=[("img", object), ("subjects", object)])
    rec[0] = ("1001.jpg", subj)
    rec[1] = ("1002.jpg", subj)  # no image file: left out
    sio.savemat(tmp_path / "fixations.mat", {"fixations": rec})
    ds = D.load_osie(tmp_path)
    assert ds.images == ["1001.jpg"] and ds.extra["records_without_image"] == 1
    f = ds.fixations[0]
    assert f.x.tolist() == [0, 799, 399.5] and f.y.tolist() == [0, 599, 299.5]
    splits = list(D.inter_observer(f))
    assert [o for o, _, _ in splits] == [0, 1]
    assert len(splits[0][1]) == 1 and len(splits[0][2]) == 2


def test_open_dataset_errors(tmp_path):
    with pytest.raises(UserError, match="closest"):
        D.open_dataset("osei:" + str(tmp_path))
    with pytest.raises(UserError, match="--data osie:PATH"):
        D.open_dataset("osie")
    with pytest.raises(UserError, match="does not exist"):
        D.open_dataset("osie:" + str(tmp_path / "nope"))
    with pytest.raises(DataFormatError, match="no fixations.mat"):
        D.open_dataset("osie:" + str(tmp_path))
    (tmp_path / "fixations.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataFormatError, match="not a readable MATLAB"):
        D.open_dataset("osie", root=str(tmp_path))


def test_centre_prior_leaves_image_out():
    a = Fixations("a", np.array([10.0]), np.array([10.0]), np.array([0]), size=(40, 40))
    b = Fixations("b", np.array([30.0]), np.array([30.0]), np.array([0]), size=(80, 80))
    prior = D.centre_prior([a, b], (40, 40), exclude=0, sigma=2.0)
    assert prior.sum() == pytest.approx(1.0)
    r, c = np.unravel_index(np.argmax(prior), prior.shape)
    assert (r, c) == (15, 15)  # b's (30, 30) in an 80-px image -> 14.75 in a 40-px one


@pytest.mark.skipif(not (SHARED / "osie" / "fixations.mat").is_file(),
                    reason="real OSIE data not found at ../shared/data/osie")
def test_real_osie():
    ds = D.load_osie(SHARED / "osie")
    assert len(ds) == 700
    f = ds.fixations[0]
    assert f.image == "1001.jpg" and f.n_observers == 15 and f.size == (600, 800)
    raw = sio.loadmat(SHARED / "osie" / "fixations.mat", squeeze_me=True,
                      struct_as_record=False)["fixations"][0]
    assert f.x[0] == pytest.approx(float(np.atleast_1d(raw.subjects[0].fix_x)[0]) - 1)
    allx = np.concatenate([g.x for g in ds.fixations[:50]])
    assert allx.min() > -1 and allx.max() < 800
    img = ds.load_image(0)
    assert img.shape == (600, 800, 3) and 0 <= img.min() and img.max() <= 1


# ------------------------------------------------------------------ command line
def test_cli_saliency_eval_on_csv(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(tmp_path / name)
    lines = ["image,x,y,observer"]
    for name in ("a.png", "b.png"):
        for o in range(3):
            for _ in range(4):
                lines.append(f"{name},{rng.uniform(10, 54):.1f},{rng.uniform(8, 40):.1f},{o}")
    lines.append("c.png,1,1,0")  # an image without its file: loading it fails clearly
    (tmp_path / "fix.csv").write_text("\n".join(lines[:-1]) + "\n")
    out = tmp_path / "out"
    rc = main(["--quiet", "saliency", "eval", "--data", f"csv:{tmp_path / 'fix.csv'}",
               "--images", str(tmp_path), "--models", "centre,spectral,observers,uniform",
               "--out", str(out)])
    assert rc == 0
    for f in ("per_image.csv", "summary.csv", "summary.md", "summary.png", "config.json"):
        assert (out / f).is_file()
    md = (out / "summary.md").read_text()
    assert "`mit`" in md and "`exact`" in md and "observers" in md
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["protocols"] == ["mit", "exact"] and "versions" in cfg
    rc = main(["saliency", "eval", "--data", f"osie:{tmp_path / 'missing'}", "--out",
               str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "--data osie:PATH" in err and err.count("\n") == 1


def test_cli_popout_small(tmp_path):
    out = tmp_path / "pop"
    rc = main(["--quiet", "popout", "--models", "spectral,centre", "--n", "3", "--size", "112",
               "--examples", "2", "--out", str(out)])
    assert rc == 0
    for f in ("summary.csv", "summary.md", "per_array.csv", "arrays.csv", "config.json",
              "popout_colour.png", "popout_size.png", "popout_examples.png"):
        assert (out / f).is_file()
    text = (out / "per_array.csv").read_text().splitlines()
    assert len(text) == 1 + 3 * 2
    assert main(["popout", "--models", "nosuchmodel.pt", "--n", "1", "--out", str(out)]) == 2
