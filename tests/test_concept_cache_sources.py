"""The concept-set cache for COCO (coco-parts) and box sets (EyeCrowd) with fixations: round
trips against the uncached readers (labels, instances, flags, fixations), invalidation,
concurrent and interrupted builds, and dissections with and without the cache."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import torch
from PIL import Image

from neuroprobe.concepts import cache as ccache
from neuroprobe.concepts.boxes import BoxDataset, read_eyecrowd
from neuroprobe.concepts.coco import CocoParts
from neuroprobe.saliency.fixations import Fixations

sys.path.insert(0, str(Path(__file__).parent))
from test_coco import DISC, MAP, make_coco  # noqa: E402
from test_concept_cache import _items, _no_decoding, assert_items_equal  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROPROBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ccache, "CHUNK", 4)   # several chunks from a few images
    return tmp_path / "cache"


# -- data written by the tests --------------------------------------------------------------------

def make_eyecrowd(root: Path, n: int = 9, seed: int = 0) -> Path:
    """An EyeCrowd layout: ``n`` images of two sizes, 0-3 faces each (one image of 300 faces:
    instance ids above 255), two observers' fixations (some images without any)."""
    rng = np.random.default_rng(seed)
    (root / "stimuli").mkdir(parents=True)
    labels = np.empty(n, dtype=object)
    fixes = []
    for i in range(n):
        h, w = (24, 32) if i % 2 else (30, 20)
        name = f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / "stimuli" / name)
        k = 300 if i == 4 else i % 4
        faces = np.empty(k, dtype=object)
        for f in range(k):
            faces[f] = {"left": float(rng.integers(1, w - 4)), "top": float(rng.integers(1, h - 4)),
                        "width": float(rng.integers(2, 9)), "height": float(rng.integers(2, 9)),
                        "isFrontalFace": int(f % 2), "isProfileFace": 0, "isBackFace": 0,
                        "isOccluded": int(f == 1)}
        labels[i] = {"img": name, "faces": faces if k else np.zeros((0, 0))}
        if i % 3 != 2:
            subj = np.empty(2, dtype=object)
            for s in range(2):
                m = int(rng.integers(1, 6))
                subj[s] = {"fix_x": rng.uniform(1, w, m), "fix_y": rng.uniform(1, h, m),
                           "fix_duration": np.full(m, 100.0)}
            fixes.append({"img": name, "subjects": subj})
    sio.savemat(root / "labels.mat", {"labels": labels})
    fx = np.empty(len(fixes), dtype=object)
    fx[:] = fixes
    sio.savemat(root / "fixations.mat", {"fixations": fx})
    return root


def eyecrowd(root: Path, **kw) -> BoxDataset:
    return BoxDataset(read_eyecrowd(root), annotated=["part"], image_size=(16, 16), **kw)


def make_cocos(tmp_path: Path, n: int = 6) -> tuple[Path, Path]:
    """``n`` COCO images (copies of test_coco's image with varying annotation subsets)."""
    path, _ = make_coco(tmp_path)
    doc = json.loads(path.read_text())
    img0, anns0 = doc["images"][0], doc["annotations"]
    doc["images"], doc["annotations"] = [], []
    for k in range(n):
        info = dict(img0, id=100 + k, file_name=f"{100 + k:012d}.png")
        os.link(tmp_path / "imgs" / img0["file_name"], tmp_path / "imgs" / info["file_name"])
        doc["images"].append(info)
        for j, ann in enumerate(anns0):
            if (j + k) % 3:                      # a different subset on every image
                doc["annotations"].append(dict(copy.deepcopy(ann), id=1000 * k + j,
                                               image_id=info["id"]))
    path.write_text(json.dumps(doc))
    return path, tmp_path / "imgs"


def coco_fixations(n: int = 6) -> dict:
    rng = np.random.default_rng(5)
    return {100 + k: Fixations(f"{100 + k}", rng.uniform(0, 40, 4), rng.uniform(0, 30, 4),
                               np.array([0, 0, 1, 1])) for k in range(n) if k != 2}


# -- round trips ----------------------------------------------------------------------------------

def _labels_alone_equal(ds, want, monkeypatch, module):
    """``labels_of`` reads the cache alone (no image, no label file) and gives every item's
    labels and id as ``item`` does."""
    def fail(*a, **k):
        raise AssertionError("labels_of read an image")
    with monkeypatch.context() as m:
        m.setattr(f"{module}.read_image", fail)
        for i, w in enumerate(want):
            alone = ds.labels_of(i)
            assert_items_equal([alone], [{k: v for k, v in w.items() if k != "image"}])


