"""The concept-set cache: round trips against the files, invalidation, concurrent and interrupted
builds, and dissections with and without it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from neuroprobe.concepts import cache as ccache
from neuroprobe.concepts.base import ConceptDataset, Label, LabelTable
from neuroprobe.concepts.broden import BrodenDataset, encode_label_png

sys.path.insert(0, str(Path(__file__).parent))
from test_broden import make_broden  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROPROBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ccache, "CHUNK", 4)   # several chunks from a few images
    return tmp_path / "cache"


@pytest.fixture()
def broden(tmp_path):
    root = tmp_path / "broden1_224"
    make_broden(root, n=10)
    return root


def _items(ds):
    return [ds.item(i) for i in range(len(ds))]


def assert_items_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for k in x:
            if isinstance(x[k], torch.Tensor):
                assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k
            else:
                assert x[k] == y[k], k


def _no_decoding(monkeypatch, cls=BrodenDataset):
    """Make decoding label files fail: whatever is read afterwards comes from the cache."""
    def fail(self, index):
        raise AssertionError(f"decoded item {index} from its files")
    monkeypatch.setattr(cls, "decode_labels", fail)


# -- round trips --------------------------------------------------------------------------------

def test_broden_round_trip_equals_png_path(broden, cache_env, monkeypatch):
    ds = BrodenDataset(broden)
    want = _items(ds)
    cache = ds.prepare_labels(progress=False)
    assert cache.complete() and cache.built_items() == 10
    assert cache.folder.parent == cache_env / "concepts"
    assert len(list(cache.folder.glob("chunk-*.meta.npz"))) == 3   # 4 + 4 + 2 items
    assert cache.dtype == np.uint16          # label ids up to 1300
    # the mask PNGs it replaces: their sizes summed
    pngs = sum(p.stat().st_size for i in range(10) for p in ds.label_files(i))
    assert cache.source_bytes() == pngs and cache.disk_bytes() > 0
    _no_decoding(monkeypatch)
    assert_items_equal(_items(ds), want)
    # the planes are a plain .npy file: memory-mappable
    mm = np.load(cache.folder / "chunk-000000.layers.npy", mmap_mode="r")
    assert mm.dtype == np.uint8 and mm.shape[1:] == ds.mask_size   # palette codes


def test_palette_encoding_exact_or_not_used():
    rng = np.random.default_rng(1)
    planes = rng.choice(np.arange(0, 60000, 7), (3, 5, 6)).astype(np.uint16)
    codes, palette = ccache._palette_encode(planes)
    assert codes.dtype == np.uint8 and palette.shape == (3, 256)
    assert np.array_equal(np.take_along_axis(palette, codes.reshape(3, -1).astype(int), 1)
                          .reshape(planes.shape), planes)
    many = np.arange(300, dtype=np.uint16).reshape(1, 15, 20)     # 300 ids in one plane
    same, none = ccache._palette_encode(np.concatenate([planes[:1, :1, :1].repeat(15, 1)
                                                        .repeat(20, 2), many]))
    assert none is None and same.dtype == np.uint16
    narrow = planes.astype(np.uint8)
    assert ccache._palette_encode(narrow)[1] is None


def test_resized_masks_and_split_are_cached_separately(broden, cache_env, monkeypatch):
    big = BrodenDataset(broden, mask_size=(16, 20))
    val = BrodenDataset(broden, split="val")
    want_big, want_val = _items(big), _items(val)
    a, b = big.prepare_labels(progress=False), val.prepare_labels(progress=False)
    assert a.folder != b.folder
    _no_decoding(monkeypatch)
    assert_items_equal(_items(big), want_big)
    assert_items_equal(_items(val), want_val)


class FileSet(ConceptDataset):
    """A minimal file-based source with fixations: one ``.npz`` of labels per item."""

    name = "fileset"

    def __init__(self, root: Path, n: int = 7):
        self.root, self.n = root, n
        self.labels = LabelTable([Label(1, "a", "x"), Label(2, "b", "y"), Label(300, "c", "y")],
                                 ["x", "y"])
        self.image_size, self.mask_size, self.has_fixations = (8, 8), (4, 4), True
        rng = np.random.default_rng(0)
        root.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            k = i % 3                                       # 0, 1 or 2 layers
            np.savez(root / f"{i}.npz", layers=rng.choice([0, 1, 2, 300], (k, 4, 4)),
                     whole=np.arange(i % 2, dtype=np.int64) + 1,
                     fix=rng.random((i, 2)).astype(np.float32) * 7,
                     obs=np.arange(i, dtype=np.int64))

    def __len__(self):
        return self.n

    def cache_spec(self):
        return {"source": "fileset", "n": self.n}

    def label_files(self, index):
        return [self.root / f"{index}.npz"]

    def decode_labels(self, index):
        with np.load(self.root / f"{index}.npz") as z:
            fix = None if index == 3 else z["fix"]          # one item without fixations
            return {"layers": z["layers"], "whole": z["whole"],
                    "categories": np.array([index % 2 == 0, True]), "fixations": fix,
                    "observers": None if fix is None else z["obs"]}

    def __getitem__(self, index):
        got = self.cached_labels(index) or self.decode_labels(index)
        return {"image": torch.zeros(3, 8, 8), "id": str(index),
                "layers": torch.from_numpy(np.asarray(got["layers"], np.int64)),
                "whole": torch.from_numpy(got["whole"]),
                "categories": torch.from_numpy(got["categories"]),
                "fixations": None if got["fixations"] is None
                else torch.from_numpy(got["fixations"]),
                "observers": None if got["observers"] is None
                else torch.from_numpy(got["observers"])}


def test_fixations_round_trip(tmp_path, cache_env, monkeypatch):
    ds = FileSet(tmp_path / "fs")
    want = _items(ds)
    assert want[0]["fixations"].shape == (0, 2) and want[3]["fixations"] is None
    ds.prepare_labels(progress=False)
    _no_decoding(monkeypatch, FileSet)
    got = _items(ds)
    assert got[3]["fixations"] is None and got[3]["observers"] is None
    assert_items_equal(got, want)


def test_no_cache_and_uncached_sources(broden, cache_env):
    ds = BrodenDataset(broden, cache=False)
    assert ds.prepare_labels(progress=False) is None and ds.label_cache is None
    assert not (cache_env / "concepts").exists()

    class Plain(ConceptDataset):
        name = "plain"
    assert Plain().prepare_labels(progress=False) is None


# -- invalidation -------------------------------------------------------------------------------

def test_changed_file_is_decoded_again_touched_file_is_not(broden, cache_env, monkeypatch,
                                                           caplog):
    ds = BrodenDataset(broden)
    ds.prepare_labels(progress=False)
    # rewrite item 1's object mask with other labels (same size and mode)
    path = broden / "images" / "src" / "im001_object.png"
    Image.fromarray(encode_label_png(np.full((8, 10), 300))).save(path)
    fresh = BrodenDataset(broden, cache=False)
    assert ds.item(1)["layers"][0].eq(300).all()            # what the file says now
    assert_items_equal(_items(ds), _items(fresh))
    assert any("changed since the concept cache" in r.getMessage() and r.levelname == "WARNING"
               for r in caplog.records if r.name == "neuroprobe.concepts.cache")
    # a file touched (new mtime) or copied, same bytes: still served from the cache
    other = broden / "images" / "src" / "im002_object.png"
    os.utime(other, ns=(1, 1))
    calls = []
    orig = BrodenDataset.decode_labels
    monkeypatch.setattr(BrodenDataset, "decode_labels",
                        lambda self, i: calls.append(i) or orig(self, i))
    ds.item(2)
    assert calls == []
    ds.item(1)
    assert calls == [1]                                     # the changed one, from its file
    # `concepts cache --verify` rebuilds the chunks of changed or touched items: chunk 0 only
    before = (cache_env / "concepts").glob("*/chunk-000001.meta.npz")
    mtime1 = next(before).stat().st_mtime_ns
    calls.clear()
    cache = ccache.build(ds, verify=True, progress=False)
    assert sorted(calls) == [0, 1, 2, 3]
    assert next(cache.folder.glob("chunk-000001.meta.npz")).stat().st_mtime_ns == mtime1
    ds.label_cache = cache
    want = _items(fresh)
    calls.clear()
    assert_items_equal(_items(ds), want)
    assert calls == []


def test_changed_index_gives_another_cache(broden, cache_env):
    a = BrodenDataset(broden).prepare_labels(progress=False)
    index = broden / "index.csv"
    index.write_text(index.read_text().replace("src/im004_object.png", ""))
    b = BrodenDataset(broden).prepare_labels(progress=False)
    assert a.folder != b.folder
    # the same bytes again (a copy elsewhere, or the old file back): the first cache again
    import shutil

    copy = broden.parent / "copy"
    shutil.copytree(broden, copy)
    assert BrodenDataset(copy).prepare_labels(progress=False).folder == b.folder


def test_unreadable_mask_is_not_cached(broden, cache_env):
    from neuroprobe.errors import DataFormatError

    (broden / "images" / "src" / "im005_object.png").write_bytes(b"not a png")
    ds = BrodenDataset(broden)
    ds.prepare_labels(progress=False)                        # the build does not stop
    with pytest.raises(DataFormatError, match="im005_object.png"):
        ds.item(5)                                          # the reader's own error, on read
    assert ds.item(4)["id"] == "src/im004"


# -- building: interrupted, concurrent ------------------------------------------------------------

def test_interrupted_build_resumes_with_missing_chunks(broden, cache_env, monkeypatch):
    ds = BrodenDataset(broden)
    want = _items(BrodenDataset(broden, cache=False))
    orig = BrodenDataset.decode_labels
    calls = []

    def stop_at_6(self, i):
        calls.append(i)
        if i == 6:
            raise KeyboardInterrupt
        return orig(self, i)
    monkeypatch.setattr(BrodenDataset, "decode_labels", stop_at_6)
    with pytest.raises(KeyboardInterrupt):
        ds.prepare_labels(progress=False)
    folder = ccache.cache_folder(ds)
    assert [p.name for p in sorted(folder.glob("chunk-*"))] == [
        "chunk-000000.layers.npy", "chunk-000000.meta.npz"]
    assert not list(folder.glob(".chunk-*"))                # no half-written file
    (folder / ".chunk-000001.layers.npy.abc.npy").write_bytes(b"left by a killed build")
    monkeypatch.setattr(BrodenDataset, "decode_labels",
                        lambda self, i: calls.append(i) or orig(self, i))
    calls.clear()
    cache = ds.prepare_labels(progress=False)
    assert calls == list(range(4, 10))                       # chunk 0 was not decoded again
    assert cache.complete() and not list(folder.glob(".chunk-*"))
    assert_items_equal(_items(ds), want)


_BUILDER = r"""
import sys, time
from neuroprobe.concepts import cache
from neuroprobe.concepts.broden import BrodenDataset
cache.CHUNK = 4
orig = BrodenDataset.decode_labels
def slow(self, i):
    time.sleep(0.05)
    print("decoded", i, flush=True)
    return orig(self, i)
