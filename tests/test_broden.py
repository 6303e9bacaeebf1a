"""Broden reader: a small Broden folder and zip written by hand in the exact format."""
from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from neuroprobe.concepts import collate
from neuroprobe.concepts.broden import (BrodenDataset, decode_label_png, encode_label_png,
                                        from_spec)
from neuroprobe.errors import ConceptSetError, DataFormatError, UserError

CATEGORIES = ["color", "object", "material", "part", "scene", "texture"]
# number, name, category cell (counts), the primary category we expect
LABELS = [
    (1, "red-c", "color(5)", "color"),
    (2, "wall", "object(10);material(3)", "object"),
    (5, "wood", "material(7);object(9)", "object"),   # larger count wins
    (300, "window", "object(4)", "object"),            # > 255: needs the G channel
    (301, "pane", "part(6)", "part"),
    (700, "handle", "part(2);object(1)", "part"),
    (1025, "street-s", "scene(12)", "scene"),
    (1300, "striped", "texture(3)", "texture"),
]
H, W = 16, 20  # image size; masks are half of it


def _write_csv(path: Path, header: list[str], rows: list[list]):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def make_broden(root: Path, n: int = 10, seed: int = 0) -> dict:
    """Write a Broden folder with ``n`` images; return what was written per image."""
    rng = np.random.default_rng(seed)
    (root / "images" / "src").mkdir(parents=True)
    _write_csv(root / "category.csv", ["name", "first", "last", "count", "frequency"],
               [[c, 0, 0, 1, 1] for c in CATEGORIES])
    _write_csv(root / "label.csv", ["number", "name", "category", "frequency", "coverage", "syns"],
               [[0, "-", "", 0, 0, ""]] + [[i, nm, cc, 1, 0.1, ""] for i, nm, cc, _ in LABELS])
    by_cat = {c: [i for i, _, _, p in LABELS if p == c] for c in CATEGORIES}
    for c in CATEGORIES:
        _write_csv(root / f"c_{c}.csv", ["code", "number", "name", "frequency", "coverage"],
                   [[k + 1, i, "x", 1, 0.1] for k, i in enumerate(by_cat[c])])
    rows, truth = [], []
    for k in range(n):
        img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        name = f"src/im{k:03d}.png"
        Image.fromarray(img).save(root / "images" / name)
        cells = {c: "" for c in CATEGORIES}
        layers = []
        obj = rng.choice([0, 2, 5, 300], size=(H // 2, W // 2))
        Image.fromarray(encode_label_png(obj)).save(root / "images" / f"src/im{k:03d}_object.png")
        cells["object"] = f"src/im{k:03d}_object.png"
        layers.append(obj)
        if k % 2 == 0:  # two part layers
            names = []
            for j in range(2):
                part = rng.choice([0, 301, 700], size=(H // 2, W // 2))
                fn = f"src/im{k:03d}_part_{j + 1}.png"
                # RGBA on purpose for one of them: alpha is ignored like B
                arr = encode_label_png(part)
                if j:
                    arr = np.dstack([arr, np.full(arr.shape[:2], 255, np.uint8)])
                Image.fromarray(arr).save(root / "images" / fn)
                names.append(fn)
                layers.append(part)
            cells["part"] = ";".join(names)
        whole = []
        if k % 3 == 0:
            cells["scene"] = "1025"
            whole.append(1025)
        elif k % 3 == 1:
            cells["scene"] = "0"  # the pitfall: scene 0 is not in c_scene.csv
        if k == 4:
            cells["texture"] = "1300"
            whole.append(1300)
        rows.append([name, "train" if k < 7 else "val", H, W, H // 2, W // 2]
                    + [cells[c] for c in CATEGORIES])
        truth.append({"image": img, "layers": layers, "whole": whole,
                      "cats": [bool(cells[c]) and cells[c] != "0" for c in CATEGORIES]})
    _write_csv(root / "index.csv", ["image", "split", "ih", "iw", "sh", "sw"] + CATEGORIES, rows)
    return truth


@pytest.fixture()
def broden(tmp_path):
    root = tmp_path / "broden1_224"
    truth = make_broden(root)
    return root, truth


def test_every_label_decoded_as_written(broden):
    root, truth = broden
    ds = BrodenDataset(root)
    assert len(ds) == 10
    assert ds.image_size == (H, W) and ds.mask_size == (H // 2, W // 2)
    assert ds.categories == CATEGORIES
    for i, t in enumerate(truth):
        item = ds[i]
        assert item["id"] == f"src/im{i:03d}"
        assert item["image"].dtype == torch.float32 and item["image"].shape == (3, H, W)
        assert np.array_equal((item["image"] * 255).round().byte().permute(1, 2, 0).numpy(),
                              t["image"])
        assert item["layers"].dtype == torch.int64
        assert item["layers"].shape[0] == len(t["layers"])
        for got, want in zip(item["layers"], t["layers"]):
            assert np.array_equal(got.numpy(), want)
        assert item["whole"].tolist() == t["whole"]
        assert item["categories"].tolist() == t["cats"]
        assert item["fixations"] is None
    assert int(ds[0]["layers"].max()) >= 300  # ids above 255 survived


def test_label_table_and_primary_category(broden):
    root, _ = broden
    ds = BrodenDataset(root)
    for number, name, _, primary in LABELS:
        assert ds.labels[number].name == name
        assert ds.labels.category(number) == primary
    assert ds.labels[5].coverage == {"object": 0.1}          # c_object.csv's coverage
    counted = BrodenDataset(root, primary="count")
    assert counted.labels[5].coverage == {"material": 7, "object": 9}
    assert all(counted.labels.category(n) == p for n, _, _, p in LABELS)
    assert ds.codes["part"] == {301: 1, 700: 2}


def test_split_limit_and_collate(broden):
    root, _ = broden
    assert len(BrodenDataset(root, split="train")) == 7
    val = BrodenDataset(root, split="val")
    assert len(val) == 3 and val[0]["id"] == "src/im007"
    ds = BrodenDataset(root, limit=4)
    assert len(ds) == 4
    batch = collate([ds[i] for i in range(4)])
    assert batch["layers"].shape == (4, 3, H // 2, W // 2)  # padded to the largest K
    assert batch["layers"][1, 1:].eq(0).all()
    assert batch["whole"].shape == (4, 1)
    with pytest.raises(ConceptSetError, match="split"):
        BrodenDataset(root, split="test")


def test_resized_output(broden):
    root, truth = broden
    ds = BrodenDataset(root, image_size=32, mask_size=(16, 20))
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["layers"].shape[-2:] == (16, 20)
    # nearest, pixel-centre aligned: doubling the size repeats each source pixel 2x2
    want = np.repeat(np.repeat(truth[0]["layers"][0], 2, axis=0), 2, axis=1)
    assert np.array_equal(item["layers"][0].numpy(), want)


def test_zip_and_from_spec(broden, tmp_path):
    root, truth = broden
    z = tmp_path / "broden1_224.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(root.rglob("*")):
            zf.write(p, p.relative_to(tmp_path))
    import shutil

    shutil.rmtree(root)
    ds = from_spec({"source": "broden", "_path": "x.toml"}, root=str(z), limit=3)
    assert len(ds) == 3
    assert np.array_equal(ds[2]["layers"][0].numpy(), truth[2]["layers"][0])


def test_missing_broden_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEUROPROBE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConceptSetError, match="neuroprobe download broden"):
        from_spec({"source": "broden", "_path": str(tmp_path / "b.toml")})


def test_png_codec_round_trip():
    labels = np.array([[0, 1, 255], [256, 1000, 65535]])
    assert np.array_equal(encode_label_png(labels)[..., 0], labels % 256)
    with pytest.raises(ValueError):
        encode_label_png(np.array([[70000]]))


# -- bad input: one clear line each ----------------------------------------------------------

def _one_line(exc):
    msg = str(exc.value)
    assert "\n" not in msg and isinstance(exc.value, UserError)
    return msg


def test_missing_file(broden):
    root, _ = broden
    (root / "label.csv").unlink()
    with pytest.raises(DataFormatError) as exc:
        BrodenDataset(root)
    assert "label.csv does not exist" in _one_line(exc)


def test_csv_missing_columns(broden):
    root, _ = broden
    text = (root / "index.csv").read_text().splitlines()
    text[0] = text[0].replace("split,", "")
    (root / "index.csv").write_text("\n".join(text))
    with pytest.raises(DataFormatError) as exc:
        BrodenDataset(root)
    assert "lacks the column(s) split" in _one_line(exc)


def test_mask_of_wrong_mode_or_size(broden):
    root, _ = broden
    Image.fromarray(np.zeros((H // 2, W // 2), np.uint8)).save(
        root / "images" / "src/im000_object.png")
    ds = BrodenDataset(root)
    with pytest.raises(DataFormatError) as exc:
        ds[0]
    assert "mode L" in _one_line(exc)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "images" / "src/im001_object.png")
    with pytest.raises(DataFormatError) as exc:
        ds[1]
    assert f"is {W}x{H}, index.csv says {W // 2}x{H // 2}" in _one_line(exc)


def test_label_ids_not_in_table(broden):
    root, _ = broden
    Image.fromarray(encode_label_png(np.full((H // 2, W // 2), 999))).save(
        root / "images" / "src/im000_object.png")
    with pytest.raises(DataFormatError) as exc:
        BrodenDataset(root)[0]
    assert "label ids not in the label table: 999" in _one_line(exc)
    rows = (root / "c_part.csv").read_text() + "3,4444,x,1,0.1\n"
    (root / "c_part.csv").write_text(rows)
    with pytest.raises(DataFormatError, match="4444 is not in label.csv"):
        BrodenDataset(root)


def test_image_that_fails_to_decode(broden):
    root, _ = broden
    (root / "images" / "src/im003.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = BrodenDataset(root)
    with pytest.raises(DataFormatError) as exc:
        ds[3]
    assert "cannot be decoded" in _one_line(exc)


def test_bad_label_category_cell(broden):
    root, _ = broden
    text = (root / "label.csv").read_text().replace("part(6)", "part 6")
    (root / "label.csv").write_text(text)
    with pytest.raises(DataFormatError, match="not like"):
        BrodenDataset(root)


def test_decode_label_png_direct(tmp_path):
    lab = np.array([[0, 257], [513, 65535]])
    Image.fromarray(encode_label_png(lab)).save(tmp_path / "m.png")
    assert np.array_equal(decode_label_png(tmp_path / "m.png"), lab)


def test_round_trip_with_the_synthetic_exporter(tmp_path):
    export = pytest.importorskip("neuroprobe.concepts.export")
    from neuroprobe.concepts.synthetic import SyntheticWorld

    world = SyntheticWorld(seed=3, n=6, image_size=64, mask_size=32, observers=0)
    out = export.export_broden(world, tmp_path / "exported")
    ds = BrodenDataset(out)
    assert len(ds) == 6 and ds.image_size == (64, 64) and ds.mask_size == (32, 32)
    assert set(ds.categories) == set(world.categories)
    for lab in world.labels:
        if lab.id:
            assert ds.labels[lab.id].name == lab.name
            assert ds.labels.category(lab.id) == lab.category
    for i in range(6):
        want, got = world[i], ds[i]
        want_layers = [w.numpy() for w in want["layers"] if w.any()]
        got_layers = [g.numpy() for g in got["layers"]]
        assert len(got_layers) == len(want_layers)
        for w in want_layers:  # every written layer comes back exactly (order by category)
            assert any(np.array_equal(w, g) for g in got_layers)
        assert sorted(got["whole"].tolist()) == sorted(int(v) for v in want["whole"] if v > 0)
        # JPEG images: close, not equal
        assert (got["image"] - want["image"]).abs().mean() < 0.05


def test_item_without_labels_and_uint8_images(broden, monkeypatch):
    """The engine's view of a Broden set: no mask decoded when labels are not asked for, and
    uint8 images that convert to exactly the float images of ``ds[i]``."""
    from neuroprobe.concepts import broden as B
    from neuroprobe.engine.runner import model_input as _model_input

    root, truth = broden
    ds = BrodenDataset(root)
    calls = []
    real = B.decode_label_png
    monkeypatch.setattr(B, "decode_label_png", lambda *a, **k: calls.append(a) or real(*a, **k))
    for i in range(len(ds)):
        raw = ds.item(i, labels=False, raw_image=True)
        assert set(raw) == {"image", "id"} and raw["id"] == f"src/im{i:03d}"
        assert raw["image"].dtype == torch.uint8
        assert np.array_equal(raw["image"].permute(1, 2, 0).numpy(), truth[i]["image"])
    assert calls == []
    batch = collate([ds.item(i, labels=False, raw_image=True) for i in range(4)])
    assert set(batch) == {"image", "id"}
    floats = collate([ds[i] for i in range(4)], label_dtype=torch.int32)
    assert floats["layers"].dtype == torch.int32
    assert torch.equal(_model_input(batch["image"], "cpu", False), floats["image"])
    assert len(calls) > 0


def test_engine_reads_masks_only_in_the_tally_pass(broden, monkeypatch):
    from neuroprobe.concepts import broden as B
    from neuroprobe.dissect import dissect

    root, _ = broden
    # the PNG path (with the concept-set cache, masks are decoded once when it is built; see
    # tests/test_concept_cache.py)
    ds = BrodenDataset(root, cache=False)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 5, stride=4), torch.nn.ReLU())
    masks_per_pass = sum(e.strip().endswith(".png") for row in ds.rows
                         for cell in row["cells"].values() for e in cell.split(";"))
    calls = []
    real = B.decode_label_png
    monkeypatch.setattr(B, "decode_label_png", lambda *a, **k: calls.append(a) or real(*a, **k))
    rec = dissect(model, ds, ["0"], batch_size=3, keep="recompute", progress=False)
    n_recompute = len(calls)
    calls.clear()
    disk = dissect(model, ds, ["0"], batch_size=3, keep="disk", progress=False)
    # recompute: pass 1 reads images only, pass 2 images and masks (+1 item for the probe)
    assert masks_per_pass > 0
    probe = sum(e.strip().endswith(".png") for cell in ds.rows[0]["cells"].values()
                for e in cell.split(";"))
    assert n_recompute == masks_per_pass + probe
    assert len(calls) == masks_per_pass + probe   # disk: pass 1 reads them, pass 2 the spool
    assert rec.units == disk.units
    assert torch.equal(rec.thresholds["0"], disk.thresholds["0"])


def test_labels_alone_equal_the_items_labels_and_decode_no_image(broden, tmp_path,
                                                                   monkeypatch):
    """``labels_of`` gives an item's labels as ``item`` does, from the PNGs and from the
    concept-set cache, without decoding the image (a broken JPEG goes unnoticed there: pass 1
    reads every image), and batches of them collate without an ``image``."""
    root, _ = broden
    monkeypatch.setenv("NEUROPROBE_CACHE", str(tmp_path / "cache"))
    for cached in (False, True):
        ds = BrodenDataset(root)
        if cached:
            ds.prepare_labels(progress=False)
        for i in range(len(ds)):
            whole, alone = ds.item(i, raw_image=True), ds.labels_of(i)
            assert "image" not in alone and alone["id"] == whole["id"]
            for k in ("layers", "whole", "categories"):
                assert torch.equal(alone[k], whole[k]), k
        monkeypatch.setattr(type(ds), "_decode_image",
                            lambda self, i: pytest.fail("labels_of decoded an image"))
        batch = collate([{**ds.labels_of(i), "index": i} for i in range(3)])
        assert "image" not in batch and batch["layers"].shape[0] == 3
        assert batch["index"].tolist() == [0, 1, 2]
        monkeypatch.undo()
        monkeypatch.setenv("NEUROPROBE_CACHE", str(tmp_path / "cache"))
