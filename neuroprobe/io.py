"""Atomic file output and small readers shared by every module.

Results are never half-written: each writer produces a temporary file in the destination folder
and renames it into place (``os.replace`` is atomic on POSIX and Windows), so a crash, a full disk
or Ctrl-C leaves either the old file or the new one.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

from .errors import DataFormatError, UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp",
                               dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp creates 0600 files; a result gets the mode a plain open() would give it
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


#: texts of torch's serializer when a write to the file fails (its writer reports a short write
#: as ``[enforce fail at inline_container.cc] unexpected pos N vs M``, not as an OSError)
_TORCH_WRITE_FAILURES = ("unexpected pos", "PytorchStreamWriter failed", "file write failed")


def is_write_failure(err: BaseException) -> bool:
    """Whether ``err`` is torch's RuntimeError for a write that failed (a full disk)."""
    return isinstance(err, RuntimeError) and any(t in str(err) for t in _TORCH_WRITE_FAILURES)


def save_torch(obj: Any, path: str | os.PathLike, *, durable: bool = True) -> None:
    """``torch.save(obj)`` to ``path`` atomically; a write that fails (a full disk) raises
    ``OSError(ENOSPC)`` naming ``path`` instead of torch's RuntimeError, so the CLI prints its one
    line and the previous file stays as it was.

    ``durable=True`` flushes the file to disk (``fsync``) before it replaces ``path``: for
    checkpoints and results.  Scratch files of a run (the activation spool, per-batch counts),
    which a killed process leaves intact in the page cache anyway, pass ``durable=False`` (as
    the engine did before ``save_torch`` existed): no ``fsync`` of every spooled batch; only a
    crash of the whole machine can then leave a spool file a resumed run cannot read.
    """
    import torch

    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as fh:
                torch.save(obj, fh)
                if durable:
                    fh.flush()
                    os.fsync(fh.fileno())
        except RuntimeError as err:
            if not is_write_failure(err):
                raise
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[Any]:
    """``open`` for writing through :func:`atomic_path`."""
    if "r" in mode or "a" in mode:
        raise ValueError("atomic_open is for writing only")
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
        kwargs.setdefault("newline", "")
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_open(path, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, default=_json_default)
        fh.write("\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def _json_default(obj):
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_toml(path, what: str = "file", error=None) -> dict:
    """Parse a TOML file; an unreadable or invalid one raises ``error`` (a UserError subclass)
    with one line naming ``what`` it is (``"concept set"``, ``"probe"``) and the path."""
    error = error or UserError
    text = read_text(path, what, error)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise error(f"{what} {path} is not valid TOML: {err}") from None


def read_text(path, what: str = "file", error=None) -> str:
    """The text of a UTF-8 file (a byte-order mark is accepted and dropped).

    A missing or unreadable file, or bytes that are not UTF-8, raise ``error`` (a UserError
    subclass, default :class:`~neuroprobe.errors.DataFormatError`) with one line naming
    ``what`` it is, the path and, for an encoding error, the line and the byte.
    """
    from .errors import DataFormatError

    error = error or DataFormatError
    path = Path(path)
    if not path.exists():
        raise error(f"{what} {path} does not exist")
    if path.is_dir():
        raise error(f"{what} {path} is a folder, not a file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise error(f"{what} {path} is not UTF-8 text (line {line}: byte "
                    f"0x{data[err.start]:02x})",
                    hint="save it as UTF-8, e.g. iconv -f latin1 -t utf-8") from None


def read_json(path, what: str = "file", error=None) -> Any:
    """Parse a JSON file through :func:`read_text` (UTF-8, byte-order mark accepted); invalid
    JSON raises ``error`` (default DataFormatError) in one line naming ``what`` and the path."""
    from .errors import DataFormatError

    error = error or DataFormatError
    text = read_text(path, what, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{what} {path} is not valid JSON ({err})") from None


def read_csv(path, required=(), *, missing_hint: str | None = None,
             format_hint: str | None = None, what: str = "CSV file"
             ) -> tuple[list[str], list[dict]]:
    """``(header, rows)`` of a CSV file that must have the ``required`` columns.

    The one CSV reader of neuroprobe: UTF-8 with or without a byte-order mark, header names
    stripped of surrounding blanks.  A missing file, missing columns, text that is not UTF-8 or
    not CSV raise :class:`~neuroprobe.errors.DataFormatError` with one line naming the file
    (``missing_hint`` and ``format_hint`` say how to fix the first two).
    """
    path = Path(path)
    if not path.is_file() and not path.is_dir():
        raise DataFormatError(f"file {path} does not exist", hint=missing_hint)
    text = read_text(path, what)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [h.strip() if isinstance(h, str) else h for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        missing = [c for c in required if c not in header]
        if missing:
            raise DataFormatError(f"{path} lacks the column(s) {', '.join(missing)} "
                                  f"(header: {','.join(header) or 'empty'})",
                                  hint=format_hint)
        return header, list(reader)
    except csv.Error as err:
        raise DataFormatError(f"{path} is not a readable CSV file ({err})") from None


def confined(root, name: str, *, source, what: str = "image", hint: str | None = None) -> Path:
    """``root / name`` for a file name read from a data-set file ``source``; a name that leads
    outside ``root`` (an absolute path, ``..``, a link out of it) raises
    :class:`~neuroprobe.errors.DataFormatError`, so a data-set file cannot make neuroprobe read
    (or, for downloads, write) any file on the machine."""
    from .errors import DataFormatError

    root = Path(root)
    name = str(name)
    candidate = root / name
    try:
        candidate.resolve().relative_to(root.resolve())
    except ValueError:
        raise DataFormatError(f"{source}: {what} {name!r} is outside the folder {root}",
                              hint=hint or f"{what} names must be relative to {root}") from None
    if not name.strip() or candidate.resolve() == root.resolve():
        raise DataFormatError(f"{source}: empty {what} name")
    return candidate


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def config_hash(config: Any) -> str:
    """A stable short hash of a JSON-serialisable configuration."""
    text = json.dumps(config, sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
