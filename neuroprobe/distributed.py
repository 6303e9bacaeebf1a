"""Dissection across processes, GPUs and nodes on PyTorch's own runtime (``torchrun``).

``torchrun --nproc_per_node N -m neuroprobe dissect ...`` starts ``N`` processes with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous in their environment; this module
turns that into a process group (NCCL on CUDA devices, gloo on the CPU) and merges the
per-rank statistics of :mod:`neuroprobe.stats`:

* every rank takes every ``WORLD_SIZE``-th batch (strided shards of whole batches, so the
  image ids, and the tie-breaking of the top-k images, are those of a single-process run);
* statistics are gathered to every rank (``all_gather_object`` of their ``state_dict``) and
  merged in rank order, so all ranks hold the same numbers -- the same thresholds in pass 2;
* the lists of items a rank could not read (``on_bad_image="skip"``) are gathered the same way
  and sorted by data-set index, so every rank (and the summary) holds the single-process list.

Exactness.  Counts (IoU tallies), minima/maxima and top-k images merge exactly.  Region-NSS
sums are accumulated on a fixed grid (see :class:`neuroprobe.stats.NSSTally`) so their sum
does not depend on the order.  The quantile sketch (:class:`neuroprobe.stats.Quantile`) keeps
the top ``capacity / 2`` values of every unit exactly, also through merges; a threshold of the
top fraction ``q`` is therefore identical to the single-process one (and to ``numpy.quantile``)
whenever ``q * n < capacity / 2`` values per unit are above it (e.g. ``n`` below 409,600 values
per unit at ``q = 0.005`` and the default capacity 4096).  Beyond that both runs are within the
sketch's rank-error bound (:meth:`~neuroprobe.stats.Quantile.rank_error_bound`) of the exact
quantile, and may differ from each other by as much.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .errors import UserError

__all__ = ["Context", "setup", "teardown", "merge_stats", "merge_lists", "world_size_from_env"]


def world_size_from_env() -> int:
    """``WORLD_SIZE`` of the environment (1 when not started by torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    created: bool = False   # this module initialised the process group

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()


def setup(device: torch.device | str | None = None) -> Context:
    """The distributed context of this process; initialises the default process group when
    ``WORLD_SIZE > 1`` and none exists (backend ``nccl`` for CUDA, ``gloo`` otherwise)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(),
                       int(os.environ.get("LOCAL_RANK", "0")))
    world = world_size_from_env()
    if world <= 1:
        return Context()
    if not dist.is_available():
        raise UserError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed",
                        hint="run without torchrun, or install a PyTorch with distributed")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Context(dist.get_rank(), dist.get_world_size(), local, created=True)


def teardown(ctx: Context) -> None:
    if ctx.created and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _cpu_state(obj) -> dict:
    sd = obj.state_dict()

    def cpu(v):
        if isinstance(v, torch.Tensor):
            return v.detach().cpu()
        if isinstance(v, list):
            return [cpu(x) for x in v]
        return v
    return {k: cpu(v) for k, v in sd.items()}


def merge_stats(ctx: Context, stats: dict, keys, rebuild, device) -> dict:
    """Replace ``stats[layer][key]`` for ``key`` in ``keys`` by the merge over all ranks.

    ``rebuild(state)`` makes a statistic from one rank's saved state (the caller passes
    :func:`neuroprobe.stats.from_state`; taking it as an argument keeps this module free of
    ``neuroprobe.stats``, which imports it).  Every rank receives every rank's state and merges
    them in rank order, so the result is the same on all ranks.
    """
    if not ctx.active:
        return stats
    mine = {layer: {k: _cpu_state(st[k]) for k in keys if k in st}
            for layer, st in stats.items()}
    gathered = [None] * ctx.world
    torch.distributed.all_gather_object(gathered, mine)
    for layer, st in stats.items():
        for k in keys:
            if k not in st:
                continue
            merged = None
            for part in gathered:
                other = rebuild(part[layer][k])
                merged = other if merged is None else merged.merge(other)
            st[k] = merged.to(device)
    return stats


def merge_lists(ctx: Context, items: list, key=lambda d: d["index"]) -> list:
    """All ranks' ``items`` (plain picklable values, e.g. the dicts of skipped images), gathered
    to every rank and sorted by ``key`` (stable, so the order equals a single-process run's when
    the keys are unique).  Without torchrun: ``items`` sorted."""
    if not ctx.active:
        return sorted(items, key=key)
    gathered = [None] * ctx.world
    torch.distributed.all_gather_object(gathered, list(items))
    return sorted((x for part in gathered for x in part), key=key)
