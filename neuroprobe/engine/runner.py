"""The pass runner: one loop over a concept set that every command uses.

:func:`run_pass` takes a model, a concept set, layers and a per-batch callback.  It brings to
every caller what the dissection engine needs for speed and robustness:

* a ``DataLoader`` with worker processes over :class:`ItemView` (images as ``uint8`` where the
  source decodes 8-bit files, labels in the smallest integer type, pinned memory on a GPU);
* the forward pass (:func:`forward`): hooks on the named layers, the forward stopped after the
  last of them, optional autocast (``amp``), channels-last inputs on a GPU;
* skip handling (``on_bad_image``): unreadable items are left out and listed;
* rank sharding under ``torchrun``: every rank takes every ``world``-th batch;
* checkpoint cadence: a hook after every ``checkpoint_every`` batches or every
  ``checkpoint_seconds``, and at the end of the pass;
* on the CPU, the C heap's free pages go back to the system after every batch.

The callback sees ``on_batch(acts, batch, j)``: ``acts`` the float32 or autocast outputs of the
layers (``{}`` when every item of the batch was skipped), ``batch`` the collated items (with
their data-set ``"index"``), ``j`` the global batch number.
"""
from __future__ import annotations

import contextlib
import functools
import time
from typing import Callable, Sequence

import torch

from ..concepts.base import SKIPPED, collate
from ..concepts.maskfolder import UINT8_SCALE
from ..errors import ConceptSetError, DataFormatError, UserError
from ..hooks import Recorder
from ..utils import model_device, progress as _bar, release_heap

__all__ = ["run_pass", "forward", "model_input", "no_autotune", "probe_shapes", "ItemView",
           "check_finite", "DATA_ERRORS", "OUTPUT", "CHECKPOINT_SECONDS", "none_readable", "error_line"]

#: the errors the concept readers raise for an item they cannot decode (a missing, truncated,
#: undecodable or wrongly sized image or mask, unknown label ids): ``on_bad_image="skip"``
#: leaves such items out; every other exception stops the run
DATA_ERRORS = (DataFormatError, ConceptSetError)
#: the key of the model's own output in ``acts`` when no layer is named
OUTPUT = "output"
#: seconds between checkpoints when ``checkpoint_every`` is not given
CHECKPOINT_SECONDS = 60.0


def forward(model, images, layers, amp=None, device=None) -> dict:
    """``{layer: output}`` of one forward pass (stopped after the last layer); with no
    layers, ``{OUTPUT: model(images)}``."""
    ctx = contextlib.nullcontext()
    if amp:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        ctx = torch.autocast(device_type=torch.device(device or images.device).type,
                             dtype=dtype)
    if not layers:
        with torch.no_grad(), ctx:
            return {OUTPUT: model(images)}
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


@contextlib.contextmanager
def no_autotune(active: bool = True):
    """Run the body without cuDNN's autotuning (``torch.backends.cudnn.benchmark``), then
    restore it.  Autotuning times every convolution algorithm once per new input shape; a
    dissection's passes use one batch shape, so only that one is worth it: the probe's single
    image and the short last batch run cuDNN's heuristic choice instead (seconds of start-up
    for a deep network on a GPU).  Nothing changes where autotuning is off (the CPU)."""
    before = torch.backends.cudnn.benchmark
    if active and before:
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def model_input(images: torch.Tensor, device, channels_last: bool) -> torch.Tensor:
    """A batch of images on ``device`` as float32 in ``[0, 1]`` (``uint8`` ones are converted
    there: the same float32 values as :func:`~neuroprobe.concepts.maskfolder.image_tensor`)."""
    x = images.to(device, non_blocking=True)
    if channels_last:   # (before the conversion: a copy of bytes rather than of floats)
        x = x.contiguous(memory_format=torch.channels_last)
    if x.dtype == torch.uint8:   # (the elementwise operations keep the memory format)
        x = x.float().mul_(UINT8_SCALE)
    return x


def check_finite(name, a, ids) -> None:
    """Stop with one line at the first unit of ``a`` with NaN or infinite activations."""
    # a NaN or an infinity anywhere makes the sum non-finite; a sum of finite values that
    # overflows is checked element by element below
    if torch.isfinite(a.sum()):
        return
    if torch.isfinite(a).all():
        return
    bad = ~torch.isfinite(a)
    b, u = bad.flatten(2).any(2).nonzero()[0].tolist()
    kind = "NaN" if torch.isnan(a[b, u]).any() else "infinite"
    raise UserError(f"{kind} activations in layer {name!r}, unit {u}, image {ids[b]!r}",
                    hint="check the model's weights and input normalisation, or try without "
                    "--amp")


# -- reading items --------------------------------------------------------------------------------

