"""coco-parts: COCO annotations written by the test, and the real keypoint sample."""
from __future__ import annotations

import functools
import json
import threading
from http.server import SimpleHTTPRequestHandler
from http.server import ThreadingHTTPServer as _Server
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from neuroprobe.concepts import collate, load_spec, open_concepts
from neuroprobe.concepts.coco import CocoParts, coco_image_id, from_spec, head_mask
from neuroprobe.errors import ConceptSetError, DataFormatError, UserError
from neuroprobe.saliency.fixations import Fixations

SHARED = Path(__file__).parents[2] / "shared" / "data"
KP_NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
            "right_shoulder"]
H, W = 30, 40
MAP = {"vehicle": ["car"], "drink": ["bottle"], "animal part": ["dog"]}
DISC = {"aspect": 1.0, "margin": 1.0}  # head = a disc of radius breadth / 2


class ThreadingHTTPServer(_Server):
    """The test server; client hang-ups (expected here) are not printed."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        pass


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE written independently: run lengths of the column-major pixels,
    starting with a run of zeros."""
    flat = mask.T.reshape(-1).astype(int)
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _rect(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _block(r0, r1, c0, c1):
    m = np.zeros((H, W), dtype=np.uint8)
    m[r0:r1, c0:c1] = 1
    return m


def make_coco(tmp_path: Path) -> tuple[Path, dict]:
    from pycocotools import mask as mask_utils

    img = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    (tmp_path / "imgs").mkdir()
    Image.fromarray(img).save(tmp_path / "imgs" / "000000000007.png")
    car = _block(20, 30, 28, 40)
    rle = mask_utils.encode(np.asfortranarray(car))
    rle["counts"] = rle["counts"].decode("ascii")
    dog = _block(0, 4, 30, 36)
    crowd = _block(0, 3, 0, 5)
    # ears 10 px apart -> breadth 10; face centre = mean of the five face keypoints (15, 9.8)
    kps = [15, 11, 2, 13, 9, 2, 17, 9, 2, 10, 10, 2, 20, 10, 1, 0, 0, 0, 0, 0, 0]
    doc = {
        "images": [{"id": 7, "file_name": "000000000007.png", "height": H, "width": W,
                    "coco_url": "http://example.invalid/000000000007.png"}],
        "categories": [{"id": 1, "name": "person", "supercategory": "person",
                        "keypoints": KP_NAMES},
                       {"id": 3, "name": "car"}, {"id": 18, "name": "dog"},
                       {"id": 44, "name": "bottle"}, {"id": 99, "name": "unicorn"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0, "area": 380,
             "segmentation": _rect(5, 8, 25, 28), "keypoints": kps, "num_keypoints": 5},
            {"id": 2, "image_id": 7, "category_id": 3, "iscrowd": 0, "area": 120,
             "segmentation": rle},
            {"id": 3, "image_id": 7, "category_id": 18, "iscrowd": 0, "area": 24,
             "segmentation": _uncompressed_rle(dog)},
            {"id": 4, "image_id": 7, "category_id": 1, "iscrowd": 1, "area": 15,
             "segmentation": _uncompressed_rle(crowd)},
            {"id": 5, "image_id": 7, "category_id": 44, "iscrowd": 0, "area": 12,
             "segmentation": _rect(30, 22, 33, 26)},
            {"id": 6, "image_id": 7, "category_id": 99, "iscrowd": 0, "area": 4,
             "segmentation": _rect(0, 26, 2, 28)},
        ],
    }
    path = tmp_path / "person_keypoints_test.json"
    path.write_text(json.dumps(doc))
    # expected layers, pixel by pixel
    objects = np.zeros((H, W), np.int64)
    objects[car == 1] = 51
    objects[dog == 1] = 22
    objects[22:26, 30:33] = 68            # the bottle lies on the car and is smaller: on top
    people = np.zeros((H, W), np.int64)
    people[8:28, 5:25] = 10
    people[crowd == 1] = 10
    rows, cols = np.mgrid[0:H, 0:W]
    disc = (cols + 0.5 - 15) ** 2 + (rows + 0.5 - 9.8) ** 2 <= 25
    disc &= people == 10
    disc[crowd == 1] = False
    people[disc & (rows >= 8)] = 1        # clipped to the person (its top is row 8)
    return path, {"image": img, "objects": objects, "people": people, "dog": dog}


@pytest.fixture()
def coco(tmp_path):
    return make_coco(tmp_path)


def test_masks_pixel_by_pixel(coco, tmp_path):
    path, want = coco
    ds = CocoParts([path], MAP, images=tmp_path / "imgs", head=DISC, image_size=(H, W))
    got = ds.masks(7)
    assert got.shape == (2, H, W)
    assert np.array_equal(got[0], want["objects"])
    assert np.array_equal(got[1], want["people"])
    assert (got[1] == 1).sum() > 40 and (want["people"][5:8] == 0).all()  # clipping happened
    item = ds[0]
    assert item["id"] == "7"
    assert np.array_equal(item["layers"].numpy(), got)
    assert np.array_equal((item["image"] * 255).round().byte().permute(1, 2, 0).numpy(),
                          want["image"])
    assert item["fixations"] is None and item["categories"].all()


def test_crowd_skip(coco, tmp_path):
    path, want = coco
    ds = CocoParts([path], MAP, images=tmp_path / "imgs", head=DISC, crowd="skip")
    people = ds.masks(7)[1]
    assert (people[0:3, 0:5] == 0).all()
    assert np.array_equal(people[8:], want["people"][8:])


def test_head_needs_two_face_keypoints(coco, tmp_path):
    path, want = coco
    doc = json.loads(path.read_text())
    kp = doc["annotations"][0]["keypoints"]
    doc["annotations"][0]["keypoints"] = kp[:3] + [0] * (len(kp) - 3)  # nose only
    path.write_text(json.dumps(doc))
    people = CocoParts([path], MAP, images=tmp_path / "imgs").masks(7)[1]
    assert not (people == 1).any() and (people[8:28, 5:25] == 10).all()


def test_head_orientation_follows_the_shoulders():
    # a person lying down: shoulders left of the face -> the head's long axis is horizontal
    kps = [0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 20, 2, 10, 30, 2, -10, 20, 2, -10, 30, 2]
    m = head_mask(kps, KP_NAMES, 50, 40, aspect=2.0, margin=1.0)
    rows, cols = np.mgrid[0:50, 0:40]
    want = ((cols + 0.5 - 10) / 10) ** 2 + ((rows + 0.5 - 25) / 5) ** 2 <= 1
    assert np.array_equal(m, want)
    # upright without shoulders: long axis vertical
    m = head_mask(kps[:15] + [0] * 6, KP_NAMES, 50, 40, aspect=2.0, margin=1.0)
    want = ((cols + 0.5 - 10) / 5) ** 2 + ((rows + 0.5 - 25) / 10) ** 2 <= 1
    assert np.array_equal(m, want)


def test_salicon_join_by_image_id(coco, tmp_path):
    path, _ = coco
    fix = Fixations("COCO_val2014_000000000007.jpg", x=np.array([0.0, 39.0, 20.0]),
                    y=np.array([0.0, 29.0, 50.0]), observer=np.array([0, 1, 1]))
    ds = CocoParts([path], MAP, images=tmp_path / "imgs", image_size=(60, 80),
                   mask_size=(15, 20), fixations={7: fix})
    assert coco_image_id("COCO_val2014_000000000007.jpg") == 7
    assert ds.index_of("COCO_train2014_000000000007.jpg") == 0
    item = ds[ds.index_of(7)]
    assert ds.has_fixations
    # (x + .5) * 2 - .5 ; the third fixation lies outside the image and is dropped
    assert torch.allclose(item["fixations"], torch.tensor([[0.5, 0.5], [78.5, 58.5]]))
    assert item["observers"].tolist() == [0, 1]
    assert item["layers"].shape == (2, 15, 20) and item["image"].shape == (3, 60, 80)
    with pytest.raises(KeyError):
        ds.index_of(8)


def test_fetch_images_from_the_official_host_url(coco, tmp_path):
    path, want = coco
    handler = functools.partial(_QuietHandler, directory=str(tmp_path / "imgs"))
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        doc = json.loads(path.read_text())
        doc["images"][0]["coco_url"] = (f"http://127.0.0.1:{srv.server_address[1]}/"
                                        "000000000007.png")
        path.write_text(json.dumps(doc))
        ds = CocoParts([path], MAP, fetch_images=True, image_cache=tmp_path / "cache",
                       image_size=(H, W))
        item = ds[0]
        assert (tmp_path / "cache" / "000000000007.png").is_file()
        assert np.array_equal((item["image"] * 255).round().byte().permute(1, 2, 0).numpy(),
                              want["image"])
    finally:
        srv.shutdown()
        srv.server_close()


def test_coco_text_layer(coco, tmp_path):
    path, _ = coco
    text = {"anns": {"1": {"image_id": 7, "mask": [1, 1, 6, 1, 6, 4, 1, 4], "bbox": [1, 1, 5, 3]},
                     "2": {"image_id": 7, "mask": [], "bbox": [30, 10, 4, 2]}},
            "imgs": {}}
    (tmp_path / "text.json").write_text(json.dumps(text))
    ds = CocoParts([path], MAP, images=tmp_path / "imgs", coco_text=tmp_path / "text.json")
    layer = ds.masks(7)[2]
    want = np.zeros((H, W), np.int64)
    want[1:4, 1:6] = 37
    want[10:12, 30:34] = 37
    assert np.array_equal(layer, want)


def test_shipped_concept_set_and_overrides(coco, tmp_path):
    path, _ = coco
    spec = load_spec("coco-parts")
    assert "animal part" in spec["map"] and spec["description"]
    ds = open_concepts("coco-parts", annotations=[str(path)], root=str(tmp_path / "imgs"),
                       limit=1, image_size=32)
    assert len(ds) == 1 and ds[0]["image"].shape == (3, 32, 32)
    assert ds[0]["layers"].shape == (2, 32, 32)


def test_no_annotations_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROPROBE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConceptSetError, match="download = true"):
        from_spec(load_spec("coco-parts"))


