"""Where a run keeps its state: the configuration key, the folder lock, checkpoints, the
activation spool and the model's fingerprint.

A run folder (``--out``) holds the results of one configuration.  While a run writes into it,
``<out>/.lock`` is held (:meth:`RunStore.lock`); its resumable state lives in ``<out>/.state/``:
``config.json`` (key and configuration), ``state.pt`` (the statistics and where the passes
stand) and ``spool/`` (the maps of pass 1, one file per batch, when they are kept on disk).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch

from ..errors import UserError
from ..io import save_torch, write_json

__all__ = ["RunStore", "model_fingerprint", "check_model", "STATE_VERSION", "RESULT_FILES",
           "remove_stale_temps"]

STATE_VERSION = 1
#: the files a finished run writes (removed when ``overwrite`` replaces a run)
RESULT_FILES = ("units.csv", "summary.json", "region_nss.csv", "concepts.png", "top_images.npz",
                "scores.npz", "top_images.pt", "image_counts.npz")

#: a temporary file of :func:`neuroprobe.io.atomic_path` (``.NAME.XXXXXXXX.SUFFIX``, from
#: ``tempfile.mkstemp``), which a run killed by SIGKILL or a power cut can leave behind
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}(\.[A-Za-z0-9]+)?$")


def remove_stale_temps(out: Path) -> list[Path]:
    """Remove the half-written temporaries a killed run left in ``out`` (its result files) and
    in ``out/.state`` (everything there is the run's own); return what was removed.

    Call it only while holding :meth:`RunStore.lock`: then no other process writes there.
    """
    removed = []
    candidates = [p for p in out.glob(".*") if p.is_file()
                  and (m := _TEMP_NAME.match(p.name)) and m["target"] in RESULT_FILES]
    if (out / ".state").is_dir():
        candidates += [p for p in (out / ".state").rglob(".*")
                       if p.is_file() and _TEMP_NAME.match(p.name)]
    for p in candidates:
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of a module's class name and state (names, dtypes and bytes of every tensor of
    its ``state_dict``): the same for the same network however it was loaded."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        t = t.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_model(summary: dict, model: torch.nn.Module, where) -> None:
    """Refuse ``model`` when it is not the network the run in ``where`` was made with.

    The run's ``summary.json`` records ``config.model.fingerprint`` (:func:`model_fingerprint`
    of the dissected network); runs written before it was recorded are not checked.
    """
    recorded = ((summary.get("config") or {}).get("model") or {}).get("fingerprint")
    if not recorded:
        return
    found = model_fingerprint(model)
    if found != recorded:
        spec = ((summary.get("config") or {}).get("model") or {}).get("spec") or "?"
        raise UserError(f"the model {spec!r} is not the network run {where} was made with "
                        f"(fingerprint {found[:16]}, the run recorded {recorded[:16]})",
                        hint="restore the run's model file, or dissect the model again into a "
                        "new --out folder")


class RunStore:
    """Checkpoints of a run in ``<out>/.state/``: configuration, statistics and the spool.

    Parameters
    ----------
    out_dir : the run folder, or ``None`` (nothing is kept: no checkpoint, no resume).
    config : the run's configuration (written beside the checkpoint).
    key : the hash of what determines the run's numbers (a checkpoint of another key is
        ignored, a folder holding results of another key is refused).
    """

    def __init__(self, out_dir: Path | None, config: dict, key: str):
        self.out = None if out_dir is None else Path(out_dir)
        self.dir = None if out_dir is None else Path(out_dir) / ".state"
        self.config, self.key = config, key

    @property
    def enabled(self) -> bool:
        return self.dir is not None

    # -- checkpoints ---------------------------------------------------------------------------
    def load(self) -> dict | None:
        """The checkpoint of this configuration, or ``None`` (none, unreadable, or another
        key or version)."""
        if not self.enabled or not (self.dir / "state.pt").is_file():
            return None
        try:
            state = torch.load(self.dir / "state.pt", map_location="cpu", weights_only=True)
        except Exception:
            return None
        if state.get("key") != self.key or state.get("version") != STATE_VERSION:
            return None
        return state

    def save(self, state: dict) -> None:
        if not self.enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(self.dir / "config.json", {"key": self.key, "config": self.config})
        state = {**state, "key": self.key, "version": STATE_VERSION}
        save_torch(state, self.dir / "state.pt")

    # -- spool ---------------------------------------------------------------------------------
    def spool_path(self, j: int) -> Path:
        return self.dir / "spool" / f"{j:07d}.pt"

    def has_spool(self, batches) -> bool:
        return self.enabled and all(self.spool_path(j).is_file() for j in batches)

    def write_spool(self, j: int, obj: dict) -> None:
        path = self.spool_path(j)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_torch(obj, path, durable=False)   # scratch of this run (see save_torch)

    def read_spool(self, j: int) -> dict:
        return torch.load(self.spool_path(j), map_location="cpu", weights_only=True)

    def drop_spool(self) -> None:
        if self.enabled:
            shutil.rmtree(self.dir / "spool", ignore_errors=True)

    # -- the folder ----------------------------------------------------------------------------
    def check_out_dir(self, overwrite: bool) -> None:
        """Refuse an output folder holding a run of another configuration (unless
        ``overwrite``, which clears it)."""
        if self.out is None:
            return
        found = None
        for path in (self.out / ".state" / "config.json", self.out / "summary.json"):
            if path.is_file():
                try:
                    data = json.loads(path.read_text())
                    found = data.get("key") or data.get("config_hash")
                except (OSError, ValueError):
                    found = "unreadable"
                if found:
                    break
        if found is None or found == self.key:
            return
        if not overwrite:
            raise UserError(f"output folder {self.out} holds a dissection of another "
                            f"configuration ({found}, this one is {self.key})",
                            hint="choose another --out folder or pass --overwrite")
        shutil.rmtree(self.out / ".state", ignore_errors=True)
        for name in RESULT_FILES:
            (self.out / name).unlink(missing_ok=True)

    @staticmethod
    @contextlib.contextmanager
    def lock(out_dir):
        """Hold ``<out>/.lock`` (an advisory ``flock``) while a run writes into ``out``.

        A second run into the same folder is refused with one clear line instead of mixing
        its checkpoints and results with the first one's.  The kernel releases the lock when
        the process dies (even by SIGKILL), so a killed run never blocks its resume.
        """
        if out_dir is None:
            yield
            return
        try:
            import fcntl
        except ImportError:   # pragma: no cover - Windows: no advisory locks, no guard
            yield
            return
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            yield   # the engine reports a file given as --out
            return
        out.mkdir(parents=True, exist_ok=True)
        path = out / ".lock"
        fh = open(path, "a+")
        try:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                pid = fh.read().strip() or "?"
                raise UserError(f"output folder {out} is in use by another dissection "
                                f"(process {pid})", hint="wait for it to finish or choose "
                                "another --out folder") from None
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            remove_stale_temps(out)
            try:
                yield
            finally:
                with contextlib.suppress(OSError):
                    path.unlink()
        finally:
            fh.close()
