"""Hardening: bad inputs and faults across every command (project issue 11).

For each case of the matrix the command must give a non-zero exit, exactly one stderr line
``neuroprobe: error: ...`` naming the problem (and the fix), no traceback (unless ``--debug``),
no half-written file in the output folder, and no earlier result in that folder lost.

Most cases run in-process (``neuroprobe.cli.main``) for speed; a few go through
``python -m neuroprobe`` to prove exit codes and the absence of tracebacks end to end.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from neuroprobe.cli import main

REPO = Path(__file__).resolve().parents[1]
SENTINEL = b"an earlier result that must survive\n"


# -- helpers ---------------------------------------------------------------------------------

def cli(argv, capsys):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    rc = main(["--quiet", *[str(a) for a in argv]])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_one_line(rc, err, *words):
    """Non-zero exit, one ``neuroprobe: error:`` line naming ``words``, no traceback."""
    assert rc not in (0, None), err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
    assert lines[0].startswith("neuroprobe: error: "), lines[0]
    low = lines[0].lower()
    for w in words:
        assert w.lower() in low, f"{w!r} not in {lines[0]!r}"


def debris(folder: Path) -> list[str]:
    """Temporary / partial files left in ``folder`` (atomic writers use ``.NAME.XXXX`` names)."""
    if not folder.exists():
        return []
    bad = []
    for p in folder.rglob("*"):
        if p.is_file() and (p.name.startswith(".") or p.suffix in (".tmp", ".part")):
            bad.append(str(p.relative_to(folder)))
    return bad


def seed_folder(folder: Path) -> Path:
    """An output folder holding an earlier result (a sentinel file)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "earlier.txt").write_bytes(SENTINEL)
    return folder


def assert_intact(folder: Path):
    assert (folder / "earlier.txt").read_bytes() == SENTINEL
    assert debris(folder) == [], debris(folder)


class Evil:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _png(path: Path, array: np.ndarray, mode=None):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


