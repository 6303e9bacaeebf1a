"""Where the data files shipped with neuroprobe live (concept-set and probe definitions).

In a wheel, ``concepts/`` and ``probes/`` are installed as ``neuroprobe/_shipped/...``; in a source
checkout (editable install) they are the top-level folders of the repository.
"""
from __future__ import annotations

import os
from pathlib import Path

_PKG = Path(__file__).resolve().parent


def shipped_dir(name: str) -> Path:
    """The folder of shipped data files ``name`` (``"concepts"`` or ``"probes"``)."""
    for candidate in (_PKG / "_shipped" / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"neuroprobe's shipped folder {name!r} is missing; reinstall neuroprobe")


def cache_dir() -> Path:
    """neuroprobe's cache folder (``$NEUROPROBE_CACHE`` or ``~/.cache/neuroprobe``)."""
    root = os.environ.get("NEUROPROBE_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "neuroprobe"
