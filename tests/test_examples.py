"""The examples run as written, offline: every socket connection is refused while they run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: runs an example with connect() refused for every socket that is not a local (AF_UNIX) one
_OFFLINE = """
import runpy, socket, sys
_connect = socket.socket.connect
def refuse(self, address):
    if self.family != socket.AF_UNIX:
        raise OSError("network access during an example: " + repr(address))
    return _connect(self, address)
socket.socket.connect = refuse
socket.create_connection = lambda *a, **k: refuse(socket.socket(), a[0] if a else None)
path = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(path, run_name="__main__")
"""


def _run(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")]), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-c", _OFFLINE, str(ROOT / "examples" / script),
                           *args], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=ROOT)


def test_walkthrough_hooks_dissect_gallery_compare(tmp_path):
    proc = _run("walkthrough.py", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "encoder.block4: (4, 128, 8, 8)" in out               # hooks
    assert out.count("DissectionResult(") == 1 and out.count("Run(") == 1
    assert "units changed label between the two variants" in out
    for run in ("saliency", "scene"):
        for name in ("units.csv", "summary.json", "scores.npz", "top_images.npz"):
            assert (tmp_path / run / name).is_file(), (run, name)
    gallery = json.loads((tmp_path / "saliency" / "gallery" / "gallery.json").read_text())
    assert 1 <= len(gallery["units"]) <= 3
    assert (tmp_path / "saliency" / "gallery" / "index.html").is_file()


def test_network_is_refused_while_an_example_runs(tmp_path):
    """The guard above works: an example that connects fails."""
    script = tmp_path / "connect.py"
    script.write_text("import socket\nsocket.create_connection(('192.0.2.1', 80), 1)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _OFFLINE, str(script)], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode != 0 and "network access during an example" in proc.stderr


@pytest.mark.parametrize("script", ["hooks_in_training_loop.py"])
def test_other_examples_run(script):
    proc = _run(script)
    assert proc.returncode == 0, proc.stderr[-3000:]
