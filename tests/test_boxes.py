"""Box concept sources: EyeCrowd (real) and a generic box CSV written by the test."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
from PIL import Image

from neuroprobe.concepts import collate, open_concepts
from neuroprobe.concepts.boxes import Box, BoxDataset, BoxRecord, box_mask, from_spec
from neuroprobe.errors import ConceptSetError, DataFormatError

SHARED = Path(__file__).parents[2] / "shared" / "data"
EYECROWD = SHARED / "eyecrowd"
needs_eyecrowd = pytest.mark.skipif(not (EYECROWD / "labels.mat").is_file(),
                                    reason="../shared/data/eyecrowd is absent")


def test_box_mask_pixel_centres():
    m = box_mask(Box(1, 1.5, 0.0, 3.0, 2.0), 4, 6)
    want = np.zeros((4, 6), bool)
    want[0:2, 2:5] = True        # centres 2, 3, 4 lie in [1.5, 4.5); rows 0, 1 in [0, 2)
    assert np.array_equal(m, want)
    assert not box_mask(Box(1, -5, -5, 2, 2), 4, 6).any()
    assert box_mask(Box(1, 4, 2, 10, 10), 4, 6).sum() == 4  # clipped to the image


def _tiny(tmp_path, boxes, fix=None):
    img = np.random.default_rng(1).integers(0, 256, (8, 10, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    return BoxDataset([BoxRecord("a", tmp_path / "a.png", boxes, fix)], image_size=(8, 10))


def test_overlap_smaller_on_top_and_flags(tmp_path):
    big = Box(10, 0, 0, 10, 8, {"isBackFace": False})
    small = Box(1, 2, 2, 3, 3, {"isBackFace": True})
    ds = _tiny(tmp_path, [small, big])
    layer = ds[0]["layers"][0].numpy()
    want = np.full((8, 10), 10)
    want[2:5, 2:5] = 1
    assert np.array_equal(layer, want)
    ds.exclude = ("isBackFace",)
    assert (ds[0]["layers"][0] == 10).all()
    ds.exclude, ds.only = (), ("isBackFace",)
    assert ds.boxes(0) == [small] and ds.boxes(0)[0].flags["isBackFace"]


def test_unknown_label_is_refused(tmp_path):
    with pytest.raises(DataFormatError, match="label id 5"):
        _tiny(tmp_path, [Box(5, 0, 0, 1, 1)])


def test_box_csv(tmp_path):
    img = np.zeros((6, 8, 3), np.uint8)
    Image.fromarray(img).save(tmp_path / "p.png")
    (tmp_path / "boxes.csv").write_text("image,label,x,y,width,height,isOccluded\n"
                                        "p.png,person head,1,1,2,2,1\np.png,51,4,0,4,6,0\n")
    spec = {"source": "eyecrowd", "format": "csv", "_path": str(tmp_path / "b.toml"),
            "boxes": str(tmp_path / "boxes.csv"), "images": str(tmp_path)}
    ds = from_spec(spec, image_size=(6, 8))
    want = np.zeros((6, 8), np.int64)
    want[1:3, 1:3] = 1
    want[:, 4:8] = 51
    assert np.array_equal(ds[0]["layers"][0].numpy(), want)
    assert ds[0]["categories"].all() and ds[0]["fixations"] is None
    assert ds.boxes(0)[0].flags == {"isOccluded": True}
    (tmp_path / "boxes.csv").write_text("image,label,x,y,width\np.png,1,1,1,2\n")
    with pytest.raises(DataFormatError, match="lacks the column"):
        from_spec(spec)
    (tmp_path / "boxes.csv").write_text("image,label,x,y,width,height\np.png,face,1,1,2,2\n")
    with pytest.raises(DataFormatError, match="'face' is not in the label table"):
        from_spec(spec)


def _fake_eyecrowd(root: Path, faces, with_image=True):
    (root / "stimuli").mkdir(parents=True)
    if with_image:
        Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(root / "stimuli" / "001.jpg")
    rec = np.empty(2, dtype=object)
    rec[0] = {"img": "001.jpg", "nFaces": len(faces), "faces": faces}
    rec[1] = {"img": "404.jpg", "nFaces": 0, "faces": np.zeros((0, 0))}
    sio.savemat(root / "labels.mat", {"labels": rec})
    subj = np.empty(2, dtype=object)
    subj[0] = {"fix_x": np.array([1.0, 16.0]), "fix_y": np.array([1.0, 12.0]),
               "fix_duration": np.array([100.0, 200.0])}
    subj[1] = {"fix_x": 8.0, "fix_y": 6.0, "fix_duration": 50.0}
    fx = np.empty(1, dtype=object)
    fx[0] = {"img": "001.jpg", "subjects": subj}
    sio.savemat(root / "fixations.mat", {"fixations": fx})


def test_eyecrowd_layout_written_by_the_test(tmp_path):
    face = {"left": 3.0, "top": 2.0, "width": 4.0, "height": 5.0, "center": np.array([5, 4]),
            "isFrontalFace": 1, "isProfileFace": 0, "isBackFace": 0, "isOccluded": 1}
    _fake_eyecrowd(tmp_path / "ec", [face])  # a single face: MATLAB stores a scalar struct
    spec = {"source": "eyecrowd", "_path": str(tmp_path / "e.toml")}
    ds = from_spec(spec, root=str(tmp_path / "ec"), image_size=(12, 16))
    assert len(ds) == 1 and ds.has_fixations  # 404.jpg has no image: left out
    item = ds[0]
    want = np.zeros((12, 16), np.int64)
    want[1:6, 2:6] = 1   # 1-based left 3, top 2 -> 0-based x 2, y 1
    assert np.array_equal(item["layers"][0].numpy(), want)
    assert item["fixations"].tolist() == [[0.0, 0.0], [15.0, 11.0], [7.0, 5.0]]
    assert item["observers"].tolist() == [0, 0, 1]
    assert item["categories"].tolist() == [False, True]
    assert ds.boxes(0)[0].flags == {"isFrontalFace": True, "isProfileFace": False,
                                    "isBackFace": False, "isOccluded": True}


def test_eyecrowd_bad_input(tmp_path):
    spec = {"source": "eyecrowd", "_path": str(tmp_path / "e.toml")}
    with pytest.raises(ConceptSetError) as exc:
        from_spec(spec, root=str(tmp_path / "nowhere"))
    assert "NUS-VIP" in str(exc.value) and "\n" not in str(exc.value)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "labels.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataFormatError, match="not a readable MATLAB"):
        from_spec(spec, root=str(tmp_path / "bad"))
    _fake_eyecrowd(tmp_path / "noimg", [], with_image=False)
    with pytest.raises(DataFormatError, match="none of the EyeCrowd images"):
        from_spec(spec, root=str(tmp_path / "noimg"))
    with pytest.raises(ConceptSetError, match="unknown EyeCrowd flag"):
        from_spec(spec, root=str(tmp_path / "noimg"), exclude=["isBack"])
    with pytest.raises(ConceptSetError, match="split"):
        from_spec(spec, split="val")


@needs_eyecrowd
def test_real_eyecrowd():
    full = open_concepts("eyecrowd", root=str(EYECROWD))
    assert len(full) == 200 and full.has_fixations
    batch = collate([full[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 224, 224) and batch["layers"].shape == (4, 1, 224, 224)
    assert set(batch["layers"].unique().tolist()) == {0, 1}
    assert batch["id"] == ["001", "002", "003", "004"]
    for k in range(4):
        fx, obs = batch["fixations"][k], batch["observers"][k]
        assert len(fx) > 50 and obs.max() <= 15
        assert (fx >= -0.5).all() and (fx <= 223.5).all()
        # faces draw fixations: the share of fixations on faces exceeds the faces' area share
        layer = batch["layers"][k, 0]
        on = layer[fx[:, 1].round().long().clamp(0, 223), fx[:, 0].round().long().clamp(0, 223)]
        assert (on == 1).float().mean() > (layer == 1).float().mean()
    n = sum(len(full.boxes(i)) for i in range(len(full)))
    assert n > 2000
    assert all(isinstance(b.flags["isOccluded"], bool) for b in full.boxes(0))
