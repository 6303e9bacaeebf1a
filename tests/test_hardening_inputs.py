"""Hardening, round two (project issue 17): the inputs and faults that still crashed, one test
each, and the classes behind them (one guarded image reader, one CSV reader, numeric options
checked where they are parsed, output paths, full disks on a real tmpfs, TorchScript as code,
archive layouts, data-set files confined to their image folder, SIGTERM).

The helpers and the one-line contract come from ``test_hardening.py``.
"""
from __future__ import annotations

import errno
import io
import os
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neuroprobe.cli import main
from neuroprobe.errors import DataFormatError

from test_hardening import assert_intact, assert_one_line, cli, debris, seed_folder
from test_hardening_faults import server  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]


def cli_any(argv, capsys):
    """Like ``cli`` but also for argparse refusals (SystemExit)."""
    try:
        rc = main(["--quiet", *[str(a) for a in argv]])
    except SystemExit as exc:
        rc = exc.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` (8-bit grey) with one tiny data chunk: the
    shape of a decompression bomb, in 70 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def rgb_png(path: Path, h=32, w=32, seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
                    ).save(path)
    return path


# -- the guarded image reader ------------------------------------------------------------------

def test_reader_refuses_a_decompression_bomb_and_names_the_limit(tmp_path, monkeypatch):
    from neuroprobe.imageio import DEFAULT_MAX_PIXELS, image_size, read_image

    bomb = png_header(tmp_path / "bomb.png", 20000, 20000)
    for fn in (read_image, image_size):
        with pytest.raises(DataFormatError) as exc:
            fn(bomb)
        line = exc.value.one_line()
        assert "bomb.png" in line and str(DEFAULT_MAX_PIXELS) in line
        assert "NEUROPROBE_MAX_PIXELS=400000000" in line
    # the limit is the environment variable's: a 100x100 image is refused under 5000 pixels
    small = rgb_png(tmp_path / "small.png", 100, 100)
    monkeypatch.setenv("NEUROPROBE_MAX_PIXELS", "5000")
    with pytest.raises(DataFormatError, match="10000 pixels, more than the limit of 5000"):
        read_image(small)
    monkeypatch.setenv("NEUROPROBE_MAX_PIXELS", "10000")
    assert read_image(small).shape == (100, 100, 3)
    monkeypatch.setenv("NEUROPROBE_MAX_PIXELS", "-1")
    with pytest.raises(DataFormatError, match="NEUROPROBE_MAX_PIXELS"):
        read_image(small)


def test_reader_scales_16_bit_and_keeps_palettes(tmp_path):
    from neuroprobe.imageio import read_image

    ramp = (np.arange(256 * 4, dtype=np.uint32).reshape(4, 256) * 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = read_image(tmp_path / "g16.png")
    assert out.dtype == np.uint8 and out.shape == (4, 256, 3)
    np.testing.assert_array_equal(out[..., 0], np.rint(ramp / 257.0).astype(np.uint8))
    assert out.mean() < 200   # not the clipped, nearly white image
    # palette image: the palette's colours, not the indices
    pal = Image.new("P", (4, 2))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putdata([0, 1, 0, 1, 1, 0, 1, 0])
    pal.save(tmp_path / "pal.png")
    out = read_image(tmp_path / "pal.png")
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[0, 1]) == (0, 0, 255)
    # float image in [0, 1]
    Image.fromarray(np.full((3, 3), 0.5, np.float32), "F").save(tmp_path / "f.tif")
    assert read_image(tmp_path / "f.tif")[0, 0, 0] == 128


def test_reader_applies_exif_orientation(tmp_path):
    from neuroprobe.imageio import image_size, read_image

    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = 255   # left half white
    exif = Image.Exif()
    exif[0x0112] = 6   # rotate 90 degrees clockwise to view
    Image.fromarray(a).save(tmp_path / "rot.jpg", exif=exif, quality=100)
    out = read_image(tmp_path / "rot.jpg")
    assert out.shape == (40, 20, 3) and image_size(tmp_path / "rot.jpg") == (40, 20)
    assert out[:15].mean() > 200 and out[-15:].mean() < 50   # the white half is now on top


@pytest.mark.parametrize("content", [b"", b"not an image at all", None], ids=["empty", "text",
                                                                               "truncated"])
def test_reader_one_error_for_every_decode_failure(tmp_path, content):
    from neuroprobe.imageio import read_image

    p = tmp_path / "x.png"
    if content is None:
        rgb_png(p)
        content = p.read_bytes()[:80]
    p.write_bytes(content)
    with pytest.raises(DataFormatError, match="x.png cannot be decoded"):
        read_image(p)


# -- decompression bombs through the commands --------------------------------------------------

def _mask_folder(root: Path, bomb_stem: str | None) -> Path:
    (root / "SegmentationClass").mkdir(parents=True)
    for stem in ("a", "b", "c"):
        rgb_png(root / "JPEGImages" / f"{stem}.png", 40, 40)
        m = np.zeros((40, 40), np.uint8)
        m[5:20, 5:20] = 27
        Image.fromarray(m, "L").save(root / "SegmentationClass" / f"{stem}.png")
    if bomb_stem:
        png_header(root / "JPEGImages" / f"{bomb_stem}.png", 20000, 20000)
    (root / "masks.toml").write_text('source = "mask-folder"\nimage_size = 64\n')
    return root


def test_bomb_in_visualize_image(tmp_path, capsys):
    bomb = png_header(tmp_path / "bomb.png", 20000, 20000)
    out = seed_folder(tmp_path / "out")
    rc, _, err = cli(["visualize", "--model", "demo", "--units", "block4:0", "--steps", "1",
                      "--image", bomb, "--out", out], capsys)
    assert_one_line(rc, err, "bomb.png", "NEUROPROBE_MAX_PIXELS")
    assert_intact(out)


def test_bomb_in_a_dissected_mask_folder_stops_or_is_skipped(tmp_path, capsys):
    root = _mask_folder(tmp_path / "masks", "b")
    argv = ["dissect", "--concepts", root / "masks.toml", "--root", root, "--limit", "3",
            "--batch-size", "1", "--workers", "0"]
    out = seed_folder(tmp_path / "out")
    rc, _, err = cli([*argv, "--out", out], capsys)
    assert_one_line(rc, err, "b.png", "NEUROPROBE_MAX_PIXELS", "--on-bad-image skip")
    assert not (out / "units.csv").exists()
    rc, so, err = cli([*argv, "--on-bad-image", "skip", "--out", out], capsys)
    assert rc == 0, err
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_skipped"] == 1 and summary["skipped"][0]["id"].startswith("b")
    assert "pixels" in summary["skipped"][0]["error"]


def test_bomb_in_a_csv_data_set(tmp_path, capsys):
    img = tmp_path / "img"
    png_header(img / "a.png", 20000, 20000)
    (tmp_path / "f.csv").write_text("image,x,y,observer\na.png,3,4,0\n")
    out = seed_folder(tmp_path / "out")
    rc, _, err = cli(["saliency", "eval", "--data", f"csv:{tmp_path / 'f.csv'}", "--images",
                      img, "--models", "centre", "--out", out], capsys)
    assert_one_line(rc, err, "a.png", "NEUROPROBE_MAX_PIXELS")
    assert_intact(out)


# -- a really full disk (a 2 MB tmpfs) ---------------------------------------------------------

@pytest.fixture()
def tiny_disk(tmp_path):
    """A 2 MB tmpfs, mounted for the test and unmounted afterwards (skipped where mounting is
    not allowed, e.g. without root)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    try:
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"cannot mount a tmpfs here ({err})")
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip() or res.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def test_save_torch_on_a_full_disk_is_enospc_and_keeps_the_old_file(tiny_disk):
    import torch

    from neuroprobe.io import save_torch

    target = tiny_disk / "state.pt"
    save_torch({"small": torch.zeros(4)}, target)
    before = target.read_bytes()
    with pytest.raises(OSError) as exc:
        save_torch({"big": torch.zeros(1_000_000)}, target)   # 4 MB on a 2 MB disk
    assert exc.value.errno == errno.ENOSPC and str(target) in str(exc.value)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["state.pt"]


def test_dissect_onto_a_full_disk_is_one_line(tiny_disk, capsys):
    out = tiny_disk / "run"
    rc, _, err = cli(["dissect", "--limit", "6", "--batch-size", "2", "--workers", "0",
                      "--out", out], capsys)
    assert_one_line(rc, err, "no space left", "free disk space")
    assert not (out / "units.csv").exists()
    # nothing half-written: only the resumable checkpoint folder and no temporary files
    assert [d for d in debris(out) if not d.startswith(".state/")] == []
    assert not [d for d in debris(out / ".state") if Path(d).name.startswith(".")]


def test_training_onto_a_full_disk_is_one_line(tiny_disk, capsys):
    out = tiny_disk / "m.pt"
    rc, _, err = cli(["train", "saliency", "--encoder", "resnet18", "--weights", "none",
                      "--epochs", "1", "--limit", "2", "--val", "1", "--batch-size", "2",
                      "--input-size", "32", "--out", out], capsys)
    assert_one_line(rc, err, "no space left")
    assert not out.exists()
    assert [p.name for p in tiny_disk.iterdir() if p.name.startswith(".")] == []


def test_torch_write_failure_reaching_the_cli_is_one_line(tmp_path, capsys, monkeypatch):
    """A writer that does not go through save_torch: the CLI still maps torch's error."""
    import neuroprobe.commands.layers as L

    def failing(args):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(L, "_run", failing)   # register() binds the command when main() runs
    rc, _, err = cli(["layers", "--model", "demo"], capsys)
    assert_one_line(rc, err, "no space left")


# -- output paths that exist as files ----------------------------------------------------------

OUT_FILE_CASES = [
    ("popout", ["popout", "--models", "centre", "--n", "1", "--size", "64", "--out", "{f}"]),
    ("download", ["download", "broden", "--out", "{f}"]),
    ("dissect", ["dissect", "--limit", "2", "--out", "{f}"]),
    ("visualize", ["visualize", "--model", "demo", "--units", "block4:0", "--steps", "1",
                   "--out", "{f}"]),
    ("saliency-eval", ["saliency", "eval", "--data", "csv:{d}/f.csv", "--images", "{d}",
                       "--models", "centre", "--out", "{f}"]),
    ("concepts-export", ["concepts", "export", "synthetic", "--n", "2", "--out", "{f}"]),
    ("concepts-show", ["concepts", "show", "synthetic", "--n", "2", "--out", "{f}/sheet.png"]),
    ("probe", ["probe", "popout", "--out", "{f}"]),
    ("train", ["train", "saliency", "--encoder", "small", "--epochs", "1",
               "--out", "{f}/m.pt"]),
]


@pytest.mark.parametrize("argv", [c[1] for c in OUT_FILE_CASES], ids=[c[0] for c in OUT_FILE_CASES])
def test_out_that_is_a_file_is_refused(tmp_path, capsys, argv):
    f = tmp_path / "taken"
    f.write_bytes(b"a file the user keeps\n")
    rgb_png(tmp_path / "a.png")
    (tmp_path / "f.csv").write_text("image,x,y,observer\na.png,3,4,0\n")
    rc, _, err = cli([a.format(f=f, d=tmp_path) for a in argv], capsys)
    assert_one_line(rc, err, str(f), "is a file")
    assert f.read_bytes() == b"a file the user keeps\n"


# -- numeric options are checked where they are parsed -----------------------------------------

BAD_NUMBERS = [
    (["dissect", "--workers", "-3"], "--workers"),
    (["dissect", "--batch-size", "0"], "--batch-size"),
    (["dissect", "--limit", "-1"], "--limit"),
    (["dissect", "--quantile", "1.5"], "--quantile"),
    (["dissect", "--quantile", "0"], "--quantile"),
    (["dissect", "--iou-threshold", "nan"], "--iou-threshold"),
    (["dissect", "--nss-threshold", "inf"], "--nss-threshold"),
    (["dissect", "--image-size", "-4"], "--image-size"),
    (["download", "broden", "--timeout", "0"], "--timeout"),
    (["download", "broden", "--timeout", "-1"], "--timeout"),
    (["download", "broden", "--timeout", "nan"], "--timeout"),
    (["layers", "--model", "demo", "--input-size", "-4", "-4"], "--input-size"),
    (["layers", "--model", "demo", "--depth", "-1"], "--depth"),
    (["train", "saliency", "--lr", "0"], "--lr"),
    (["train", "saliency", "--lr-decay", "2"], "--lr-decay"),
    (["train", "saliency", "--epochs", "0"], "--epochs"),
    (["train", "saliency", "--input-size", "0"], "--input-size"),
    (["visualize", "--model", "demo", "--units", "block4:0", "--out", "x", "--steps", "-1"],
     "--steps"),
    (["visualize", "--model", "demo", "--units", "block4:0", "--out", "x", "--lr", "-0.1"],
     "--lr"),
    (["gallery", "run", "--top-k", "0"], "--top-k"),
    (["gallery", "run", "--tile", "abc"], "--tile"),
    (["popout", "--out", "x", "--n", "0"], "--n"),
    (["saliency", "eval", "--data", "osie", "--out", "x", "--n", "0"], "--n"),
    (["concepts", "export", "synthetic", "--out", "x", "--n", "0"], "--n"),
    (["concepts", "export", "synthetic", "--out", "x", "--workers", "-2"], "--workers"),
    (["compare", "a", "b", "--bootstrap", "-5"], "--bootstrap"),
    (["probe", "popout", "--out", "x", "--limit", "0"], "--limit"),
]


@pytest.mark.parametrize("argv,option", BAD_NUMBERS, ids=[" ".join(a[0][-2:]) for a in BAD_NUMBERS])
def test_bad_numbers_are_refused_while_parsing(tmp_path, capsys, monkeypatch, argv, option):
    monkeypatch.chdir(tmp_path)   # nothing may be written: the refusal comes before any work
    rc, out, err = cli_any(argv, capsys)
    assert_one_line(rc, err, f"argument {option}", "--help")
    assert rc == 2 and list(tmp_path.iterdir()) == []


def test_bad_number_end_to_end_exit_status():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-m", "neuroprobe", "dissect", "--workers", "-3"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("neuroprobe: error: dissect: argument --workers")


def test_the_option_types():
    import argparse

    from neuroprobe.commands import _common as C

    assert C.positive_int("3") == 3 and C.nonnegative_int("0") == 0
    assert C.probability("0") == 0 and C.probability("1") == 1
    assert C.open_probability("1") == 1 and C.timeout_seconds("0.5") == 0.5
    assert C.finite_float("-2.5") == -2.5
    for fn, text in ((C.positive_int, "0"), (C.positive_int, "1.5"), (C.nonnegative_int, "-1"),
                     (C.probability, "1.01"), (C.probability, "nan"), (C.open_probability, "0"),
                     (C.timeout_seconds, "0"), (C.timeout_seconds, "inf"),
                     (C.positive_float, "-1e-9"), (C.finite_float, "-inf")):
        with pytest.raises(argparse.ArgumentTypeError):
            fn(text)


# -- fixation CSV data sets ----------------------------------------------------------------------

@pytest.fixture()
def csv_world(tmp_path):
    img = tmp_path / "img"
    rgb_png(img / "a.png", 32, 32, 0)
    rgb_png(img / "b.png", 32, 32, 1)
    (img / "trunc.png").write_bytes((img / "a.png").read_bytes()[:70])
    rgb_png(tmp_path / "outside.png")
    (img / "link.png").symlink_to(tmp_path / "outside.png")
    return tmp_path, img


def _eval(capsys, csv_path, img, out, *extra):
    return cli(["saliency", "eval", "--data", f"csv:{csv_path}", "--images", img, "--models",
                "centre,itti", "--protocols", "mit", "--metrics", "nss,cc", *extra,
                "--out", out], capsys)


@pytest.mark.parametrize("case,rows,words", [
    ("truncated", "trunc.png,3,4,0", ["trunc.png", "cannot be decoded"]),
    ("system-file", "/etc/passwd,3,4,0", ["/etc/passwd", "outside the folder"]),
    ("dotdot", "../outside.png,3,4,0", ["outside.png", "outside the folder"]),
    ("link-out", "link.png,3,4,0", ["link.png", "outside the folder"]),
    ("missing", "nothere.png,3,4,0", ["nothere.png", "does not exist", "--images"]),
    ("all-nan", "a.png,nan,nan,0\nb.png,nan,4,1", ["no image has a fixation"]),
    ("all-outside", "a.png,-50,4,0\nb.png,3,400,1", ["no image has a fixation"]),
], ids=["truncated", "system-file", "dotdot", "link-out", "missing", "all-nan", "all-outside"])
def test_csv_data_set_bad_rows(csv_world, tmp_path, capsys, case, rows, words):
    d, img = csv_world
    (d / "f.csv").write_text("image,x,y,observer\n" + rows + "\n")
    out = seed_folder(d / "out")
    rc, _, err = _eval(capsys, d / "f.csv", img, out)
    assert_one_line(rc, err, *words)
    assert_intact(out)


def test_csv_data_set_latin1_is_one_line(csv_world, capsys):
    d, img = csv_world
    (d / "f.csv").write_bytes("image,x,y,observer\na.png,3,4,0\n# café\n".encode("latin-1"))
    out = seed_folder(d / "out")
    rc, _, err = _eval(capsys, d / "f.csv", img, out)
    assert_one_line(rc, err, "f.csv", "not UTF-8", "line 3")


def test_csv_data_set_with_a_bom_equals_without(csv_world, capsys):
    d, img = csv_world
    body = "image,x,y,observer\na.png,3,4,0\na.png,10,9,1\nb.png,20,20,0\n"
    (d / "plain.csv").write_text(body)
    (d / "bom.csv").write_bytes(b"\xef\xbb\xbf" + body.encode())
    results = []
    for name in ("plain", "bom"):
        rc, _, err = _eval(capsys, d / f"{name}.csv", img, d / name)
        assert rc == 0, err
        results.append((d / name / "per_image.csv").read_text())
    assert results[0] == results[1]


def test_some_images_without_fixations_warn_and_still_score(csv_world, capsys):
    d, img = csv_world
    (d / "f.csv").write_text("image,x,y,observer\na.png,3,4,0\na.png,5,5,1\nb.png,nan,nan,0\n")
    rc, _, err = _eval(capsys, d / "f.csv", img, d / "out")
    assert rc == 0
    warn = [ln for ln in err.splitlines() if ln.startswith("neuroprobe: warning:")]
    assert len(warn) == 1 and "1 of 2 images" in warn[0] and "b.png" in warn[0], err


def test_size_unknown_without_images_names_the_cli_fix(tmp_path, capsys):
    (tmp_path / "f.csv").write_text("image,x,y,observer\na.png,3,4,0\n")
    rc, _, err = cli(["saliency", "eval", "--data", f"csv:{tmp_path / 'f.csv'}", "--models",
                      "centre", "--out", tmp_path / "out"], capsys)
    assert_one_line(rc, err, "a.png", "--images", "width,height")
    assert "shape=" not in err


# -- the one CSV reader: BOM in Broden files --------------------------------------------------

def test_broden_csvs_with_a_bom(tmp_path):
    from test_broden import make_broden

    from neuroprobe.concepts.broden import BrodenDataset

    root = tmp_path / "broden1_224"
    make_broden(root, n=4)
    plain = BrodenDataset(root)
    for name in ("index.csv", "category.csv", "label.csv"):
        (root / name).write_bytes(b"\xef\xbb\xbf" + (root / name).read_bytes())
    bom = BrodenDataset(root)
    assert len(bom) == len(plain) and bom.categories == plain.categories
    assert [lab.name for lab in bom.labels] == [lab.name for lab in plain.labels]


def test_csv_reader_names_the_line_of_an_encoding_error(tmp_path):
    from neuroprobe.io import read_csv

    (tmp_path / "x.csv").write_bytes(b"a,b\n1,2\n3,\xe9\n")
    with pytest.raises(DataFormatError, match=r"line 3: byte 0xe9"):
        read_csv(tmp_path / "x.csv", ("a", "b"))
    (tmp_path / "y.csv").write_bytes(b"\xef\xbb\xbf a ,b\n1,2\n")
    header, rows = read_csv(tmp_path / "y.csv", ("a", "b"))
    assert header == ["a", "b"] and rows == [{"a": "1", "b": "2"}]


# -- checkpoints: TorchScript is code; fields checked ------------------------------------------

_SCRIPT_WITH_SETSTATE = """
import sys, torch
class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3)
    def forward(self, x):
        return self.conv(x)
    @torch.jit.export
    def __getstate__(self):
        return (self.conv.weight, self.training)
    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]):
        print("CODE RAN AT LOAD")
        self.training = state[1]
torch.jit.script(M()).save(sys.argv[1])
"""


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    d = tmp_path_factory.mktemp("script")
    import torch
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())).save(
            str(d / "plain.pt"))
    (d / "make.py").write_text(_SCRIPT_WITH_SETSTATE)   # TorchScript reads the class's source
    res = subprocess.run([sys.executable, str(d / "make.py"), str(d / "setstate.pt")],
                         capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        pytest.skip(f"this torch cannot script a module with __setstate__: {res.stderr[-200:]}")
    return d


def _run(argv):
    env = {**os.environ, "PYTHONPATH": str(REPO), "NEUROPROBE_QUIET": "1"}
    return subprocess.run([sys.executable, "-m", "neuroprobe", *map(str, argv)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_torchscript_is_refused_without_trust_and_runs_no_code(scripted):
    res = _run(["layers", "--model", scripted / "setstate.pt"])
    assert res.returncode == 2 and "CODE RAN" not in res.stdout + res.stderr
    assert_one_line(res.returncode, res.stderr, "TorchScript", "--trust-checkpoint")


@pytest.mark.parametrize("argv", [["layers"], ["dissect", "--layers", "0", "--limit", "2",
                                               "--out", "{d}/run"]], ids=["layers", "dissect"])
def test_trusted_torchscript_that_takes_no_hooks_is_one_line(scripted, argv):
    argv = [a.format(d=scripted) for a in argv]
    res = _run([*argv, "--model", scripted / "plain.pt", "--trust-checkpoint"])
    assert_one_line(res.returncode, res.stderr, "TorchScript", "hooks", "--arch")


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    import torch

    from neuroprobe.models import zoo

    d = tmp_path_factory.mktemp("damaged")
    p = torch.load(zoo.builtin_path("demo"), map_location="cpu", weights_only=True)
    torch.save({**p, "arch": "saliency:small"}, d / "arch_str.pt")
    torch.save({**p, "metadata": "a string"}, d / "meta_str.pt")
    torch.save({**p, "metadata": {**p["metadata"], "input_size": [-4, 128]}}, d / "neg_size.pt")
    return d


@pytest.mark.parametrize("name,words", [("arch_str", ["'arch'"]), ("meta_str", ["'metadata'"]),
                                        ("neg_size", ["input_size"])])
def test_damaged_neuroprobe_checkpoints(damaged, capsys, name, words):
    rc, _, err = cli(["layers", "--model", damaged / f"{name}.pt"], capsys)
    assert_one_line(rc, err, f"{name}.pt", "damaged", *words)


# -- concept sets: label ids -----------------------------------------------------------------

@pytest.mark.parametrize("value", ["-5", "1000000000000", "256"])
def test_mask_folder_label_ids_out_of_range(tmp_path, capsys, value):
    root = _mask_folder(tmp_path / "masks", None)
    (root / "bad.toml").write_text(f'source = "mask-folder"\nimage_size = 64\n[labels]\n'
                                   f'{value} = "thing"\n')
    rc, _, err = cli(["dissect", "--concepts", root / "bad.toml", "--root", root, "--limit", "2",
                      "--out", tmp_path / "out"], capsys)
    assert_one_line(rc, err, "bad.toml", value, "1..255")
    assert "out of memory" not in err


# -- archives ----------------------------------------------------------------------------------

def _tar(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, payload
                tf.addfile(info)
            else:
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def _zip(entries) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


GOOD = _zip({"broden1_224/index.csv": b"image\n"})


@pytest.mark.parametrize("name,payload,words", [
    ("internal-link-up", _tar([("broden1_224", "dir", None),
                               ("broden1_224/index.csv", "file", b"image\n"),
                               ("broden1_224/up", "sym", "..")]), ["link", "up"]),
    ("internal-link-self", _tar([("broden1_224", "dir", None),
                                 ("broden1_224/index.csv", "file", b"image\n"),
                                 ("broden1_224/sub/loop", "sym", "..")]), ["link", "loop"]),
    ("no-top-folder", _zip({"other/index.csv": b"image\n"}), ["broden1_224/", "other/"]),
    ("top-folder-without-files", _zip({"broden1_224/readme.txt": b"hi\n"}), ["index.csv"]),
    ("html-page", b"<!DOCTYPE html><html><body>Moved</body></html>\n" * 20, ["web page"]),
])
def test_archive_that_fails_a_check_is_removed_and_refetched(server, tmp_path,  # noqa: F811
                                                             capsys, name, payload, words):
    server.files["data/broden1_224.zip"] = payload
    out = seed_folder(tmp_path / "data")
    rc, _, err = cli(["download", "broden", "--out", out, "--mirror", server.url], capsys)
    assert_one_line(rc, err, *words, "rerun")
    assert_intact(out)
    assert sorted(p.name for p in out.iterdir()) == ["earlier.txt"], list(out.iterdir())
    # the server now has the right file: the next run fetches it (nothing stale was kept)
    server.files["data/broden1_224.zip"] = GOOD
    rc, so, err = cli(["download", "broden", "--out", out, "--mirror", server.url], capsys)
    assert rc == 0, err
    assert (out / "broden1_224" / "index.csv").read_bytes() == b"image\n"
    assert not (out / "broden1_224" / "up").exists()


def test_extract_refuses_a_link_to_the_target_itself(tmp_path):
    from neuroprobe.download import extract
    from neuroprobe.errors import DownloadError

    (tmp_path / "a.tar.gz").write_bytes(_tar([("d", "dir", None), ("d/up", "sym", "..")]))
    with pytest.raises(DownloadError, match="link"):
        extract(tmp_path / "a.tar.gz", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz"]
    # a link to a file inside stays allowed
    (tmp_path / "b.tar.gz").write_bytes(_tar([("d", "dir", None), ("d/f", "file", b"x"),
                                              ("d/g", "sym", "f")]))
    out = extract(tmp_path / "b.tar.gz", tmp_path / "out")
    assert (out / "d" / "g").read_bytes() == b"x"


# -- every data-set file that names images stays inside its folder ------------------------------

def test_confined_helper(tmp_path):
    from neuroprobe.io import confined

    (tmp_path / "img").mkdir()
    assert confined(tmp_path / "img", "a/b.png", source="x.csv") == tmp_path / "img" / "a/b.png"
    for name in ("/etc/passwd", "../x.png", "a/../../x.png", "", "."):
        with pytest.raises(DataFormatError, match="x.csv"):
            confined(tmp_path / "img", name, source="x.csv")
    (tmp_path / "img" / "out").symlink_to(tmp_path)
    with pytest.raises(DataFormatError, match="outside"):
        confined(tmp_path / "img", "out/secret.png", source="x.csv")


def test_labelme_image_path_outside_its_folder(tmp_path):
    import json

    from neuroprobe.concepts.maskfolder import MaskFolderDataset

    folder = tmp_path / "lm"
    folder.mkdir()
    rgb_png(folder / "pic.png", 16, 16)
    rgb_png(tmp_path / "secret.png", 16, 16)
    doc = {"imagePath": "../secret.png", "shapes": [
        {"label": "vehicle", "points": [[0, 0], [9, 0], [9, 5]], "shape_type": "polygon"}]}
    (folder / "pic.json").write_text(json.dumps(doc))
    ds = MaskFolderDataset(folder, image_size=(16, 16))
    with pytest.raises(DataFormatError, match="outside the folder"):
        ds[0]


def test_coco_file_name_outside_the_image_folder(tmp_path):
    from neuroprobe.concepts.coco import CocoParts

    ds = CocoParts.__new__(CocoParts)   # only the path logic is under test
    ds.images = {7: {"file_name": "../../etc/passwd"}}
    ds.images_dir, ds.image_cache, ds.fetch_images = tmp_path, None, True
    with pytest.raises(DataFormatError, match="outside"):
        ds.image_path(7)


@pytest.mark.parametrize("source", ["mask-folder", "synthetic"])
@pytest.mark.parametrize("value", ["-4", '"abc"', "[1.5, 2]", "[10]", "100000"])
def test_concept_set_sizes_are_checked(tmp_path, capsys, source, value):
    root = _mask_folder(tmp_path / "masks", None)
    (tmp_path / "c.toml").write_text(f'source = "{source}"\nimage_size = {value}\n')
    rc, _, err = cli(["dissect", "--concepts", tmp_path / "c.toml", "--root", root, "--limit", "2",
                      "--out", tmp_path / "out"], capsys)
    assert_one_line(rc, err, "size")
    assert "out of memory" not in err


def test_out_path_too_long_is_one_line(tmp_path, capsys):
    out = tmp_path / ("x" * 300)
    rc, _, err = cli(["popout", "--models", "centre", "--n", "1", "--size", "64", "--out", out],
                     capsys)
    assert_one_line(rc, err, "file name too long", "shorter path")
