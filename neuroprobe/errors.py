"""Errors a user can cause.

Every error that a user can cause (a bad path, an unknown layer, a corrupt file, a failed
download) is raised as a :class:`UserError` (or a subclass).  The CLI prints such an error as a
single line, ``neuroprobe: error: <message>``, and exits with :attr:`UserError.exit_code`
(2 by default) without a traceback unless ``--debug`` is given.  Messages say what went wrong,
where, and how to fix it.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class UserError(Exception):
    """A problem with the user's input, with a one-line message naming the fix."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message.strip()
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = self.message
        if self.hint:
            text = f"{text} ({self.hint})"
        return " ".join(text.split())


class CheckpointError(UserError):
    """A model file that cannot be loaded as asked."""


class LayerNotFound(UserError, KeyError):
    """A layer name that does not exist in the model."""

    def __str__(self):  # KeyError would otherwise quote the message
        return self.one_line()


class ConceptSetError(UserError):
    """A concept set that cannot be found or read."""


class DataFormatError(UserError):
    """A data file whose content does not have the expected layout."""


class DownloadError(UserError):
    """A download that failed (HTTP error, time-out, checksum mismatch)."""


def closest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Return up to ``n`` names from ``candidates`` that look most like ``name``."""
    candidates = list(candidates)
    found = difflib.get_close_matches(name, candidates, n=n, cutoff=0.4)
    if not found:
        # fall back to substring matches (e.g. "conv2" -> "layer4.1.conv2")
        found = [c for c in candidates if name.split(".")[-1] in c][:n]
    return found


def suggest(name: str, candidates: Iterable[str], what: str = "name") -> str:
    """A short 'did you mean' clause for an error message."""
    found = closest(name, candidates)
    if found:
        return "closest " + what + "s: " + ", ".join(found)
    return "none similar exists"
