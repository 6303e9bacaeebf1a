"""neuroprobe: open up PyTorch vision models.

Record any layer with hooks (:mod:`neuroprobe.hooks`), label units with concepts
(:mod:`neuroprobe.dissect`), see units (:mod:`neuroprobe.visualize`), compare variants
(:mod:`neuroprobe.compare`), with saliency models as first-class citizens
(:mod:`neuroprobe.saliency`); read a run folder back with ``neuroprobe.load_run(DIR)``.

Importing this package is cheap: submodules (and torch) load on first attribute access.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = {
    "hooks", "stats", "dissect", "concepts", "models", "train", "saliency",
    "visualize", "compare", "cli", "errors", "resources", "download", "results", "run",
    "notebook",
}


def __getattr__(name):  # PEP 562 lazy submodules
    if name == "load_run":   # neuroprobe.load_run(DIR): a dissection run folder as an object
        from .run import load_run

        globals()[name] = load_run
        return load_run
    if name in _SUBMODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'neuroprobe' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES) + ["load_run"])
