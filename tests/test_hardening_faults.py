"""Hardening, part 2: faults while running (full disk, interrupted download, SIGINT/SIGKILL and
resume, two runs in one folder) and the security of untrusted inputs (archives escaping the
target folder, HTML in label names, writes outside the output and cache folders).
"""
from __future__ import annotations

import csv
import errno
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from neuroprobe.cli import main

from test_hardening import SENTINEL, assert_intact, assert_one_line, cli, debris, seed_folder

REPO = Path(__file__).resolve().parents[1]
DISSECT = ["dissect", "--limit", "6", "--batch-size", "1", "--workers", "0"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """An uninterrupted dissection of the demo model (the reference of the resume tests)."""
    out = tmp_path_factory.mktemp("baseline") / "run"
    assert main(["--quiet", *DISSECT, "--out", str(out)]) == 0
    return out


def _results(run: Path) -> dict:
    return {name: (run / name).read_bytes() for name in ("units.csv", "region_nss.csv")}


# -- disk full / unwritable ------------------------------------------------------------------

@pytest.mark.parametrize("where", ["replace", "fsync"])
def test_disk_full_keeps_the_earlier_run(baseline, tmp_path, capsys, monkeypatch, where):
    run = tmp_path / "run"
    shutil.copytree(baseline, run)
    (run / "earlier.txt").write_bytes(SENTINEL)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, where, full)
    rc, _, err = cli([*DISSECT, "--no-resume", "--out", run], capsys)
    monkeypatch.undo()
    assert_one_line(rc, err, "no space left", "free disk space")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert_intact(run)


def test_disk_full_in_other_writers(tmp_path, capsys, monkeypatch):
    for argv in (["popout", "--models", "centre", "--n", "2", "--size", "64"],
                 ["saliency", "eval", "--data", "csv:{csv}", "--images", "{img}",
                  "--models", "centre"]):
        out = seed_folder(tmp_path / argv[0])
        img = tmp_path / "img"
        img.mkdir(exist_ok=True)
        import numpy as np
        from PIL import Image

        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img / "a.png")
        (tmp_path / "f.csv").write_text("image,x,y,observer\na.png,3,4,0\na.png,10,9,1\n")
        argv = [a.format(csv=tmp_path / "f.csv", img=img) for a in argv]

        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "replace", full)
        rc, _, err = cli([*argv, "--out", out], capsys)
        monkeypatch.undo()
        assert_one_line(rc, err, "no space left")
        assert_intact(out)


