"""Messages: the library speaks through ``logging.getLogger("neuroprobe")`` (child loggers per
module), the command line prints them on stderr at the level ``--quiet`` / ``--verbose`` ask for,
and progress bars stay out of logs (no carriage returns when stderr is not a terminal)."""
from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from neuroprobe.cli import main
from neuroprobe.concepts import open_concepts
from neuroprobe.concepts.export import export_broden
from neuroprobe.utils import progress, quiet

ROOT = Path(__file__).resolve().parents[1]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(autouse=True)
def _fresh_level():
    logger = logging.getLogger("neuroprobe")
    level = logger.level
    yield
    logger.setLevel(level)


def test_library_messages_reach_caplog(tmp_path, caplog):
    ds = open_concepts("synthetic", limit=2, image_size=32, mask_size=16)
    with caplog.at_level(logging.INFO, logger="neuroprobe"):
        export_broden(ds, tmp_path / "b", n=2)
    (rec,) = [r for r in caplog.records if r.name == "neuroprobe.concepts.export"]
    assert rec.levelno == logging.INFO and rec.getMessage().startswith("wrote 2 images")


def test_progress_bars_follow_the_terminal_and_the_level():
    assert progress(range(2), file=io.StringIO()).disable            # not a terminal: off
    assert not progress(range(2), file=_Terminal()).disable          # a terminal: on
    assert progress(range(2), file=_Terminal(), disable=True).disable
    logging.getLogger("neuroprobe").setLevel(logging.WARNING)        # what --quiet does
    assert quiet()
    assert progress(range(2), file=_Terminal()).disable
    assert progress(range(2), file=_Terminal(), disable=None).disable
    logging.getLogger("neuroprobe").setLevel(logging.NOTSET)
    assert not quiet()


def _export(tmp_path, *options):
    return main([*options, "concepts", "export", "synthetic", "--n", "2",
                 "--out", str(tmp_path / "out")])


def test_cli_prints_info_and_quiet_silences_it(tmp_path, capsys):
    before = logging.getLogger("neuroprobe").level
    assert _export(tmp_path) == 0
    err = capsys.readouterr().err
    assert "wrote 2 images in the Broden format" in err
    assert "\r" not in err                                            # captured: not a tty
    assert logging.getLogger("neuroprobe").level == before            # restored after the run
    assert not logging.getLogger("neuroprobe").handlers
    assert main(["--quiet", "concepts", "export", "synthetic", "--n", "2",
                 "--out", str(tmp_path / "quiet")]) == 0
    assert capsys.readouterr().err == ""


def test_cli_verbose_prints_debug_lines(capsys):
    assert main(["--verbose", "concepts", "info", "synthetic"]) == 0
    err = capsys.readouterr().err
    assert "neuroprobe: debug: [neuroprobe.concepts] concept set" in err


def test_quiet_and_verbose_together_are_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--quiet", "--verbose", "concepts", "list"])
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("neuroprobe: error:") and "not allowed with" in line


def test_cli_run_writes_no_carriage_returns_into_a_log(tmp_path):
    """Stderr is a pipe (a log file, CI output): the export's bar is not drawn at all."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "neuroprobe", "concepts", "export", "synthetic",
                        "--n", "3", "--out", str(tmp_path / "o")], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "%|" not in r.stderr
    assert r.stderr.strip() == f"wrote 3 images in the Broden format to {tmp_path / 'o'}"
