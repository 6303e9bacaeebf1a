"""Streaming, mergeable statistics over per-unit data.

Every statistic here is a small object with ``add(batch)``, ``merge(other)``,
``state_dict()`` / ``load_state_dict()``.  It lives on the device of the data first given to
it.  Merging is exact wherever the statistic allows it (:class:`MinMax`, :class:`TopK`,
:class:`IoUTally`, :class:`NSSTally` are sums, minima or selections); the quantile sketch
merges within its documented error bound.  A statistic restored from its ``state_dict`` and fed
the rest of a stream gives bit-identical results to one that saw the whole stream, which is what
makes a killed dissection resume exactly.

Convention: ``add(x)`` takes ``x`` of shape ``(N, U)`` -- ``N`` samples of ``U`` units -- like
baukit's ``runningstats``.  A ``(U, N)`` tensor can be given as ``x.t()`` (no copy is made).

The protocol (:class:`Stat`): ``add``, ``merge``, ``state_dict`` (plain tensors and numbers,
with the statistic's ``"kind"``), ``load_state_dict`` and ``to(device)``; :func:`from_state`
rebuilds any statistic from its saved state alone.  :class:`StatSet` holds the statistics of a
run, one dict ``{kind: statistic}`` per layer, and saves, restores, moves and merges them as one.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Protocol, Sequence

import torch

__all__ = ["Stat", "StatSet", "from_state", "Quantile", "TopK", "MinMax", "IoUTally",
           "NSSTally", "ImageCounts"]


class Stat(Protocol):
    """What every statistic of a pass offers (see the module docstring)."""

    def add(self, *args, **kwargs) -> None: ...

    def merge(self, other: "Stat") -> "Stat": ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def to(self, device) -> "Stat": ...

_MASK64 = (1 << 64) - 1


def _coin(seed: int, level: int, count: int) -> int:
    """A deterministic pseudo-random bit (splitmix64 of ``(seed, level, count)``)."""
    z = (seed * 0x9E3779B97F4A7C15 + (level + 1) * 0xBF58476D1CE4E5B9
         + (count + 1) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & _MASK64
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return z & 1


def _sort_rows_(t: torch.Tensor) -> None:
    """Sort each row of a contiguous 2-d ``t`` in place (NumPy's SIMD sort on the CPU, where
    it is several times faster than ``torch.sort``; the result is the same)."""
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) \
            and t.is_contiguous():
        t.numpy().sort(axis=-1)
    else:
        t.copy_(torch.sort(t, dim=-1).values)


def _as_units_first(x: torch.Tensor, contiguous: bool = True) -> torch.Tensor:
    """``(N, U)`` -> ``(U, N)`` floating tensor (float16/bfloat16 promoted; a transposed view
    unless ``contiguous``)."""
    if x.dim() == 1:
        x = x[:, None]
    if x.dim() != 2:
        raise ValueError(f"expected a (samples, units) tensor, got shape {tuple(x.shape)}")
    xt = x.t()
    if not xt.is_floating_point() or xt.dtype in (torch.float16, torch.bfloat16):
        xt = xt.float()
    return xt.contiguous() if contiguous else xt


class Quantile:
    """Per-unit quantiles of a stream, in memory independent of the stream's length.

    The sketch is the compactor hierarchy of Manku, Rajagopalan & Lindsay (SIGMOD 1998) in the
    form analysed by Karnin, Lang & Liberty ("Optimal quantile approximation in streams",
    FOCS 2016, the KLL sketch), with equal capacities per level and the high-rank-accuracy
    compaction of the ReqSketch (Cormode, Karnin, Liberty, Thaler & Vesely, "Relative error
    streaming quantiles", PODS 2021): level ``h`` holds values of weight ``2**h``; whenever a
    level holds ``capacity`` values they are sorted, the upper half stays, and every other value
    of the lower half (odd or even positions, chosen by a coin) moves up a level with twice the
    weight.  The largest values therefore keep the smallest weights, which is what the
    dissection thresholds (q = 0.995 and 0.99) need; with ``hra=False`` whole buffers are
    compacted (plain KLL, the same accuracy at every rank).

    Error.  A compaction of weight ``w`` moves the rank of any query by at most ``w``, so the
    rank error of every answer is at most :meth:`rank_error_bound`
    ``= sum_h compactions_h * 2**h / n`` (a worst case over all ranks, about
    ``2 log2(n / capacity) / capacity``).  Near the top the error is far smaller: the top
    ``capacity / 2`` values are kept exactly, and the coins make the remaining errors cancel.
    Measured against :func:`numpy.quantile` in ``tests/test_stats.py``: rank error at
    ``q = 0.995`` below ``3e-4`` with ``capacity=1024`` on 200,000 uniform, normal,
    log-normal (sigma 2), Pareto (alpha 1.1) and rectified-normal values per unit, and below
    ``1e-4`` at ``q = 0.99`` and ``0.995`` with the default capacity on 400,000 log-normal
    values summarised by three sketches and merged.

    Determinism: the coins are a hash of ``(seed, level, compaction number)``, not a random
    state, and compactions depend only on the count of values, never on how the stream was cut
    into batches.  So the same values in the same order give bit-identical answers whatever the
    batch size, and a sketch restored from :meth:`state_dict` continues exactly.  All units see
    the same number of values, so every unit shares the same level sizes and the whole sketch is
    one ``(U, capacity)`` buffer per level, filled in place and compacted with batched in-place
    sorts: the levels are never reallocated (a new level's buffer is allocated once, when the
    stream first reaches it), so a long stream neither grows nor fragments the heap (the
    earlier sketch, which rebuilt its levels every batch, left 15-20 MiB more resident memory
    in the CPU dissection benchmark, and ran slower).  Merging sketches (shards of
    a data set) is exact in count and within the same error bound.

    While nothing has been compacted (``n < capacity``) the answers are exact and equal
    :func:`numpy.quantile` with its default linear interpolation.

    Parameters
    ----------
    capacity : int
        Values kept per level and unit (a multiple of 4).  Memory is one buffer of
        ``capacity`` values per level and unit, about ``2 + log2(n / capacity)`` levels.
    seed : int
        Seed of the deterministic coins.
    hra : bool
        High-rank accuracy (default): the upper half of a full level is never compacted.
    """

    def __init__(self, capacity: int = 4096, seed: int = 0, hra: bool = True):
        if capacity < 4 or capacity % 4:
            raise ValueError("capacity must be a multiple of 4")
        self.capacity = int(capacity)
        self.seed = int(seed)
        self.hra = bool(hra)
        self.n = 0
        self.units: int | None = None
        self._bufs: list[torch.Tensor] = []   # per level: a (U, capacity) buffer ...
        self._fill: list[int] = []            # ... of which the first _fill[h] columns are used
        self.compactions: list[int] = []

    @property
    def levels(self) -> list[torch.Tensor]:
        """The values kept at each level ``h`` (weight ``2**h``): ``(U, m_h)`` views into the
        sketch's buffers (they change as values are added; clone them to keep a copy)."""
        return [b[:, :f] for b, f in zip(self._bufs, self._fill)]

    # -- streaming -------------------------------------------------------------------------
    def add(self, x: torch.Tensor) -> None:
        """Add ``x`` of shape ``(N, U)``: ``N`` new values for each of ``U`` units.

        ``x`` (any memory layout) is copied straight into the level buffers; nothing of it is
        kept by reference.
        """
        self._add_units_first(_as_units_first(x.detach(), contiguous=False))

    def _add_units_first(self, xt: torch.Tensor) -> None:
        if self.units is None:
            self.units = xt.shape[0]
            self._bufs, self._fill, self.compactions = [], [], []
            self._level(0, xt.dtype, xt.device)
        elif xt.shape[0] != self.units:
            raise ValueError(f"expected {self.units} units, got {xt.shape[0]}")
        if torch.isnan(xt).any():
            raise ValueError("NaN values cannot be ranked")
        self._push(0, xt)
        self.n += xt.shape[1]

    def _level(self, h: int, dtype=None, device=None) -> torch.Tensor:
        """The buffer of level ``h``, allocated (empty) when the sketch first reaches it."""
        while len(self._bufs) <= h:
            ref = self._bufs[0] if self._bufs else None
            self._bufs.append(torch.empty(
                (self.units, self.capacity), dtype=dtype if ref is None else ref.dtype,
                device=device if ref is None else ref.device))
            self._fill.append(0)
            if len(self.compactions) < len(self._bufs):
                self.compactions.append(0)
        return self._bufs[h]

    def _push(self, h: int, x: torch.Tensor, spill: list | None = None) -> None:
        """Append the columns of ``x`` ``(U, m)`` to level ``h`` in order, compacting the level
        each time it holds ``capacity`` values.  The values a compaction moves up go straight
        into level ``h + 1``, or, when ``spill`` is a list, are appended to it (copied) for the
        caller to push later (:meth:`merge`)."""
        k = self.capacity
        m, pos = x.shape[1], 0
        while pos < m:
            buf = self._level(h)
            f = self._fill[h]
            take = min(k - f, m - pos)
            buf[:, f:f + take].copy_(x[:, pos:pos + take])
            self._fill[h] = f + take
            pos += take
            if self._fill[h] == k:
                self._compact_full(h, spill)

    def _compact_full(self, h: int, spill: list | None) -> None:
        """One compaction of the full level ``h``, in place.

        The ``capacity`` values are sorted; every other value (odd or even positions, chosen
        by the coin) of the lower half (high-rank accuracy, the ReqSketch rule) or of all of
        them (plain KLL) moves up a level with twice the weight; with ``hra`` the upper half
        stays at this level, otherwise the level is emptied.
        """
        k, half = self.capacity, self.capacity // 2
        buf = self._bufs[h]
        _sort_rows_(buf)
        off = _coin(self.seed, h, self.compactions[h])
        self.compactions[h] += 1
        up = buf[:, off:half:2] if self.hra else buf[:, off:k:2]
        if spill is None:
            self._push(h + 1, up)
        else:
            spill.append(up.clone())
        if self.hra:
            buf[:, :half].copy_(buf[:, half:])
            self._fill[h] = half
        else:
            self._fill[h] = 0

    def merge(self, other: "Quantile") -> "Quantile":
        """Add the values summarised by ``other`` (same capacity); returns ``self``.

        Level by level from the bottom, level ``h`` receives ``other``'s level ``h`` and then
        the values that the compactions of level ``h - 1`` moved up.
        """
        if other.units is None:
            return self
        if other.capacity != self.capacity or other.hra != self.hra:
            raise ValueError("cannot merge quantile sketches of different capacity or kind")
        if self.units is None:
            self.load_state_dict(other.state_dict())
            return self
        if other.units != self.units:
            raise ValueError(f"cannot merge sketches of {self.units} and {other.units} units")
        theirs = [b.clone() for b in other.levels] if other is self else other.levels
        for h, c in enumerate(other.compactions):
            self._level(h)
            self.compactions[h] += c
        self.n += other.n
        moved: list = []
        h = 0
        while h < len(theirs) or moved:
            incoming, moved = ([theirs[h]] if h < len(theirs) else []) + moved, []
            for x in incoming:
                self._push(h, x, moved)
            h += 1
        return self

    # -- answers ---------------------------------------------------------------------------
    @property
    def exact(self) -> bool:
        """True while no value has been compacted (answers equal ``numpy.quantile``)."""
        return len(self.levels) <= 1

    def rank_error_bound(self) -> float:
        """Deterministic worst-case bound on the rank error (a fraction of ``n``)."""
        if not self.n:
            return 0.0
        return sum(c * 2 ** h for h, c in enumerate(self.compactions)) / self.n

    #: units answered at once by :meth:`quantiles` (bounds the memory of a query)
    QUERY_CHUNK = 32

    def quantiles(self, qs: Sequence[float] | float) -> torch.Tensor:
        """Quantiles ``qs`` (in ``[0, 1]``) of every unit: a ``(U, len(qs))`` tensor.

        The answer interpolates linearly between the order statistics of 0-based ranks
        ``floor(q (n-1))`` and the next one, as :func:`numpy.quantile` does; an item of weight
        ``w`` stands for ``w`` consecutive order statistics.
        """
        if self.units is None or not self.n:
            raise ValueError("no data has been added to the quantile sketch")
        scalar = isinstance(qs, (int, float))
        q = torch.as_tensor([qs] if scalar else list(qs), dtype=torch.float64)
        if ((q < 0) | (q > 1)).any():
            raise ValueError("quantiles must lie in [0, 1]")
        dev = self.levels[0].device
        weights = torch.cat([torch.full((b.shape[1],), 2 ** h, dtype=torch.int64, device=dev)
                             for h, b in enumerate(self.levels)])
        pos = q * (self.n - 1)
        lo = torch.floor(pos).to(torch.int64)
        hi = torch.clamp(lo + 1, max=self.n - 1)
        ranks = torch.cat([lo, hi]).to(dev)
        out = []
        for s in range(0, self.units, self.QUERY_CHUNK):
            vals = torch.cat([b[s: s + self.QUERY_CHUNK] for b in self.levels], dim=1)
            vals, order = torch.sort(vals, dim=1)
            cum = torch.cumsum(weights[order], dim=1)
            idx = torch.searchsorted(cum, ranks[None].expand(len(vals), -1).contiguous(),
                                     right=True).clamp(max=vals.shape[1] - 1)
            picked = torch.gather(vals, 1, idx)
            a, b = picked[:, : len(q)], picked[:, len(q):]
            frac = (pos - lo).to(vals.dtype).to(dev)
            out.append(a + frac[None] * (b - a))
        return torch.cat(out)

    def quantile(self, q: float) -> torch.Tensor:
        """The ``q`` quantile of every unit, a ``(U,)`` tensor."""
        return self.quantiles([q])[:, 0]

    # -- persistence -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The sketch's state; its ``levels`` share memory with the sketch (as a module's
        ``state_dict`` does): save or clone them before adding more values."""
        return {"kind": "Quantile", "capacity": self.capacity, "seed": self.seed,
                "hra": self.hra, "n": self.n,
                "units": self.units, "levels": self.levels,
                "compactions": list(self.compactions)}

    def load_state_dict(self, state: dict) -> None:
        self.capacity = int(state["capacity"])
        self.seed = int(state["seed"])
        self.hra = bool(state.get("hra", True))
        self.n = int(state["n"])
        self.units = state["units"]
        levels = list(state["levels"])
        self.compactions = [int(c) for c in state["compactions"]]
        self._bufs, self._fill = [], []
        for h, b in enumerate(levels):
            if b.shape[1] >= self.capacity:
                raise ValueError(f"level {h} of the saved sketch holds {b.shape[1]} values, "
                                 f"more than its capacity {self.capacity} allows")
            buf = self._level(h, b.dtype, b.device)
            buf[:, :b.shape[1]].copy_(b)
            self._fill[h] = b.shape[1]

    def to(self, device) -> "Quantile":
        self._bufs = [b.to(device) for b in self._bufs]
        return self


class MinMax:
    """Per-unit minimum and maximum of a stream (exact, merge exact)."""

    def __init__(self):
        self.min: torch.Tensor | None = None
        self.max: torch.Tensor | None = None
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        """Add ``x`` of shape ``(N, U)``."""
        xt = _as_units_first(x.detach())
        if xt.shape[1] == 0:
            return
        lo, hi = xt.amin(dim=1), xt.amax(dim=1)
        self._update(lo, hi, xt.shape[1])

    def _update(self, lo, hi, n):
        if self.min is None:
            self.min, self.max = lo.clone(), hi.clone()
        else:
            self.min = torch.minimum(self.min, lo.to(self.min))
            self.max = torch.maximum(self.max, hi.to(self.max))
        self.n += int(n)

    def merge(self, other: "MinMax") -> "MinMax":
        if other.min is not None:
            self._update(other.min, other.max, other.n)
        return self

    def state_dict(self) -> dict:
        return {"kind": "MinMax", "min": self.min, "max": self.max, "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        self.min, self.max, self.n = state["min"], state["max"], int(state["n"])

    def to(self, device) -> "MinMax":
        if self.min is not None:
            self.min, self.max = self.min.to(device), self.max.to(device)
        return self


class TopK:
    """Per-unit top-``k`` samples by value (e.g. the images where a unit fires most).

    ``add(values, index)`` takes ``values`` ``(N, U)`` and the samples' integer ids ``(N,)``.
    Ties are broken towards the smaller id, so the selection is deterministic and merging is
    exact: the result equals one pass over the union.
    """

    def __init__(self, k: int = 16):
        self.k = int(k)
        self.values: torch.Tensor | None = None   # (U, k') sorted descending
        self.index: torch.Tensor | None = None    # (U, k') int64

    def add(self, values: torch.Tensor, index: torch.Tensor | Sequence[int]) -> None:
        vt = _as_units_first(values.detach())
        index = torch.as_tensor(index, dtype=torch.int64, device=vt.device)
        if index.shape != (vt.shape[1],):
            raise ValueError("index must hold one id per sample")
        self._select(vt, index[None].expand(vt.shape[0], -1))

    def _select(self, vt, it):
        if self.values is not None:
            vt = torch.cat([self.values, vt.to(self.values)], dim=1)
            it = torch.cat([self.index, it.to(self.index.device)], dim=1)
        vt = torch.nan_to_num(vt, nan=-math.inf)
        order = torch.argsort(it, dim=1, stable=True)
        vt, it = torch.gather(vt, 1, order), torch.gather(it, 1, order)
        order = torch.argsort(vt, dim=1, descending=True, stable=True)[:, : self.k]
        self.values, self.index = torch.gather(vt, 1, order), torch.gather(it, 1, order)

    def merge(self, other: "TopK") -> "TopK":
        if other.values is not None:
            self._select(other.values, other.index)
        return self

    def state_dict(self) -> dict:
        return {"kind": "TopK", "k": self.k, "values": self.values, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.k, self.values, self.index = int(state["k"]), state["values"], state["index"]

    def to(self, device) -> "TopK":
        if self.values is not None:
            self.values, self.index = self.values.to(device), self.index.to(device)
        return self


class _Counts:
    """Base of tallies: named tensors that add, merge by summation and persist."""

    fields: tuple = ()

    def merge(self, other):
        for f in self.fields:
            a, b = getattr(self, f), getattr(other, f)
            if b is None:
                continue
            setattr(self, f, b.clone() if a is None else a + b.to(a))
        return self

    def state_dict(self) -> dict:
        return {"kind": type(self).__name__, **{f: getattr(self, f) for f in self.fields},
                **self._meta()}

    def _meta(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        for f in self.fields:
            setattr(self, f, state[f])

    def to(self, device):
        for f in self.fields:
            t = getattr(self, f)
            if t is not None:
                setattr(self, f, t.to(device))
        return self


class IoUTally(_Counts):
    """The counts behind Network-Dissection IoU for one layer (Bau et al., CVPR 2017).

    ``inter[u, l]``  active pixels of unit ``u`` carrying label ``l``;
    ``label[l]``     pixels labelled ``l`` (a whole-image label counts every pixel);
    ``act[u, c]``    active pixels of unit ``u`` counted on the images that qualify for
                     category ``c`` (see :func:`neuroprobe.tally.iou_counts` for the rules);
    ``images``       images seen.

    All counts are ``int64``: sums are exact and independent of order, so merges and resumed
    runs reproduce an uninterrupted run exactly.  ``add`` forwards to
    :func:`neuroprobe.tally.iou_counts`.
    """

    fields = ("inter", "act", "label", "images")

    def __init__(self, units: int, num_labels: int, category_of_label, num_categories: int,
                 denominator: str = "netdissect"):
        self.units, self.num_labels = int(units), int(num_labels)
        self.num_categories = int(num_categories)
        self.category_of_label = torch.as_tensor(category_of_label, dtype=torch.int64)
        self.denominator = denominator
        self.inter = self.act = self.label = self.images = None

    def add(self, maps, thresholds, layers, whole, categories, *, images=None,
            index=None, truth=None, threads: int = 1) -> None:
        """Tally one batch: raw maps ``(B, U, h, w)``, thresholds ``(U,)``, label layers
        ``(B, K, H, W)``, whole-image labels ``(B, n)``, category flags ``(B, C)``; with
        ``images`` (an :class:`ImageCounts`) and the images' data-set ``index``, the same
        counts image by image go there too.  ``truth``: the batch's
        :func:`neuroprobe.tally.image_label_counts`, where the caller tallies several layers
        on the same labels (computed once instead of once per layer).  ``threads``: of the
        compiled CPU tally (the counts do not depend on it)."""
        from .tally import image_label_counts, iou_counts

        dev = maps.device
        if self.inter is None:
            self.inter = torch.zeros((self.units, self.num_labels), dtype=torch.int64, device=dev)
            self.act = torch.zeros((self.units, self.num_categories), dtype=torch.int64,
                                   device=dev)
            self.label = torch.zeros(self.num_labels, dtype=torch.int64, device=dev)
            self.images = torch.zeros((), dtype=torch.int64, device=dev)
        cat = self.category_of_label.to(dev)
        if truth is None:   # the label counts of every image: the tally's label counts and
            # NetDissect's category flags follow from them
            truth = image_label_counts(layers, whole, self.num_labels, threads)
        out = iou_counts(maps, thresholds, layers, whole, categories, cat, self.num_labels,
                         self.num_categories, self.denominator, per_image=images is not None,
                         truth=truth, threads=threads)
        inter, act = out[:2]
        self.inter += inter
        self.act += act
        if images is not None:   # the per-image label counts sum to the batch's
            images.add(out[2], index, out[2].get("categories", categories))
        self.label += truth.to(dev).sum(0)
        self.images += maps.shape[0]

    def _meta(self):
        return {"denominator": self.denominator, "units": self.units,
                "num_labels": self.num_labels, "num_categories": self.num_categories,
                "category_of_label": self.category_of_label}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.denominator = state.get("denominator", getattr(self, "denominator", "netdissect"))
        for k in ("units", "num_labels", "num_categories"):
            if k in state:
                setattr(self, k, int(state[k]))
        if "category_of_label" in state:
            self.category_of_label = torch.as_tensor(state["category_of_label"],
                                                     dtype=torch.int64)

    def iou(self) -> torch.Tensor:
        """``(U, L)`` float64 IoU; label ``l`` uses the activation count of its category."""
        cat = self.category_of_label.to(self.inter.device)
        valid = cat >= 0
        a = torch.zeros_like(self.inter)
        a[:, valid] = self.act[:, cat[valid]]
        inter = self.inter.double()
        union = a.double() + self.label.double()[None] - inter
        out = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
        out[:, ~valid] = 0.0
        out[:, 0] = 0.0
        return out


class NSSTally(_Counts):
    """Region-based NSS sums for one layer (He et al., CVPR 2019).

    ``total[u, l]`` sum over annotated regions of label ``l`` of the unit's NSS there;
    ``regions[l]`` number of such regions with at least one fixation inside.  The mean
    region-NSS is ``total / regions`` (per region, then the mean over the label's regions).
    ``add`` forwards to :func:`neuroprobe.tally.region_nss` with this tally's ``ddof``,
    ``resolution`` (``"image"``: maps upsampled to the image size, the study's definition;
    ``"mask"``) and ``regions`` (``"instance"``: one region per annotated instance, the
    study's; ``"label"``: one per label and image).

    Sums are ``float64``; each batch's contribution is rounded to a multiple of ``GRID``
    (``2**-32``, far below the float32 precision of the maps) before it is added, so every
    partial sum is exactly representable while ``|total| < 2**20``: the total is then the same
    in any order -- a resumed run, a merge of shards and a multi-process run equal one
    uninterrupted run bit for bit.
    """

    GRID = 2.0 ** -32

    fields = ("total", "regions", "images")

    def __init__(self, units: int, num_labels: int, ddof: int = 1, *, resolution: str = "mask",
                 regions: str = "instance"):
        self.units, self.num_labels, self.ddof = int(units), int(num_labels), int(ddof)
        self.resolution, self.region_rule = resolution, regions
        self.total = self.regions = self.images = None

    def add(self, maps, lo, hi, layers, fixations, image_size, instances=None) -> None:
        from .tally import region_nss

        dev = maps.device
        if self.total is None:
            self.total = torch.zeros((self.units, self.num_labels), dtype=torch.float64,
                                     device=dev)
            self.regions = torch.zeros(self.num_labels, dtype=torch.int64, device=dev)
            self.images = torch.zeros((), dtype=torch.int64, device=dev)
        total, regions = region_nss(maps, lo, hi, layers, fixations, image_size,
                                    self.num_labels, ddof=self.ddof, resolution=self.resolution,
                                    instances=instances, regions=self.region_rule)
        self.total += torch.round(total / self.GRID) * self.GRID
        self.regions += regions
        self.images += maps.shape[0]

    def _meta(self):
        return {"ddof": self.ddof, "units": self.units, "num_labels": self.num_labels,
                "resolution": self.resolution, "region_rule": self.region_rule}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        for k in ("ddof", "units", "num_labels"):
            if k in state:
                setattr(self, k, int(state[k]))
        # a state saved before the region-NSS options existed was computed at mask size with
        # one region per label
        self.resolution = str(state.get("resolution", getattr(self, "resolution", "mask")))
        self.region_rule = str(state.get("region_rule", getattr(self, "region_rule", "label")))

    def mean(self) -> torch.Tensor:
        """``(U, L)`` mean region-NSS (``nan`` where a label has no fixated region)."""
        r = self.regions.double()[None]
        return torch.where(r > 0, self.total / r.clamp(min=1),
                           torch.full_like(self.total, float("nan")))


class ImageCounts:
    """The IoU counts of one layer image by image, sparse: what a bootstrap over images needs.

    Fed by :meth:`IoUTally.add` (``images=``) from the same active pixels as the tally, so the
    per-image counts sum exactly to the tally's.  Kept per batch: every (image, unit) with an
    active pixel and its count; every nonzero per-image intersection (image, unit, label); every
    (image, label) pixel count; each image's category flags.  A unit fires above its threshold
    (the top 0.5 % of its activations) in few images, so this is far smaller than the dense
    units x labels x images, but it still grows with the data set: each batch is written to a
    file in ``folder`` (named by the batch's first data-set index, so a resumed pass rewrites
    the same files) and nothing stays in memory.  :meth:`table` reads them back keeping only
    the counts of each unit's own label (see :mod:`neuroprobe.image_counts`).  The state is the
    folder (and those of merged shards).
    """

    def __init__(self, units: int, num_labels: int, folder):
        self.units, self.num_labels = int(units), int(num_labels)
        self.folders = [str(folder)]

    def add(self, counts: dict, index, categories) -> None:
        """One batch: ``counts`` from :func:`neuroprobe.tally.iou_counts` (``per_image``),
        the images' data-set ``index`` ``(B,)`` and the category flags the tally's rule
        counted on (``counts["categories"]`` where the rule sets its own)."""
        from pathlib import Path

        from .io import save_torch

        U, L = self.units, self.num_labels
        index = torch.as_tensor(index, dtype=torch.int64).cpu()
        i32 = torch.int32
        c = {k: v.cpu() for k, v in counts.items()}
        truth = c["truth"].reshape(-1)
        nz = truth.nonzero().squeeze(1)
        part = {"active_image": index[c["pair"] // U].to(i32),
                "active_unit": (c["pair"] % U).to(i32), "active": c["active"].to(i32),
                "inter_image": index[c["inter_pair"] // U].to(i32),
                "inter_unit": (c["inter_pair"] % U).to(i32),
                "inter_label": c["inter_label"].to(i32), "inter": c["inter"].to(i32),
                "truth_image": index[nz // L].to(i32), "truth_label": (nz % L).to(i32),
                "truth": truth[nz].to(i32), "cat_image": index.to(i32),
                "categories": torch.as_tensor(categories).cpu().to(torch.bool)}
        path = Path(self.folders[0]) / f"{int(index.min()):010d}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_torch(part, path, durable=False)   # scratch until the run writes image_counts.npz

    def merge(self, other: "ImageCounts") -> "ImageCounts":
        self.folders += [f for f in other.folders if f not in self.folders]
        return self

    def state_dict(self) -> dict:
        return {"kind": "ImageCounts", "units": self.units, "num_labels": self.num_labels,
                "folders": list(self.folders)}

    def load_state_dict(self, state: dict) -> None:
        """Restore; a statistic made for a run keeps its own folder (a resumed run may have
        been moved), one rebuilt by :func:`from_state` takes the saved folders."""
        self.units, self.num_labels = int(state["units"]), int(state["num_labels"])
        if not getattr(self, "folders", None):
            self.folders = [str(f) for f in state["folders"]]

    def to(self, device) -> "ImageCounts":
        return self

    def files(self) -> list:
        from pathlib import Path

        # not the temporary files of atomic writes (".NAME.XXXX.pt"): a run killed in the
        # middle of a write (SIGKILL, power loss) leaves one, and it may be partial
        return sorted(p for f in self.folders if Path(f).is_dir()
                      for p in Path(f).glob("*.pt") if not p.name.startswith("."))

    def table(self, unit_label, category_of_label, denominator: str) -> dict:
        """The counts of each unit's own label per image, as NumPy arrays.

        ``unit_label`` ``(U,)``: each unit's label id (0 = none); ``category_of_label``: the
        tally's category of each label; ``denominator`` its rule.  Returns ``label`` ``(U,)``;
        ``image``, ``unit``, ``inter``, ``act`` (one entry per image and unit where the unit
        fires and counts for its label's category); ``truth_image``, ``truth_label``,
        ``truth`` (pixels of the units' labels per image), ``counted`` ``(U,)`` (the label has
        a category the tally counts: otherwise its IoU is 0) and ``images`` (every image seen).
        Summed over all images they give the unit's ``inter[u, l_u]``, ``act[u, c(l_u)]`` and
        ``label[l_u]`` of the :class:`IoUTally`.
        """
        import numpy as np

        lab = np.asarray(unit_label, dtype=np.int64)
        tcat = np.asarray(torch.as_tensor(category_of_label).cpu(), dtype=np.int64)
        cu = np.where(lab > 0, tcat[np.maximum(lab, 0)], -1)          # category of each unit
        parts = [_own_label(torch.load(p, weights_only=True), lab, tcat, cu, self.units,
                            denominator) for p in self.files()]
        out = {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0, np.int32)
               for k in ("image", "unit", "inter", "act", "truth_image", "truth_label",
                         "truth", "images")}
        out["images"] = np.unique(out["images"]).astype(np.int64)
        return {"label": lab.astype(np.int32), "counted": cu >= 0, **out}


def _own_label(part: dict, lab, tcat, cu, U: int, denominator: str) -> dict:
    """One batch of :class:`ImageCounts` reduced to each unit's own label."""
    import numpy as np

    d = {k: v.numpy() for k, v in part.items()}
    mine = d["inter_label"] == lab[d["inter_unit"]]
    key_a = d["active_image"].astype(np.int64) * U + d["active_unit"]
    key_i = d["inter_image"][mine].astype(np.int64) * U + d["inter_unit"][mine]
    ok = cu[d["active_unit"]] >= 0
    if denominator in ("netdissect", "annotated"):   # the image counts for the unit's category
        # (flags as the tally's rule set them: a label of that primary category in the image,
        # NetDissect's; or the category annotated, neuroprobe's former rule)
        order = np.argsort(d["cat_image"], kind="stable")
        row = order[np.searchsorted(d["cat_image"], d["active_image"], sorter=order)]
        ok &= d["categories"][row, np.maximum(cu[d["active_unit"]], 0)]
    elif denominator == "lite":   # the unit's active pixels touch a label of its category
        touch = tcat[d["inter_label"]] == cu[d["inter_unit"]]
        ok &= np.isin(key_a, d["inter_image"][touch].astype(np.int64) * U
                      + d["inter_unit"][touch])
    order = np.argsort(key_a, kind="stable")
    inter = np.zeros(len(key_a), dtype=np.int64)
    inter[order[np.searchsorted(key_a, key_i, sorter=order)]] = d["inter"][mine]
    keep = ok | (inter > 0)
    assigned = np.isin(d["truth_label"], lab[lab > 0])
    return {"image": d["active_image"][keep], "unit": d["active_unit"][keep],
            "inter": inter[keep].astype(np.int32),
            "act": np.where(ok, d["active"], 0)[keep].astype(np.int32),
            "truth_image": d["truth_image"][assigned], "truth_label": d["truth_label"][assigned],
            "truth": d["truth"][assigned], "images": d["cat_image"]}


#: the statistics :func:`from_state` knows, by the ``"kind"`` of their state
KINDS = {cls.__name__: cls for cls in (Quantile, MinMax, TopK, IoUTally, NSSTally,
                                       ImageCounts)}


def from_state(state: Mapping) -> Stat:
    """The statistic saved as ``state`` (a ``state_dict``), rebuilt from it alone."""
    try:
        cls = KINDS[state["kind"]]
    except KeyError:
        raise ValueError(f"unknown statistic kind {state.get('kind')!r}") from None
    stat = cls.__new__(cls)
    stat.load_state_dict(dict(state))
    return stat


class StatSet(dict):
    """The statistics of a run: ``{layer: {name: Stat}}``.

    Built from one factory per statistic name, ``StatSet(layers, {"top": lambda layer:
    TopK(16), ...})``, so adding a statistic to a run is one line.  Saves, restores, moves and
    merges (across processes too) all of its statistics at once.
    """

    def __init__(self, layers: Sequence[str] = (),
                 factories: Mapping[str, Callable[[str], Stat]] | None = None):
        super().__init__({layer: {k: make(layer) for k, make in (factories or {}).items()}
                          for layer in layers})

    def state_dict(self, drop: Sequence[str] = ()) -> dict:
        """``{layer: {name: state}}`` of every statistic but those named in ``drop``."""
        return {layer: {k: s.state_dict() for k, s in st.items() if k not in drop}
                for layer, st in self.items()}

    def load_state_dict(self, state: Mapping, device=None) -> None:
        """Restore the statistics saved in ``state`` (those it holds), on ``device``."""
        for layer, saved in state.items():
            for k, sd in saved.items():
                self[layer][k].load_state_dict(sd)
                if device is not None:
                    self[layer][k].to(device)

    def to(self, device) -> "StatSet":
        for st in self.values():
            for s in st.values():
                s.to(device)
        return self

    def merge(self, other: "StatSet", names: Sequence[str] | None = None) -> "StatSet":
        """Merge ``other``'s statistics (of ``names``, default all) into these."""
        for layer, st in other.items():
            for k, s in st.items():
                if names is None or k in names:
                    self[layer][k].merge(s)
        return self

    def merge_ranks(self, dctx, names: Sequence[str], device) -> "StatSet":
        """Replace the statistics ``names`` by their merge over all processes of ``dctx``
        (:func:`neuroprobe.distributed.merge_stats`); nothing without torchrun."""
        from .distributed import merge_stats

        merge_stats(dctx, self, names, from_state, device)
        return self