def test_eyecrowd_round_trip_with_fixations_and_instances(tmp_path, cache_env, monkeypatch):
    root = make_eyecrowd(tmp_path / "ec")
    ds = eyecrowd(root)
    want = _items(eyecrowd(root))
    assert all("instances" in w for w in want) and want[4]["instances"].max() > 255
    assert want[2]["fixations"].shape == (0, 2) and len(want[1]["fixations"]) > 0
    cache = ds.prepare_labels(progress=False)
    assert cache.complete() and cache.built_items() == 9
    assert len(list(cache.folder.glob("chunk-*.inst.npy"))) == 3
    assert cache.source_bytes() == 0 and cache.decoded_bytes() > 0   # images are still read
    _no_decoding(monkeypatch, BoxDataset)
    got = _items(ds)
    assert_items_equal(got, want)
    _labels_alone_equal(ds, want, monkeypatch, "neuroprobe.concepts.boxes")
    # the engine's way of reading: uint8 images, and no labels in the first pass
    raw = ds.item(1, raw_image=True)
    assert raw["image"].dtype == torch.uint8 and torch.equal(raw["layers"], want[1]["layers"])
    assert set(ds.item(1, labels=False)) == {"image", "id"}


def test_coco_round_trip_with_fixations_and_instances(tmp_path, cache_env, monkeypatch):
    path, imgs = make_cocos(tmp_path)

    def open_(**kw):
        return CocoParts([path], MAP, images=imgs, head=DISC, image_size=(30, 40),
                         mask_size=(15, 20), **kw)
    for fix in (None, coco_fixations()):
        want = _items(open_(fixations=fix))
        assert want[1]["instances"].max() > 0
        assert (want[2]["fixations"] is None) == (fix is None)
        ds = open_(fixations=fix)
        cache = ds.prepare_labels(progress=False)
        assert cache.complete() and cache.built_items() == 6
        with monkeypatch.context() as m:
            _no_decoding(m, CocoParts)
            assert_items_equal(_items(ds), want)
            _labels_alone_equal(ds, want, m, "neuroprobe.concepts.coco")
    # the fixations are part of the key: two caches
    assert len(list((cache_env / "concepts").iterdir())) == 2


# -- invalidation ---------------------------------------------------------------------------------

def test_eyecrowd_changed_image_is_decoded_again_touched_one_is_not(tmp_path, cache_env,
                                                                    monkeypatch):
    root = make_eyecrowd(tmp_path / "ec")
    ds = eyecrowd(root)
    ds.prepare_labels(progress=False)
    calls = []
    orig = BoxDataset.decode_labels
    monkeypatch.setattr(BoxDataset, "decode_labels",
                        lambda self, i, hw=None: calls.append(i) or orig(self, i, hw))
    # image 3 replaced by one of another size: its boxes and fixations land elsewhere
    Image.fromarray(np.zeros((60, 40, 3), np.uint8)).save(root / "stimuli" / "003.png")
    os.utime(root / "stimuli" / "005.png", ns=(1, 1))       # touched, same bytes
    got = _items(ds)
    assert calls == [3]                           # the changed one alone, from its file
    fresh = eyecrowd(root)
    fresh.use_cache = False
    want = _items(fresh)
    assert want[3]["layers"].shape == got[3]["layers"].shape
    assert_items_equal(got, want)
    # new boxes in labels.mat (or new fixations): a new cache, not a stale one
    a = ccache.cache_folder(ds)
    other = make_eyecrowd(tmp_path / "other", seed=1)      # other boxes and fixations
    (root / "fixations.mat").write_bytes((other / "fixations.mat").read_bytes())
    b = ccache.cache_folder(eyecrowd(root))
    (root / "labels.mat").write_bytes((other / "labels.mat").read_bytes())
    assert len({a, b, ccache.cache_folder(eyecrowd(root))}) == 3


def test_coco_changed_annotations_give_another_cache(tmp_path, cache_env):
    path, imgs = make_cocos(tmp_path)
    a = CocoParts([path], MAP, images=imgs, head=DISC).prepare_labels(progress=False)
    doc = json.loads(path.read_text())
    doc["annotations"] = doc["annotations"][1:]
    path.write_text(json.dumps(doc))
    b = CocoParts([path], MAP, images=imgs, head=DISC).prepare_labels(progress=False)
    assert a.folder != b.folder
    # other head geometry or crowd rule: another cache too
    c = CocoParts([path], MAP, images=imgs, crowd="skip").prepare_labels(progress=False)
    assert len({a.folder, b.folder, c.folder}) == 3
    # the same bytes elsewhere (a copy in another folder): the same cache
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / path.name).write_bytes(path.read_bytes())
    assert ccache.cache_folder(CocoParts([other / path.name], MAP, images=imgs,
                                         head=DISC)) == b.folder