# -- the shared world of bad files ------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import scipy.io
    import torch

    d = tmp_path_factory.mktemp("world")
    w = {"d": d, "marker": d / "PWNED"}
    # checkpoints
    from neuroprobe.models import zoo

    demo = zoo.builtin_path("demo")
    blob = demo.read_bytes()
    (d / "empty.pt").write_bytes(b"")
    (d / "trunc.pt").write_bytes(blob[: len(blob) // 2])
    (d / "text.pt").write_text("not a model\n")
    with open(d / "evil_pickle.pt", "wb") as fh:
        pickle.dump({"state_dict": Evil(w["marker"])}, fh, protocol=4)
    with open(d / "evil_pickle2.pt", "wb") as fh:
        pickle.dump({"state_dict": Evil(w["marker"])}, fh, protocol=2)
    torch.save({"state_dict": Evil(w["marker"])}, d / "evil_torch.pt")
    payload = torch.load(demo, map_location="cpu", weights_only=True)
    for name, value in (("nan", float("nan")), ("inf", float("inf"))):
        bad = {**payload, "state_dict": {k: (v.fill_(value) if v.is_floating_point() and
                                             "block2" in k and "weight" in k else v)
                                         for k, v in
                                         {k: v.clone() for k, v in
                                          payload["state_dict"].items()}.items()}}
        torch.save(bad, d / f"{name}.pt")
    # images
    rgb = (np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)
    _png(d / "good.png", rgb)
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10)
    (d / "empty.png").write_bytes(b"")
    good_png = (d / "good.png").read_bytes()
    (d / "trunc.png").write_bytes(good_png[: len(good_png) // 3])
    # mask folders: three images, the middle one broken in various ways
    for variant in ("badimage", "badmask", "emptymask"):
        root = d / f"masks-{variant}"
        for i, stem in enumerate(("a", "b", "c")):
            _png(root / "JPEGImages" / f"{stem}.png", rgb)
            m = np.zeros((40, 40), np.uint8)
            m[5:20, 5:20] = 27
            _png(root / "SegmentationClass" / f"{stem}.png", m, "L")
        if variant == "badimage":
            (root / "JPEGImages" / "b.png").write_bytes(good_png[:60])
        elif variant == "badmask":
            mb = (root / "SegmentationClass" / "b.png").read_bytes()
            (root / "SegmentationClass" / "b.png").write_bytes(mb[: len(mb) // 2])
        else:
            (root / "SegmentationClass" / "b.png").write_bytes(b"")
    (d / "masks.toml").write_text('source = "mask-folder"\nimage_size = 64\n')
    # CSV
    (d / "wrongcols.csv").write_text("picture,col,row\na.png,1,2\n")
    (d / "empty.csv").write_text("")
    (d / "labels_wrong.csv").write_text("file,klass\na.png,1\n")
    imgs = d / "imgfolder"
    imgs.mkdir()
    _png(imgs / "a.png", rgb)
    (imgs / "fixations.csv").write_text("picture,col,row\na.png,1,2\n")
    # broden-like folders and zips
    (d / "broden-badcsv").mkdir()
    (d / "broden-badcsv" / "index.csv").write_text("foo,bar\n1,2\n")
    (d / "broden-badcsv" / "category.csv").write_text("name\ncolor\n")
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        zf.writestr("broden1_224/index.csv", "image,split,ih,iw,sh,sw,color\n" * 50)
    (d / "trunc.zip").write_bytes(zbuf.getvalue()[: len(zbuf.getvalue()) // 2])
    (d / "empty.zip").write_bytes(b"")
    # COCO JSON
    (d / "coco_nokeys.json").write_text(json.dumps({"info": {}, "licenses": []}))
    (d / "coco_trunc.json").write_text('{"images": [{"id": 1, "file_name": "a.png"')
    for name in ("nokeys", "trunc"):
        (d / f"coco_{name}.toml").write_text(
            (REPO / "concepts" / "coco-parts.toml").read_text().replace(
                'year = 2017', f'year = 2017\nannotations = ["{d}/coco_{name}.json"]\n'
                f'images = "{imgs}"'))
    # .mat (OSIE layout) broken
    osie_trunc = d / "osie-trunc"
    (osie_trunc / "data" / "stimuli").mkdir(parents=True)
    _png(osie_trunc / "data" / "stimuli" / "1001.png", rgb)
    (osie_trunc / "data" / "eye").mkdir()
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"fixations": np.zeros((3, 3))})
    (osie_trunc / "data" / "eye" / "fixations.mat").write_bytes(buf.getvalue()[:100])
    osie_wrong = d / "osie-wrong"
    shutil.copytree(osie_trunc, osie_wrong)
    scipy.io.savemat(osie_wrong / "data" / "eye" / "fixations.mat",
                     {"somethingelse": np.zeros((3, 3))})
    (d / "wrong.mat").write_bytes(b"MATLAB 5.0 MAT-file, but cut short")
    # a small good dissection run (also the "earlier result" of several cases)
    run = d / "run"
    rc = main(["--quiet", "dissect", "--limit", "4", "--batch-size", "2", "--out", str(run)])
    assert rc == 0
    w["run"] = run
    w["run_bytes"] = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    broken = d / "run-broken-summary"
    shutil.copytree(run, broken)
    (broken / "summary.json").write_text('{"config": {"model": ')
    broken_csv = d / "run-broken-units"
    shutil.copytree(run, broken_csv)
    (broken_csv / "units.csv").write_text("nothing,useful\n1,2\n")
    yield w
    assert not w["marker"].exists(), "a malicious pickle ran code"


# -- the matrix ------------------------------------------------------------------------------

#: (id, argv with {d} = the world folder and {out} = a fresh output folder, words the one error
#: line must contain)
MATRIX = [
    # checkpoints: missing / empty / truncated / not a checkpoint / folder
    ("layers-missing-ckpt", ["layers", "--model", "{d}/missing.pt"], ["does not exist"]),
    ("layers-empty-ckpt", ["layers", "--model", "{d}/empty.pt"], ["not a pytorch checkpoint"]),
    ("layers-trunc-ckpt", ["layers", "--model", "{d}/trunc.pt"], ["trunc.pt"]),
    ("layers-text-ckpt", ["layers", "--model", "{d}/text.pt"], ["not a pytorch checkpoint"]),
    ("layers-folder-ckpt", ["layers", "--model", "{d}"], ["folder"]),
    ("dissect-trunc-ckpt", ["dissect", "--model", "{d}/trunc.pt", "--limit", "2",
                            "--out", "{out}"], ["trunc.pt"]),
    ("visualize-empty-ckpt", ["visualize", "--model", "{d}/empty.pt", "--units", "block4:0",
                              "--steps", "2", "--out", "{out}"], ["empty.pt"]),
    ("train-trunc-weights", ["train", "saliency", "--encoder", "small", "--weights",
                             "{d}/trunc.pt", "--epochs", "1", "--limit", "4",
                             "--out", "{out}/m.pt"], ["trunc.pt"]),
    ("popout-text-model", ["popout", "--models", "{d}/text.pt", "--n", "2", "--out", "{out}"],
     ["text.pt"]),
    ("saliency-eval-empty-model", ["saliency", "eval", "--data", "osie:{d}/osie-wrong",
                                   "--models", "{d}/empty.pt", "--out", "{out}"], []),
    # unknown names
    ("layers-unknown-model", ["layers", "--model", "resnet9000"], ["resnet9000"]),
    ("layers-unknown-torchvision", ["layers", "--model", "torchvision:resnet9000"],
     ["resnet9000"]),
    ("dissect-unknown-layer", ["dissect", "--layers", "block9", "--limit", "2",
                               "--out", "{out}"], ["unknown layer", "neuroprobe layers"]),
    ("dissect-unknown-concepts", ["dissect", "--concepts", "brodn", "--limit", "2",
                                  "--out", "{out}"], ["unknown concept set", "broden"]),
    ("visualize-unknown-layer", ["visualize", "--model", "demo", "--units", "block9:0",
                                 "--steps", "2", "--out", "{out}"], ["unknown layer"]),
    ("visualize-unit-range", ["visualize", "--model", "demo", "--units", "block4:9999",
                              "--steps", "2", "--out", "{out}"], ["out of range"]),
    ("concepts-info-unknown", ["concepts", "info", "synthetc"], ["unknown concept set"]),
    ("probe-unknown", ["probe", "finetune-shfit", "--out", "{out}"], ["finetune-shift"]),
    ("download-unknown", ["download", "brodn", "--out", "{out}"], ["unknown data set"]),
    ("popout-unknown-model", ["popout", "--models", "itty", "--n", "2", "--out", "{out}"],
     ["itty"]),
    ("saliency-eval-unknown-data", ["saliency", "eval", "--data", "osei:{d}",
                                    "--models", "centre", "--out", "{out}"], ["osei"]),
    # incompatible sizes
    ("dissect-tiny-image", ["dissect", "--image-size", "3", "--limit", "2", "--out", "{out}"],
     ["image_size"]),
    # images, masks
    ("dissect-bad-image-midway", ["dissect", "--concepts", "{d}/masks.toml", "--root",
                                  "{d}/masks-badimage", "--limit", "3", "--batch-size", "1",
                                  "--out", "{out}"], ["b.png", "--on-bad-image skip"]),
    ("dissect-truncated-mask", ["dissect", "--concepts", "{d}/masks.toml", "--root",
                                "{d}/masks-badmask", "--limit", "3", "--batch-size", "1",
                                "--out", "{out}"], ["b.png", "--on-bad-image skip"]),
    ("dissect-empty-mask", ["dissect", "--concepts", "{d}/masks.toml", "--root",
                            "{d}/masks-emptymask", "--limit", "3", "--batch-size", "1",
                            "--out", "{out}"], ["b.png", "--on-bad-image skip"]),
    ("concepts-show-bad-image", ["concepts", "show", "{d}/masks.toml", "--root",
                                 "{d}/masks-badimage", "--n", "3", "--out", "{out}/sheet.png"],
     ["b.png"]),
    ("concepts-export-bad-mask", ["concepts", "export", "{d}/masks.toml", "--root",
                                  "{d}/masks-badmask", "--n", "3", "--out", "{out}/export"],
     ["b.png"]),
    ("visualize-corrupt-image", ["visualize", "--model", "demo", "--units", "block4:0",
                                 "--steps", "2", "--image", "{d}/corrupt.jpg", "--out", "{out}"],
     ["corrupt.jpg"]),
    ("visualize-empty-image", ["visualize", "--model", "demo", "--units", "block4:0",
                               "--steps", "2", "--image", "{d}/empty.png", "--out", "{out}"],
     ["empty.png"]),
    # CSV
    ("saliency-eval-csv-columns", ["saliency", "eval", "--data", "csv:{d}/wrongcols.csv",
                                   "--images", "{d}/imgfolder", "--models", "centre",
                                   "--out", "{out}"], ["image,x,y"]),
    ("saliency-eval-csv-empty", ["saliency", "eval", "--data", "csv:{d}/empty.csv",
                                 "--images", "{d}/imgfolder", "--models", "centre",
                                 "--out", "{out}"], ["empty.csv"]),
    ("train-folder-csv-columns", ["train", "saliency", "--encoder", "small", "--weights", "none",
                                  "--data", "folder:{d}/imgfolder", "--epochs", "1",
                                  "--out", "{out}/m.pt"], ["fixations.csv"]),
    ("train-scene-labels-columns", ["train", "scene", "--encoder", "small", "--weights", "none",
                                    "--data", "folder:{d}/imgfolder", "--labels",
                                    "{d}/labels_wrong.csv", "--epochs", "1",
                                    "--out", "{out}/m.pt"], ["labels_wrong.csv"]),
    ("broden-incomplete-folder", ["dissect", "--concepts", "broden", "--root",
                                  "{d}/broden-badcsv", "--limit", "2", "--out", "{out}"],
     ["label.csv", "download"]),
    ("compare-broken-units-csv", ["compare", "{d}/run", "{d}/run-broken-units",
                                  "--out", "{out}"], ["units.csv"]),
    # JSON
    ("coco-json-missing-keys", ["concepts", "info", "{d}/coco_nokeys.toml"],
     ["coco_nokeys.json"]),
    ("coco-json-truncated", ["dissect", "--concepts", "{d}/coco_trunc.toml", "--limit", "2",
                             "--out", "{out}"], ["coco_trunc.json"]),
    ("gallery-broken-summary", ["gallery", "{d}/run-broken-summary", "--steps", "0",
                                "--attribution", "none", "--out", "{out}"], ["summary.json"]),
    ("compare-broken-summary", ["compare", "{d}/run", "{d}/run-broken-summary",
                                "--out", "{out}"], ["summary.json"]),
    # .mat
    ("saliency-eval-truncated-mat", ["saliency", "eval", "--data", "osie:{d}/osie-trunc",
                                     "--models", "centre", "--out", "{out}"], ["fixations.mat"]),
    ("saliency-eval-mat-fields", ["saliency", "eval", "--data", "osie:{d}/osie-wrong",
                                  "--models", "centre", "--out", "{out}"], ["fixations.mat"]),
    # zip
    ("broden-truncated-zip", ["dissect", "--concepts", "broden", "--root", "{d}/trunc.zip",
                              "--limit", "2", "--out", "{out}"], ["trunc.zip"]),
    ("broden-empty-zip", ["concepts", "info", "broden", "--root", "{d}/empty.zip"],
     ["empty.zip"]),
    # NaN / infinite activations
    ("dissect-nan-activations", ["dissect", "--model", "{d}/nan.pt", "--limit", "2",
                                 "--out", "{out}"], ["nan"]),
    ("dissect-inf-activations", ["dissect", "--model", "{d}/inf.pt", "--limit", "2",
                                 "--out", "{out}"], ["activations", "weights"]),
    # outputs that cannot be written where asked
    ("concepts-export-nonempty", ["concepts", "export", "synthetic", "--n", "2",
                                  "--out", "{out}"], ["not empty"]),
    ("gallery-not-a-run", ["gallery", "{d}", "--out", "{out}"], ["units.csv"]),
    ("compare-one-run", ["compare", "{d}/run"], ["two run folders"]),
]


@pytest.mark.parametrize("argv,words", [c[1:] for c in MATRIX], ids=[c[0] for c in MATRIX])
def test_matrix(world, tmp_path, capsys, argv, words):
    out = seed_folder(tmp_path / "out")
    argv = [a.format(d=world["d"], out=out) for a in argv]
    rc, _, err = cli(argv, capsys)
    assert_one_line(rc, err, *words)
    assert_intact(out)
    assert not world["marker"].exists()


@pytest.mark.parametrize("variant", ["badimage", "badmask", "emptymask"])
def test_bad_image_midway_skipped_with_the_flag(world, tmp_path, capsys, variant):
    """The same three mask folders with ``--on-bad-image skip``: the run finishes without the
    broken item and lists it (tests/test_skip_bad_images.py checks the numbers)."""
    out = seed_folder(tmp_path / "out")
    rc, stdout, err = cli(["dissect", "--concepts", world["d"] / "masks.toml", "--root",
                           world["d"] / f"masks-{variant}", "--limit", "3", "--batch-size", "1",
                           "--on-bad-image", "skip", "--out", out], capsys)
    assert rc == 0, err
    assert "skipped 1 image that could not be read (listed in summary.json)" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_skipped"] == 1
    (item,) = summary["skipped"]
    assert (item["index"], item["id"], item["pass"]) == (1, "b", "record")
    assert "b.png" in item["error"] and "\n" not in item["error"]
    assert (out / "earlier.txt").read_bytes() == SENTINEL


def test_matrix_is_big_enough():
    assert len(MATRIX) >= 30
    commands = {c[1][0] if c[1][0] not in ("train", "saliency", "concepts") else
                " ".join(c[1][:2]) for c in MATRIX}
    assert {"layers", "dissect", "visualize", "gallery", "compare", "probe", "popout",
            "download", "train saliency", "train scene", "saliency eval", "concepts info",
            "concepts show", "concepts export"} <= commands


def test_debug_shows_the_traceback(world, capsys):
    with pytest.raises(Exception) as info:
        main(["--debug", "layers", "--model", str(world["d"] / "text.pt")])
    assert "not a PyTorch checkpoint" in str(info.value)


@pytest.mark.parametrize("argv", [
    ["layers", "--model", "{d}/evil_torch.pt"],
    ["dissect", "--model", "{d}/trunc.pt", "--limit", "2", "--out", "{d}/never"],
])
def test_subprocess_exit_code_and_no_traceback(world, argv):
    argv = [a.format(d=world["d"]) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "neuroprobe", "--quiet", *argv],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert_one_line(proc.returncode, proc.stderr)
    proc = subprocess.run([sys.executable, "-m", "neuroprobe", "--debug", "--quiet", *argv],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


# -- security: pickles -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["evil_torch", "evil_pickle", "evil_pickle2"])
@pytest.mark.parametrize("argv", [
    ["layers", "--model", "{ckpt}"],
    ["dissect", "--model", "{ckpt}", "--limit", "2", "--out", "{out}"],
    ["visualize", "--model", "{ckpt}", "--units", "block4:0", "--steps", "2", "--out", "{out}"],
    ["train", "saliency", "--encoder", "small", "--weights", "{ckpt}", "--epochs", "1",
     "--limit", "4", "--out", "{out}/m.pt"],
    ["popout", "--models", "{ckpt}", "--n", "2", "--out", "{out}"],
    ["gallery", "{run}", "--model", "{ckpt}", "--steps", "0", "--attribution", "none",
     "--out", "{out}"],
], ids=["layers", "dissect", "visualize", "train", "popout", "gallery"])
def test_malicious_pickle_is_refused(world, tmp_path, capsys, kind, argv):
    out = seed_folder(tmp_path / "out")
    ckpt = world["d"] / f"{kind}.pt"
    argv = [a.format(ckpt=ckpt, out=out, run=world["run"]) for a in argv]
    rc, _, err = cli(argv, capsys)
    # train has no --trust-checkpoint: it only ever takes plain state dicts
    assert_one_line(rc, err, f"{kind}.pt", "pickle",
                    "state dict" if argv[0] == "train" else "--trust-checkpoint")
    assert not world["marker"].exists()
    assert_intact(out)