# -- bad input ------------------------------------------------------------------------------

def _line(exc):
    assert isinstance(exc.value, UserError) and "\n" not in str(exc.value)
    return str(exc.value)


@pytest.mark.parametrize("content, expect", [
    ("[1, 2]", "is not a COCO annotation file"),
    ('{"images": [], "annotations": []}', "is not a COCO annotation file"),
    ('{"images": [', "is not valid JSON"),
    ('{"images": [{"id": 1}], "annotations": [], "categories": []}', "need id, file_name"),
])
def test_json_that_is_not_coco(tmp_path, content, expect):
    p = tmp_path / "x.json"
    p.write_text(content)
    with pytest.raises(DataFormatError) as exc:
        CocoParts([p], MAP)
    assert expect in _line(exc)
    with pytest.raises(DataFormatError) as exc:
        CocoParts([tmp_path / "missing.json"], MAP)
    assert "does not exist" in _line(exc)


def test_bad_segmentation_and_unknown_category(coco, tmp_path):
    path, _ = coco
    doc = json.loads(path.read_text())
    doc["annotations"][1]["segmentation"] = {"size": [H, W], "counts": "%%%%"}
    path.write_text(json.dumps(doc))
    ds = CocoParts([path], MAP, images=tmp_path / "imgs")
    with pytest.raises(DataFormatError) as exc:
        ds.masks(7)
    assert "segmentation cannot be decoded" in _line(exc) or "RLE" in str(exc.value)
    doc["annotations"][1]["category_id"] = 12345
    path.write_text(json.dumps(doc))
    with pytest.raises(DataFormatError, match="12345"):
        CocoParts([path], MAP)


