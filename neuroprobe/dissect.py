"""The dissection engine: label the units of any layers with concepts.

The path of one unit through neuroprobe::

    load     concepts: a ConceptDataset yields images, label masks, whole-image labels, fixations
    record   pass 1 (here, one :func:`neuroprobe.engine.run_pass` with a per-batch callback):
             every requested layer in one forward pass per batch; per-unit
             statistics (neuroprobe.stats: Quantile for the IoU threshold, MinMax for region-NSS,
             TopK images for galleries); on the CPU the maps are kept in a spool on disk, on
             a GPU in device memory where they fit (see :func:`_keep`)
    tally    pass 2 (here + neuroprobe.tally): thresholds -> active pixels -> (unit, label)
             counts (IoU) or z-scored maps at fixations (region-NSS), in stats.IoUTally/NSSTally;
             with an output folder also the same counts per image (stats.ImageCounts, written as
             image_counts.npz for compare's bootstrap)
    score    neuroprobe.results: IoU per label, best label per category and overall; region-NSS
             table (mean of the top units, units above the NSS threshold)
    report   neuroprobe.results: units.csv, summary.json, a bar plot, region_nss.csv,
             scores.npz (every unit x label score), top_images.npz; read back with
             neuroprobe.load_run

Methods: Network Dissection (Bau, Zhou, Khosla, Oliva & Torralba, CVPR 2017) with its two
published denominators (NetDissect and NetDissect-Lite) and the unrestricted variant of
Bau et al. (PNAS 2020); region-based NSS of He, Tavakoli, Borji, Mi & Pugeault (CVPR 2019).

The statistics of a run are one :class:`~neuroprobe.stats.StatSet` built by
:func:`_layer_stats` (adding a statistic is one line there); :class:`DissectConfig` holds the
options; :func:`dissect` is the plan: record pass -> thresholds -> tally pass -> score -> write.

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
import dataclasses
import functools
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from . import distributed
from .engine.runner import (CHECKPOINT_SECONDS, DATA_ERRORS, check_finite, none_readable,
                            probe_shapes, run_pass)
from .engine.store import RunStore, model_fingerprint
from .errors import UserError
from .hooks import layer_aliases
from .image_counts import FILE as IMAGE_COUNTS, unit_label_ids, write_image_counts
from .io import config_hash
from .results import score_iou, score_nss, summarise, write_results
from .run import ResultView
from .stats import ImageCounts, IoUTally, MinMax, NSSTally, Quantile, StatSet, TopK
from .tally import image_label_counts, upsample
from .utils import intra_op_threads, model_device, versions

log = logging.getLogger(__name__)

__all__ = ["dissect", "DissectConfig", "DissectionResult", "model_fingerprint", "MODES",
           "SCORES", "DENOMINATOR_CHOICES", "NSS_RESOLUTION_CHOICES", "NSS_REGION_CHOICES",
           "NSS_DDOF", "TIE_CHOICES", "BAD_IMAGE_CHOICES", "DATA_ERRORS"]

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
#: configuration keys written into summary.json but not hashed into the run's key
_UNHASHED_KEYS = ("on_bad_image", "memory_format")
#: keys of ``config["model"]`` that name or describe the model rather than determine the
#: numbers (the weights are identified by ``sha256``)
_MODEL_INFO_KEYS = ("file", "spec", "note", "fingerprint")
#: keys of ``config["concepts"]`` that say how the set was opened, not what it holds
_CONCEPTS_INFO_KEYS = ("spec", "root", "limit", "overrides")


@dataclass(repr=False)
class DissectionResult(ResultView):
    """What a dissection produced.

    ``units``: one dict per unit (the rows of units.csv); ``summary``: configuration, versions,
    counts of detector units per concept and layer; ``nss_table``: rows of the region-NSS table
    (``None`` for IoU scoring); ``thresholds``: per layer ``(U,)`` activation thresholds (IoU);
    ``top_images``: per layer ``(values, image indices)`` of the top-k images of every unit;
    ``stats``: per layer the statistic objects (``quantile``, ``tally`` / ``minmax``, ``nss``,
    ``top``), e.g. to merge runs over shards; ``skipped``: the items left out because they could
    not be read (``on_bad_image="skip"``), sorted by data-set index, each
    ``{"index", "id", "error", "pass"}`` (also in ``summary["skipped"]``); ``iou`` / ``nss``:
    per layer the ``(units, labels)`` IoU / mean region-NSS of every unit with every label id
    (``scores.npz``), columns named by ``label_names`` (categories: ``label_categories``);
    ``path``: the folder the result was written to (``None``: not written).

    The same view as a loaded run folder (:class:`neuroprobe.run.Run`): a one-line ``repr``,
    ``_repr_html_`` for Jupyter, ``to_dataframe()``, ``matrix()``.
    """

    units: list
    summary: dict
    nss_table: list | None = None
    thresholds: dict = field(default_factory=dict)
    top_images: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    iou: dict = field(default_factory=dict)
    nss: dict = field(default_factory=dict)
    label_names: list = field(default_factory=list)
    label_categories: list = field(default_factory=list)
    path: Path | None = None

    def save(self, out_dir) -> Path:
        self.path = write_results(self, out_dir)
        return self.path


# -- configuration ---------------------------------------------------------------------------

@dataclass
class DissectConfig:
    """Every option of a dissection (see :func:`dissect` for their meaning).

    ``dissect(model, dataset, layers, config=DissectConfig(...))`` and the keyword call
    ``dissect(model, dataset, layers, mode=..., ...)`` are the same.  ``after_batch`` (a
    callback ``after_batch(phase, batch_index)`` at the end of every batch of both passes) and
    ``checkpoint_seconds`` are for tests and tools that need to slow, stop or watch a run.
    """

    mode: str = "netdissect"
    score: str = "iou"
    quantile: float | None = None
    iou_threshold: float = 0.04
    denominator: str | None = None
    nss_threshold: float = 1.5
    top_units: int = 10
    batch_size: int = 32
    device: object = None
    amp: str | None = None
    limit: int | None = None
    out_dir: object = None
    resume: bool = True
    overwrite: bool = False
    keep: str = "auto"
    checkpoint_every: int | None = None
    num_workers: int = 0
    tally_threads: int = 1
    model_info: dict | None = None
    sketch_capacity: int = 4096
    top_k: int = 16
    progress: bool = True
    concepts_info: dict | None = None
    on_bad_image: str = "stop"
    nss_resolution: str = "image"
    nss_regions: str = "instance"
    ties: str = "netdissect"
    checkpoint_seconds: float = CHECKPOINT_SECONDS
    after_batch: Callable | None = field(default=None, repr=False)

    @property
    def use_iou(self) -> bool:
        return self.score in ("iou", "both")

    @property
    def use_nss(self) -> bool:
        return self.score in ("region-nss", "both")

    def resolved(self) -> "DissectConfig":
        """A checked copy with the mode's default quantile filled in."""
        cfg = dataclasses.replace(self)
        if cfg.quantile is None:
            cfg.quantile = MODES.get(cfg.mode, MODES["netdissect"])["quantile"]
        cfg.check()
        return cfg

    def check(self) -> None:
        """Refuse an impossible option with one line."""
        for value, choices, flag in ((self.nss_resolution, NSS_RESOLUTION_CHOICES,
                                      "--nss-resolution"),
                                     (self.nss_regions, NSS_REGION_CHOICES, "--nss-regions"),
                                     (self.ties, TIE_CHOICES, "--ties")):
            if value not in choices:
                raise UserError(f"unknown {flag} {value!r}", hint=f"use {' or '.join(choices)}")
        if self.on_bad_image not in BAD_IMAGE_CHOICES:
            raise UserError(f"unknown --on-bad-image {self.on_bad_image!r}",
                            hint="use stop or skip")
        if self.mode not in MODES:
            raise UserError(f"unknown dissection mode {self.mode!r}",
                            hint="use netdissect or unrestricted")
        if self.score not in SCORES:
            raise UserError(f"unknown score {self.score!r}", hint="use iou, region-nss or both")
        if not 0 < self.quantile < 1:
            raise UserError(f"--quantile {self.quantile} must lie strictly between 0 and 1",
                            hint="it is the top fraction of activations, e.g. 0.005")
        if not 0 <= self.iou_threshold <= 1:
            raise UserError(f"--iou-threshold {self.iou_threshold} must lie in [0, 1]")
        if self.denominator is not None and self.denominator not in DENOMINATOR_CHOICES:
            raise UserError(f"unknown denominator {self.denominator!r}",
                            hint="use netdissect, annotated or lite")
        if self.mode == "unrestricted" and self.denominator is not None:
            raise UserError("--denominator applies to --mode netdissect only (the unrestricted "
                            "mode counts every pixel)")
        if self.top_units < 1:
            raise UserError("--top-units must be at least 1")
        if self.batch_size < 1:
            raise UserError("--batch-size must be at least 1")
        if not isinstance(self.tally_threads, int) or self.tally_threads < 1:
            raise UserError(f"tally_threads {self.tally_threads!r} must be a whole number >= 1")
        if self.keep not in ("disk", "recompute", "memory", "auto"):
            raise UserError(f"unknown keep option {self.keep!r}",
                            hint="disk, recompute, memory or auto")


