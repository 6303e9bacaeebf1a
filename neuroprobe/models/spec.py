"""Reading model specs of the form ``PREFIX:NAME?key=value&key=value`` (``torchvision:``,
``timm:``): the name, the parameters, and their values as Python numbers where they are."""
from __future__ import annotations

from ..errors import CheckpointError


def split_spec(spec: str, prefix: str) -> tuple[str, dict]:
    """``"timm:vit_tiny?weights=none&img_size=64"`` -> ``("vit_tiny", {"weights": "none",
    "img_size": "64"})``.

    Raises
    ------
    CheckpointError
        When the name is empty or a parameter has no ``=`` or appears twice.
    """
    name, _, query = spec[len(prefix):].partition("?")
    if not name:
        raise CheckpointError(f"model {spec!r} names no model", hint=f"write {prefix}NAME")
    params: dict = {}
    for part in (p for p in query.split("&") if p):
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise CheckpointError(f"cannot read {part!r} in model {spec!r}",
                                  hint=f"parameters are key=value, e.g. {prefix}{name}"
                                  "?weights=none")
        if key in params:
            raise CheckpointError(f"parameter {key!r} is given twice in model {spec!r}")
        params[key] = value
    return name, params


def literal(value: str):
    """A parameter value as Python sees it: ``"64"`` -> 64, ``"0.1"`` -> 0.1, ``"true"`` /
    ``"false"`` -> bool, ``"none"`` -> None; anything else stays a string."""
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def seed_of(params: dict, spec: str) -> int:
    """The ``seed`` parameter (default 0) as a whole number >= 0."""
    text = params.get("seed", "0")
    if not text.isdigit():
        raise CheckpointError(f"seed {text!r} in model {spec!r} is not a whole number >= 0",
                              hint="e.g. ...?weights=none&seed=1")
    return int(text)
