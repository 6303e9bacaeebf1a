"""Import torchvision without torch's compiler stack (``torch._dynamo``) when nothing needs it.

Why: ``import torchvision`` imports ``torchvision.ops.roi_align``, whose only use of the
compiler is one name, ``from torch._dynamo.utils import is_compile_supported``, called while a
model is being compiled.  That one line imports ``torch._dynamo`` and with it
``torch._inductor``, ``torch.fx`` passes, ``torch.distributed.fsdp`` and sympy: measured on the
2-core CPU machine of ``benchmarks/README.md`` (torch 2.14, torchvision 0.29), resident memory
after ``import torch`` 508 MiB, after ``import torchvision`` 673 MiB, and 526 MiB with this
module, and about 1 s less of import time.  A dissection never compiles, so those 147 MiB were
a sixth of its peak memory.

How: while torchvision is imported, ``torch._dynamo`` and ``torch._dynamo.utils`` are two
placeholder modules in ``sys.modules`` whose ``is_compile_supported`` imports the real function
when first called; afterwards the placeholders are removed, so ``torch.compile`` or a later
``import torch._dynamo`` gets the real package.  Where that is not possible (the compiler was
already imported, torchvision already imported, or a torchvision version that needs more of
``torch._dynamo`` at import time) torchvision is imported the ordinary way.
"""
from __future__ import annotations

import importlib
import sys
import types

__all__ = ["import_torchvision"]

_PLACEHOLDERS = ("torch._dynamo", "torch._dynamo.utils")


def _is_compile_supported(device_type):
    """torchvision's ``is_compile_supported``, the real one, imported on first use."""
    from torch._dynamo.utils import is_compile_supported

    return is_compile_supported(device_type)


def import_torchvision():
    """``torchvision``, imported without ``torch._dynamo`` where possible (see the module's
    docstring); the same module object as ``import torchvision``."""
    if "torchvision" in sys.modules or any(name in sys.modules for name in _PLACEHOLDERS):
        return importlib.import_module("torchvision")
    import torch  # noqa: F401  (torch itself must be complete before the placeholders go in)

    package = types.ModuleType("torch._dynamo")
    package.__path__ = []   # a package: "torch._dynamo.utils" resolves under it
    utils = types.ModuleType("torch._dynamo.utils")
    utils.is_compile_supported = _is_compile_supported
    sys.modules.update({"torch._dynamo": package, "torch._dynamo.utils": utils})
    try:
        return importlib.import_module("torchvision")
    except (ImportError, AttributeError):
        # a torchvision that needs more of the compiler at import time (a name the
        # placeholders lack): start over, plainly
        for name in [n for n in sys.modules if n == "torchvision" or
                     n.startswith("torchvision.")]:
            del sys.modules[name]
    finally:
        for name in _PLACEHOLDERS:
            if sys.modules.get(name) in (package, utils):
                del sys.modules[name]
    return importlib.import_module("torchvision")
