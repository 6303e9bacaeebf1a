"""Small shared helpers: device choice, progress bars, version information."""
from __future__ import annotations

import os
import platform
import sys

from .errors import UserError


def quiet() -> bool:
    """True when ``--quiet`` was given (or ``NEUROPROBE_QUIET=1``)."""
    return os.environ.get("NEUROPROBE_QUIET", "") not in ("", "0")


def progress(iterable=None, **kwargs):
    """A tqdm progress bar on stderr that honours ``--quiet``."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", quiet())
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("file", sys.stderr)
    return tqdm(iterable, **kwargs)


def info(message: str) -> None:
    """An informational line on stderr (silent under ``--quiet``)."""
    if not quiet():
        print(message, file=sys.stderr)


def resolve_device(name: str | None = "auto"):
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a user error."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible to PyTorch",
                        hint="use --device cpu or --device auto")
    return torch.device(name)


def versions() -> dict:
    """Versions of neuroprobe and the libraries whose behaviour shapes results."""
    from . import __version__

    import sys
    from importlib import metadata

    out = {"neuroprobe": __version__, "python": platform.python_version()}
    for mod in ("torch", "torchvision", "numpy", "captum"):
        # the module's own version where it is imported (it says what ran); otherwise the
        # installed distribution's, without importing it (captum alone takes a second)
        try:
            out[mod] = str(sys.modules[mod].__version__) if mod in sys.modules \
                else metadata.version(mod)
        except Exception:  # pragma: no cover - optional
            out[mod] = None
    return out
