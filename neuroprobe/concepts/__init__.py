"""Concept sources: where labelled pixels (and fixations) come from.

A *concept set* is a TOML file (shipped ones live in the top-level ``concepts/`` folder) with a
``source`` key naming the reader and the reader's options, for example::

    source = "synthetic"
    seed = 0
    n = 2000

``open_concepts("synthetic")`` resolves a shipped name or a path to such a file and returns a
:class:`~neuroprobe.concepts.base.ConceptDataset`.  Readers are registered by name in
:data:`SOURCES` (``"module:callable"``); third-party packages add their own through the
``neuroprobe.concepts`` entry-point group.  A reader is called as ``reader(spec, **overrides)``
with the parsed TOML (plus ``spec["_path"]``, the file's path) and keyword overrides from the CLI
(``limit``, ``root``, ``image_size`` ...).

Listing and reading concept-set files import only the standard library: the dataset classes of
:mod:`neuroprobe.concepts.base` (which need torch) are imported on first use, so that
``neuroprobe concepts list`` starts in a fraction of a second.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConceptSetError, suggest
from ..io import read_toml
from ..plugins import load_plugins
from ..resources import shipped_dir

if TYPE_CHECKING:
    from .base import ConceptDataset

log = logging.getLogger(__name__)

#: names of :mod:`neuroprobe.concepts.base` offered here, imported on first use (torch)
_FROM_BASE = ("STUDY_CATEGORIES", "ConceptDataset", "Label", "LabelTable", "collate")


def __getattr__(name: str):
    if name in _FROM_BASE:
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["open_concepts", "list_concept_sets", "load_spec", "SOURCES", "ConceptDataset",
           "Label", "LabelTable", "collate", "STUDY_CATEGORIES", "folder_spec"]

#: Built-in readers, by the ``source`` key of a concept-set file.
SOURCES: dict[str, str] = {
    "synthetic": "neuroprobe.concepts.synthetic:from_spec",
    "broden": "neuroprobe.concepts.broden:from_spec",
    "coco-parts": "neuroprobe.concepts.coco:from_spec",
    "mask-folder": "neuroprobe.concepts.maskfolder:from_spec",
    "eyecrowd": "neuroprobe.concepts.boxes:from_spec",
}


def _toml_load(path: Path) -> dict:
    return read_toml(path, "concept set", ConceptSetError)


def _shipped() -> dict[str, Path]:
    try:
        folder = shipped_dir("concepts")
    except FileNotFoundError:
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.toml"))}


def list_concept_sets() -> dict[str, Path]:
    """Shipped concept-set names and their files."""
    return _shipped()


def folder_spec(path: Path) -> dict:
    """The concept-set spec of a data folder given where a concept-set name is expected.

    A folder holding ``index.csv`` (or one sub-folder that does) is a Broden folder
    (``source = "broden"``); one with ``SegmentationClass/`` or labelme ``*.json`` files is a
    mask folder (``source = "mask-folder"``, with ``fixations.mat`` from the folder when there
    is one).  Raises :class:`ConceptSetError` for any other folder.
    """
    path = Path(path)
    name = path.resolve().name or "concepts"
    subs = [p for p in path.iterdir() if p.is_dir() and (p / "index.csv").is_file()] \
        if path.is_dir() else []
    if (path / "index.csv").is_file() or len(subs) == 1:
        return {"source": "broden", "root": str(path.resolve()), "name": name,
                "_path": str(path)}
    if (path / "SegmentationClass").is_dir() or any(path.glob("*.json")):
        spec = {"source": "mask-folder", "root": str(path.resolve()), "name": name,
                "_path": str(path)}
        if (path / "fixations.mat").is_file():
            spec["fixations"] = str((path / "fixations.mat").resolve())
        return spec
    raise ConceptSetError(
        f"folder {path} is neither a Broden folder (no index.csv) nor a mask folder (no "
        "SegmentationClass/ and no labelme .json files)",
        hint="pass a shipped concept-set name (`neuroprobe concepts list`), a .toml file, or "
        "such a folder")


def load_spec(name_or_path: str) -> dict:
    """Parse a concept-set file given by shipped name or path; a data folder (Broden or mask
    folder) stands for the concept set that reads it (:func:`folder_spec`)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return folder_spec(path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConceptSetError(f"concept-set file {path} does not exist")
    else:
        shipped = _shipped()
        if name_or_path not in shipped:
            raise ConceptSetError(
                f"unknown concept set {name_or_path!r}",
                hint=f"{suggest(name_or_path, shipped, 'concept set')}; "
                "see `neuroprobe concepts list`, or pass the path of a .toml file")
        path = shipped[name_or_path]
    spec = _toml_load(path)
    if "source" not in spec:
        raise ConceptSetError(f"concept set {path} has no `source` key",
                              hint=f"set source to one of {', '.join(sorted(_sources()))}")
    spec["_path"] = str(path)
    spec.setdefault("name", path.stem)
    return spec


def _sources() -> dict:
    """Built-in readers (``"module:callable"`` strings) and the loaded plugin readers."""
    return {**load_plugins("neuroprobe.concepts", tuple(sorted(SOURCES))), **SOURCES}


def _resolve(target):
    if callable(target):  # a plugin's reader, loaded by load_plugins
        return target
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def open_concepts(name_or_path: str, **overrides) -> ConceptDataset:
    """Open a concept set by shipped name (``"synthetic"``, ``"broden"``, ``"coco-parts"`` ...),
    by the path of a concept-set TOML file, or by a data folder: a Broden folder (it has
    ``index.csv``) or a mask folder (``SegmentationClass/`` or labelme files).  ``overrides``
    replace options of the file."""
    spec = load_spec(name_or_path)
    sources = _sources()
    source = spec["source"]
    if source not in sources:
        raise ConceptSetError(f"concept set {spec['_path']} names unknown source {source!r}",
                              hint=suggest(source, sources, "source"))
    reader = _resolve(sources[source])
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides.get("annotations") and source in SOURCES and source != "coco-parts":
        raise ConceptSetError(f"annotation files were given for concept set {spec['_path']}, "
                              f"whose source {source!r} reads no COCO annotations",
                              hint="leave out --annotations (it is for coco-parts sets)")
    log.debug("concept set %s: source %r read by %s, options from the caller %s",
              spec["_path"], source, sources[source] if isinstance(sources[source], str)
              else getattr(reader, "__qualname__", reader), sorted(overrides))
    return reader(spec, **overrides)
