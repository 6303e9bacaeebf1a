"""Built-in demo models, addressed by name (``--model demo``).

The demo models (a small encoder pretrained on the synthetic world, and its frozen,
fine-tuned and scene-tuned variants) are built on first use by :mod:`neuroprobe.train.demo`
and cached in ``neuroprobe.resources.cache_dir() / "models"``.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError

#: name -> variant built by :func:`neuroprobe.train.demo.build_demo`
BUILTIN = {
    "demo": "frozen",
    "demo-pretrained": "pretrained",
    "demo-frozen": "frozen",
    "demo-finetune-last": "finetune-last",
    "demo-finetune-all": "finetune-all",
    "demo-scene": "scene",
}


def builtin_names() -> list[str]:
    return list(BUILTIN)


def is_builtin(name: str) -> bool:
    return name in BUILTIN


def builtin_path(name: str) -> Path:
    """Path of the cached checkpoint of a built-in model, building it if needed."""
    if name not in BUILTIN:
        raise CheckpointError(f"unknown built-in model {name!r}",
                              hint="one of " + ", ".join(BUILTIN))
    try:
        from ..train.demo import build_demo
    except ImportError as err:  # pragma: no cover - the training module ships with neuroprobe
        raise CheckpointError(f"built-in model {name!r} needs neuroprobe.train ({err})") from None
    return build_demo(BUILTIN[name])
