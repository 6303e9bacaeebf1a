"""The dissection engine: label the units of any layers with concepts.

The path of one unit through neuroprobe::

    load     concepts: a ConceptDataset yields images, label masks, whole-image labels, fixations
    record   pass 1 (here): every requested layer in one forward pass per batch; per-unit
             statistics (neuroprobe.stats: Quantile for the IoU threshold, MinMax for region-NSS,
             TopK images for galleries); on the CPU the maps are kept in a spool on disk
    tally    pass 2 (here + neuroprobe.tally): thresholds -> active pixels -> (unit, label)
             counts (IoU) or z-scored maps at fixations (region-NSS), in stats.IoUTally/NSSTally
    score    neuroprobe.results: IoU per label, best label per category and overall; region-NSS
             table (mean of the top units, units above the NSS threshold)
    report   neuroprobe.results: units.csv, summary.json, a bar plot, region_nss.csv

Methods: Network Dissection (Bau, Zhou, Khosla, Oliva & Torralba, CVPR 2017) with its two
published denominators (NetDissect and NetDissect-Lite) and the unrestricted variant of
Bau et al. (PNAS 2020); region-based NSS of He, Tavakoli, Borji, Mi & Pugeault (CVPR 2019).

Runs are resumable: statistics are checkpointed into ``<out>/.state/`` every few batches,
keyed by a hash of the whole configuration; a killed run started again continues from the last
checkpoint and gives results identical to an uninterrupted run.

Unreadable items (``on_bad_image``).  An image or mask that fails to decode in the middle of a
concept set raises one of the readers' data errors (:data:`DATA_ERRORS`).  By default
(``"stop"``) the run stops with that error (one line naming the file).  With ``"skip"`` such an
item is left out of the whole dissection and listed in ``summary.json`` (``skipped``: data-set
``index``, ``id``, ``error`` and the ``pass`` that found it; ``n_skipped``): the result equals a
dissection of the concept set without those items (same thresholds, top images, IoU and
region-NSS), and the top-image indices still point into the full set.  Pass 1 therefore reads
the masks of every item in skip mode, also when it keeps no labels (``keep="recompute"``, the
GPU default: the masks are decoded in the loader workers and dropped, no extra transfer), so
that an item with a broken mask is left out of the thresholds as well, the same with
``keep="disk"`` and ``keep="recompute"``.  Pass 2 does not read the items skipped in pass 1.
Only an item that reads in pass 1 but fails in pass 2 (a file changed during the run) is found
by pass 2 (``"pass": "tally"``): its maps count in the thresholds and top images, not in the
tallies.  Anything else (a ``TypeError``, NaN activations, ...) still stops the run.  The option
is written into the configuration but not into its hash: a run stopped by a bad image resumes
from its checkpoint with ``"skip"`` (the batches before the checkpoint held no unreadable item,
so the result equals a fresh skip run); resuming a checkpoint that skipped items with
``"stop"`` is refused with one line.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from .errors import ConceptSetError, DataFormatError, UserError
from .io import config_hash, save_torch, write_json
from .stats import IoUTally, MinMax, NSSTally, Quantile, TopK
from .tally import upsample
from .utils import release_heap

__all__ = ["dissect", "DissectionResult", "MODES", "SCORES", "DENOMINATOR_CHOICES",
           "BAD_IMAGE_CHOICES", "DATA_ERRORS"]

#: Defaults of each mode: top fraction of activations above threshold, where the quantile is
#: taken, and the IoU denominator.
MODES = {
    "netdissect": {"quantile": 0.005, "quantile_on": "raw maps", "denominator": "netdissect"},
    "unrestricted": {"quantile": 0.01, "quantile_on": "upsampled maps", "denominator": "all"},
}
SCORES = ("iou", "region-nss", "both")
DENOMINATOR_CHOICES = ("netdissect", "annotated", "lite")
# -- fidelity (#18): region-NSS definition and NetDissect's tie rule --------------------------
#: where region-NSS z-scores the maps: "image" (the study's) or "mask" (faster)
NSS_RESOLUTION_CHOICES = ("image", "mask")
#: what a region-NSS region is: one annotated "instance" (the study's) or all pixels of a "label"
NSS_REGION_CHOICES = ("instance", "label")
#: standard deviation of the z-score: ``np.std`` (ddof 0) as in the authors' demo code
NSS_DDOF = 0
#: which category wins a tie of best IoUs (see neuroprobe.results.score_iou)
TIE_CHOICES = ("netdissect", "first")
# -- end fidelity ----------------------------------------------------------------------------
#: what to do with an item whose image or masks cannot be read (see the module docstring)
BAD_IMAGE_CHOICES = ("stop", "skip")
#: the errors the concept readers raise for an item they cannot decode (a missing, truncated,
#: undecodable or wrongly sized image or mask, unknown label ids): ``on_bad_image="skip"``
#: leaves such items out; every other exception stops the run
DATA_ERRORS = (DataFormatError, ConceptSetError)
#: configuration keys written into summary.json but not hashed into the run's key
_UNHASHED_KEYS = ("on_bad_image",)
STATE_VERSION = 1
#: seconds between checkpoints when ``checkpoint_every`` is not given
CHECKPOINT_SECONDS = 60.0
#: keys of ``config["concepts"]`` that say how the set was opened, not what it holds
_CONCEPTS_INFO_KEYS = ("spec", "root", "limit", "overrides")

#: test hook: called as ``_AFTER_BATCH(phase, batch_index)`` after every batch
_AFTER_BATCH: Callable | None = None


@dataclass
class DissectionResult:
    """What a dissection produced.

    ``units``: one dict per unit (the rows of units.csv); ``summary``: configuration, versions,
    counts of detector units per concept and layer; ``nss_table``: rows of the region-NSS table
    (``None`` for IoU scoring); ``thresholds``: per layer ``(U,)`` activation thresholds (IoU);
    ``top_images``: per layer ``(values, image indices)`` of the top-k images of every unit;
    ``stats``: per layer the statistic objects (``quantile``, ``tally`` / ``minmax``, ``nss``,
    ``top``), e.g. to merge runs over shards; ``skipped``: the items left out because they could
    not be read (``on_bad_image="skip"``), sorted by data-set index, each
    ``{"index", "id", "error", "pass"}`` (also in ``summary["skipped"]``).
    """

    units: list
    summary: dict
    nss_table: list | None = None
    thresholds: dict = field(default_factory=dict)
    top_images: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict, repr=False)
    skipped: list = field(default_factory=list)

    def save(self, out_dir) -> Path:
        from .results import write_results

        return write_results(self, out_dir)


# -- configuration ---------------------------------------------------------------------------

def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of a module's class name and state (for models not loaded from a file)."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        t = t.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _check_options(mode, score, quantile, iou_threshold, denominator, nss_threshold, top_units,
                   batch_size, on_bad_image="stop", nss_resolution="image",
                   nss_regions="instance", ties="netdissect"):
    for value, choices, flag in ((nss_resolution, NSS_RESOLUTION_CHOICES, "--nss-resolution"),
                                 (nss_regions, NSS_REGION_CHOICES, "--nss-regions"),
                                 (ties, TIE_CHOICES, "--ties")):
        if value not in choices:
            raise UserError(f"unknown {flag} {value!r}", hint=f"use {' or '.join(choices)}")
    if on_bad_image not in BAD_IMAGE_CHOICES:
        raise UserError(f"unknown --on-bad-image {on_bad_image!r}", hint="use stop or skip")
    if mode not in MODES:
        raise UserError(f"unknown dissection mode {mode!r}", hint="use netdissect or unrestricted")
    if score not in SCORES:
        raise UserError(f"unknown score {score!r}", hint="use iou, region-nss or both")
    if not 0 < quantile < 1:
        raise UserError(f"--quantile {quantile} must lie strictly between 0 and 1",
                        hint="it is the top fraction of activations, e.g. 0.005")
    if not 0 <= iou_threshold <= 1:
        raise UserError(f"--iou-threshold {iou_threshold} must lie in [0, 1]")
    if denominator is not None and denominator not in DENOMINATOR_CHOICES:
        raise UserError(f"unknown denominator {denominator!r}",
                        hint="use netdissect, annotated or lite")
    if mode == "unrestricted" and denominator is not None:
        raise UserError("--denominator applies to --mode netdissect only (the unrestricted mode "
                        "counts every pixel)")
    if top_units < 1:
        raise UserError("--top-units must be at least 1")
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")


# -- recording -------------------------------------------------------------------------------

def _forward(model, images, layers, amp, device):
    from .hooks import Recorder

    ctx = contextlib.nullcontext()
    if amp:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        ctx = torch.autocast(device_type=device.type, dtype=dtype)
    with torch.no_grad(), ctx, Recorder(model, layers, stop=True) as rec:
        model(images)
    out = {}
    for name in layers:
        calls = rec.calls(name)
        if not calls:
            raise UserError(f"layer {name!r} did not run in the forward pass",
                            hint="choose a layer that the model's forward uses")
        out[name] = calls[-1]
    return out


def _probe(model, dataset, layers, amp, device, on_bad_image="stop"):
    """Run one image (the first readable one in skip mode); check that every layer gives spatial
    maps.  Returns ``{layer: (U, h, w)}``."""
    from .concepts.base import collate

    sample, first_error = None, None
    for i in range(len(dataset)):
        try:
            sample = collate([dataset[i]])
            break
        except DATA_ERRORS as err:
            if on_bad_image != "skip":
                raise _with_skip_hint(err) from None
            first_error = first_error or err
    if sample is None:
        raise _none_readable(dataset, len(dataset), first_error and _error_line(first_error))
    images = sample["image"].to(device)
    try:
        acts = _forward(model, images, layers, amp, device)
    except UserError:
        raise
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"the model fails on {tuple(images.shape[-2:])} images of concept set "
            f"{getattr(dataset, 'name', '?')!r}: {first}",
            hint="the model and the image size do not fit; use a concept set with the model's "
            "input size (e.g. image_size=... in the concept-set file)") from None
    shapes = {}
    for name, a in acts.items():
        if not isinstance(a, torch.Tensor):
            raise UserError(f"layer {name!r} outputs a {type(a).__name__}, not a tensor",
                            hint="choose a layer whose output is a (batch, channels, H, W) tensor")
        if a.dim() != 4:
            what = {2: "(batch, channels): pooled or fully connected",
                    3: "(batch, tokens, channels): transformer tokens"}.get(a.dim(), "")
            raise UserError(
                f"layer {name!r} outputs shape {tuple(a.shape)} {what}, not spatial maps",
                hint="dissection needs (batch, channels, H, W); pick a convolutional layer, or "
                "reshape tokens to a grid (neuroprobe.hooks.Recorder(tokens_to_grid=True))")
        shapes[name] = tuple(a.shape[1:])
    return shapes


class _View(torch.utils.data.Dataset):
    """What a pass of the engine reads from a concept set: items with or without labels, images
    as ``uint8`` where the source decodes 8-bit files (see :meth:`ConceptDataset.item`), each
    with its data-set position as ``"index"``.

    An item the source cannot read raises one of :data:`DATA_ERRORS`.  ``on_bad_image="stop"``
    re-raises it with a hint naming ``--on-bad-image skip``; ``"skip"`` returns the marker
    ``{"skipped": {"index", "id", "error"}}`` instead, which :func:`~neuroprobe.concepts.base.
    collate` leaves out of the batch and lists (so nothing but plain data crosses from a loader
    worker).  ``validate=True`` reads the labels of an item but returns its image alone (pass 1
    in skip mode: an item with a broken mask is found before it counts in a threshold).
    """

    def __init__(self, source, labels: bool, on_bad_image: str = "stop", validate: bool = False):
        self.source, self.labels = source, labels
        self.on_bad_image, self.validate = on_bad_image, validate

    def __len__(self):
        return len(self.source)

    def _read(self, index):
        item = getattr(self.source, "item", None)
        if item is None:   # a plain dataset of item dicts
            out = self.source[index]
        else:
            out = item(index, labels=self.labels or self.validate, raw_image=True)
        return out if self.labels else {"image": out["image"], "id": out["id"]}

    def __getitem__(self, index):
        from .concepts.base import SKIPPED

        try:
            out = self._read(index)
        except DATA_ERRORS as err:
            if self.on_bad_image != "skip":
                raise _with_skip_hint(err) from None
            return {SKIPPED: {"index": int(index), "id": _item_id(self.source, index),
                              "error": _error_line(err)}}
        return {**out, "index": int(index)}


def _error_line(err: UserError) -> str:
    """The one-line text of a data error (its message, without the hint)."""
    return " ".join(err.message.split())


def _with_skip_hint(err: UserError) -> UserError:
    """The same data error, its hint extended by the way to go on without the item."""
    more = ("pass --on-bad-image skip (library: on_bad_image='skip') to leave unreadable "
            "images out and list them in summary.json")
    hint = f"{err.hint}; or {more}" if err.hint else f"replace or remove the file, or {more}"
    try:
        new = type(err)(err.message, hint=hint)
    except TypeError:   # a subclass with another signature: keep it as it is
        return err
    return new


def _item_id(source, index: int) -> str | None:
    """The id of an item that could not be read, without decoding it (``source.item_id``;
    ``None`` where the source cannot tell: the index and the error still name the item)."""
    fn = getattr(source, "item_id", None)
    if not callable(fn):
        return None
    try:
        out = fn(index)
    except Exception:   # the id is a courtesy
        return None
    return None if out is None else str(out)


def _none_readable(dataset, n: int, error: str | None) -> UserError:
    return UserError(f"none of the {n} images of concept set "
                     f"{getattr(dataset, 'name', '?')!r} could be read"
                     + (f" (first error: {error})" if error else ""),
                     hint="check the data folder (--root) and the concept-set file")


def _model_input(images: torch.Tensor, device, channels_last: bool) -> torch.Tensor:
    """A batch of images on ``device`` as float32 in ``[0, 1]`` (``uint8`` ones are converted
    there: the same float32 values as :func:`~neuroprobe.concepts.maskfolder.image_tensor`)."""
    from .concepts.maskfolder import UINT8_SCALE

    x = images.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        x = x.float().mul_(UINT8_SCALE)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _check_finite(name, a, ids):
    if torch.isfinite(a).all():
        return
    bad = ~torch.isfinite(a)
    b, u = bad.flatten(2).any(2).nonzero()[0].tolist()
    kind = "NaN" if torch.isnan(a[b, u]).any() else "infinite"
    raise UserError(f"{kind} activations in layer {name!r}, unit {u}, image {ids[b]!r}",
                    hint="check the model's weights and input normalisation, or try without "
                    "--amp")


class _State:
    """Checkpoints of a run in ``<out>/.state/``: config, statistics and the activation spool."""

    def __init__(self, out_dir: Path | None, config: dict, key: str):
        self.dir = None if out_dir is None else Path(out_dir) / ".state"
        self.config, self.key = config, key

    @property
    def enabled(self) -> bool:
        return self.dir is not None

    def load(self) -> dict | None:
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

    def spool_path(self, j: int) -> Path:
        return self.dir / "spool" / f"{j:07d}.pt"

    def write_spool(self, j: int, obj: dict) -> None:
        path = self.spool_path(j)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_torch(obj, path)

    def read_spool(self, j: int) -> dict:
        return torch.load(self.spool_path(j), map_location="cpu", weights_only=True)

    def drop_spool(self) -> None:
        if self.enabled:
            shutil.rmtree(self.dir / "spool", ignore_errors=True)


def _check_out_dir(out_dir: Path, key: str, overwrite: bool) -> None:
    """Refuse an output folder holding a run of another configuration (unless overwrite)."""
    found = None
    for path in (out_dir / ".state" / "config.json", out_dir / "summary.json"):
        if path.is_file():
            try:
                found = json.loads(path.read_text()).get("key") or json.loads(
                    path.read_text()).get("config_hash")
            except (OSError, ValueError):
                found = "unreadable"
            if found:
                break
    if found is None or found == key:
        return
    if not overwrite:
        raise UserError(f"output folder {out_dir} holds a dissection of another configuration "
                        f"({found}, this one is {key})",
                        hint="choose another --out folder or pass --overwrite")
    shutil.rmtree(out_dir / ".state", ignore_errors=True)
    for name in ("units.csv", "summary.json", "region_nss.csv", "concepts.png",
                 "top_images.pt"):
        (out_dir / name).unlink(missing_ok=True)


@contextlib.contextmanager
def _run_lock(out_dir):
    """Hold ``<out>/.lock`` (an advisory ``flock``) while a run writes into ``out``.

    A second run into the same folder is refused with one clear line instead of mixing its
    checkpoints and results with the first one's.  The kernel releases the lock when the
    process dies (even by SIGKILL), so a killed run never blocks its resume.
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
            raise UserError(f"output folder {out} is in use by another dissection (process "
                            f"{pid})", hint="wait for it to finish or choose another --out "
                            "folder") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
    finally:
        fh.close()


