"""The command line's process setup: huge pages for PyTorch's CPU tensors (Linux)."""
import sys

import pytest

from neuroprobe import cli


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="transparent huge pages are "
                    "a Linux feature; elsewhere nothing is set")
def test_huge_pages_are_asked_for_before_torch_is_imported(monkeypatch):
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    cli._huge_pages()
    assert cli.os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")          # the user's choice is kept
    cli._huge_pages()
    assert cli.os.environ["THP_MEM_ALLOC_ENABLE"] == "0"


def test_huge_pages_are_left_alone_once_torch_is_loaded(monkeypatch):
    """Inside a program that already imported torch the setting could no longer act, so the
    command line does not pretend it does."""
    import torch  # noqa: F401

    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    cli._huge_pages()
    assert "THP_MEM_ALLOC_ENABLE" not in cli.os.environ