# -- the state of one run --------------------------------------------------------------------

@dataclass
class _Run:
    """What the steps of a dissection share: inputs, configuration, store and statistics."""

    model: torch.nn.Module
    source: object                 # the concept set
    layers: list                   # the hooked (resolved) layer names
    cfg: DissectConfig
    device: torch.device
    dctx: distributed.Context
    # {hooked name: the name as given}: results, configuration and the per-image counts are
    # keyed by the names the user typed (a bare "layer4" hooks "net.layer4"; fidelity #18)
    aliases: dict = field(default_factory=dict)
    n: int = 0                     # items dissected (the first n of the set)
    keep: str = "disk"
    kept: dict = field(default_factory=dict)   # keep="memory": {batch: (index, {layer: maps})}
    resumed: bool = False          # restored from a checkpoint
    channels_last: bool = False
    config: dict = field(default_factory=dict)
    key: str = ""
    store: RunStore | None = None
    tmp_spool: object = None
    stats: StatSet = field(default_factory=StatSet)
    thresholds: dict = field(default_factory=dict)
    phase: str = "record"
    next_batch: int = 0
    per_batch: int = 32
    mine: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    timing: dict = field(default_factory=dict)
    saved_thresholds: dict | None = None

    @property
    def out(self) -> Path | None:
        return None if self.cfg.out_dir is None else Path(self.cfg.out_dir)

    def pass_options(self, phase: str, start: int) -> dict:
        """The :func:`~neuroprobe.engine.runner.run_pass` options this run's passes share."""
        cfg = self.cfg
        return dict(n=self.n, batch_size=self.per_batch, device=self.device, amp=cfg.amp,
                    channels_last=self.channels_last, on_bad_image=cfg.on_bad_image,
                    num_workers=cfg.num_workers, label_dtype=_label_dtype(self.source),
                    start=start, dctx=self.dctx, skipped=self.skipped, phase=phase,
                    checkpoint_every=cfg.checkpoint_every,
                    checkpoint_seconds=cfg.checkpoint_seconds, after_batch=cfg.after_batch,
                    progress=cfg.progress and self.dctx.is_main, desc=f"dissect: {phase}")

    def checkpoint(self, phase: str, next_batch: int) -> None:
        if not self.store.enabled or self.tmp_spool is not None or self.dctx.active:
            return
        # a finished run keeps its thresholds instead of the (larger) quantile sketches
        drop = ("quantile",) if phase == "done" else ()
        self.store.save({"phase": phase, "next_batch": next_batch,
                         "batch_size": self.per_batch,
                         "skipped": [dict(s) for s in self.skipped],
                         "thresholds": {k: v.cpu() for k, v in self.thresholds.items()},
                         "stats": self.stats.state_dict(drop)})


