"""Third-party plugins: model builders (entry-point group ``neuroprobe.models``) and concept-set
readers (``neuroprobe.concepts``).

A package registers one in its own metadata, for example in its ``pyproject.toml``::

    [project.entry-points."neuroprobe.concepts"]
    my-source = "my_package.concepts:from_spec"

:func:`load_plugins` lists them on each call and loads each one once per process.  A plugin
that fails to load (its module raises on import, the attribute is missing) is skipped and
reported once, in one warning through the ``neuroprobe.plugins`` logger naming the plugin, its
package and the error; the built-in sources and builders keep working.
"""
from __future__ import annotations

import logging
from importlib import metadata

__all__ = ["load_plugins", "GROUPS"]

log = logging.getLogger(__name__)

#: the entry-point groups neuroprobe reads
GROUPS = ("neuroprobe.models", "neuroprobe.concepts")


def _origin(ep) -> str:
    dist = getattr(ep, "dist", None)
    name = getattr(dist, "name", None) or (dist.metadata["Name"] if dist is not None else None)
    return f" from package {name}" if name else ""


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


#: ``(group, name, value) -> loaded object``, or ``None`` for a plugin that failed (reported)
_LOADED: dict[tuple[str, str, str], object] = {}


def load_plugins(group: str, reserved: tuple[str, ...] = ()) -> dict[str, object]:
    """The loaded entry points of ``group``, by name.

    Parameters
    ----------
    group : str
        An entry-point group (:data:`GROUPS`).
    reserved : tuple of str
        Names of built-ins; a plugin of that name is skipped with a warning.

    Returns
    -------
    dict
        ``{name: loaded object}``; plugins that failed to load are left out, each reported in
        one warning (once per process).
    """
    try:
        entry_points = metadata.entry_points(group=group)
    except Exception as err:  # broken metadata of some installed package
        log.warning("cannot list the %s plugins: %s", group, _one_line(err))
        return {}
    out: dict[str, object] = {}
    for ep in entry_points:
        value = str(getattr(ep, "value", "?"))
        key = (group, ep.name, value)
        where = f"{ep.name} = {value!r}{_origin(ep)}"
        if ep.name in reserved or ep.name in out:
            if key not in _LOADED:
                _LOADED[key] = None
                log.warning("%s plugin %s is ignored: the name %r is already taken", group,
                            where, ep.name)
            continue
        if key not in _LOADED:
            try:
                _LOADED[key] = ep.load()
                log.debug("loaded the %s plugin %s", group, where)
            except Exception as err:
                _LOADED[key] = None
                log.warning("%s plugin %s failed to load and is skipped: %s", group, where,
                            _one_line(err))
        if _LOADED[key] is not None:
            out[ep.name] = _LOADED[key]
    return out
