"""The ``neuroprobe`` command line.

Each sub-command lives in its own module under :mod:`neuroprobe.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (called with the parsed
arguments).  Command modules must import cheaply: heavy imports (torch, matplotlib) belong inside
``func``.

Errors a user can cause (:class:`neuroprobe.errors.UserError`) print one line and exit with a
non-zero status; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import pkgutil
import signal
import sys
import threading

from . import __version__, commands
from .commands._common import add_global_options
from .commands._logging import command_logging, set_verbosity
from .errors import UserError


def _command_modules():
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"{commands.__name__}.{info.name}")


class Parser(argparse.ArgumentParser):
    """argparse with the one-line error of every other neuroprobe error: a bad option value
    (``--workers -3``) prints ``neuroprobe: error: <command>: argument --workers: ...`` and
    exits with status 2 (the sub-command parsers inherit this class)."""

    def error(self, message):
        where = self.prog.replace("neuroprobe", "", 1).strip()
        text = " ".join(f"{where + ': ' if where else ''}{message}".split())
        self.exit(2, f"neuroprobe: error: {text} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="neuroprobe",
        description="Open up PyTorch vision models: record layers, dissect units into concepts, "
        "visualize and compare them.",
    )
    parser.add_argument("--version", action="version", version=f"neuroprobe {__version__}")
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        module.register(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is (like Ctrl-C), so that the same clean-up runs:
    checkpoints are kept, temporary files removed, and a rerun resumes."""


def _on_sigterm(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Handle SIGTERM like SIGINT while a command runs (main thread only; the previous handler
    is restored afterwards, so an in-process caller keeps its own)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    _huge_pages()
    with _sigterm_as_interrupt(), command_logging():
        return _main(argv)


def _huge_pages() -> None:
    """Ask PyTorch to back its large CPU tensors with transparent huge pages (Linux).

    PyTorch reads ``THP_MEM_ALLOC_ENABLE`` once, at its first CPU allocation, so this only acts
    when the command line runs before ``import torch`` (``neuroprobe ...``, ``python -m
    neuroprobe``).  Activations of a batch are tens to hundreds of MiB; without huge pages
    every forward pass maps them afresh in 4 KiB pages, and the page faults cost as much system
    time as the convolutions themselves on a full-resolution network (ResNet-56 at 224 px: 8.1
    million faults and 14 s of system time for two batches of 32, against 0.34 million and
    5-7 s; ``benchmarks/README.md``).  A value the user set, ``THP_MEM_ALLOC_ENABLE=0``
    included, is kept.
    """
    if sys.platform.startswith("linux") and "torch" not in sys.modules:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    set_verbosity(args)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
        return int(result or 0)
    except UserError as err:
        if debug:
            raise
        print(f"neuroprobe: error: {_user_message(err)}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return 0
    except OSError as err:
        # a full disk, a read-only or forbidden output folder: the user can fix these
        if debug or err.errno not in _USER_ERRNOS:
            raise
        where = f" writing {err.filename}" if err.filename else ""
        print(f"neuroprobe: error: {os.strerror(err.errno).lower()}{where} "
              f"({_USER_ERRNOS[err.errno]}; results written before are kept)", file=sys.stderr)
        return 2
    except RuntimeError as err:
        # torch's serializer reports a failed write (a full disk) as a RuntimeError; the
        # writers map it (neuroprobe.io.save_torch), this catches any path that does not
        from .hooks import SCRIPT_HOOKS_HINT, SCRIPT_HOOKS_MESSAGE, is_script_hook_error
        from .io import is_write_failure

        if not debug and is_script_hook_error(err):   # e.g. Captum hooking a TorchScript model
            print(f"neuroprobe: error: {SCRIPT_HOOKS_MESSAGE} ({SCRIPT_HOOKS_HINT})",
                  file=sys.stderr)
            return 2
        if debug or not is_write_failure(err):
            raise
        print("neuroprobe: error: a write failed, most likely no space left on the device "
              f"({_USER_ERRNOS[errno.ENOSPC]}; results written before are kept)", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        if debug:
            raise
        what = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
        print(f"neuroprobe: {what}; completed work is kept and a rerun resumes where "
              "possible", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    except MemoryError:
        if debug:
            raise
        print("neuroprobe: error: out of memory (lower --batch-size)", file=sys.stderr)
        return 3


#: OSErrors a user can fix, with the fix.
_USER_ERRNOS = {
    errno.ENOSPC: "free disk space or choose another --out folder",
    errno.EDQUOT: "free disk space or choose another --out folder",
    errno.EACCES: "check the permissions or choose another --out folder",
    errno.EPERM: "check the permissions or choose another --out folder",
    errno.EROFS: "the file system is read-only: choose another --out folder",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "the path is a folder where a file is needed: choose another path",
    errno.EEXIST: "something is in the way at that path: choose another path or remove it",
}


def _user_message(err: UserError) -> str:
    """The one-line message; a UserError re-raised by a DataLoader worker carries the worker's
    traceback in its text, of which only the last line (the original message) is kept."""
    text = err.one_line()
    if "Original Traceback" in err.message:
        last = err.message.strip().splitlines()[-1]
        text = " ".join((last.split(": ", 1)[1] if ": " in last else last).split())
    return text


def entry() -> None:  # pragma: no cover - console script wrapper
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