# -- building: interrupted, concurrent -------------------------------------------------------------

def test_coco_interrupted_build_resumes(tmp_path, cache_env, monkeypatch):
    path, imgs = make_cocos(tmp_path)
    want = _items(CocoParts([path], MAP, images=imgs, head=DISC))
    ds = CocoParts([path], MAP, images=imgs, head=DISC)
    orig = CocoParts.decode_labels
    calls = []

    def stop_at_5(self, i):
        calls.append(i)
        if i == 5:
            raise KeyboardInterrupt
        return orig(self, i)
    monkeypatch.setattr(CocoParts, "decode_labels", stop_at_5)
    with pytest.raises(KeyboardInterrupt):
        ds.prepare_labels(progress=False)
    folder = ccache.cache_folder(ds)
    assert sorted(p.name for p in folder.glob("chunk-*")) == [
        "chunk-000000.inst.npy", "chunk-000000.layers.npy", "chunk-000000.meta.npz"]
    monkeypatch.setattr(CocoParts, "decode_labels",
                        lambda self, i: calls.append(i) or orig(self, i))
    calls.clear()
    assert ds.prepare_labels(progress=False).complete()
    assert calls == [4, 5]
    _no_decoding(monkeypatch, CocoParts)
    assert_items_equal(_items(ds), want)


_BUILDER = r"""
import sys, time
from neuroprobe.concepts import cache
from neuroprobe.concepts.boxes import BoxDataset, read_eyecrowd
cache.CHUNK = 4
orig = BoxDataset.decode_labels
def slow(self, i, hw=None):
    time.sleep(0.05)
    print("decoded", i, flush=True)
    return orig(self, i, hw)
BoxDataset.decode_labels = slow
ds = BoxDataset(read_eyecrowd(sys.argv[1]), annotated=["part"], image_size=(16, 16))
c = ds.prepare_labels(progress=False)
print("complete", c.complete(), flush=True)
"""