def _label_dtype(source):
    """int16 label masks where the ids fit (fewer bytes to move), else int32."""
    return torch.int16 if source.labels.max_id + 1 <= 2 ** 15 else torch.int32


def _layer_stats(cfg: DissectConfig, shapes: dict, labels, images_dir: Path | None) -> dict:
    """The statistics of every layer: one line per statistic (``images_dir``: where the
    per-image counts go, ``None``: not kept)."""
    num_labels = labels.max_id + 1
    report_cat = torch.from_numpy(labels.category_index())
    denom = MODES[cfg.mode]["denominator"] if cfg.denominator is None else cfg.denominator
    if denom == "all":
        tally_cat, n_cat = torch.where(report_cat >= 0, 0, -1), 1
    else:
        tally_cat, n_cat = report_cat, len(labels.categories)
    stats = {"top": lambda layer: TopK(cfg.top_k)}
    if cfg.use_iou:
        stats["quantile"] = lambda layer: Quantile(cfg.sketch_capacity)
        stats["tally"] = lambda layer: IoUTally(shapes[layer][0], num_labels, tally_cat, n_cat,
                                                denom)
        if images_dir is not None:   # the per-image counts of compare's bootstrap
            stats["images"] = lambda layer: ImageCounts(shapes[layer][0], num_labels,
                                                        images_dir / layer)
    if cfg.use_nss:
        stats["minmax"] = lambda layer: MinMax()
        stats["nss"] = lambda layer: NSSTally(shapes[layer][0], num_labels, ddof=NSS_DDOF,
                                              resolution=cfg.nss_resolution,
                                              regions=cfg.nss_regions)
    return stats


def _check_fixations(cfg: DissectConfig, dataset) -> None:
    if cfg.use_nss and not getattr(dataset, "has_fixations", False):
        raise UserError(f"concept set {getattr(dataset, 'name', '?')!r} has no fixations; "
                        "--score region-nss needs them",
                        hint="use --score iou, or a concept set with fixations (synthetic, "
                        "eyecrowd, a mask folder with OSIE fixations)")


@contextlib.contextmanager
def _given_layout(model: torch.nn.Module):
    """Give ``model`` back with its parameters in the memory format they came in, however the
    body ends (:func:`_probe` converts them to channels-last for the run)."""
    standard = all(p.is_contiguous() for p in model.parameters() if p.dim() == 4)
    try:
        yield
    finally:
        if standard and not all(p.is_contiguous() for p in model.parameters()
                                if p.dim() == 4):
            model.to(memory_format=torch.contiguous_format)


def _probe(run: _Run, probe_set) -> dict:
    """The layers' shapes (:func:`probe_shapes`), and the memory format of the run.

    Convolutions run faster on channels-last tensors, on a GPU and on the CPU alike (oneDNN;
    measured in ``benchmarks/README.md``: ResNet-18 to layer4 at 224 px 25 % less time per
    batch on this project's 2-core CPU, ResNet-50 and VGG-16 about as much, small CIFAR
    networks and the demo model no slower).  So the model's parameters are converted in place
    (no value changes; :func:`_given_layout` converts them back when the run ends) and the pass
    feeds channels-last images.  The maps then differ from a contiguous forward pass by the
    rounding of another summation order (ResNet-18 layer4, random weights: at most 2e-6 of the
    largest activation): a run's numbers are made with one format from start to end, recorded as
    ``config["memory_format"]``.  A model whose forward pass does not accept channels-last
    tensors (a ``view`` of a convolution's output, say) runs contiguous, as it was given.
    """
    cfg, model = run.cfg, run.model
    convolutional = any(p.dim() == 4 for p in model.parameters())
    standard = all(p.is_contiguous() for p in model.parameters() if p.dim() == 4)
    if convolutional and standard:
        model.to(memory_format=torch.channels_last)
        try:
            shapes = probe_shapes(model, probe_set, run.layers, cfg.amp, run.device,
                                  cfg.on_bad_image, channels_last=True)
        except UserError:
            model.to(memory_format=torch.contiguous_format)
        else:
            run.channels_last = True
            return shapes
    return probe_shapes(model, probe_set, run.layers, cfg.amp, run.device, cfg.on_bad_image)


