"""neuroprobe: open up PyTorch vision models.

Record any layer with hooks (:mod:`neuroprobe.hooks`), label units with concepts
(:mod:`neuroprobe.dissect`), see units (:mod:`neuroprobe.visualize`), compare variants
(:mod:`neuroprobe.compare`), with saliency models as first-class citizens
(:mod:`neuroprobe.saliency`).

Importing this package is cheap: submodules (and torch) load on first attribute access.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = {
    "hooks", "stats", "dissect", "concepts", "models", "train", "saliency",
    "visualize", "compare", "cli", "errors", "resources", "download", "results",
}


def __getattr__(name):  # PEP 562 lazy submodules
    if name in _SUBMODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'neuroprobe' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
