"""One module per CLI sub-command; each exposes ``register(subparsers)``.

Modules here are discovered automatically by :func:`neuroprobe.cli.build_parser`.  Keep their
imports light (heavy work goes inside the command function).
"""
from __future__ import annotations

import argparse

from ._common import add_global_options


def add_command(subparsers, name: str, help: str, func, description: str | None = None):
    """Add a sub-command parser that also accepts the global options after its name."""
    parser = subparsers.add_parser(name, help=help, description=description or help)
    add_global_options(parser, suppress=True)
    parser.set_defaults(func=func)
    return parser


def add_subcommand_group(subparsers, name: str, help: str):
    """A command with its own sub-commands (``neuroprobe concepts list`` ...)."""
    parser = subparsers.add_parser(name, help=help, description=help)
    add_global_options(parser, suppress=True)
    group = parser.add_subparsers(dest=f"{name}_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    return parser, group


__all__ = ["add_command", "add_subcommand_group", "add_global_options", "argparse"]
