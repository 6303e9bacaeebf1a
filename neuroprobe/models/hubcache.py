"""torchvision weights files in the torch hub cache (``torch.hub.get_dir()/checkpoints``): where
they are, fetching one when missing, reading one with ``torch.load(weights_only=True)``; errors
in one line naming the cache file and ``?weights=none``."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..utils import quiet


def cache_file(weights) -> Path:
    """Where torch.hub keeps the file of ``weights`` (it may not exist)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]


def ensure_cached(weights, name: str = "NAME") -> Path:
    """The file of torchvision ``weights`` in the torch hub cache, downloaded there
    (hash-checked as torch.hub does) when missing.

    Raises
    ------
    CheckpointError
        When the file is missing and cannot be downloaded (offline); the message names the
        cache path and ``?weights=none``.
    """
    path = cache_file(weights)
    spec = f"{name}?weights=none"
    if not path.is_file():
        match = torch.hub.HASH_REGEX.search(path.name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, str(path),
                                           match.group(1) if match else None,
                                           progress=not quiet() and sys.stderr.isatty())
        except Exception as err:   # URLError, OSError, a hash mismatch: all mean "no file"
            first = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
            raise CheckpointError(
                f"torchvision weights {weights} are not in the torch cache ({path}) and could "
                f"not be downloaded ({type(err).__name__}: {first})",
                hint=f"download {weights.url} into {path.parent}, or use torchvision:{spec} for "
                "random weights") from None
    return path


def weights_state_dict(weights, name: str = "NAME") -> dict:
    """The state dict of torchvision ``weights`` (:func:`ensure_cached`), read with
    ``torch.load(weights_only=True)``; a file that does not load is a :class:`CheckpointError`."""
    path = ensure_cached(weights, name)
    spec = f"{name}?weights=none"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} (torchvision weights {weights}) does not load "
                              f"({type(err).__name__})",
                              hint=f"delete it so that it is downloaded again, or use "
                              f"torchvision:{spec}") from None