def _configuration(run: _Run, shapes: dict) -> None:
    """The run's configuration (written into summary.json) and its key."""
    cfg, source = run.cfg, run.source
    model_info = dict(cfg.model_info or {})
    fingerprint = model_fingerprint(run.model)
    model_info.setdefault("sha256", fingerprint)
    model_info["fingerprint"] = fingerprint
    denom = MODES[cfg.mode]["denominator"] if cfg.denominator is None else cfg.denominator
    run.config = {
        "model": model_info, "layers": [run.aliases[name] for name in run.layers],
        "concepts": {**source.config(), "n": run.n,
                     **{k: _absolute(v) if k in ("spec", "root") else v
                        for k, v in (cfg.concepts_info or {}).items() if v is not None}},
        "mode": cfg.mode, "score": cfg.score, "quantile": cfg.quantile,
        "quantile_on": MODES[cfg.mode]["quantile_on"], "iou_threshold": cfg.iou_threshold,
        "denominator": denom if cfg.use_iou else None,
        "nss_threshold": cfg.nss_threshold, "top_units": cfg.top_units, "nss_ddof": NSS_DDOF,
        "nss_resolution": cfg.nss_resolution, "nss_regions": cfg.nss_regions, "ties": cfg.ties,
        "image_size": list(source.image_size), "mask_size": list(source.mask_size),
        "amp": cfg.amp,
        "sketch": {"method": "KLL compactors, high-rank accuracy",
                   "capacity": cfg.sketch_capacity},
        "top_k": cfg.top_k, "on_bad_image": cfg.on_bad_image,
        "memory_format": "channels_last" if run.channels_last else "contiguous",
    }
    # the key names what determines the numbers: the model by its weights, not by its path (and
    # not on_bad_image: it changes nothing in a run without unreadable items, and a run stopped
    # by one must resume with skip)
    config = run.config
    run.key = config_hash({**{k: v for k, v in config.items() if k not in _UNHASHED_KEYS},
                           "model": {k: v for k, v in model_info.items()
                                     if k not in _MODEL_INFO_KEYS},
                           "concepts": {k: v for k, v in config["concepts"].items()
                                        if k not in _CONCEPTS_INFO_KEYS}})


def _absolute(spec):
    """A concept-set spec or root that names an existing file or folder, made absolute (the
    run reopens it from any working folder); a shipped name as given."""
    path = Path(str(spec)).expanduser()
    return str(path.resolve()) if path.exists() else spec


def _open_store(run: _Run) -> dict | None:
    """Check the output folder, open the run's store; the checkpoint to resume, if any."""
    cfg, dctx, out = run.cfg, run.dctx, run.out
    run.store = RunStore(out, run.config, run.key)
    if out is not None:   # every rank checks; only rank 0 clears a run of another config
        if dctx.is_main or not cfg.overwrite:
            run.store.check_out_dir(cfg.overwrite and dctx.is_main)
        dctx.barrier()
    state = run.store.load() if cfg.resume and not dctx.active else None
    if dctx.active and run.store.enabled:
        # each rank spools into its own folder; no checkpoints (a killed torchrun run restarts)
        run.store.dir = run.store.dir / f"rank{dctx.rank}"
    if run.keep == "disk" and not run.store.enabled:
        run.tmp_spool = tempfile.TemporaryDirectory(prefix="neuroprobe-spool-")
        run.store.dir = Path(run.tmp_spool.name)
    return state


def _start(model, dataset, aliases: dict, cfg: DissectConfig, device, dctx) -> _Run:
    """Prepare a run: check the model on one image, the configuration, the store, the
    statistics, and restore a checkpoint of the same configuration (``aliases``: ``{hooked
    layer name: the name as given}``)."""
    layers = list(aliases)
    run = _Run(model.to(device).eval(), dataset, layers, cfg, device, dctx, aliases=aliases)
    n_total = len(dataset)
    run.n = n_total if cfg.limit is None else min(int(cfg.limit), n_total)
    if run.n < 1:
        raise UserError(f"concept set {getattr(dataset, 'name', '?')!r} has no images")
    probe_set = dataset if run.n == n_total else torch.utils.data.Subset(dataset, range(run.n))
    # the concept cache (#20): built or opened here, in the main process, before any loader
    # worker starts (sources without one have no prepare_labels)
    getattr(dataset, "prepare_labels", lambda *a, **k: None)(range(run.n),
                                                             progress=cfg.progress)
    shapes = _probe(run, probe_set)
    run.keep = _keep(run, shapes)
    _configuration(run, shapes)
    state = _open_store(run)
    images_dir = run.store.dir / "images" if run.out is not None else None
    run.stats = StatSet(layers, _layer_stats(cfg, shapes, dataset.labels, images_dir))
    run.per_batch = cfg.batch_size
    if state is not None:
        run.resumed = True
        run.phase, run.next_batch = state["phase"], int(state["next_batch"])
        run.skipped[:] = [dict(s) for s in state.get("skipped", [])]
        if run.skipped and cfg.on_bad_image != "skip":
            raise UserError(f"the checkpoint in {run.store.dir} left out {len(run.skipped)} "
                            f"unreadable image(s) (first: {run.skipped[0]['error']})",
                            hint="resume with --on-bad-image skip, or start again with "
                            "--no-resume")
        run.stats.load_state_dict(state["stats"], device)
        run.saved_thresholds = state.get("thresholds")
        if run.phase != "done":
            log.info(f"resuming the {run.phase} pass at batch {run.next_batch} from "
                     f"{run.store.dir}")
            run.per_batch = int(state.get("batch_size", cfg.batch_size))  # the run's batching
    n_batches = (run.n + run.per_batch - 1) // run.per_batch
    # this process's batches: all of them, or every world-th one under torchrun
    run.mine = list(range(dctx.rank, n_batches, dctx.world))
    return run


