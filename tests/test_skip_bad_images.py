"""An image or mask that fails to decode in the middle of a concept set: stop (default) or skip.

The strongest check: a dissection that skips the unreadable items equals a dissection of the
same Broden folder with those rows removed from index.csv (same thresholds, same IoU, the same
top images), for ``keep="disk"`` and ``keep="recompute"``, through loader workers, across a
SIGKILL and resume, and under a 2-process torchrun.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from neuroprobe.cli import main
from neuroprobe.concepts.base import collate
from neuroprobe.concepts.broden import BrodenDataset
from neuroprobe.dissect import dissect
from neuroprobe.errors import DataFormatError, UserError
from test_broden import make_broden
from test_dissect import Tiny, tiny_model
from test_hardening import assert_one_line

BAD_MASK, BAD_IMAGE = 3, 6          # data-set indices of the two broken rows (of 10)
N = 10


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _write_rows(path: Path, rows) -> None:
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``bad``: a Broden folder of 10 images whose row 3 has a truncated object mask PNG and
    whose row 6 is a truncated JPEG; ``clean``: the same folder without those two rows."""
    d = tmp_path_factory.mktemp("skip")
    bad = d / "bad"
    make_broden(bad, n=N)
    clean = d / "clean"
    shutil.copytree(bad, clean)
    rows = _rows(bad / "index.csv")
    # row 6: a JPEG cut short (the image of that row, saved as JPEG, then truncated)
    img = np.asarray(Image.open(bad / "images" / "src" / f"im{BAD_IMAGE:03d}.png"))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    (bad / "images" / "src" / f"im{BAD_IMAGE:03d}.jpg").write_bytes(data[: len(data) * 4 // 5])
    rows[1 + BAD_IMAGE][0] = f"src/im{BAD_IMAGE:03d}.jpg"
    _write_rows(bad / "index.csv", rows)
    # row 3: its object mask PNG cut short
    mask = bad / "images" / "src" / f"im{BAD_MASK:03d}_object.png"
    blob = mask.read_bytes()
    mask.write_bytes(blob[: len(blob) // 2])
    _write_rows(clean / "index.csv", [r for i, r in enumerate(rows)
                                      if i - 1 not in (BAD_MASK, BAD_IMAGE)])
    return {"bad": bad, "clean": clean, "d": d}


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(3, 6, 1), nn.ReLU()).eval()


def run(root, **kw):
    kw.setdefault("batch_size", 3)
    return dissect(model(), BrodenDataset(root), ["2"], progress=False, **kw)


def top_ids(result, ds):
    """Top images of every unit as image ids (values exact, ids through the data set)."""
    values, index = result.top_images["2"]
    ids = [[ds.item(int(i), labels=False)["id"] for i in row] for row in index]
    return values, ids


@pytest.fixture(scope="module")
def reference(folders, one_thread):
    return run(folders["clean"])


# -- the reader side: markers and collate ----------------------------------------------------

def test_collate_drops_markers_and_keeps_indices(folders):
    ds = BrodenDataset(folders["clean"])
    items = [{**ds[i], "index": i} for i in range(3)]
    marker = {"skipped": {"index": 7, "id": "x", "error": "broken"}}
    batch = collate([items[0], marker, items[1], items[2]])
    assert batch["id"] == [items[i]["id"] for i in range(3)]
    assert batch["index"].tolist() == [0, 1, 2]
    assert batch["skipped"] == [marker["skipped"]]
    assert batch["image"].shape[0] == batch["layers"].shape[0] == 3
    empty = collate([marker, marker])
    assert empty["id"] == [] and empty["index"].numel() == 0 and len(empty["skipped"]) == 2
    assert "image" not in empty
    plain = collate(items[:2])
    assert "skipped" not in plain


def test_view_skip_marker_and_stop_hint(folders):
    from neuroprobe.engine.runner import ItemView as _View

    ds = BrodenDataset(folders["bad"])
    skip = _View(ds, labels=True, on_bad_image="skip")
    m = skip[BAD_IMAGE]["skipped"]
    assert m["index"] == BAD_IMAGE and m["id"] == f"src/im{BAD_IMAGE:03d}"
    assert f"im{BAD_IMAGE:03d}.jpg" in m["error"] and "\n" not in m["error"]
    assert skip[BAD_MASK]["skipped"]["id"] == f"src/im{BAD_MASK:03d}"
    # images only: the broken mask is not read ...
    assert _View(ds, labels=False, on_bad_image="skip")[BAD_MASK]["index"] == BAD_MASK
    # ... unless validated (pass 1 in skip mode)
    assert "skipped" in _View(ds, labels=False, on_bad_image="skip", validate=True)[BAD_MASK]
    good = _View(ds, labels=False, on_bad_image="skip", validate=True)[0]
    assert set(good) == {"image", "id", "index"} and good["image"].dtype == torch.uint8
    with pytest.raises(DataFormatError, match="--on-bad-image skip") as info:
        _View(ds, labels=True)[BAD_MASK]
    assert f"im{BAD_MASK:03d}_object.png" in str(info.value)
    assert "\n" not in str(info.value)


def test_only_data_errors_are_skipped():
    class Buggy(Tiny):
        def __getitem__(self, i):
            if i == 2:
                raise TypeError("a bug, not bad data")
            return super().__getitem__(i)

    with pytest.raises(TypeError, match="a bug"):
        dissect(tiny_model(), Buggy(n=8), ["1"], on_bad_image="skip", progress=False,
                batch_size=4)
    with pytest.raises(UserError, match="on_bad_image|--on-bad-image"):
        dissect(tiny_model(), Tiny(n=8), ["1"], on_bad_image="ignore", progress=False)


# -- the engine: equal to the data set without the bad rows --------------------------------------

@pytest.mark.parametrize("keep,workers", [("disk", 0), ("recompute", 1)])
def test_skip_equals_dataset_without_bad_rows(folders, reference, one_thread, keep, workers):
    got = run(folders["bad"], on_bad_image="skip", keep=keep, num_workers=workers)
    assert [(s["index"], s["id"], s["pass"]) for s in got.skipped] == [
        (BAD_MASK, f"src/im{BAD_MASK:03d}", "record"),
        (BAD_IMAGE, f"src/im{BAD_IMAGE:03d}", "record")]
    assert f"im{BAD_MASK:03d}_object.png" in got.skipped[0]["error"]
    assert f"im{BAD_IMAGE:03d}.jpg" in got.skipped[1]["error"]
    assert got.summary["skipped"] == got.skipped and got.summary["n_skipped"] == 2
    assert got.summary["config"]["on_bad_image"] == "skip"
    assert torch.equal(got.thresholds["2"], reference.thresholds["2"])
    assert got.units == reference.units
    assert got.stats["2"]["tally"].images.item() == N - 2
    # the top images point at the right images of the full set
    v_got, ids_got = top_ids(got, BrodenDataset(folders["bad"]))
    v_ref, ids_ref = top_ids(reference, BrodenDataset(folders["clean"]))
    assert torch.equal(v_got, v_ref) and ids_got == ids_ref
    idx = got.top_images["2"][1]
    assert not set(idx.flatten().tolist()) & {BAD_MASK, BAD_IMAGE}
    assert set(idx.flatten().tolist()) > set(range(BAD_IMAGE + 1, N))   # shifted past the gaps


def test_whole_batch_skipped_and_nothing_readable(tmp_path, one_thread):
    class Holes(Tiny):
        bad = {4, 5, 6, 7}

        def __getitem__(self, i):
            if i in self.bad:
                raise DataFormatError(f"image tiny{i}.png cannot be decoded")
            return super().__getitem__(i)

    class Clean(Tiny):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return super().__getitem__(i if i < 4 else i + 4)

    ref = dissect(tiny_model(), Clean(n=12, fixations=True), ["1"], progress=False,
                  batch_size=4, score="both")
    for keep in ("disk", "recompute"):   # batch 1 (items 4-7) is empty
        got = dissect(tiny_model(), Holes(n=12, fixations=True), ["1"], on_bad_image="skip",
                      progress=False, batch_size=4, keep=keep, out_dir=tmp_path / keep,
                      score="both")
        assert [s["index"] for s in got.skipped] == [4, 5, 6, 7]
        assert got.units == ref.units            # IoU and region-NSS labels of every unit
        assert got.nss_table == ref.nss_table
        idx = got.top_images["1"][1]
        want = ref.top_images["1"][1]
        assert torch.equal(idx, torch.where(want >= 4, want + 4, want))
        summary = json.loads((tmp_path / keep / "summary.json").read_text())
        assert summary["n_skipped"] == 4 and summary["skipped"][0]["id"] is None
    Holes.bad = set(range(8))
    with pytest.raises(UserError, match="none of the 8 images .* could be read"):
        dissect(tiny_model(), Holes(n=8), ["1"], on_bad_image="skip", progress=False,
                batch_size=4)


def test_item_that_fails_only_in_the_second_pass(one_thread):
    """A file that breaks during the run (found by pass 2): its maps count in the thresholds
    and top images, not in the tallies."""
    class Flaky(Tiny):
        reads = 0

        def item(self, index, *, labels=True, raw_image=False):
            if index == 5 and labels:
                Flaky.reads += 1
                if Flaky.reads > 1:
                    raise DataFormatError("mask tiny5.png cannot be decoded")
            return super().item(index, labels=labels, raw_image=raw_image)

    full = dissect(tiny_model(), Tiny(n=12), ["1"], progress=False, batch_size=4)
    got = dissect(tiny_model(), Flaky(n=12), ["1"], progress=False, batch_size=4,
                  keep="recompute", on_bad_image="skip")
    assert [(s["index"], s["pass"]) for s in got.skipped] == [(5, "tally")]
    assert torch.equal(got.thresholds["1"], full.thresholds["1"])
    assert all(torch.equal(a, b) for a, b in zip(got.top_images["1"], full.top_images["1"]))
    # tallies: the full run's minus those of item 5 alone at the same thresholds
    from neuroprobe.stats import IoUTally

    ft = full.stats["1"]["tally"]
    one = IoUTally(ft.units, ft.num_labels, ft.category_of_label, ft.num_categories,
                   ft.denominator)
    b = collate([Tiny(n=12)[5]])
    with torch.no_grad():
        maps = tiny_model()[:2](b["image"])   # layer "1": the convolution
    one.add(maps, full.thresholds["1"], b["layers"], b["whole"], b["categories"])
    gt = got.stats["1"]["tally"]
    for f in ("inter", "act", "label", "images"):
        assert torch.equal(getattr(gt, f), getattr(ft, f) - getattr(one, f)), f


# -- checkpoints: resume keeps the list; the flag is not in the key ------------------------------

_KILL = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import test_skip_bad_images as T
def hook(phase, j):
    if phase == {phase!r} and j == {batch}:
        os.kill(os.getpid(), signal.SIGKILL)
T.run({root!r}, out_dir={out!r}, on_bad_image="skip", checkpoint_every=1, batch_size=2,
      after_batch=hook)
"""


def test_kill_and_resume_keeps_the_skipped_list(folders, tmp_path, one_thread):
    ref = run(folders["bad"], out_dir=tmp_path / "ref", on_bad_image="skip", batch_size=2)
    out = tmp_path / "run"
    env = {**os.environ, "NEUROPROBE_QUIET": "1", "OMP_NUM_THREADS": "1"}
    tests = str(Path(__file__).parent)
    # killed after batch 2 of pass 1 (item 3 skipped, item 6 not reached), then in pass 2
    for phase, batch, found in (("record", 2, [BAD_MASK]), ("tally", 2, [BAD_MASK, BAD_IMAGE])):
        script = _KILL.format(tests=tests, phase=phase, batch=batch, root=str(folders["bad"]),
                              out=str(out))
        proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        state = torch.load(out / ".state" / "state.pt", weights_only=True)
        assert state["phase"] == phase
        assert [s["index"] for s in state["skipped"]] == found
    # a checkpoint that skipped items does not resume in stop mode
    with pytest.raises(UserError, match="left out 2 unreadable.*--on-bad-image skip"):
        run(folders["bad"], out_dir=out, batch_size=2)
    got = run(folders["bad"], out_dir=out, on_bad_image="skip", batch_size=2)
    assert got.skipped == ref.skipped
    for name in ("units.csv", "top_images.npz"):
        assert (out / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (out, tmp_path / "ref"))
    assert sa["skipped"] == sb["skipped"] and sa["config_hash"] == sb["config_hash"]


def test_stopped_run_resumes_with_skip(folders, tmp_path, one_thread):
    """The flag is not in the configuration hash: a run stopped by the bad mask continues from
    its checkpoint with skip, and equals a fresh skip run."""
    out = tmp_path / "run"
    with pytest.raises(DataFormatError, match=f"im{BAD_MASK:03d}_object.png"):
        run(folders["bad"], out_dir=out, checkpoint_every=1, batch_size=2, keep="disk")
    state = torch.load(out / ".state" / "state.pt", weights_only=True)
    assert state["phase"] == "record" and state["next_batch"] == 1 and state["skipped"] == []
    got = run(folders["bad"], out_dir=out, checkpoint_every=1, batch_size=2, keep="disk",
              on_bad_image="skip")
    fresh = run(folders["bad"], batch_size=2, on_bad_image="skip")
    assert got.units == fresh.units and got.skipped == fresh.skipped
    assert got.summary["config_hash"] == fresh.summary["config_hash"]
    assert got.summary["config_hash"] == state["key"]   # the stopped run's key


# -- the command line --------------------------------------------------------------------------

CLI = ["dissect", "--concepts", "broden", "--image-size", "32", "--batch-size", "3",
       "--workers", "0"]


def test_cli_stop_is_one_line_naming_the_fix(folders, tmp_path, capsys):
    rc = main(["--quiet", *CLI, "--root", str(folders["bad"]), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert_one_line(rc, err, f"im{BAD_MASK:03d}_object.png", "--on-bad-image skip")


def test_cli_skip_reports_and_equals_clean(folders, tmp_path, capsys):
    # one image per batch: a convolution's float sums can change in the last bit with the
    # batch's composition, which skipping changes (the library tests above use batches with
    # holes, on a model whose maps do not depend on the batch)
    cli = [*CLI, "--batch-size", "1"]
    rc = main(["--quiet", *cli, "--root", str(folders["bad"]), "--on-bad-image", "skip",
               "--out", str(tmp_path / "bad")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "skipped 2 images that could not be read (listed in summary.json)" in out
    assert "dissected 8 of 10 images" in out
    rc = main(["--quiet", *cli, "--root", str(folders["clean"]), "--out", str(tmp_path / "ok")])
    assert rc == 0
    assert "skipped" not in capsys.readouterr().out
    assert (tmp_path / "bad" / "units.csv").read_bytes() == \
        (tmp_path / "ok" / "units.csv").read_bytes()
    s = json.loads((tmp_path / "bad" / "summary.json").read_text())
    assert s["n_skipped"] == 2 and s["config"]["on_bad_image"] == "skip"
    assert [(x["index"], x["id"]) for x in s["skipped"]] == [
        (BAD_MASK, f"src/im{BAD_MASK:03d}"), (BAD_IMAGE, f"src/im{BAD_IMAGE:03d}")]
    assert json.loads((tmp_path / "ok" / "summary.json").read_text())["skipped"] == []


def test_cli_stop_exit_code_end_to_end(folders, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "neuroprobe", "--quiet", *CLI, "--root",
                           str(folders["bad"]), "--workers", "1", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    assert_one_line(proc.returncode, proc.stderr, f"im{BAD_MASK:03d}_object.png",
                    "--on-bad-image skip")


@pytest.mark.skipif(not torch.distributed.is_available(),
                    reason="this PyTorch build has no torch.distributed")
def test_torchrun_two_processes_equal_single_process(folders, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    args = ["--quiet", *CLI, "--root", str(folders["bad"]), "--on-bad-image", "skip",
            "--batch-size", "2"]
    outs = {}
    for name, cmd in (("single", [sys.executable, "-m", "neuroprobe"]),
                      ("multi", [sys.executable, "-m", "torch.distributed.run",
                                 "--nproc_per_node", "2", "--standalone", "-m", "neuroprobe"])):
        outs[name] = tmp_path / name
        proc = subprocess.run(cmd + args + ["--out", str(outs[name])], env=env,
                              capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count("skipped 2 images") == 1
    for name in ("units.csv", "top_images.npz"):
        assert (outs["multi"] / name).read_bytes() == (outs["single"] / name).read_bytes(), name
    sa, sb = (json.loads((outs[k] / "summary.json").read_text()) for k in ("multi", "single"))
    assert sa["skipped"] == sb["skipped"] and [x["index"] for x in sa["skipped"]] == [3, 6]


def test_every_shipped_reader_names_its_items_without_decoding(tmp_path):
    """``item_id(i)`` equals ``ds[i]["id"]`` for the file-based readers (the name a skipped
    image gets in summary.json)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_broden import make_broden

    from neuroprobe.concepts.base import ConceptDataset
    from neuroprobe.concepts.broden import BrodenDataset

    make_broden(tmp_path / "b", n=4)
    ds = BrodenDataset(tmp_path / "b")
    assert [ds.item_id(i) for i in range(len(ds))] == [ds[i]["id"] for i in range(len(ds))]
    assert ConceptDataset.item_id(ds, 0) is None   # the default: cannot tell
