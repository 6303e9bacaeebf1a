"""Where the files and folders a concept set names are looked for (:func:`resolve_data_path`).

An absolute path is used as it is.  A relative one is looked up in the places that belong to
the user, in this order:

1. where the value came from: a value the caller gave (the command line's ``--root`` or
   ``--annotations``, a keyword of :func:`~neuroprobe.concepts.open_concepts`) is relative to
   the working folder; a value written in the user's concept-set file is relative to that
   file's folder; a value of a shipped concept set (``neuroprobe concepts list``) is relative
   to the working folder;
2. under the concept set's root folder (``--root``, or ``root`` in the file), for the values
   other than the root itself;
3. under ``$NEUROPROBE_DATA``, then under ``<cache>/data`` (where ``download = true`` and
   ``neuroprobe download`` put data sets).

An error lists exactly the paths tried.  The module imports only the standard library.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import ConceptSetError
from ..resources import cache_dir, shipped_dir

__all__ = ["resolve_data_path", "data_path_candidates", "is_shipped"]

log = logging.getLogger(__name__)


def is_shipped(spec: dict | None) -> bool:
    """Whether ``spec`` was read from one of neuroprobe's own concept-set files."""
    where = (spec or {}).get("_path")
    if not where:
        return False
    try:
        folder = shipped_dir("concepts").resolve()
    except FileNotFoundError:
        return False
    return Path(where).resolve().parent == folder


def data_path_candidates(value, spec: dict | None = None, *, given: bool = False,
                         root=None) -> list[Path]:
    """The absolute paths :func:`resolve_data_path` tries for ``value``, in order (see the
    module's description); duplicates are left out."""
    path = Path(str(value)).expanduser()
    if path.is_absolute():
        return [path]
    where = (spec or {}).get("_path")
    from_file = where and not given and not is_shipped(spec) and not Path(where).is_dir()
    bases = [Path(where).parent if from_file else Path.cwd()]
    if root is not None and str(root) != "":
        bases.append(Path(root).expanduser())
    if os.environ.get("NEUROPROBE_DATA"):
        bases.append(Path(os.environ["NEUROPROBE_DATA"]).expanduser())
    bases.append(cache_dir() / "data")
    out: list[Path] = []
    for base in bases:
        cand = Path(os.path.abspath(base / path))
        if cand not in out:
            out.append(cand)
    return out


def resolve_data_path(value, spec: dict | None = None, *, what: str, hint: str,
                      must_exist: bool = True, given: bool = False, root=None) -> Path:
    """Find a data file or folder named by a concept set.

    Parameters
    ----------
    value : str or path
        The path as written (in the file or by the caller).
    spec : dict, optional
        The concept set's parsed file (its ``_path`` says where the file is).
    what, hint : str
        What the path is (for the error) and how to fix a missing one.
    must_exist : bool
        ``False``: return the first candidate when none exists (a folder to be filled).
    given : bool
        The value came from the caller (command line, keyword), not from the file.
    root : path, optional
        The concept set's root folder, a second place to look.

    Returns
    -------
    pathlib.Path
    """
    if value is None or str(value) == "":
        raise ConceptSetError(f"no {what} given", hint=hint)
    tried = data_path_candidates(value, spec, given=given, root=root)
    for cand in tried:
        if cand.exists():
            log.debug("%s %r: %s", what, str(value), cand)
            return cand
    if not must_exist:
        return tried[0]
    raise ConceptSetError(f"{what} {str(value)!r} not found (tried "
                          f"{', '.join(str(c) for c in tried)})", hint=hint)