def test_read_only_output_folder(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    out = seed_folder(tmp_path / "ro")
    out.chmod(0o500)
    try:
        rc, _, err = cli(["popout", "--models", "centre", "--n", "2", "--size", "64",
                          "--out", out], capsys)
    finally:
        out.chmod(0o700)
    assert_one_line(rc, err, "permission")
    assert_intact(out)


# -- downloads -------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        data = self.server.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.server.cut:   # the connection drops after a few bytes, every time
            self.wfile.write(data[:10])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass


@pytest.fixture()
def server():
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.files, srv.cut = {}, False
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def _zip(entries) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar_symlink() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("broden1_224/evil")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize("entries", [
    {"broden1_224/index.csv": b"x", "broden1_224/../../escaped.txt": b"x"},
    {"broden1_224/index.csv": b"x", "/tmp/neuroprobe-absolute-escape.txt": b"x"},
], ids=["dotdot", "absolute"])
def test_download_refuses_escaping_archives(server, tmp_path, capsys, entries):
    server.files["data/broden1_224.zip"] = _zip(entries)
    out = seed_folder(tmp_path / "data")
    rc, _, err = cli(["download", "broden", "--out", out, "--mirror", server.url], capsys)
    assert_one_line(rc, err, "refused")
    assert not (tmp_path / "escaped.txt").exists() and not (out / "broden1_224").exists()
    assert not Path("/tmp/neuroprobe-absolute-escape.txt").exists()
    assert_intact(out)


def test_extract_refuses_symlinks_leaving_the_folder(tmp_path):
    from neuroprobe.download import extract
    from neuroprobe.errors import DownloadError

    (tmp_path / "a.tar.gz").write_bytes(_tar_symlink())
    with pytest.raises(DownloadError, match="refused|link"):
        extract(tmp_path / "a.tar.gz", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_interrupted_download_is_one_line_and_resumable(server, tmp_path, capsys, monkeypatch):
    import neuroprobe.download as dl

    monkeypatch.setattr(dl.time, "sleep", lambda s: None)   # no back-off waits in the test
    server.files["data/broden1_224.zip"] = _zip({"broden1_224/index.csv": b"image\n" * 200})
    server.cut = True
    out = seed_folder(tmp_path / "data")
    rc, _, err = cli(["download", "broden", "--out", out, "--mirror", server.url,
                      "--timeout", "5"], capsys)
    assert_one_line(rc, err, "broden1_224.zip")
    assert not (out / "broden1_224").exists()
    assert (out / "earlier.txt").read_bytes() == SENTINEL
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    server.cut = False   # the rerun resumes and finishes
    rc, _, err = cli(["download", "broden", "--out", out, "--mirror", server.url], capsys)
    assert rc == 0, err
    assert (out / "broden1_224" / "index.csv").read_bytes() == b"image\n" * 200
    assert_intact(out)


# -- HTML / JS in data is inert in the report ------------------------------------------------

def test_html_in_labels_and_paths_is_inert(baseline, tmp_path, capsys):
    run = tmp_path / "<img src=x onerror=alert(1)>"
    shutil.copytree(baseline, run)
    with open(run / "units.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    payloads = ["<script>alert(1)</script>", "</script><script>alert(2)</script>",
                "<img src=x onerror=alert(3)>", "\"'><svg onload=alert(4)>"]
    for i, r in enumerate(rows):
        r["label"] = payloads[i % len(payloads)]
    with open(run / "units.csv", "w", newline="", encoding="utf-8") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    out = tmp_path / "gallery"
    rc, _, err = cli(["gallery", run, "--max-units", "4", "--top-k", "2", "--steps", "0",
                      "--attribution", "none", "--tile", "32", "--out", out], capsys)
    assert rc == 0, err
    page = (out / "index.html").read_text(encoding="utf-8")
    from html.parser import HTMLParser

    class Audit(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.handlers, self.script, self.in_script = [], [], [], False

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.handlers += [(tag, k, v) for k, v in attrs if k.startswith("on")]
            self.in_script = tag == "script"

        def handle_endtag(self, tag):
            self.in_script = False

        def handle_data(self, data):
            if self.in_script:
                self.script.append(data)

    audit = Audit()
    audit.feed(page)
    assert "svg" not in audit.tags and audit.tags.count("img") == page.count("<img ")
    assert not [h for h in audit.handlers if "alert" in (h[2] or "")], audit.handlers
    assert "alert" not in "".join(audit.script)
    for bad in ("<script>alert", "<img src=x", "<svg onload", "\"'><svg"):
        assert bad not in page, bad
    assert "&lt;script&gt;alert(1)" in page


# -- nothing written outside the output and cache folders -----------------------------------

def test_no_writes_outside_out_and_cache(tmp_path, capsys, monkeypatch):
    import tempfile

    # importing torchvision.ops (it imports torch._inductor) creates $TMPDIR/torchinductor_<user>
    # once per process: torch's side effect, not a neuroprobe write; done here before TMPDIR is
    # redirected so that the test does not depend on whether an earlier test imported it
    import torchvision.ops  # noqa: F401

    home, cwd, tmp = tmp_path / "home", tmp_path / "cwd", tmp_path / "tmp"
    for p in (home, cwd, tmp):
        p.mkdir()
    cache = home / ".cache"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("NEUROPROBE_CACHE", str(cache / "neuroprobe"))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.chdir(cwd)
    watched = [REPO / "neuroprobe", REPO / "concepts", REPO / "probes"]
    snap = {p: p.stat().st_mtime_ns for w in watched for p in w.rglob("*") if p.is_file()}
    outs = tmp_path / "outs"
    cmds = [
        ["layers", "--model", "demo", "--depth", "1"],
        ["concepts", "list"],
        ["concepts", "info", "synthetic", "--limit", "4"],
        ["concepts", "show", "synthetic", "--n", "2", "--out", outs / "sheet" / "s.png"],
        ["concepts", "export", "synthetic", "--n", "2", "--out", outs / "export"],
        ["dissect", "--limit", "2", "--batch-size", "2", "--out", outs / "dissect"],
        ["visualize", "--model", "demo", "--units", "block4:0", "--steps", "2", "--size", "32",
         "--out", outs / "vis"],
        ["popout", "--models", "centre", "--n", "2", "--size", "64", "--out", outs / "popout"],
    ]
    for argv in cmds:
        rc, _, err = cli(argv, capsys)
        assert rc == 0, (argv, err)
    assert list(cwd.iterdir()) == [] and list(tmp.iterdir()) == []
    stray = [p for p in home.rglob("*") if p.is_file() and cache not in p.parents]
    assert stray == []
    assert {p: p.stat().st_mtime_ns for p in snap if p.exists()} == snap
    for w in watched:   # no new files in the package or its shipped folders
        assert all(p in snap for p in w.rglob("*") if p.is_file() and "__pycache__" not in
                   p.parts)
    for sub in outs.iterdir():
        assert debris(sub) == []


# -- SIGINT / SIGKILL and resume; two runs in one folder -----------------------------------

_SLOW_DISSECT = """
import functools, sys, time
from neuroprobe import dissect as D
# the command's library call, with a per-batch callback that slows pass 2 down
D.dissect = functools.partial(
    D.dissect, after_batch=lambda phase, j: time.sleep(0.5) if phase == "tally" else None)
from neuroprobe.cli import main
sys.exit(main(sys.argv[1:]))
"""

_SLOW_TRAIN = """
import sys, time
from neuroprobe.train import recipe as R
_loss = R.compute_loss
def slow(*a, **k):
    time.sleep(0.4)
    return _loss(*a, **k)
R.compute_loss = slow
from neuroprobe.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _start(script, argv):
    env = {**os.environ, "NEUROPROBE_QUIET": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", script, "--quiet", *map(str, argv)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc, timeout=90.0):
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_dissect_interrupted_then_resumed_equals_uninterrupted(baseline, tmp_path, capsys, sig):
    out = tmp_path / "run"
    proc = _start(_SLOW_DISSECT, [*DISSECT, "--out", out])
    _wait_for(out / ".state" / "state.pt", proc)   # pass 1 finished and checkpointed
    if sig == signal.SIGKILL:   # meanwhile a second run into the same folder is refused
        rc, _, err = cli([*DISSECT, "--out", out], capsys)
        assert_one_line(rc, err, "in use", "another --out")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "Traceback" not in err and "interrupted" in err
    elif sig == signal.SIGTERM:   # handled like SIGINT: one line, checkpoint kept (issue 17)
        assert proc.returncode == 143 and "Traceback" not in err, err
        assert [ln for ln in err.splitlines() if ln.strip()] == [
            "neuroprobe: terminated (SIGTERM); completed work is kept and a rerun resumes where "
            "possible"], err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not (out / "units.csv").exists()
    # only the checkpoint (and, after SIGKILL, the released lock file) is left: no temp files
    assert {d for d in debris(out) if not d.startswith(".state/")} <= {".lock"}
    left = [d for d in debris(out / ".state") if Path(d).name.startswith(".")]
    if sig == signal.SIGKILL:
        # nothing runs after SIGKILL: a kill that lands inside an atomic write (since issue 15
        # pass 2 writes the per-image counts of every batch) leaves that write's temporary
        # file, never a partial result file; the resumed run ignores it (equal results below)
        assert all(Path(d).parts[0] in ("images", "spool") or "state.pt" in d for d in left), left
    else:   # a handled signal finishes or abandons its write cleanly
        assert not left, left
    rc, _, err = cli([*DISSECT, "--out", out], capsys)   # resume
    assert rc == 0, err
    assert _results(out) == _results(baseline)
    assert all(d.startswith(".state/") for d in debris(out)), debris(out)
    assert not (out / ".lock").exists()


def test_second_run_of_another_configuration_is_refused(baseline, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(baseline, run)
    before = _results(run)
    rc, _, err = cli(["dissect", "--limit", "3", "--batch-size", "1", "--out", run], capsys)
    assert_one_line(rc, err, "another configuration", "--overwrite")
    assert _results(run) == before


TRAIN = ["train", "saliency", "--encoder", "small", "--weights", "none", "--epochs", "3",
         "--limit", "8", "--val", "2", "--input-size", "32", "--batch-size", "4", "--seed", "1"]


def _weights(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def train_baseline(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "m.pt"
    assert main(["--quiet", *TRAIN, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_training_interrupted_then_resumed_equals_uninterrupted(train_baseline, tmp_path, capsys,
                                                                 sig):
    import torch

    out = tmp_path / "m.pt"
    proc = _start(_SLOW_TRAIN, [*TRAIN, "--out", out])
    _wait_for(Path(str(out) + ".resume.pt"), proc)   # one epoch finished
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}.get(sig, -signal.SIGKILL), err
    assert "Traceback" not in err
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    torch.load(out, map_location="cpu", weights_only=True)   # the last epoch's file is whole
    rc, _, err = cli([*TRAIN, "--out", out, "--resume"], capsys)
    assert rc == 0, err
    a, b = _weights(out), _weights(train_baseline)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_results_get_the_umask_mode_not_0600(tmp_path):
    from neuroprobe.io import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "r.json", {"a": 1})
        (tmp_path / "plain").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "r.json").stat().st_mode == (tmp_path / "plain").stat().st_mode