class ItemView(torch.utils.data.Dataset):
    """What a pass reads from a concept set: items with or without labels, images as ``uint8``
    where the source decodes 8-bit files (see :meth:`ConceptDataset.item`), each with its
    data-set position as ``"index"``.

    An item the source cannot read raises one of :data:`DATA_ERRORS`.  ``on_bad_image="stop"``
    re-raises it with a hint naming ``--on-bad-image skip``; ``"skip"`` returns the marker
    ``{"skipped": {"index", "id", "error"}}`` instead, which :func:`~neuroprobe.concepts.base.
    collate` leaves out of the batch and lists (so nothing but plain data crosses from a loader
    worker).  ``validate=True`` reads the labels of an item but returns its image alone (pass 1
    in skip mode: an item with a broken mask is found before it counts in a threshold).
    """

    def __init__(self, source, labels: bool, on_bad_image: str = "stop", validate: bool = False,
                 images: bool = True):
        self.source, self.labels = source, labels
        self.on_bad_image, self.validate = on_bad_image, validate
        self.images = images

    def __len__(self):
        return len(self.source)

    def _read(self, index):
        if not self.images:   # the labels alone (the maps of the item are known already)
            alone = getattr(self.source, "labels_of", None)
            out = dict(self.source[index]) if alone is None else alone(index)
            out.pop("image", None)
            return out
        item = getattr(self.source, "item", None)
        if item is None:   # a plain dataset of item dicts
            out = self.source[index]
        else:
            out = item(index, labels=self.labels or self.validate, raw_image=True)
        return out if self.labels else {"image": out["image"], "id": out["id"]}

    def __getitem__(self, index):
        try:
            out = self._read(index)
        except DATA_ERRORS as err:
            if self.on_bad_image != "skip":
                raise with_skip_hint(err) from None
            return {SKIPPED: {"index": int(index), "id": _item_id(self.source, index),
                              "error": error_line(err)}}
        return {**out, "index": int(index)}


def error_line(err: UserError) -> str:
    """The one-line text of a data error (its message, without the hint)."""
    return " ".join(err.message.split())


def with_skip_hint(err: UserError) -> UserError:
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


def none_readable(dataset, n: int, error: str | None) -> UserError:
    return UserError(f"none of the {n} images of concept set "
                     f"{getattr(dataset, 'name', '?')!r} could be read"
                     + (f" (first error: {error})" if error else ""),
                     hint="check the data folder (--root) and the concept-set file")


def probe_shapes(model, dataset, layers, amp, device, on_bad_image="stop",
                 channels_last: bool = False) -> dict:
    """Run one image (the first readable one in skip mode, as channels-last tensor with
    ``channels_last``); check that every layer gives spatial maps.  Returns
    ``{layer: (U, h, w)}``."""
    sample, first_error = None, None
    for i in range(len(dataset)):
        try:
            sample = collate([dataset[i]])
            break
        except DATA_ERRORS as err:
            if on_bad_image != "skip":
                raise with_skip_hint(err) from None
            first_error = first_error or err
    if sample is None:
        raise none_readable(dataset, len(dataset), first_error and error_line(first_error))
    images = sample["image"].to(device)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    try:
        with no_autotune():   # (one image: no reason to autotune cuDNN for it)
            acts = forward(model, images, layers, amp, device)
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


# -- the pass -------------------------------------------------------------------------------------

