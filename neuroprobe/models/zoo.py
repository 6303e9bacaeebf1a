"""Built-in demo models, addressed by name (``--model demo``): where their files are.

The zoo only finds files; it neither trains nor builds.  The demo models (a small encoder
pretrained on the synthetic world, and its frozen, fine-tuned and scene-tuned variants) are
shipped in ``neuroprobe/_models/`` (regenerated bit for bit by ``python -m neuroprobe.train.demo
--rebuild``, which is where they are built); a set rebuilt into
``neuroprobe.resources.cache_dir() / "models"`` is used when the shipped files are missing.
``demo-random`` is the demo encoder with seeded random weights, a control for dissection: its
file lives in that cache folder and is written by
:func:`neuroprobe.models.checkpoint.random_control` the first time it is loaded.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError
from ..resources import cache_dir

#: name -> variant built by :func:`neuroprobe.train.demo.build_demo` ("random": the control)
BUILTIN = {
    "demo": "frozen",
    "demo-pretrained": "pretrained",
    "demo-frozen": "frozen",
    "demo-finetune-last": "finetune-last",
    "demo-finetune-all": "finetune-all",
    "demo-scene": "scene",
    "demo-random": "random",
}

#: the folder of the shipped demo checkpoints (and their MANIFEST.json)
SHIPPED = Path(__file__).resolve().parents[1] / "_models"


def builtin_names() -> list[str]:
    return list(BUILTIN)


def is_builtin(name: str) -> bool:
    return name in BUILTIN


def demo_file(variant: str, folder: Path | None = None) -> Path:
    """The file of demo ``variant`` in ``folder`` (default: the shipped folder)."""
    return Path(folder or SHIPPED) / f"demo-{variant}.pt"


def cache_folder() -> Path:
    """Where demo models rebuilt on this machine (and the random control) are kept."""
    return cache_dir() / "models"


def random_control_path(seed: int = 0) -> Path:
    """The cache file of the random control with ``seed`` (it may not exist yet)."""
    return cache_folder() / f"demo-random-seed{seed}.pt"


def builtin_path(name: str) -> Path:
    """Path of the checkpoint of built-in model ``name``: the shipped file, else the one rebuilt
    into the cache.  For ``demo-random`` the path of its cache file, which the loader writes on
    first use.

    Raises
    ------
    CheckpointError
        For an unknown name, or when neither the shipped nor a rebuilt file exists (the message
        names the command that rebuilds them).
    """
    if name not in BUILTIN:
        raise CheckpointError(f"unknown built-in model {name!r}",
                              hint="one of " + ", ".join(BUILTIN))
    if BUILTIN[name] == "random":
        return random_control_path()
    for folder in (SHIPPED, cache_folder()):
        path = demo_file(BUILTIN[name], folder)
        if path.is_file():
            return path
    raise CheckpointError(
        f"the built-in model {name!r} is not installed (neither {demo_file(BUILTIN[name])} nor "
        f"{demo_file(BUILTIN[name], cache_folder())} exists)",
        hint=f"build the demo models once with `python -m neuroprobe.train.demo --rebuild --out "
        f"{cache_folder()}` (a few minutes), or reinstall neuroprobe")