BrodenDataset.decode_labels = slow
ds = BrodenDataset(sys.argv[1])
c = ds.prepare_labels(progress=False)
print("complete", c.complete(), flush=True)
"""


def test_two_processes_build_at_once(broden, cache_env):
    env = {**os.environ, "NEUROPROBE_CACHE": str(cache_env), "NEUROPROBE_QUIET": "",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    folder = ccache.cache_folder(BrodenDataset(broden))
    # this process holds the lock until both builders are waiting for it, so that they start
    # building at the same moment whatever the machine's load
    with ccache._build_lock(folder):
        procs = [subprocess.Popen([sys.executable, "-c", _BUILDER, str(broden)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        errs = []
        for p in procs:
            lines = []
            while True:
                line = p.stderr.readline()
                lines.append(line)
                if not line or "waiting for process" in line:
                    break
            errs.append("".join(lines))
        assert all("waiting for process" in e for e in errs), errs
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    decoded = [[int(l.split()[1]) for l in o[0].splitlines() if l.startswith("decoded")]
               for o in outs]
    # every item decoded exactly once, by one of them; the other waited and used the result
    # (without the lock both would decode all ten)
    assert sorted(decoded[0] + decoded[1]) == list(range(10))
    assert all("complete True" in o[0] for o in outs)
    ds = BrodenDataset(broden)
    want = _items(BrodenDataset(broden, cache=False))
    ds.prepare_labels(progress=False)
    assert_items_equal(_items(ds), want)


# -- dissection with and without the cache ------------------------------------------------------

def test_dissection_identical_with_and_without_cache(tmp_path, cache_env, monkeypatch):
    from neuroprobe.dissect import dissect
    from torch import nn

    root = tmp_path / "b24"
    make_broden(root, n=24, seed=3)

    def run(out, cache):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),
                              nn.AvgPool2d(2)).eval()
        ds = BrodenDataset(root, cache=cache)
        return dissect(model, ds, ["2"], batch_size=5, out_dir=out, progress=False,
                       iou_threshold=0.01)

    plain = run(tmp_path / "plain", False)
    assert not (cache_env / "concepts").exists()
    cold = run(tmp_path / "cold", True)                      # builds the cache on first use
    _no_decoding(monkeypatch)
    warm = run(tmp_path / "warm", True)                      # reads labels from it alone
    for out in ("cold", "warm"):
        for name in ("units.csv", "region_nss.csv"):
            a, b = tmp_path / "plain" / name, tmp_path / out / name
            assert a.exists() == b.exists()
            if a.exists():
                assert a.read_bytes() == b.read_bytes()
        sa, sb = (json.loads((tmp_path / d / "summary.json").read_text())
                  for d in ("plain", out))
        sa.pop("timing"), sb.pop("timing")
        assert sa == sb
    assert plain.units == cold.units == warm.units
    for layer in plain.thresholds:
        assert torch.equal(plain.thresholds[layer], warm.thresholds[layer])


# -- the command line -----------------------------------------------------------------------------

def test_concepts_cache_command(broden, cache_env, capsys):
    from neuroprobe.cli import main

    assert main(["concepts", "cache", "broden", "--root", str(broden)]) == 0
    out = capsys.readouterr().out
    folder = ccache.cache_folder(BrodenDataset(broden))
    assert str(folder) in out and "10 images" in out
    assert "MB on disk; the label files it replaces:" in out
    assert ccache.LabelCache(folder).complete()
    assert main(["concepts", "cache", "broden", "--root", str(broden), "--verify"]) == 0
    assert main(["concepts", "cache", "broden", "--root", str(broden), "--clear"]) == 0
    assert "removed" in capsys.readouterr().out and not folder.exists()
    assert main(["concepts", "cache", "synthetic"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("neuroprobe: error: concept set 'synthetic'")


def test_dissect_no_cache_flag(broden, cache_env, tmp_path):
    from neuroprobe.cli import main

    args = ["--quiet", "dissect", "--model", "demo", "--concepts", "broden", "--root",
            str(broden), "--image-size", "32", "--batch-size", "5", "--iou-threshold", "0.01"]
    assert main(args + ["--no-cache", "--out", str(tmp_path / "a")]) == 0
    assert not (cache_env / "concepts").exists()
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    assert len(list((cache_env / "concepts").iterdir())) == 1
    a, b = (tmp_path / d / "units.csv" for d in "ab")
    assert a.read_bytes() == b.read_bytes()


def test_reader_keeps_few_chunks_in_memory(broden, cache_env, monkeypatch):
    monkeypatch.setattr(ccache, "_KEEP_META", 2)
    ds = BrodenDataset(broden)
    want = _items(BrodenDataset(broden, cache=False))
    ds.prepare_labels(progress=False)
    got = [ds.item(i) for i in (0, 5, 9, 1, 8, 4)]          # chunks 0, 1, 2, 0, 2, 1
    assert len(ds.label_cache._meta) == 2 and {c for c, _ in ds.label_cache._offset} <= {1, 2}
    assert_items_equal(got, [want[i] for i in (0, 5, 9, 1, 8, 4)])