def _batches(n, batch_size, mine, start, exclude, indices):
    """``[(j, [item indices])]`` of this process from position ``start`` of its batches."""
    if indices is not None:
        idx = [int(i) for i in indices]
        return [(j, idx[j * batch_size:(j + 1) * batch_size])
                for j in range((len(idx) + batch_size - 1) // batch_size)][start:]
    return [(j, [i for i in range(j * batch_size, min(n, (j + 1) * batch_size))
                 if i not in exclude]) for j in mine[start:]]


def _loader(source, batches, labels, validate, on_bad_image, num_workers, label_dtype, device,
            images=True):
    """``(j, batch)`` for every batch; a batch whose items were all left out is empty
    (``id == []``) and reads nothing."""
    data = torch.utils.data.DataLoader(
        ItemView(source, labels, on_bad_image, validate, images),
        batch_sampler=[b for _, b in batches if b], num_workers=num_workers,
        collate_fn=functools.partial(collate, label_dtype=label_dtype),
        pin_memory=device.type == "cuda")
    it = None
    for j, b in batches:
        if not b:
            yield j, {"id": [], "index": torch.zeros(0, dtype=torch.int64)}
            continue
        if it is None:
            it = iter(data)
        yield j, next(it)


class _Cadence:
    """When a checkpoint is due: every ``every`` batches, or once ``seconds`` have passed."""

    def __init__(self, every, seconds):
        self.every, self.seconds, self.last = every, seconds, time.monotonic()

    def due(self, done: int) -> bool:
        if self.every is not None:
            return done % self.every == 0
        if time.monotonic() - self.last >= self.seconds:
            self.last = time.monotonic()
            return True
        return False


def run_pass(model, dataset, layers: Sequence[str], on_batch: Callable, *,
             n: int | None = None, indices: Sequence[int] | None = None, batch_size: int = 32,
             device=None, amp: str | None = None, channels_last: bool | None = None,
             labels: bool = True, validate: bool = False, images: bool = True,
             exclude=frozenset(),
             on_bad_image: str = "stop", num_workers: int = 0, label_dtype=None,
             start: int = 0, dctx=None, spool=None, skipped: list | None = None,
             checkpoint: Callable | None = None, checkpoint_every: int | None = None,
             checkpoint_seconds: float = CHECKPOINT_SECONDS,
             after_batch: Callable | None = None, phase: str = "pass",
             progress: bool = False, desc: str | None = None) -> int:
    """One pass over ``dataset``: load, forward, ``on_batch(acts, batch, j)`` per batch.

    Parameters
    ----------
    model : the network (``None`` with ``spool``: the maps are read from the spool; ``None``
        without: a pass over the data alone, ``acts`` is empty).
    dataset : a concept set (or any dataset of item dicts).
    layers : the layers recorded (empty: the model's output, as ``acts[OUTPUT]``).
    on_batch : called after every batch's forward pass.
    n, indices : the first ``n`` items (default all), or these data-set indices in order
        (no sharding, no exclusion).
    batch_size, device, amp, channels_last : batching, device (default: the model's), autocast
        (``"bf16"``/``"fp16"``), channels-last inputs (default: on a GPU).
    labels, validate : read the items' labels; read them but hand over images alone.
    images : read the items' images (``False``, with no model: the labels alone, for a pass over
        maps kept from an earlier one).
    exclude : data-set indices left out (items an earlier pass could not read).
    on_bad_image : ``"stop"`` or ``"skip"`` (unreadable items listed in ``skipped``, each
        ``{"index", "id", "error", "pass": phase}``).
    num_workers, label_dtype : loader processes; dtype of label masks (default int64).
    start : position in this process's batches to start from (a resumed pass).
    dctx : :class:`neuroprobe.distributed.Context` (every rank takes every world-th batch).
    spool : a :class:`~neuroprobe.engine.store.RunStore` whose spool holds the batches (maps
        in ``batch["acts"]``): no model runs.
    checkpoint : ``checkpoint(done, last)`` after ``done`` batches when one is due (every
        ``checkpoint_every`` batches, else every ``checkpoint_seconds``) and after the last.
    after_batch : ``after_batch(phase, j)`` at the very end of every batch (tests use it to
        slow a run down or kill it at a known point).
    progress, desc : a progress bar.

    Returns
    -------
    The number of batches this process ran.
    """
    if device is None:
        device = model_device(model) if model is not None else torch.device("cpu")
    device = torch.device(device)
    if channels_last is None:
        channels_last = device.type == "cuda"
    rank, world = (dctx.rank, dctx.world) if dctx is not None else (0, 1)
    total = len(dataset) if n is None else int(n)
    n_batches = (total + batch_size - 1) // batch_size
    mine = list(range(rank, n_batches, world))
    batches = _batches(total, batch_size, mine, start, exclude, indices)
    if spool is not None:
        items = ((j, spool.read_spool(j)) for j, _ in batches)
    else:
        if not images and model is not None:
            raise ValueError("a pass that runs the model needs the images")
        items = _loader(dataset, batches, labels, validate, on_bad_image, num_workers,
                        label_dtype or torch.int64, device, images)
    count = start + len(batches)
    pbar = _bar(total=count, initial=start, desc=desc or phase, unit="batch",
                **({} if progress else {"disable": True}))
    cadence = _Cadence(checkpoint_every, checkpoint_seconds)
    ran_model = model is not None and spool is None
    for pos, (j, batch) in enumerate(items, start=start):
        if skipped is not None:
            skipped.extend({"index": int(s["index"]), "id": s["id"], "error": s["error"],
                            "pass": phase} for s in batch.get(SKIPPED, ()))
        acts = {}
        if batch["id"]:
            if spool is not None:
                acts = {k: v.to(device) for k, v in batch["acts"].items()}
            elif model is not None:
                # a short batch (the last one) is not autotuned: one shape per run
                with no_autotune(len(batch["id"]) < batch_size):
                    acts = forward(model, model_input(batch["image"], device, channels_last),
                                   list(layers), amp, device)
        on_batch(acts, batch, j)
        pbar.update(1)
        done = pos + 1
        if checkpoint is not None and (done == count or cadence.due(done)):
            checkpoint(done, done == count)
        # nothing of this batch lives on into the next one, and on the CPU the heap's free
        # pages go back to the system (see neuroprobe.utils.release_heap); a batch read from
        # the spool has small temporaries, so its heap is trimmed once 64 MiB are free
        batch = acts = None
        if device.type == "cpu":
            release_heap(0 if ran_model else 64 << 20)
        if after_batch is not None:
            after_batch(phase, j)
    pbar.close()
    return len(batches)