def test_missing_or_broken_image(coco, tmp_path):
    path, _ = coco
    ds = CocoParts([path], MAP, images=tmp_path)
    with pytest.raises(DataFormatError) as exc:
        ds[0]
    assert "not found" in _line(exc) and "fetch_images" in str(exc.value)
    (tmp_path / "imgs" / "000000000007.png").write_bytes(b"not an image")
    ds = CocoParts([path], MAP, images=tmp_path / "imgs")
    with pytest.raises(DataFormatError) as exc:
        ds[0]
    assert "cannot be decoded" in _line(exc)
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "imgs" / "000000000007.png")
    with pytest.raises(DataFormatError, match="the annotations say 40x30"):
        ds[0]


def test_bad_mapping():
    with pytest.raises(ConceptSetError, match="not a study label"):
        CocoParts([], {"vehicles": ["car"]})
    with pytest.raises(ConceptSetError, match="twice"):
        CocoParts([], {"vehicle": ["car"], "object": ["car"]})
    with pytest.raises(ConceptSetError, match="person"):
        CocoParts([], {"object": ["person"]})


# -- the real keypoint sample -----------------------------------------------------------------

@pytest.mark.skipif(not (SHARED / "coco-sample" / "test_coco.json").is_file(),
                    reason="../shared/data/coco-sample is absent")
