"""Options shared by the sub-commands, and the one place where numeric options are checked.

Every numeric option is parsed by one of the ``type=`` functions below, so a bad value (``-3``
workers, a time-out of 0, a probability of 1.5, ``nan``) is refused by argparse while the
command line is read: one line ``neuroprobe: error: CMD: argument --x: ...`` naming the option
and the accepted range (:class:`neuroprobe.cli.Parser`), exit status 2, before anything is loaded
or written.  The shared options
(``--model/--arch/--trust-checkpoint``, ``--concepts/--root/--limit``, ``--batch-size``,
``--workers``, ``--out``) are added by the ``add_*`` helpers, and :func:`output_folder` is the
one check of an output folder (a path that exists as a file is refused).

The module imports only the standard library (command modules must import cheaply).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

__all__ = ["add_global_options", "positive_int", "nonnegative_int", "positive_float",
           "nonnegative_float", "seed", "device", "finite_float", "probability",
           "open_probability", "timeout_seconds",
           "add_model_options", "add_concept_options", "add_annotations", "add_batch_size",
           "add_workers",
           "add_limit", "output_folder", "output_file"]


def _int(text: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    """A count or size: a whole number >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive whole number (>= 1)")
    return value


def nonnegative_int(text: str) -> int:
    """A count that may be zero (``--workers 0``, ``--steps 0``)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative (give 0 or more)")
    return value


def seed(text: str) -> int:
    """A random seed: a whole number in [0, 2**63) (numpy refuses negative seeds, torch larger
    ones)."""
    value = _int(text)
    if not 0 <= value < 2 ** 63:
        raise argparse.ArgumentTypeError(f"{value} is not a seed (give a whole number from 0 to "
                                         f"{2 ** 63 - 1})")
    return value


def finite_float(text: str) -> float:
    """Any finite number (no ``nan`` or ``inf``)."""
    return _float(text)


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates, sizes in seconds ...)."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not positive (give a number > 0)")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number >= 0 (thresholds that may be zero)."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value:g} is negative (give 0 or more)")
    return value


def probability(text: str) -> float:
    """A fraction in [0, 1]."""
    value = _float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value:g} is not between 0 and 1")
    return value


def open_probability(text: str) -> float:
    """A fraction in (0, 1] (a top quantile, a decay factor: zero would select nothing)."""
    value = _float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value:g} is not in (0, 1]")
    return value


def timeout_seconds(text: str) -> float:
    """A time-out in seconds: finite and > 0."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not a usable time-out (give seconds > 0)")
    return value


def device(text: str) -> str:
    """A device name (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``), spelled as
    :func:`neuroprobe.utils.parse_device` accepts; whether it exists is checked when a model
    is placed on it (:func:`neuroprobe.utils.resolve_device`)."""
    from ..utils import parse_device

    try:
        return parse_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# -- shared options ------------------------------------------------------------------------

def add_global_options(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """Options accepted before or after the sub-command name."""
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--device", type=device, metavar="DEVICE",
                        default=argparse.SUPPRESS if suppress else "auto",
                        help="where models run: auto, cpu, cuda, cuda:N or mps "
                        "(default: auto = cuda when available)")
    parser.add_argument("--debug", action="store_true", default=default if suppress else False,
                        help="show tracebacks of errors")
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("--quiet", action="store_true", default=default if suppress else False,
                      help="only warnings and errors: no progress bars or informational output")
    loud.add_argument("--verbose", action="store_true", default=default if suppress else False,
                      help="also debug messages (paths looked up, plugins loaded ...)")


def add_model_options(parser, default: str | None = None, *, required: bool | None = None
                      ) -> None:
    """``--model``, ``--arch`` and ``--trust-checkpoint`` (every command that loads one model)."""
    parser.add_argument("--model", default=default,
                        required=(default is None) if required is None else required,
                        help="checkpoint path, built-in name (demo, demo-scene, ...), "
                        "torchvision:NAME[?weights=W], timm:NAME[?weights=W], or "
                        "random:ARCH[?seed=N] (seeded random weights)"
                        + (f" (default: {default})" if default else ""))
    parser.add_argument("--arch", default=None,
                        help="architecture of a plain state dict (resnet18, saliency:vgg16, "
                        "scene:resnet18:6, cifar-resnet56, ...)")
    add_trust_option(parser)


def add_trust_option(parser) -> None:
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow files that can run code when loaded (pickled Python "
                        "objects, TorchScript); only for files you trust")


def add_concept_options(parser, *, concepts_help: str | None = None, root: bool = True,
                        limit: bool = True) -> None:
    """``--concepts NAME``, ``--root DIR`` and ``--limit N``."""
    parser.add_argument("--concepts", default=None, metavar="NAME",
                        help=concepts_help or "concept set: shipped name or .toml path")
    if root:
        parser.add_argument("--root", default=None, help="data folder of the concept set")
        add_annotations(parser)
    if limit:
        add_limit(parser)


def add_annotations(parser) -> None:
    """``--annotations FILE ...``: the COCO json files of a coco-parts concept set."""
    parser.add_argument("--annotations", nargs="+", default=None, metavar="FILE",
                        help="COCO annotation files of a coco-parts set (instances_*.json, "
                        "person_keypoints_*.json), instead of the set's `annotations`")


def add_limit(parser) -> None:
    parser.add_argument("--limit", type=positive_int, default=None, metavar="N",
                        help="use only the first N images")


def add_batch_size(parser, default: int = 32, help: str | None = None) -> None:
    parser.add_argument("--batch-size", type=positive_int, default=default, metavar="N",
                        help=help or f"batch size (default {default})")


def add_workers(parser, default=None, help: str | None = None) -> None:
    parser.add_argument("--workers", type=nonnegative_int, default=default, metavar="N",
                        help=help or "worker processes (0 = in the main process)")


# -- output paths ---------------------------------------------------------------------------

def output_folder(path, option: str = "--out") -> Path:
    """The output folder ``path`` as a :class:`Path`, refused in one line where it exists as
    something other than a folder (a file, a link to a file) or where a parent is a file."""
    from ..errors import UserError

    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} {out} exists and is a file, not a folder",
                        hint=f"choose another {option} folder or remove the file")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{option} {out}: {parent} is a file, not a folder",
                                hint=f"choose another {option} folder")
            break
    return out


def output_file(path, option: str = "--out") -> Path:
    """An output file ``path``: refused where it is a folder or where a parent is a file."""
    from ..errors import UserError

    out = Path(path).expanduser()
    if out.is_dir():
        raise UserError(f"{option} {out} is a folder; a file name is needed here",
                        hint=f"give {option} FOLDER/NAME")
    output_folder(out.parent, option)
    return out