def test_two_processes_build_eyecrowd_at_once(tmp_path, cache_env):
    root = make_eyecrowd(tmp_path / "ec")
    env = {**os.environ, "NEUROPROBE_CACHE": str(cache_env), "NEUROPROBE_QUIET": "",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    folder = ccache.cache_folder(eyecrowd(root))
    with ccache._build_lock(folder):       # both start while this process holds the lock
        procs = [subprocess.Popen([sys.executable, "-c", _BUILDER, str(root)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        for p in procs:
            lines = []
            while True:
                line = p.stderr.readline()
                lines.append(line)
                if not line or "waiting for process" in line:
                    break
            assert "waiting for process" in "".join(lines), lines
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    decoded = [[int(line.split()[1]) for line in o[0].splitlines()
                if line.startswith("decoded")] for o in outs]
    assert sorted(decoded[0] + decoded[1]) == list(range(9))    # each item once, by one
    assert all("complete True" in o[0] for o in outs)


# -- dissection with and without the cache --------------------------------------------------------

def _dissect_outputs(tmp_path, make, monkeypatch, cls):
    from torch import nn

    from neuroprobe.dissect import dissect

    def run(out, cache):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),
                              nn.AvgPool2d(2)).eval()
        ds = make()
        ds.use_cache = cache
        dissect(model, ds, ["2"], batch_size=4, out_dir=out, progress=False,
                iou_threshold=0.01, score="both")
    run(tmp_path / "plain", False)
    run(tmp_path / "cold", True)                   # builds the cache on first use
    with monkeypatch.context() as m:
        _no_decoding(m, cls)
        run(tmp_path / "warm", True)               # reads labels from it alone
    names = ("units.csv", "region_nss.csv", "scores.npz", "top_images.npz")
    assert (tmp_path / "plain" / "region_nss.csv").exists()
    for out in ("cold", "warm"):
        for name in names:
            a, b = tmp_path / "plain" / name, tmp_path / out / name
            assert a.exists() == b.exists(), name
            if a.exists():
                assert a.read_bytes() == b.read_bytes(), (out, name)


def test_eyecrowd_dissection_identical_with_and_without_cache(tmp_path, cache_env,
                                                              monkeypatch):
    root = make_eyecrowd(tmp_path / "ec")
    _dissect_outputs(tmp_path, lambda: eyecrowd(root), monkeypatch, BoxDataset)


def test_coco_dissection_identical_with_and_without_cache(tmp_path, cache_env, monkeypatch):
    path, imgs = make_cocos(tmp_path)
    fix = coco_fixations()
    _dissect_outputs(tmp_path, lambda: CocoParts([path], MAP, images=imgs, head=DISC,
                                                  image_size=(30, 40), fixations=fix),
                     monkeypatch, CocoParts)


def test_concepts_cache_command_on_eyecrowd(tmp_path, cache_env, capsys):
    from neuroprobe.cli import main

    root = make_eyecrowd(tmp_path / "ec")
    assert main(["concepts", "cache", "eyecrowd", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "(9 images)" in out and "of int64 label and instance masks" in out


# -- mask folders (VOC with instances and fixations, labelme) ---------------------------------------

def _no_mask_reading(monkeypatch):
    """Mask folders read masks through ``raw`` (with or without decode_labels): make it fail."""
    from neuroprobe.concepts.maskfolder import MaskFolderDataset

    def fail(self, index):
        raise AssertionError(f"read the masks of item {index}")
    monkeypatch.setattr(MaskFolderDataset, "raw", fail)


def _voc_with_fixations(tmp_path: Path):
    from test_maskfolder import make_voc

    root = tmp_path / "voc"
    make_voc(root, n=6, names=[f"{k:04d}" for k in range(6)])
    (root / "SegmentationObject" / "0003.png").unlink()       # one image without instances
    subj = np.empty(1, dtype=object)
    subj[0] = {"fix_x": np.array([1.0, 16.0, 3.0]), "fix_y": np.array([1.0, 12.0, 5.0]),
               "fix_duration": np.ones(3)}
    fx = np.empty(2, dtype=object)
    fx[0] = {"img": "0001.png", "subjects": subj}
    fx[1] = {"img": "0004.png", "subjects": subj}
    sio.savemat(tmp_path / "fixations.mat", {"fixations": fx})
    return root, tmp_path / "fixations.mat"


def test_voc_mask_folder_round_trip_and_changed_mask(tmp_path, cache_env, monkeypatch):
    from test_maskfolder import _palette_png

    from neuroprobe.concepts.maskfolder import MaskFolderDataset

    root, fix = _voc_with_fixations(tmp_path)

    def open_(**kw):
        return MaskFolderDataset(root, fixations=fix, image_size=(24, 32), mask_size=(6, 8),
                                 **kw)
    want = _items(open_())
    assert "instances" not in want[3] and "instances" in want[0]
    assert len(want[1]["fixations"]) == 3 and want[0]["fixations"].shape == (0, 2)
    ds = open_()
    cache = ds.prepare_labels(progress=False)
    assert cache.complete() and cache.source_bytes() == sum(
        p.stat().st_size for i in range(6) for p in ds.replaced_files(i) if p.exists())
    with monkeypatch.context() as m:
        _no_mask_reading(m)
        assert_items_equal(_items(ds), want)
    # a changed class mask and an instance mask that appears: both items decoded again
    _palette_png(root / "SegmentationClass" / "0002.png", np.full((12, 16), 73))
    _palette_png(root / "SegmentationObject" / "0003.png", np.ones((12, 16)))
    fresh = open_()
    fresh.use_cache = False
    got, now = _items(ds), _items(fresh)
    assert now[2]["layers"].eq(73).all() and "instances" in now[3]
    assert_items_equal(got, now)


def test_labelme_folder_round_trip(tmp_path, cache_env, monkeypatch):
    from neuroprobe.concepts.maskfolder import MaskFolderDataset

    folder = tmp_path / "lm"
    folder.mkdir()
    for k in range(5):
        Image.fromarray(np.full((12, 16, 3), k, np.uint8)).save(folder / f"p{k}.png")
        doc = {"imagePath": f"p{k}.png", "shapes": [
            {"label": "vehicle", "points": [[k, 0], [9, 0], [9, 5], [0, 5]]},
            {"label": "person head", "points": [[2, 1], [4 + k, 3]], "shape_type": "rectangle"}]}
        (folder / f"p{k}.json").write_text(json.dumps(doc))
    want = _items(MaskFolderDataset(folder, image_size=(12, 16)))
    ds = MaskFolderDataset(folder, image_size=(12, 16))
    ds.prepare_labels(progress=False)
    _no_mask_reading(monkeypatch)
    assert_items_equal(_items(ds), want)
