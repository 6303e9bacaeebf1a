"""Mask folders: VOC palette PNGs and labelme JSON written by the test; OSIE fixations."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from neuroprobe.concepts import collate, load_spec, open_concepts
from neuroprobe.concepts.maskfolder import (OSIE_SR, MaskFolderDataset, from_spec,
                                            resize_labels, study_label_table)
from neuroprobe.errors import ConceptSetError, DataFormatError, UserError

SHARED = Path(__file__).parents[2] / "shared" / "data"
H, W = 12, 16


def _palette_png(path: Path, arr: np.ndarray, mode="P"):
    im = Image.fromarray(arr.astype(np.uint8), mode="L")
    if mode == "P":
        im = im.convert("P")
        im.putpalette([v for i in range(256) for v in (i, (i * 7) % 256, (i * 13) % 256)])
        im.putdata(arr.astype(np.uint8).reshape(-1).tolist())
    im.save(path)


def make_voc(root: Path, n=3, names=("1001", "1002", "1003")):
    rng = np.random.default_rng(0)
    for d in ("JPEGImages", "SegmentationClass", "SegmentationObject"):
        (root / d).mkdir(parents=True)
    truth = []
    for k in range(n):
        img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "JPEGImages" / f"{names[k]}.png")
        cls = rng.choice([0, 1, 10, 37, 51, 73], size=(H, W))
        cls[0, :] = 255  # VOC boundary: void
        _palette_png(root / "SegmentationClass" / f"{names[k]}.png", cls)
        inst = np.zeros((H, W), int)
        inst[2:6, 2:8] = 1
        inst[7:11, 5:12] = 2
        cls[2:6, 2:8] = 1
        cls[7:11, 5:12] = 37
        _palette_png(root / "SegmentationClass" / f"{names[k]}.png", cls)
        _palette_png(root / "SegmentationObject" / f"{names[k]}.png", inst)
        want = cls.copy()
        want[want == 255] = 0
        truth.append({"image": img, "mask": want})
    return truth


def test_voc_folder_read_exactly(tmp_path):
    truth = make_voc(tmp_path / "voc")
    # the palette really is stored: mode P
    assert Image.open(tmp_path / "voc/SegmentationClass/1001.png").mode == "P"
    ds = MaskFolderDataset(tmp_path / "voc", image_size=(H, W))
    assert len(ds) == 3 and ds.format == "voc"
    for i, t in enumerate(truth):
        item = ds[i]
        assert item["layers"].shape == (1, H, W)
        assert np.array_equal(item["layers"][0].numpy(), t["mask"])
        assert np.array_equal((item["image"] * 255).round().byte().permute(1, 2, 0).numpy(),
                              t["image"])
        assert item["categories"].all() and item["fixations"] is None
    assert ds[1]["id"] == "1002"
    inst, labels = ds.instances(0)
    assert labels == {1: 1, 2: 37}
    assert inst.shape == (H, W) and (inst == 2).sum() == 28
    assert ds.labels.category(1) == "part" and ds.labels.category(37) == "object"
    assert [lab.name for lab in ds.labels if lab.id] == list(OSIE_SR.values())


def test_resize_and_limit(tmp_path):
    truth = make_voc(tmp_path / "voc")
    ds = MaskFolderDataset(tmp_path / "voc", image_size=(24, 32), mask_size=(6, 8), limit=2)
    assert len(ds) == 2
    item = ds[0]
    assert item["image"].shape == (3, 24, 32)
    # nearest, pixel-centre aligned halving keeps the odd rows/columns (centres 2i + 1)
    assert np.array_equal(item["layers"][0].numpy(), truth[0]["mask"][1::2, 1::2])
    assert np.array_equal(resize_labels(truth[0]["mask"], (6, 8)), truth[0]["mask"][1::2, 1::2])


def test_labelme_polygons_rectangles_circles(tmp_path):
    folder = tmp_path / "lm"
    folder.mkdir()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(folder / "pic.png")
    doc = {"imagePath": "pic.png", "imageHeight": H, "imageWidth": W, "shapes": [
        {"label": "vehicle", "points": [[0, 0], [9, 0], [9, 5], [0, 5]], "shape_type": "polygon"},
        {"label": "person head", "points": [[2, 1], [4, 3]], "shape_type": "rectangle"},
        {"label": "text", "points": [[12, 8], [14, 8]], "shape_type": "circle"},
        {"label": "37", "points": [[0, 11], [1, 11]], "shape_type": "line"},
    ]}
    (folder / "pic.json").write_text(json.dumps(doc))
    ds = MaskFolderDataset(folder, image_size=(H, W))
    assert ds.format == "labelme"
    layer = ds[0]["layers"][0].numpy()
    want = np.zeros((H, W), np.int64)
    want[0:6, 0:10] = 51            # PIL fills the polygon including its outline
    want[1:4, 2:5] = 1              # rectangle painted on top (later shape)
    rows, cols = np.mgrid[0:H, 0:W]
    assert np.array_equal(layer[:, :10], want[:, :10])
    disc = layer == 37
    assert disc[8, 12] and disc[8, 10] and disc[8, 14] and disc[6, 12] and disc[10, 12]
    assert not disc[5, 12] and not disc[8, 9] and (layer[11] == 0).all()  # lines have no area
    d2 = (cols - 12) ** 2 + (rows - 8) ** 2
    assert disc[d2 <= 1.5 ** 2].all() and not disc[d2 > 2.5 ** 2].any()


def test_fixations_joined_by_image_name(tmp_path):
    import scipy.io as sio

    make_voc(tmp_path / "voc")
    subj = np.empty(1, dtype=object)
    subj[0] = {"fix_x": np.array([1.0, 16.0, 30.0]), "fix_y": np.array([1.0, 12.0, 5.0]),
               "fix_duration": np.array([1.0, 1.0, 1.0])}
    fx = np.empty(1, dtype=object)
    fx[0] = {"img": "1002.png", "subjects": subj}
    sio.savemat(tmp_path / "fixations.mat", {"fixations": fx})
    ds = MaskFolderDataset(tmp_path / "voc", fixations=tmp_path / "fixations.mat",
                           image_size=(24, 32))
    assert ds.has_fixations
    assert ds[0]["fixations"].shape == (0, 2)
    f = ds[1]["fixations"]
    # 1-based (1, 1) -> 0-based (0, 0) -> scaled x2: (0.5, 0.5); (30, 5) is outside: dropped
    assert torch.allclose(f, torch.tensor([[0.5, 0.5], [30.5, 22.5]]))


def test_osie_sr_concept_set(tmp_path):
    spec = load_spec("osie-sr")
    assert {int(k): v for k, v in spec["labels"].items()} == OSIE_SR
    make_voc(tmp_path / "voc")
    ds = open_concepts("osie-sr", root=str(tmp_path / "voc"), images=str(tmp_path / "voc" /
                       "JPEGImages"), fixations="", limit=2, image_size=16)
    assert len(ds) == 2 and ds[0]["layers"].shape == (1, 16, 16)
    batch = collate([ds[0], ds[1]])
    assert batch["layers"].shape == (2, 1, 16, 16)


@pytest.mark.skipif(not (SHARED / "osie" / "fixations.mat").is_file(),
                    reason="../shared/data/osie is absent")
def test_osie_fixations_real(tmp_path):
    # masks written by the test for two real OSIE images; fixations are the real ones
    root = tmp_path / "osie-sr"
    (root / "SegmentationClass").mkdir(parents=True)
    for name in ("1001", "1002"):
        m = np.zeros((600, 800), np.uint8)
        m[100:300, 200:400] = 27
        _palette_png(root / "SegmentationClass" / f"{name}.png", m)
    ds = open_concepts("osie-sr", root=str(root), images=str(SHARED / "osie" / "stimuli"),
                       fixations=str(SHARED / "osie" / "fixations.mat"))
    item = ds[0]
    assert item["id"] == "1001" and len(item["fixations"]) > 100
    assert item["observers"].max() == 14
    assert ((item["fixations"] >= -0.5) & (item["fixations"] <= 223.5)).all()


# -- bad input ------------------------------------------------------------------------------

def _line(exc):
    assert isinstance(exc.value, UserError) and "\n" not in str(exc.value)
    return str(exc.value)


def test_mask_wrong_mode_and_size(tmp_path):
    make_voc(tmp_path / "voc")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(
        tmp_path / "voc/SegmentationClass/1001.png")
    _palette_png(tmp_path / "voc/SegmentationClass/1002.png", np.zeros((H + 1, W)))
    ds = MaskFolderDataset(tmp_path / "voc")
    with pytest.raises(DataFormatError) as exc:
        ds[0]
    assert "mode RGB" in _line(exc)
    with pytest.raises(DataFormatError) as exc:
        ds[1]
    assert f"is {W}x{H + 1} but its image is {W}x{H}" in _line(exc)


def test_unknown_values_and_labels(tmp_path):
    make_voc(tmp_path / "voc")
    _palette_png(tmp_path / "voc/SegmentationClass/1003.png", np.full((H, W), 99))
    with pytest.raises(DataFormatError) as exc:
        MaskFolderDataset(tmp_path / "voc")[2]
    assert "label ids not in the label table: 99" in _line(exc)
    folder = tmp_path / "lm"
    folder.mkdir()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(folder / "p.png")
    (folder / "p.json").write_text(json.dumps({"imagePath": "p.png", "shapes": [
        {"label": "car", "points": [[0, 0], [3, 0], [3, 3]], "shape_type": "polygon"}]}))
    with pytest.raises(DataFormatError) as exc:
        MaskFolderDataset(folder)[0]
    assert "'car', which is not in the label table" in _line(exc)


def test_missing_and_broken_files(tmp_path):
    make_voc(tmp_path / "voc")
    (tmp_path / "voc/JPEGImages/1003.png").unlink()
    with pytest.raises(DataFormatError) as exc:
        MaskFolderDataset(tmp_path / "voc")
    assert "has no image 1003" in _line(exc)
    (tmp_path / "voc/JPEGImages/1003.png").write_bytes(b"broken")
    with pytest.raises(DataFormatError) as exc:
        MaskFolderDataset(tmp_path / "voc")[2]
    assert "cannot be decoded" in _line(exc)
    with pytest.raises(ConceptSetError):
        MaskFolderDataset(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="holds no"):
        MaskFolderDataset(tmp_path / "empty")
    (tmp_path / "empty" / "x.json").write_text("{not json")
    with pytest.raises(DataFormatError, match="not valid JSON"):
        MaskFolderDataset(tmp_path / "empty")[0]
    spec = {"source": "mask-folder", "_path": str(tmp_path / "m.toml")}
    with pytest.raises(ConceptSetError) as exc:
        from_spec(spec)
    assert "--root" in _line(exc)


def test_custom_label_map():
    table = study_label_table({3: "person head", 200: "sign"})
    assert table.category(3) == "part" and table.category(200) == "object"
