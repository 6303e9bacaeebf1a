"""Where the command line's messages go: the ``neuroprobe`` logger, printed on stderr.

The library says everything through ``logging.getLogger("neuroprobe")`` and its child loggers
(one per module); results a command prints go to stdout.  While a command runs,
:func:`command_logging` gives the ``neuroprobe`` logger a handler on stderr: informational
messages as they are, ``neuroprobe: warning: ...`` and ``neuroprobe: error: ...`` lines, and under
``--verbose`` ``neuroprobe: debug: [module] ...`` lines.  :func:`set_verbosity` maps the global
options to levels: ``--quiet`` WARNING (also no progress bars, see
:func:`neuroprobe.utils.progress`), the default INFO, ``--verbose`` DEBUG.

The module imports only the standard library (command modules must import cheaply).
"""
from __future__ import annotations

import contextlib
import logging
import sys

__all__ = ["command_logging", "set_verbosity", "LOGGER"]

#: the library's root logger
LOGGER = "neuroprobe"

_PREFIX = {logging.DEBUG: "neuroprobe: debug: ", logging.INFO: "",
           logging.WARNING: "neuroprobe: warning: ", logging.ERROR: "neuroprobe: error: "}


class _Stderr(logging.StreamHandler):
    """A handler on the ``sys.stderr`` of the moment (a test may have replaced it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ sets it; the property wins
        pass


class _Lines(logging.Formatter):
    """One line per message, prefixed by its level the way the command line's errors are."""

    def format(self, record: logging.LogRecord) -> str:
        level = max(k for k in _PREFIX if k <= max(record.levelno, logging.DEBUG))
        text = record.getMessage()
        if record.levelno < logging.INFO:
            text = f"[{record.name}] {text}"
        if record.exc_info and record.levelno < logging.INFO:
            text += "\n" + self.formatException(record.exc_info)
        return _PREFIX[level] + text


@contextlib.contextmanager
def command_logging():
    """Print the ``neuroprobe`` logger's messages on stderr for the duration of a command (INFO
    and above until :func:`set_verbosity` says otherwise); the logger's previous level and
    handlers are restored afterwards, so an in-process caller keeps its own set-up."""
    logger = logging.getLogger(LOGGER)
    handler = _Stderr()
    handler.setFormatter(_Lines())
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def set_verbosity(args) -> int:
    """Set the ``neuroprobe`` logger's level from ``--quiet`` / ``--verbose`` (``--quiet`` wins
    where both are given); returns the level."""
    if getattr(args, "quiet", False):
        level = logging.WARNING
    elif getattr(args, "verbose", False):
        level = logging.DEBUG
    else:
        level = logging.INFO
    logging.getLogger(LOGGER).setLevel(level)
    return level
