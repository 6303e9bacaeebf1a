"""Broden-format export: files of the exact format, read back with plain csv/PIL and the reader."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from neuroprobe.concepts.export import export_broden
from neuroprobe.concepts.synthetic import SyntheticWorld
from neuroprobe.errors import UserError

N = 12


def _csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as fh:
        r = csv.DictReader(fh)
        return r.fieldnames, list(r)


def _decode(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "RGB"
        a = np.asarray(im).astype(np.int64)
    assert not a[..., 2].any()  # B unused
    return a[..., 0] + 256 * a[..., 1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    ds = SyntheticWorld(seed=5, n=N, observers=4)
    out = tmp_path_factory.mktemp("exp") / "broden"
    export_broden(ds, out, n=N)
    return ds, out, [ds[i] for i in range(N)]


def test_index_and_images(exported):
    ds, out, items = exported
    header, rows = _csv(out / "index.csv")
    assert header == ["image", "split", "ih", "iw", "sh", "sw", "color", "object", "material",
                      "part", "scene", "texture"]
    assert len(rows) == N
    assert [r["split"] for r in rows[:10]] == ["train"] * 7 + ["val"] * 3
    cat_of = {"object": 0, "part": 1, "color": 2}
    for r, it in zip(rows, items):
        assert (int(r["ih"]), int(r["iw"]), int(r["sh"]), int(r["sw"])) == (224, 224, 112, 112)
        with Image.open(out / "images" / r["image"]) as im:
            assert im.format == "JPEG" and im.size == (224, 224)
            rgb = np.asarray(im.convert("RGB")).astype(np.float64) / 255.0
        assert np.abs(rgb - it["image"].permute(1, 2, 0).numpy()).mean() < 0.03
        assert r["material"] == ""
        for cat, k in cat_of.items():
            layer = it["layers"][k].numpy()
            if not layer.any():
                assert r[cat] == ""
                continue
            files = r[cat].split(";")
            assert len(files) == 1 and files[0].endswith(".png")
            assert np.array_equal(_decode(out / "images" / files[0]), layer)
        assert int(r["scene"]) == int(it["whole"][0])
        assert int(r["texture"]) == int(it["whole"][1])


def test_label_category_and_code_tables(exported):
    ds, out, items = exported
    header, labels = _csv(out / "label.csv")
    assert header == ["number", "name", "category", "frequency", "coverage", "syns"]
    assert labels[0]["number"] == "0" and labels[0]["name"] == "-"
    by_id = {int(r["number"]): r for r in labels[1:]}
    assert set(by_id) == {lab.id for lab in ds.labels if lab.id}
    # frequencies recomputed from the items
    present = [set(it["layers"].unique().tolist()) | set(it["whole"].tolist()) for it in items]
    for lab_id, r in by_id.items():
        freq = sum(lab_id in p for p in present)
        assert int(r["frequency"]) == freq
        assert r["category"] == f"{ds.labels.category(lab_id)}({freq})"
        assert r["name"] == ds.labels.name(lab_id)
    person = sum(float((it["layers"][0] == 80).float().mean()) for it in items)
    assert float(by_id[80]["coverage"]) == pytest.approx(person, rel=1e-4)
    header, cats = _csv(out / "category.csv")
    assert header == ["name", "first", "last", "count", "frequency"]
    assert [c["name"] for c in cats] == ["color", "object", "part", "scene", "texture"]
    for c in cats:
        ids = [lab.id for lab in ds.labels.labels_of(c["name"])]
        assert (int(c["first"]), int(c["last"]), int(c["count"])) == (min(ids), max(ids), len(ids))
        _, codes = _csv(out / f"c_{c['name']}.csv")
        assert [int(r["code"]) for r in codes] == list(range(1, len(ids) + 1))
        assert [int(r["number"]) for r in codes] == sorted(ids)
    part = next(c for c in cats if c["name"] == "part")
    assert int(part["frequency"]) == sum(bool(it["categories"][1]) for it in items)


def test_fixations_and_metadata(exported):
    ds, out, items = exported
    _, fix = _csv(out / "fixations.csv")
    _, rows = _csv(out / "index.csv")
    for r, it in zip(rows, items):
        mine = [f for f in fix if f["image"] == r["image"]]
        got = np.array([[float(f["x"]), float(f["y"])] for f in mine])
        assert np.allclose(got, it["fixations"].numpy(), atol=1e-3)
        assert [int(f["observer"]) for f in mine] == it["observers"].tolist()
    meta = json.loads((out / "export.json").read_text())
    assert meta["n"] == N and meta["dataset"]["seed"] == 5 and "torch" in meta["versions"]


def test_broden_reader_round_trip(exported):
    from neuroprobe.concepts.broden import BrodenDataset

    ds, out, items = exported
    back = BrodenDataset(out)
    assert len(back) == N
    assert [lab.id for lab in back.labels] == [lab.id for lab in ds.labels]
    assert all(back.labels.category(i) == ds.labels.category(i) for i in ds.labels.ids if i)
    order = [back.categories.index(c) for c in ds.categories]
    for i, it in enumerate(items):
        b = back[i]
        assert torch.equal(b["categories"][order], it["categories"])
        by_cat = {back.labels.category(int(layer[layer > 0][0])): layer
                  for layer in b["layers"] if layer.any()}
        for k, cat in enumerate(("object", "part", "color")):
            if it["layers"][k].any():
                assert torch.equal(by_cat[cat], it["layers"][k])
            else:
                assert cat not in by_cat
        assert sorted(b["whole"].tolist()) == sorted(it["whole"].tolist())


def test_refuses_non_empty_folder_and_leaves_no_partial_output(tmp_path):
    ds = SyntheticWorld(seed=1, n=4, observers=2)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        export_broden(ds, busy, n=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    export_broden(ds, empty, n=2)  # an empty folder is fine
    assert (empty / "index.csv").is_file()

    class Broken(SyntheticWorld):
        def __getitem__(self, i):
            if i == 2:
                raise RuntimeError("disk on fire")
            return super().__getitem__(i)

    with pytest.raises(RuntimeError):
        export_broden(Broken(seed=1, n=4, observers=2), tmp_path / "fail", n=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "empty"]


def test_size_handling_and_cli(tmp_path, monkeypatch):
    from neuroprobe.cli import main

    ds = SyntheticWorld(seed=1, n=2, observers=0)
    out = export_broden(ds, tmp_path / "wide", n=3)  # a synthetic world widens to n
    _, rows = _csv(out / "index.csv")
    assert len(rows) == 3 and not (out / "fixations.csv").exists()
    with pytest.raises(UserError, match="n >= 1"):
        export_broden(ds, tmp_path / "zero", n=0)
    monkeypatch.setenv("NEUROPROBE_QUIET", "1")
    assert main(["concepts", "export", "synthetic", "--n", "3", "--seed", "4", "--out",
                 str(tmp_path / "cli"), "--format", "broden"]) == 0
    meta = json.loads((tmp_path / "cli" / "export.json").read_text())
    assert meta["dataset"]["seed"] == 4 and meta["n"] == 3
    assert main(["concepts", "export", "synthetic", "--n", "3", "--out",
                 str(tmp_path / "cli")]) == 2