# -- the passes ------------------------------------------------------------------------------

def _record(run: _Run) -> None:
    """Pass 1: top images, the quantile sketch (IoU thresholds) and the per-unit range
    (region-NSS) of every layer; on the CPU the maps go into the spool for pass 2."""
    cfg, stats = run.cfg, run.stats
    mask_size = tuple(run.source.mask_size)
    t_start = time.perf_counter()

    # on the CPU the statistics run on one intra-op thread, the forward pass on all of them
    # (see neuroprobe.utils.intra_op_threads)
    one_thread = run.device.type == "cpu"

    def on_batch(acts, batch, j):
        with intra_op_threads(1) if one_thread else contextlib.nullcontext():
            record_batch(acts, batch, j)

    def record_batch(acts, batch, j):
        kept = dict(acts)   # (keep="memory": the maps in the forward pass's dtype and layout)
        if batch["id"]:
            # the items' own data-set positions (not j * per_batch + k: items may be missing)
            idx = batch["index"].to(run.device, non_blocking=True)
        for name in (run.layers if batch["id"] else ()):
            a = acts[name].float().contiguous()   # (channels-last maps: one copy here)
            check_finite(name, a, batch["id"])
            u = a.shape[1]
            st = stats[name]
            st["top"].add(a.flatten(2).amax(2), idx)
            if cfg.use_iou and cfg.mode == "netdissect":
                st["quantile"].add(a.transpose(0, 1).reshape(u, -1).t())
            elif cfg.use_iou:
                for s in range(0, len(a), 4):   # bounded memory: 4 images at a time
                    up = upsample(a[s:s + 4], mask_size)
                    st["quantile"].add(up.transpose(0, 1).reshape(u, -1).t())
            if cfg.use_nss:
                st["minmax"].add(a.transpose(0, 1).reshape(u, -1).t())
            acts[name] = a
        if run.keep == "disk":
            run.store.write_spool(j, _spool_record(acts, batch))
        elif run.keep == "memory" and batch["id"]:   # the forward pass's own tensors
            run.kept[j] = (batch["index"], {name: kept[name] for name in run.layers})

    def checkpoint(done, last):
        if last:
            run.phase, run.next_batch = "tally", 0
        run.checkpoint(*(("tally", 0) if last else ("record", done)))

    # the maps are recomputed in pass 2, so this pass reads no labels (unless they are spooled
    # with the maps; in skip mode it reads and drops them, to find broken masks)
    run_pass(run.model, run.source, run.layers, on_batch, labels=run.keep == "disk",
             validate=cfg.on_bad_image == "skip" and run.keep != "disk",
             checkpoint=checkpoint, **run.pass_options("record", run.next_batch))
    run.phase, run.next_batch = "tally", 0
    stats.merge_ranks(run.dctx, ("top", "quantile", "minmax"), run.device)
    run.skipped[:] = distributed.merge_lists(run.dctx, run.skipped)
    run.timing["record_s"] = round(time.perf_counter() - t_start, 3)


def _thresholds(run: _Run) -> None:
    """Every unit's activation threshold: the top ``quantile`` of its maps (IoU scoring)."""
    if len({s["index"] for s in run.skipped if s["pass"] == "record"}) >= run.n:
        raise none_readable(run.source, run.n,
                            run.skipped[0]["error"] if run.skipped else None)
    if run.cfg.use_iou and run.phase == "done":
        run.thresholds = {k: v.to(run.device) for k, v in run.saved_thresholds.items()}
    elif run.cfg.use_iou:
        q = 1.0 - run.cfg.quantile
        run.thresholds = {name: run.stats[name]["quantile"].quantile(q).float()
                          for name in run.layers}


