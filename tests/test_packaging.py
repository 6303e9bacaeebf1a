"""Packaging: the licence and metadata of the built wheel, py.typed, and plugin discovery that
reports a broken plugin instead of hiding it."""
from __future__ import annotations

import email
import logging
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from neuroprobe import plugins
from neuroprobe.concepts import _sources, open_concepts

ROOT = Path(__file__).resolve().parents[1]


def test_license_file_is_mit_with_holder_and_year():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 neuroprobe contributors" in text
    assert "THE SOFTWARE IS PROVIDED \"AS IS\"" in text


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from this checkout (no network: the installed hatchling builds it)."""
    pytest.importorskip("build", reason="the `build` package is not installed (pip install build)")
    pytest.importorskip("hatchling", reason="hatchling is not installed (pip install hatchling)")
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
                        str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (path,) = out.glob("neuroprobe-*.whl")
    return path


def test_wheel_metadata_reads_back(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        md = email.message_from_bytes(z.read(meta))
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
        assert "neuroprobe/py.typed" in names
        assert any(n.startswith("neuroprobe/_shipped/concepts/") for n in names)
    assert md["Metadata-Version"] >= "2.4"           # PEP 639
    assert md["License-Expression"] == "MIT"
    assert md.get_all("License-File") == ["LICENSE"]
    assert md["Requires-Python"] == ">=3.10"
    classifiers = md.get_all("Classifier")
    assert "Typing :: Typed" in classifiers
    assert "Programming Language :: Python :: 3.10" in classifiers
    assert not any(c.startswith("License ::") for c in classifiers)  # PEP 639 forbids both
    requires = {r.split(">")[0].split(";")[0].strip().lower() for r in md.get_all("Requires-Dist")}
    assert {"pillow", "threadpoolctl", "torch", "tqdm"} <= requires


def _eps(*specs):
    return [metadata.EntryPoint(name, value, "neuroprobe.concepts") for name, value in specs]


def test_plugin_reader_is_found_and_a_broken_one_reported_once(monkeypatch, caplog, tmp_path):
    eps = _eps(("broken-source", "neuroprobe_no_such_module:from_spec"),
               ("world", "neuroprobe.concepts.synthetic:from_spec"),
               ("synthetic", "neuroprobe.concepts.synthetic:from_spec"))
    monkeypatch.setattr(metadata, "entry_points",
                        lambda group=None: eps if group == "neuroprobe.concepts" else [])
    monkeypatch.setattr(plugins, "_LOADED", {})
    with caplog.at_level(logging.WARNING, logger="neuroprobe"):
        found = _sources()
        again = _sources()
    assert "world" in found and "broken-source" not in found
    assert found == again
    assert found["synthetic"] == "neuroprobe.concepts.synthetic:from_spec"  # built-in wins
    lines = [r.getMessage() for r in caplog.records if r.name == "neuroprobe.plugins"]
    assert len(lines) == 2, lines                     # once each, not once per call
    broken = [m for m in lines if "broken-source" in m]
    assert len(broken) == 1 and "\n" not in broken[0]
    assert "neuroprobe_no_such_module:from_spec" in broken[0]
    assert "ModuleNotFoundError" in broken[0] and "skipped" in broken[0]
    assert any("'synthetic' is already taken" in m for m in lines)
    # the plugin's reader opens a concept set that names it
    toml = tmp_path / "mine.toml"
    toml.write_text('source = "world"\nseed = 3\nn = 4\n')
    ds = open_concepts(str(toml))
    assert len(ds) == 4


def test_unlistable_plugins_are_reported_not_raised(monkeypatch, caplog):
    def broken(group=None):
        raise TypeError("entry_points() got an unexpected keyword argument 'group'")

    monkeypatch.setattr(metadata, "entry_points", broken)
    with caplog.at_level(logging.WARNING, logger="neuroprobe"):
        assert plugins.load_plugins("neuroprobe.models") == {}
    assert "cannot list the neuroprobe.models plugins: TypeError" in caplog.text


def test_broken_plugin_of_an_installed_package_is_one_warning_line(tmp_path):
    """A real (fake) distribution on the path: the CLI prints one warning line naming the
    plugin and its package, and the command still works."""
    info = tmp_path / "fakeplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[neuroprobe.concepts]\nfake-source = fakeplug_missing_module:from_spec\n")
    toml = tmp_path / "tiny.toml"
    toml.write_text('source = "synthetic"\nseed = 1\nn = 3\n')
    env = {"PYTHONPATH": f"{ROOT}:{tmp_path}"}
    r = subprocess.run([sys.executable, "-m", "neuroprobe", "concepts", "info", str(toml)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={**os.environ, **env})
    assert r.returncode == 0, r.stderr
    warn = [ln for ln in r.stderr.splitlines() if "fake-source" in ln]
    assert len(warn) == 1, r.stderr
    assert warn[0].startswith("neuroprobe: warning: neuroprobe.concepts plugin fake-source")
    assert "from package fakeplug" in warn[0] and "ModuleNotFoundError" in warn[0]
    assert "images:      3" in r.stdout
