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
import importlib
import os
import pkgutil
import sys

from . import __version__
from .errors import UserError


def _command_modules():
    from . import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"{commands.__name__}.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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


def add_global_options(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """Options accepted before or after the sub-command name."""
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"],
                        default=argparse.SUPPRESS if suppress else "auto",
                        help="where models run (default: auto = cuda when available)")
    parser.add_argument("--debug", action="store_true", default=default if suppress else False,
                        help="show tracebacks of errors")
    parser.add_argument("--quiet", action="store_true", default=default if suppress else False,
                        help="no progress bars or informational output")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    if getattr(args, "quiet", False):
        os.environ["NEUROPROBE_QUIET"] = "1"
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
        return int(result or 0)
    except UserError as err:
        if debug:
            raise
        print(f"neuroprobe: error: {err.one_line()}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        if debug:
            raise
        print("neuroprobe: interrupted; completed work is kept and a rerun resumes where "
              "possible", file=sys.stderr)
        return 130
    except MemoryError:
        if debug:
            raise
        print("neuroprobe: error: out of memory (lower --batch-size)", file=sys.stderr)
        return 3


def entry() -> None:  # pragma: no cover - console script wrapper
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