def _tally(run: _Run) -> None:
    """Pass 2: IoU tallies at the thresholds and region-NSS sums, from the spool or a second
    forward pass."""
    cfg, stats, source = run.cfg, run.stats, run.source
    num_labels = source.labels.max_id + 1
    t_start = time.perf_counter()
    if run.keep == "disk" and not run.store.has_spool(run.mine[run.next_batch:]):
        run.keep = "recompute"   # a run resumed after one that did not keep its maps
    if run.keep == "memory" and (run.resumed or not run.kept):
        run.keep = "recompute"   # the maps of the batches before a checkpoint are gone

    def one_layer(name, a, batch, lay, whole, truth):
        st = stats[name]
        if cfg.use_iou:
            st["tally"].add(a, run.thresholds[name], lay, whole, batch["categories"],
                            images=st.get("images"), index=batch["index"], truth=truth,
                            threads=loop_threads)
        if cfg.use_nss:
            mm = st["minmax"]
            st["nss"].add(a, mm.min, mm.max, lay, batch["fixations"],
                          tuple(source.image_size), batch.get("instances"))

    # with tally_threads > 1 the layers are tallied side by side on the CPU: much of a tally
    # (gathers, nonzero, bincount) runs on one core; each layer's statistics are its own and
    # their counts do not depend on the order of the work
    cpu = run.device.type == "cpu"
    threads = min(len(run.layers), cfg.tally_threads) if cpu else 1
    # on the CPU every tally operation runs on one intra-op thread (in each layer thread too;
    # a second forward pass, keep="recompute", keeps all of them): see
    # neuroprobe.utils.intra_op_threads
    pool = ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,)) \
        if threads > 1 else None
    # the compiled CPU tally (neuroprobe._tally_kernel) splits each batch's images into groups
    # counted side by side, as many as torch's threads (OMP_NUM_THREADS), shared between the
    # layer threads; its counts do not depend on it
    loop_threads = max(1, torch.get_num_threads() // threads) if cpu else 1

    def on_batch(acts, batch, j):
        if run.keep == "memory" and batch["id"]:
            acts = _kept_maps(run.kept.pop(j), batch["index"])
        if not acts:
            return
        with intra_op_threads(1) if cpu else contextlib.nullcontext():
            tally_batch(acts, batch)

    def tally_batch(acts, batch):
        # (label ids in the loader's smallest integer type: every tally path widens what it
        # reads, the compiled CPU tally reads them as they are)
        lay = batch["layers"].to(run.device, non_blocking=True)
        whole = batch["whole"].to(run.device, non_blocking=True).long()
        # the images' label counts, once for all layers
        truth = image_label_counts(lay, whole, num_labels, loop_threads * threads) \
            if cfg.use_iou else None
        work = [(name, acts[name].float(), batch, lay, whole, truth) for name in run.layers]
        if pool is None:
            for args in work:
                one_layer(*args)
        else:
            for f in [pool.submit(one_layer, *args) for args in work]:
                f.result()   # (re-raises a layer's error here)

    def checkpoint(done, last):
        run.checkpoint(*(("done", 0) if last else ("tally", done)))

    n_before = len(run.skipped)
    # pass 2 reads no item that pass 1 left out
    try:
        run_pass(run.model if run.keep != "memory" else None, source, run.layers, on_batch,
                 spool=run.store if run.keep == "disk" else None,
                 images=run.keep != "memory",
                 exclude=frozenset(s["index"] for s in run.skipped if s["pass"] == "record"),
                 checkpoint=checkpoint, **run.pass_options("tally", run.next_batch))
    finally:
        if pool is not None:
            pool.shutdown()
    run.store.drop_spool()
    stats.merge_ranks(run.dctx, ("tally", "nss"), run.device)
    run.skipped[n_before:] = distributed.merge_lists(run.dctx, run.skipped[n_before:])
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    run.timing["tally_s"] = round(time.perf_counter() - t_start, 3)


#: keep="auto" on a GPU keeps the maps of pass 1 in device memory when they take at most this
#: fraction of the memory free after the probe (else pass 2 recomputes them)
KEEP_MEMORY_FRACTION = 0.5


def _keep(run: _Run, shapes: dict) -> str:
    """Where the maps of pass 1 wait for pass 2 (``keep``; ``"auto"`` decided here).

    ``"disk"`` (the CPU default): a spool of one file per batch.  ``"memory"``: the forward
    pass's own tensors, on the run's device, and pass 2 reads the labels alone
    (:meth:`~neuroprobe.concepts.base.ConceptDataset.labels_of`: no image decoded, no forward
    pass); on a GPU the default when all maps of this process take at most
    :data:`KEEP_MEMORY_FRACTION` of the free device memory (ResNet-50 layer4 over 63,305 images
    in bf16: 12.7 GB).  ``"recompute"``: pass 2 runs the model again (the GPU default when the
    maps do not fit).
    """
    cfg = run.cfg
    if cfg.keep != "auto":
        return cfg.keep
    if run.device.type != "cuda":
        return "disk" if run.device.type == "cpu" else "recompute"
    per_item = sum(int(np.prod(s)) for s in shapes.values()) * (2 if cfg.amp else 4)
    need = per_item * -(-run.n // max(1, run.dctx.world))
    free = torch.cuda.mem_get_info(run.device)[0]
    return "memory" if need <= KEEP_MEMORY_FRACTION * free else "recompute"


def _kept_maps(kept: tuple, index: torch.Tensor) -> dict:
    """The maps kept for a batch, as float32, for the items ``index`` that pass 2 reads (all
    of pass 1's, unless an item's labels failed in pass 2 in skip mode)."""
    was, maps = kept
    if not torch.equal(was.to(index.device), index):
        where = {int(i): k for k, i in enumerate(was.tolist())}
        rows = torch.tensor([where[int(i)] for i in index.tolist()], dtype=torch.int64)
        maps = {k: v.index_select(0, rows.to(v.device)) for k, v in maps.items()}
    return {k: v.float() for k, v in maps.items()}


def _spool_record(acts: dict, batch: dict) -> dict:
    if not batch["id"]:   # every item of the batch was skipped
        return {"acts": {}, "id": []}
    # the labels already come in the engine's smallest label dtype (int16 where ids fit)
    out = {"acts": {k: v.detach().cpu() for k, v in acts.items()},
           "layers": batch["layers"], "whole": batch["whole"],
           "categories": batch["categories"], "fixations": batch["fixations"],
           "id": list(batch["id"]), "index": batch["index"]}
    if batch.get("instances") is not None:   # fidelity (#18): region-NSS instances
        out["instances"] = batch["instances"]
    return out


# -- scoring ---------------------------------------------------------------------------------

def _score(run: _Run) -> DissectionResult:
    """Unit rows, the region-NSS table and the summary, from the tallies."""
    cfg, labels, alias = run.cfg, run.source.labels, run.aliases
    units, table = [], None
    for name in run.layers:
        rows = []
        if cfg.use_iou:
            rows = score_iou(alias[name], run.stats[name]["tally"], run.thresholds[name], labels,
                             cfg.iou_threshold, ties=cfg.ties)
        if cfg.use_nss:
            nss_rows, trows = score_nss(alias[name], run.stats[name]["nss"], labels,
                                        cfg.nss_threshold, cfg.top_units)
            table = (table or []) + trows
            if cfg.use_iou:   # both: the unit's region-NSS label beside its IoU label
                for r, q in zip(rows, nss_rows):
                    r.update({"nss-label": q["label"], "nss-category": q["category"],
                              "nss-score": q["score"], "nss-detector": q["detector"]})
            else:
                rows = nss_rows
        units += rows
    summary = summarise(units, run.config, run.key, versions(), run.config["layers"], labels,
                        table)
    # seconds of this process's passes (a resumed run times only what it did); not configuration
    summary["timing"] = {**run.timing, "device": str(run.device),
                         "num_workers": cfg.num_workers, "batch_size": run.per_batch}
    skipped = sorted(run.skipped, key=lambda s: s["index"])
    summary["skipped"] = skipped
    summary["n_skipped"] = len(skipped)
    top = {alias[name]: (run.stats[name]["top"].values.cpu(),
                         run.stats[name]["top"].index.cpu()) for name in run.layers}
    iou = {alias[name]: run.stats[name]["tally"].iou().cpu().numpy()
           for name in run.layers if cfg.use_iou}
    nss = {alias[name]: run.stats[name]["nss"].mean().cpu().numpy()
           for name in run.layers if cfg.use_nss}
    ids = range(labels.max_id + 1)
    return DissectionResult(units, summary, table,
                            {alias[k]: v.cpu() for k, v in run.thresholds.items()}, top,
                            _renamed(run.stats, alias), skipped, iou, nss,
                            [labels.name(j) if j in labels else "" for j in ids],
                            [labels.category(j) if j in labels else "" for j in ids])


def _renamed(stats: StatSet, alias: dict) -> StatSet:
    """``stats`` keyed by the layer names as given."""
    out = StatSet()
    out.update({alias[name]: st for name, st in stats.items()})
    return out


def _finish(run: _Run, result: DissectionResult) -> None:
    """Write the results (rank 0) and clear what the run kept on the side."""
    if run.tmp_spool is not None:
        run.tmp_spool.cleanup()
    tables = _image_tables(run)
    if run.out is not None and run.dctx.is_main:
        result.save(run.out)
        if tables is not None:
            write_image_counts(run.out / IMAGE_COUNTS, tables)
    if run.store.enabled and run.tmp_spool is None:
        shutil.rmtree(run.store.dir / "images", ignore_errors=True)
        if run.dctx.active:   # the rank's own folder (spool, per-image counts)
            shutil.rmtree(run.store.dir, ignore_errors=True)
    run.dctx.barrier()
    if run.dctx.active and run.dctx.is_main and run.out is not None:
        with contextlib.suppress(OSError):   # the ranks' spool folders are gone
            (run.out / ".state").rmdir()


def _image_tables(run: _Run) -> dict | None:
    """Each unit's own-label counts per image, ``{layer: table}`` for ``image_counts.npz``
    (see :mod:`neuroprobe.image_counts`), gathered from every process; ``None`` where the run
    keeps none (no output folder, no IoU) or they were written already (a finished run run
    again)."""
    if not all("images" in run.stats[name] for name in run.layers) or not run.layers:
        return None
    if not any(run.stats[name]["images"].files() for name in run.layers) and \
            not run.dctx.active:
        return None
    tables = {}
    for name in run.layers:
        st = run.stats[name]
        tally = st["tally"]
        ids = unit_label_ids(tally.iou().cpu().numpy(), run.source.labels, run.cfg.ties)
        tables[run.aliases[name]] = st["images"].table(ids, tally.category_of_label,
                                                       tally.denominator)
    if run.dctx.active:   # every rank holds the tables of its own batches
        parts = distributed.merge_lists(run.dctx, [tables], key=lambda t: 0)
        tables = {name: {k: (v if k in ("label", "counted") else np.concatenate(
            [p[name][k] for p in parts])) for k, v in tables[name].items()}
            for name in tables}
        for t in tables.values():
            t["images"] = np.unique(t["images"])
    return tables


# -- the engine ------------------------------------------------------------------------------

def _locked(fn):
    """Hold ``<out_dir>/.lock`` while ``fn`` runs (under torchrun only rank 0 writes into
    ``out_dir``, so only rank 0 holds it).  ``functools.wraps`` keeps ``fn``'s signature visible
    to ``help`` and ``inspect.signature``."""
    @functools.wraps(fn)
    def wrapper(model, dataset, layers=None, **options):
        main_rank = distributed.world_size_from_env() <= 1 or os.environ.get("RANK", "0") == "0"
        config = options.get("config")
        out = options.get("out_dir") if config is None else config.out_dir
        with RunStore.lock(out if main_rank else None):
            return fn(model, dataset, layers, **options)

    return wrapper


def _layer_aliases(model, layers, model_info) -> dict:
    """``{hooked layer name: the name as given}`` (a bare ``layer4`` of a wrapped model hooks
    ``net.layer4``; the results name it ``layer4``)."""
    if layers is None:
        layers = (model_info or {}).get("layers") or []
    if isinstance(layers, str):
        layers = [s for s in layers.split(",") if s]
    if not layers:
        raise UserError("no layers to dissect", hint="name them with --layers a,b")
    return dict(layer_aliases(model, layers))


@_locked
def dissect(model: torch.nn.Module, dataset, layers: Sequence[str] | str | None = None, *,
            mode: str = "netdissect", score: str = "iou", quantile: float | None = None,
            iou_threshold: float = 0.04, denominator: str | None = None,
            nss_threshold: float = 1.5, top_units: int = 10, batch_size: int = 32,
            device=None, amp: str | None = None, limit: int | None = None,
            out_dir=None, resume: bool = True, overwrite: bool = False,
            keep: str = "auto", checkpoint_every: int | None = None, num_workers: int = 0,
            tally_threads: int = 1, model_info: dict | None = None, sketch_capacity: int = 4096, top_k: int = 16,
            progress: bool = True, concepts_info: dict | None = None,
            on_bad_image: str = "stop", nss_resolution: str = "image",
            nss_regions: str = "instance", ties: str = "netdissect",
            after_batch: Callable | None = None,
            checkpoint_seconds: float = CHECKPOINT_SECONDS,
            config: DissectConfig | None = None) -> DissectionResult:
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
        temporary folder) so pass 2 needs no second forward pass; ``"memory"`` keeps them in
        the device's memory and pass 2 reads the labels alone (no image, no forward pass; not
        across a resume); ``"recompute"`` runs the model again; ``"auto"``: disk on the CPU,
        on a GPU memory where the maps fit, else recompute (see :func:`_keep`).
    checkpoint_every : batches between checkpoints; ``None`` (default): a checkpoint whenever
        :data:`CHECKPOINT_SECONDS` have passed since the last one (a fast GPU run writes few of
        them, a slow CPU run loses at most that much work when killed).  Each pass also ends
        with one.
    num_workers, tally_threads : loader processes; layers tallied side by side in threads on
        the CPU (default 1: two cost ~40 MiB more peak memory, see ``benchmarks/README.md``).
    model_info : identity of the model written into the results (``{"spec", "sha256", ...}``);
        computed from the weights when not given.
    sketch_capacity, top_k : size of the quantile sketch per unit; top images kept per unit.
    progress : show progress bars.
    concepts_info : how the concept set was opened, written into ``config["concepts"]``
        (``{"spec": name or .toml path, "root": ..., "limit": ...}``; paths that exist are
        recorded absolute) so that a gallery can reopen it from any working folder; not part
        of the configuration hash (the data are identified by the set's own ``config()``).
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
    after_batch : ``after_batch(phase, batch_index)`` at the end of every batch of both passes
        (to watch, slow or stop a run at a known point).
    checkpoint_seconds : the interval of time-based checkpoints (:data:`CHECKPOINT_SECONDS`).
    config : a :class:`DissectConfig` holding all of the options above (the keywords are then
        ignored).

    Returns
    -------
    DissectionResult (also written to ``out_dir`` when given).
    """
    if config is None:
        config = DissectConfig(
            mode=mode, score=score, quantile=quantile, iou_threshold=iou_threshold,
            denominator=denominator, nss_threshold=nss_threshold, top_units=top_units,
            batch_size=batch_size, device=device, amp=amp, limit=limit, out_dir=out_dir,
            resume=resume, overwrite=overwrite, keep=keep, checkpoint_every=checkpoint_every,
            num_workers=num_workers, tally_threads=tally_threads, model_info=model_info,
            sketch_capacity=sketch_capacity, top_k=top_k, progress=progress,
            concepts_info=concepts_info, on_bad_image=on_bad_image,
            nss_resolution=nss_resolution, nss_regions=nss_regions, ties=ties,
            after_batch=after_batch, checkpoint_seconds=checkpoint_seconds)
    cfg = config.resolved()
    _check_fixations(cfg, dataset)
    aliases = _layer_aliases(model, layers, cfg.model_info)
    device = torch.device(cfg.device if cfg.device is not None else model_device(model))
    dctx = distributed.setup(device)
    if dctx.active and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", dctx.local_rank)
    try:
        with _given_layout(model):
            # the plan: record pass -> thresholds -> tally pass -> score -> write
            run = _start(model, dataset, aliases, cfg, device, dctx)
            if run.phase == "record":
                _record(run)
            _thresholds(run)
            if run.phase == "tally":
                _tally(run)
            result = _score(run)
            _finish(run, result)
            return result
    finally:
        distributed.teardown(dctx)
