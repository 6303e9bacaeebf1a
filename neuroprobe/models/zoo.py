"""Built-in demo models, addressed by name (``--model demo``).

The demo models (a small encoder pretrained on the synthetic world, and its frozen,
fine-tuned and scene-tuned variants) are shipped in ``neuroprobe/_models/`` (regenerated bit for
bit by ``python -m neuroprobe.train.demo --rebuild``); :mod:`neuroprobe.train.demo` rebuilds them
into ``neuroprobe.resources.cache_dir() / "models"`` only if the shipped files are missing.
``demo-random`` is the demo encoder with seeded random weights, a control for dissection.
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
    "demo-random": "random",
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
    if BUILTIN[name] == "random":
        return random_control()
    try:
        from ..train.demo import build_demo
    except ImportError as err:  # pragma: no cover - the training module ships with neuroprobe
        raise CheckpointError(f"built-in model {name!r} needs neuroprobe.train ({err})") from None
    return build_demo(BUILTIN[name])


def random_control(seed: int = 0) -> Path:
    """The demo encoder's architecture with seeded random weights (a control for dissection:
    what an untrained network of the same shape already 'detects').  Written once into the cache."""
    import torch

    from ..resources import cache_dir
    from .adapters import build_encoder_only
    from .checkpoint import load, save

    pretrained_meta = load("demo-pretrained").metadata
    path = cache_dir() / "models" / f"demo-random-seed{seed}.pt"
    if not path.is_file():
        state = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            module = build_encoder_only("small")
        finally:
            torch.random.set_rng_state(state)
        save(path, module, {"builder": "encoder", "kwargs": {"encoder": "small"}},
             {"variant": "random", "task": "encoder", "seed": seed,
              "input_size": pretrained_meta.get("input_size"),
              "note": "random initialisation (seeded), the control for demo-pretrained"})
    return path