def test_real_sample_heads_sit_on_heads():
    spec = load_spec("coco-parts")
    ds = CocoParts([SHARED / "coco-sample" / "test_coco.json"], spec["map"],
                   images=SHARED / "coco-sample", head=spec["head"])
    assert len(ds) == 4
    n_heads = 0
    for image_id in ds.ids:
        info = ds.images[image_id]
        people = ds.masks(image_id)[1]
        for ann in ds.anns[image_id]:
            kp = np.asarray(ann.get("keypoints") or [0] * 51, float).reshape(-1, 3)
            from neuroprobe.concepts.coco import decode_segmentation

            pm = decode_segmentation(ann["segmentation"], info["height"], info["width"])
            head = (people == 1) & pm
            if (kp[:5, 2] > 0).sum() < 2:
                continue
            n_heads += 1
            # the head is a small part of the person, near the top, around the face keypoints
            assert 0 < head.sum() < 0.35 * pm.sum()
            rows = np.nonzero(pm)[0]
            hrows = np.nonzero(head)[0]
            assert hrows.mean() < rows.min() + 0.45 * (rows.max() - rows.min())
            face = kp[:5][kp[:5, 2] > 0]
            inside = [head[int(y), int(x)] for x, y, _ in face if pm[int(y), int(x)]]
            assert np.mean(inside) >= 0.8
            # ankles and hips are never head
            for x, y, v in kp[11:17]:
                if v > 0:
                    assert not head[min(int(y), head.shape[0] - 1), min(int(x), head.shape[1] - 1)]
    assert n_heads >= 10
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch["image"].shape == (4, 3, 224, 224) and batch["layers"].shape == (4, 2, 224, 224)
    assert set(batch["layers"].unique().tolist()) == {0, 1, 10}


def test_download_annotation_archive_via_mirror(coco, tmp_path, monkeypatch):
    import zipfile

    path, want = coco
    site = tmp_path / "site" / "annotations"
    site.mkdir(parents=True)
    with zipfile.ZipFile(site / "annotations_trainval2017.zip", "w") as zf:
        zf.write(path, "annotations/person_keypoints_val2017.json")
        zf.writestr("annotations/instances_val2017.json", json.dumps(
            {"images": [], "annotations": [], "categories": [{"id": 3, "name": "car"}]}))
    handler = functools.partial(_QuietHandler, directory=str(tmp_path / "site"))
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("NEUROPROBE_MIRROR", f"http://127.0.0.1:{srv.server_address[1]}")
        monkeypatch.setenv("NEUROPROBE_CACHE", str(tmp_path / "cache"))
        ds = open_concepts("coco-parts", download=True, root=str(tmp_path / "imgs"),
                           image_size=(H, W))
        assert (tmp_path / "cache/data/coco/annotations_trainval2017").is_dir()
        assert np.array_equal(ds.masks(7)[0], want["objects"])
    finally:
        srv.shutdown()
        srv.server_close()