# -- the engine ------------------------------------------------------------------------------

def _locked(fn):
    """Hold ``<out_dir>/.lock`` while ``fn`` runs (under torchrun only rank 0 writes into
    ``out_dir``, so only rank 0 holds it).  ``functools.wraps`` keeps ``fn``'s signature visible
    to ``help`` and ``inspect.signature``."""
    @functools.wraps(fn)
    def wrapper(model, dataset, layers=None, **options):
        from . import distributed

        main_rank = distributed.world_size_from_env() <= 1 or os.environ.get("RANK", "0") == "0"
        with _run_lock(options.get("out_dir") if main_rank else None):
            return fn(model, dataset, layers, **options)

    return wrapper


@_locked
def dissect(model: torch.nn.Module, dataset, layers: Sequence[str] | str | None = None, *,
            mode: str = "netdissect", score: str = "iou", quantile: float | None = None,
            iou_threshold: float = 0.04, denominator: str | None = None,
            nss_threshold: float = 1.5, top_units: int = 10, batch_size: int = 32,
            device=None, amp: str | None = None, limit: int | None = None,
            out_dir=None, resume: bool = True, overwrite: bool = False,
            keep: str = "auto", checkpoint_every: int | None = None, num_workers: int = 0,
            model_info: dict | None = None, sketch_capacity: int = 4096, top_k: int = 16,
            progress: bool = True, concepts_info: dict | None = None,
            on_bad_image: str = "stop", nss_resolution: str = "image",
            nss_regions: str = "instance", ties: str = "netdissect") -> DissectionResult:
    """Dissect ``layers`` of ``model`` on a concept dataset.

    Parameters
    ----------
    model : nn.Module
        Takes images in ``[0, 1]`` (adapters normalise themselves).
    dataset : ConceptDataset
    layers : names of layers with spatial outputs ``(B, C, H, W)`` (default: the ``layers``
        attribute of ``model_info`` if given).
    mode : ``"netdissect"`` (threshold: top ``quantile`` = 0.005 of the raw maps; IoU with the
        per-category denominator) or ``"unrestricted"`` (top 0.01 of the upsampled maps; IoU
        over all pixels; Bau et al. 2020).
    score : ``"iou"``, ``"region-nss"`` (needs fixations) or ``"both"`` (one run; units.csv
        holds the IoU labels with the region-NSS label of each unit beside them).
    quantile : top fraction of activations above the threshold (default by mode).
    iou_threshold : IoU at which a unit counts as a detector of its best label (0.04).
    denominator : ``"netdissect"`` (default: a unit's activation counts for category ``c`` on
        the images holding a label of primary category ``c``, NetDissect's
        ``count_act_with_labelcat``), ``"annotated"`` (on the images whose ``categories`` flag
        is set: neuroprobe's former rule) or ``"lite"`` (NetDissect-Lite's rule), see
        :func:`neuroprobe.tally.iou_counts`.
    nss_threshold, top_units : region-NSS table: units with NSS above the threshold are counted;
        the mean NSS of the ``top_units`` best units is reported.
    batch_size, device, amp : batching, device (default: the model's) and optional autocast
        (``"bf16"`` / ``"fp16"``) of the forward pass.
    limit : use the first ``limit`` images only.
    out_dir : where results and checkpoints go (``None``: nothing is written, no resume).
    resume, overwrite : continue a matching run in ``out_dir``; replace a run of another
        configuration there instead of refusing.
    keep : ``"disk"`` keeps the maps of pass 1 in a spool under ``out_dir/.state`` (or a
        temporary folder) so pass 2 needs no second forward pass; ``"recompute"`` runs the model
        again; ``"auto"``: disk on the CPU, recompute on a GPU.
    checkpoint_every : batches between checkpoints; ``None`` (default): a checkpoint whenever
        :data:`CHECKPOINT_SECONDS` have passed since the last one (a fast GPU run writes few of
        them, a slow CPU run loses at most that much work when killed).  Each pass also ends
        with one.
    model_info : identity of the model written into the results (``{"spec", "sha256", ...}``);
        computed from the weights when not given.
    sketch_capacity, top_k : size of the quantile sketch per unit; top images kept per unit.
    progress : show progress bars.
    concepts_info : how the concept set was opened, written into ``config["concepts"]``
        (``{"spec": name or .toml path, "root": ..., "limit": ...}``) so that a gallery can
        reopen it; not part of the configuration hash (the data are identified by the set's
        own ``config()``).
    on_bad_image : ``"stop"`` (default): an image or mask that cannot be decoded stops the run
        with one line naming the file; ``"skip"``: such items are left out of the dissection
        and listed (``summary["skipped"]``, :attr:`DissectionResult.skipped`).  Only the
        readers' data errors (:data:`DATA_ERRORS`) are skipped; see the module docstring for
        what skipping guarantees.  Written into the configuration, not hashed into its key (a
        run stopped by a bad image resumes with ``"skip"``).
    nss_resolution : ``"image"`` (default, the study's: each unit's map is upsampled to the
        image size) or ``"mask"`` (to the mask size; faster), see
        :func:`neuroprobe.tally.region_nss`.
    nss_regions : ``"instance"`` (default, the study's: each annotated instance is a region,
        where the concept source knows instances) or ``"label"`` (all pixels of a label in an
        image form one region).  Region-NSS is computed per region, then averaged over the
        label's regions.
    ties : ``"netdissect"`` (default: of categories whose best IoUs tie, the later one in the
        category order wins, as in NetDissect) or ``"first"`` (the first one).

    Returns
    -------
    DissectionResult (also written to ``out_dir`` when given).
    """
    from .hooks import layer_aliases

    if quantile is None:
        quantile = MODES.get(mode, MODES["netdissect"])["quantile"]
    _check_options(mode, score, quantile, iou_threshold, denominator, nss_threshold, top_units,
                   batch_size, on_bad_image, nss_resolution, nss_regions, ties)
    use_iou, use_nss = score in ("iou", "both"), score in ("region-nss", "both")
    if use_nss and not getattr(dataset, "has_fixations", False):
        raise UserError(f"concept set {getattr(dataset, 'name', '?')!r} has no fixations; "
                        "--score region-nss needs them",
                        hint="use --score iou, or a concept set with fixations (synthetic, "
                        "eyecrowd, a mask folder with OSIE fixations)")
    model_info = dict(model_info or {})
    if layers is None:
        layers = model_info.get("layers") or []
    if isinstance(layers, str):
        layers = [s for s in layers.split(",") if s]
    if not layers:
        raise UserError("no layers to dissect", hint="name them with --layers a,b")
    # names as the user gave them (a bare "layer4" of a wrapped model hooks "net.layer4") name
    # the layers in the results and the configuration (fidelity #18)
    aliases = layer_aliases(model, layers)
    layers = list(aliases)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    from . import distributed

    dctx = distributed.setup(device)
    if dctx.active and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", dctx.local_rank)
    try:
        return _dissect_body(**locals())
    finally:
        distributed.teardown(dctx)


