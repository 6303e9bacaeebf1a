"""`neuroprobe dissect` on the command line, end to end on the synthetic world."""
from __future__ import annotations

import csv
import json

import pytest

from neuroprobe.cli import main


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dissect") / "run"
    code = main(["--quiet", "dissect", "--limit", "6", "--batch-size", "3", "--out", str(out)])
    return code, out


def test_default_command_on_the_synthetic_world(demo_run, capsys):
    code, out = demo_run
    assert code == 0
    rows = list(csv.DictReader(open(out / "units.csv")))
    summary = json.loads((out / "summary.json").read_text())
    cfg = summary["config"]
    assert cfg["concepts"]["name"] == "synthetic" and cfg["concepts"]["n"] == 6
    assert cfg["mode"] == "netdissect" and cfg["quantile"] == 0.005
    assert cfg["iou_threshold"] == 0.04 and cfg["denominator"] == "netdissect"
    assert cfg["score"] == "both" and (out / "region_nss.csv").is_file()
    assert {"nss-label", "nss-score", "object-iou"} <= set(rows[0])
    assert len(rows) == sum(summary["units"].values()) and set(summary["units"]) == set(
        cfg["layers"])
    if cfg["model"].get("variant") == "stand-in":
        assert "stand-in" in summary["note"]
    assert (out / "concepts.png").is_file()


def test_region_nss_table_from_the_cli(tmp_path, capsys):
    out = tmp_path / "nss"
    code = main(["--quiet", "dissect", "--concepts", "synthetic", "--limit", "4",
                 "--batch-size", "4", "--score", "region-nss", "--nss-threshold", "1.0",
                 "--top-units", "3", "--out", str(out)])
    assert code == 0
    table = list(csv.DictReader(open(out / "region_nss.csv")))
    assert table and all(int(r["top_units"]) == 3 for r in table)
    assert json.loads((out / "summary.json").read_text())["config"]["nss_threshold"] == 1.0
    assert "region-NSS (mean NSS of the top 3 units" in capsys.readouterr().out


def test_cli_errors_are_one_line(demo_run, tmp_path, capsys):
    code, out = demo_run
    assert main(["dissect", "--concepts", "no-such-set", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("neuroprobe: error: unknown concept set") and "\n" not in err
    assert main(["dissect", "--limit", "6", "--layers", "encoder.blok4",
                 "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unknown layer 'encoder.blok4'" in err and "encoder.block4" in err
    # the same folder with another configuration is refused, --overwrite replaces it
    assert main(["--quiet", "dissect", "--limit", "6", "--batch-size", "3",
                 "--iou-threshold", "0.1", "--out", str(out)]) == 2
    assert "another configuration" in capsys.readouterr().err


def test_run_folder_reopens_for_the_gallery(demo_run):
    """top_images.npz and the concept-set spec in summary.json are what the gallery reads."""
    import numpy as np

    from neuroprobe.run import read_top_images
    from neuroprobe.reopen import reopen

    code, out = demo_run
    summary = json.loads((out / "summary.json").read_text())
    ccfg = summary["config"]["concepts"]
    assert ccfg["spec"] == "synthetic" and ccfg["limit"] == 6 and "root" not in ccfg
    saved = read_top_images(out)
    assert set(saved) == set(summary["config"]["layers"])
    for layer, (v, i) in saved.items():
        assert v.shape == i.shape and v.shape[0] == summary["units"][layer]
        assert int(i.min()) >= 0 and int(i.max()) < 6
        assert np.all(v[:, :-1] >= v[:, 1:])   # best first
    model, dataset = reopen(summary, None, None, "cpu")
    assert len(dataset) == 6 and tuple(dataset.image_size) == tuple(ccfg["image_size"])