def _dissect_body(*, model, dataset, layers, mode, score, quantile, iou_threshold, denominator,
                  nss_threshold, top_units, batch_size, device, amp, limit, out_dir, resume,
                  overwrite, keep, checkpoint_every, num_workers, model_info, sketch_capacity,
                  top_k, progress, concepts_info, dctx, use_iou, use_nss, on_bad_image,
                  nss_resolution, nss_regions, ties, aliases, **_):
    import tempfile

    from .concepts.base import SKIPPED, collate
    from .utils import info, progress as bar, versions
    from . import distributed

    import time

    progress = progress and dctx.is_main
    model = model.to(device).eval()
    # on a GPU, convolutions run fastest with channels-last tensors (the model's parameters are
    # converted in place, which changes no value)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    timing = {}
    n_total = len(dataset)
    n = n_total if limit is None else min(int(limit), n_total)
    if n < 1:
        raise UserError(f"concept set {getattr(dataset, 'name', '?')!r} has no images")
    source = dataset
    if n < n_total:
        dataset = torch.utils.data.Subset(source, range(n))
    if keep == "auto":
        keep = "disk" if device.type == "cpu" else "recompute"
    if keep not in ("disk", "recompute"):
        raise UserError(f"unknown keep option {keep!r}", hint="disk, recompute or auto")
    getattr(source, "prepare_labels", lambda *a, **k: None)(range(n), progress=progress)
    shapes = _probe(model, dataset, layers, amp, device, on_bad_image)
    mask_size = tuple(source.mask_size)
    denom = MODES[mode]["denominator"] if denominator is None else denominator
    if "sha256" not in model_info:
        model_info["sha256"] = model_fingerprint(model)
    config = {
        "model": model_info, "layers": [aliases[name] for name in layers],
        "concepts": {**source.config(), "n": n,
                     **{k: v for k, v in (concepts_info or {}).items() if v is not None}},
        "mode": mode, "score": score, "quantile": quantile,
        "quantile_on": MODES[mode]["quantile_on"], "iou_threshold": iou_threshold,
        "denominator": denom if use_iou else None,
        "nss_threshold": nss_threshold, "top_units": top_units, "nss_ddof": NSS_DDOF,
        "nss_resolution": nss_resolution, "nss_regions": nss_regions, "ties": ties,
        "image_size": list(source.image_size), "mask_size": list(mask_size), "amp": amp,
        "sketch": {"method": "KLL compactors, high-rank accuracy", "capacity": sketch_capacity},
        "top_k": top_k, "on_bad_image": on_bad_image,
    }
    # the key names what determines the numbers: the model by its weights, not by its path (and
    # not on_bad_image: it changes nothing in a run without unreadable items, and a run stopped
    # by one must resume with skip)
    key = config_hash({**{k: v for k, v in config.items() if k not in _UNHASHED_KEYS},
                       "model": {k: v for k, v in model_info.items()
                                           if k not in ("file", "spec", "note")},
                       "concepts": {k: v for k, v in config["concepts"].items()
                                    if k not in _CONCEPTS_INFO_KEYS}})
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        if dctx.active:   # every rank checks; only rank 0 clears a run of another config
            if not dctx.is_main:
                if not overwrite:
                    _check_out_dir(out, key, False)
            else:
                _check_out_dir(out, key, overwrite)
            dctx.barrier()
        else:
            _check_out_dir(out, key, overwrite)
    state_io = _State(out, config, key)
    state = state_io.load() if resume and not dctx.active else None
    if dctx.active and state_io.enabled:
        # each rank spools into its own folder; no checkpoints (a killed torchrun run restarts)
        state_io.dir = state_io.dir / f"rank{dctx.rank}"
    tmp_spool = None
    if keep == "disk" and not state_io.enabled:
        tmp_spool = tempfile.TemporaryDirectory(prefix="neuroprobe-spool-")
        state_io.dir = Path(tmp_spool.name)

    labels = source.labels
    num_labels = labels.max_id + 1
    label_dtype = torch.int16 if num_labels <= 2 ** 15 else torch.int32   # bytes to move
    report_cat = torch.from_numpy(labels.category_index())
    if denom == "all":
        tally_cat = torch.where(report_cat >= 0, 0, -1)
        n_cat = 1
    else:
        tally_cat, n_cat = report_cat, len(labels.categories)

    def new_stats():
        st = {}
        for name in layers:
            s = {"top": TopK(top_k)}
            if use_iou:
                s["quantile"] = Quantile(sketch_capacity)
                s["tally"] = IoUTally(shapes[name][0], num_labels, tally_cat, n_cat, denom)
            if use_nss:
                s["minmax"] = MinMax()
                s["nss"] = NSSTally(shapes[name][0], num_labels, ddof=NSS_DDOF,
                                    resolution=nss_resolution, regions=nss_regions)
            st[name] = s
        return st

    def make_stat(name, k):
        return {"top": lambda: TopK(top_k), "quantile": lambda: Quantile(sketch_capacity),
                "tally": lambda: IoUTally(shapes[name][0], num_labels, tally_cat, n_cat, denom),
                "minmax": MinMax,
                "nss": lambda: NSSTally(shapes[name][0], num_labels, ddof=NSS_DDOF,
                                        resolution=nss_resolution, regions=nss_regions)}[k]()

    stats = new_stats()
    thresholds: dict = {}
    phase, next_batch = "record", 0
    #: items left out because they could not be read: {"index", "id", "error", "pass"}
    skipped: list = []
    if state is not None:
        phase, next_batch = state["phase"], int(state["next_batch"])
        skipped = [dict(s) for s in state.get("skipped", [])]
        if skipped and on_bad_image != "skip":
            raise UserError(f"the checkpoint in {state_io.dir} left out {len(skipped)} "
                            f"unreadable image(s) (first: {skipped[0]['error']})",
                            hint="resume with --on-bad-image skip, or start again with "
                            "--no-resume")
        for name in layers:
            for k, sd in state["stats"][name].items():
                stats[name][k].load_state_dict(sd)
                stats[name][k].to(device)
        if phase != "done":
            info(f"resuming the {phase} pass at batch {next_batch} from {state_io.dir}")
    per_batch = batch_size
    if state is not None and phase != "done":
        per_batch = int(state.get("batch_size", batch_size))  # keep the run's batching
    n_batches = (n + per_batch - 1) // per_batch
    # this process's batches: all of them, or every world-th one under torchrun
    mine = list(range(dctx.rank, n_batches, dctx.world))

    def checkpoint(phase_, next_):
        if not state_io.enabled or tmp_spool is not None or dctx.active:
            return
        # a finished run keeps its thresholds instead of the (larger) quantile sketches
        drop = ("quantile",) if phase_ == "done" else ()
        state_io.save({"phase": phase_, "next_batch": next_, "batch_size": per_batch,
                       "skipped": [dict(s) for s in skipped],
                       "thresholds": {k: v.cpu() for k, v in thresholds.items()},
                       "stats": {name: {k: s.state_dict() for k, s in st.items()
                                        if k not in drop}
                                 for name, st in stats.items()}})

    last_checkpoint = [time.monotonic()]

    def due(done):
        """Whether a checkpoint is due after ``done`` batches of a pass."""
        if checkpoint_every is not None:
            return done % checkpoint_every == 0
        if time.monotonic() - last_checkpoint[0] >= CHECKPOINT_SECONDS:
            last_checkpoint[0] = time.monotonic()
            return True
        return False

    def loader(start, labels=True, validate=False, exclude=frozenset()):
        """Batches ``mine[start:]``, each the images of its global batch number (with their
        labels, or the images alone) but those in ``exclude``; images come as ``uint8`` where
        the source allows it, labels as int16 where the ids fit, pinned for an asynchronous copy
        to a GPU.  Every batch carries the data-set ``index`` of its items and, in skip mode,
        the ``skipped`` items it could not read; a batch may be empty (``id == []``)."""
        batches = [(j, [i for i in range(j * per_batch, min(n, (j + 1) * per_batch))
                        if i not in exclude]) for j in mine[start:]]
        data = torch.utils.data.DataLoader(
            _View(source, labels, on_bad_image, validate),
            batch_sampler=[b for _, b in batches if b], num_workers=num_workers,
            collate_fn=functools.partial(collate, label_dtype=label_dtype),
            pin_memory=device.type == "cuda")

        def gen():
            it = None
            for j, b in batches:
                if not b:
                    yield j, {"id": [], "index": torch.zeros(0, dtype=torch.int64)}
                    continue
                if it is None:
                    it = iter(data)
                yield j, next(it)
        return gen()

    def note_skipped(batch, pass_):
        for s in batch.get(SKIPPED, ()):
            skipped.append({"index": int(s["index"]), "id": s["id"], "error": s["error"],
                            "pass": pass_})

    # -- pass 1: record -------------------------------------------------------------------
    if phase == "record":
        t_start = time.perf_counter()
        # the maps are recomputed in pass 2, so this pass reads no labels (unless they are
        # spooled with the maps; in skip mode it reads and drops them, to find broken masks)
        it = loader(next_batch, labels=keep == "disk",
                    validate=on_bad_image == "skip" and keep != "disk")
        pbar = bar(total=len(mine), initial=next_batch, desc="dissect: record", unit="batch",
                   **({} if progress else {"disable": True}))
        for pos, (j, batch) in enumerate(it, start=next_batch):
            note_skipped(batch, "record")
            acts = {}
            if batch["id"]:
                images = _model_input(batch["image"], device, channels_last)
                acts = _forward(model, images, layers, amp, device)
                # the items' own data-set positions (not j * per_batch + k: items may be missing)
                idx = batch["index"].to(device, non_blocking=True)
            for name in (layers if batch["id"] else ()):
                a = acts[name].float()
                _check_finite(name, a, batch["id"])
                u = a.shape[1]
                st = stats[name]
                st["top"].add(a.flatten(2).amax(2), idx)
                if use_iou:
                    if mode == "netdissect":
                        st["quantile"].add(a.transpose(0, 1).reshape(u, -1).t())
                    else:
                        for s in range(0, len(a), 4):   # bounded memory: 4 images at a time
                            up = upsample(a[s:s + 4], mask_size)
                            st["quantile"].add(up.transpose(0, 1).reshape(u, -1).t())
                if use_nss:
                    st["minmax"].add(a.transpose(0, 1).reshape(u, -1).t())
                acts[name] = a
            if keep == "disk":
                state_io.write_spool(j, _spool_record(acts, batch))
            pbar.update(1)
            done = pos + 1
            if done == len(mine):
                phase, next_batch = "tally", 0
                checkpoint(phase, 0)
            elif due(done):
                checkpoint("record", done)
            # nothing of this batch lives on into the next forward pass, and on the CPU the
            # heap's free pages go back to the system (see neuroprobe.utils.release_heap)
            batch = images = acts = a = up = None
            if device.type == "cpu":
                release_heap()
            if _AFTER_BATCH is not None:
                _AFTER_BATCH("record", j)
        pbar.close()
        phase, next_batch = "tally", 0
        distributed.merge_stats(dctx, stats, ("top", "quantile", "minmax"), make_stat, device)
        skipped = distributed.merge_lists(dctx, skipped)
        timing["record_s"] = round(time.perf_counter() - t_start, 3)
    if len({s["index"] for s in skipped if s["pass"] == "record"}) >= n:
        raise _none_readable(source, n, skipped[0]["error"] if skipped else None)

    if use_iou and phase == "done":
        thresholds = {k: v.to(device) for k, v in state["thresholds"].items()}
    elif use_iou:
        thresholds = {name: stats[name]["quantile"].quantile(1.0 - quantile).float()
                      for name in layers}

    # -- pass 2: tally --------------------------------------------------------------------
    if phase == "tally":
        t_start = time.perf_counter()
        if keep == "disk" and not all(state_io.spool_path(j).is_file()
                                      for j in mine[next_batch:]):
            keep = "recompute"   # a run resumed after one that did not keep its maps
        pbar = bar(total=len(mine), initial=next_batch, desc="dissect: tally", unit="batch",
                   **({} if progress else {"disable": True}))
        if keep == "disk":
            source_iter = ((j, state_io.read_spool(j)) for j in mine[next_batch:])
        else:   # pass 2 reads no item that pass 1 left out
            source_iter = loader(next_batch, exclude=frozenset(
                s["index"] for s in skipped if s["pass"] == "record"))
        n_before = len(skipped)
        for pos, (j, batch) in enumerate(source_iter, start=next_batch):
            note_skipped(batch, "tally")
            if not batch["id"]:
                acts = {}
            elif keep == "disk":
                acts = {k: v.to(device) for k, v in batch["acts"].items()}
            else:
                acts = _forward(model, _model_input(batch["image"], device, channels_last),
                                layers, amp, device)
            if acts:
                lay = batch["layers"].to(device, non_blocking=True).long()
                whole = batch["whole"].to(device, non_blocking=True).long()
            for name in (layers if acts else ()):
                a = acts[name].float()
                st = stats[name]
                if use_iou:
                    st["tally"].add(a, thresholds[name], lay, whole, batch["categories"])
                if use_nss:
                    mm = st["minmax"]
                    st["nss"].add(a, mm.min, mm.max, lay, batch["fixations"],
                                  tuple(source.image_size), batch.get("instances"))
            pbar.update(1)
            done = pos + 1
            if done == len(mine):
                checkpoint("done", 0)
            elif due(done):
                checkpoint("tally", done)
            batch = acts = lay = whole = a = None
            if device.type == "cpu":   # after a forward pass always, else once 64 MiB are free
                release_heap(0 if keep != "disk" else 64 << 20)
            if _AFTER_BATCH is not None:
                _AFTER_BATCH("tally", j)
        pbar.close()
        state_io.drop_spool()
        distributed.merge_stats(dctx, stats, ("tally", "nss"), make_stat, device)
        skipped = skipped[:n_before] + distributed.merge_lists(dctx, skipped[n_before:])
        if dctx.active and state_io.enabled and tmp_spool is None:
            shutil.rmtree(state_io.dir, ignore_errors=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timing["tally_s"] = round(time.perf_counter() - t_start, 3)
    if tmp_spool is not None:
        tmp_spool.cleanup()

    # -- score and report -----------------------------------------------------------------
    from .results import score_iou, score_nss, summarise

    units, table = [], None
    for name in layers:
        rows = []
        if use_iou:
            rows = score_iou(aliases[name], stats[name]["tally"], thresholds[name], labels,
                             iou_threshold, ties=ties)
        if use_nss:
            nss_rows, trows = score_nss(aliases[name], stats[name]["nss"], labels,
                                        nss_threshold, top_units)
            table = (table or []) + trows
            if use_iou:   # both: the unit's region-NSS label beside its IoU label
                for r, q in zip(rows, nss_rows):
                    r.update({"nss-label": q["label"], "nss-category": q["category"],
                              "nss-score": q["score"], "nss-detector": q["detector"]})
            else:
                rows = nss_rows
        units += rows
    summary = summarise(units, config, key, versions(), config["layers"], labels, table)
    # seconds of this process's passes (a resumed run times only what it did); not configuration
    summary["timing"] = {**timing, "device": str(device), "num_workers": num_workers}
    skipped = sorted(skipped, key=lambda s: s["index"])
    summary["skipped"] = skipped
    summary["n_skipped"] = len(skipped)
    result = DissectionResult(
        units, summary, table, {aliases[k]: v.cpu() for k, v in thresholds.items()},
        {aliases[name]: (stats[name]["top"].values.cpu(), stats[name]["top"].index.cpu())
         for name in layers}, {aliases[name]: st for name, st in stats.items()}, skipped)
    if out is not None and dctx.is_main:
        result.save(out)
    dctx.barrier()
    if dctx.active and dctx.is_main and out is not None:
        with contextlib.suppress(OSError):   # the ranks' spool folders are gone
            (out / ".state").rmdir()
    return result


def _spool_record(acts: dict, batch: dict) -> dict:
    if not batch["id"]:   # every item of the batch was skipped
        return {"acts": {}, "id": []}
    # the labels already come in the engine's smallest label dtype (int16 where ids fit)
    out = {"acts": {k: v.detach().cpu() for k, v in acts.items()},
           "layers": batch["layers"], "whole": batch["whole"],
           "categories": batch["categories"], "fixations": batch["fixations"],
           "id": list(batch["id"])}
    if batch.get("instances") is not None:   # fidelity (#18): region-NSS instances
        out["instances"] = batch["instances"]
    return out

