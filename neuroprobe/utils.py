"""Small shared helpers: device choice (:func:`resolve_device`, :func:`model_device`), progress
bars, version information, the C heap."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import platform
import sys
from importlib import metadata

from . import __version__
from .errors import UserError


def quiet() -> bool:
    """True when the ``neuroprobe`` logger is set above INFO (``--quiet`` does this; so does
    ``logging.getLogger("neuroprobe").setLevel(logging.WARNING)``): no progress bars then."""
    return logging.getLogger("neuroprobe").level > logging.INFO


def progress(iterable=None, **kwargs):
    """A tqdm progress bar on stderr: the one place neuroprobe makes progress bars.

    The bar is off under :func:`quiet`, and a terminal bar is off where stderr is not a
    terminal (tqdm's ``disable=None``), so that logs and CI output get no carriage-return
    lines; a notebook's bar is a widget and stays on.  ``disable=True`` turns it off."""
    from tqdm.auto import tqdm
    from tqdm.autonotebook import tqdm as chosen   # the notebook bar in Jupyter
    from tqdm.std import tqdm as terminal_bar

    if kwargs.pop("disable", None) or quiet():
        kwargs["disable"] = True
    else:
        kwargs["disable"] = None if chosen is terminal_bar else False
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("file", sys.stderr)
    return tqdm(iterable, **kwargs)


#: what ``--device`` accepts (checked by :func:`parse_device`)
DEVICE_FORMS = "auto, cpu, cuda, cuda:N, mps"


def parse_device(text: str | None) -> str:
    """The one parser of a device name: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``
    (case-insensitive, surrounding blanks ignored) -> its normal form.  Only the spelling is
    checked here (no torch import); :func:`resolve_device` checks that the device exists.

    Raises
    ------
    ValueError
        For anything else, with a message naming the accepted forms.
    """
    name = (text or "auto").strip().lower()
    kind, colon, index = name.partition(":")
    if kind in ("auto", "cpu", "mps", "cuda") and not colon:
        return name
    if kind == "cuda" and colon and index.isdigit():
        return f"cuda:{int(index)}"
    raise ValueError(f"{text!r} is not a device (give one of {DEVICE_FORMS})")


def resolve_device(name: str | None = "auto"):
    """``auto`` -> cuda when available, else cpu; ``cuda``, ``cuda:N`` or ``mps`` that this
    machine lacks is a :class:`UserError` (one line naming what is visible).

    Parameters
    ----------
    name : str or None
        Any form :func:`parse_device` accepts (``None`` = ``auto``).

    Returns
    -------
    torch.device
    """
    import torch

    try:
        name = parse_device(name)
    except ValueError as err:
        raise UserError(f"--device {err}") from None
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} was asked for but no CUDA GPU is visible to "
                            "PyTorch", hint="use --device cpu or --device auto")
        count = torch.cuda.device_count()
        if ":" in name and int(name.split(":")[1]) >= count:
            raise UserError(f"--device {name} was asked for but PyTorch sees {count} CUDA "
                            f"device{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})",
                            hint="use one of those, or set CUDA_VISIBLE_DEVICES")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError("--device mps was asked for but the Apple MPS backend is not "
                            "available to PyTorch", hint="use --device cpu or --device auto")
    return torch.device(name)


def model_device(model):
    """The device a model lives on: that of its first parameter, else of its first buffer, else
    the CPU (a module without tensors runs anywhere).

    Parameters
    ----------
    model : torch.nn.Module
        Any module, including a TorchScript one.

    Returns
    -------
    torch.device
    """
    import torch

    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def versions() -> dict:
    """Versions of neuroprobe and the libraries whose behaviour shapes results."""
    out = {"neuroprobe": __version__, "python": platform.python_version()}
    for mod in ("torch", "torchvision", "numpy", "captum"):
        # the module's own version where it is imported (it says what ran); otherwise the
        # installed distribution's, without importing it (captum alone takes a second)
        try:
            out[mod] = str(sys.modules[mod].__version__) if mod in sys.modules \
                else metadata.version(mod)
        except Exception:  # pragma: no cover - optional
            out[mod] = None
    return out


@functools.lru_cache(maxsize=1)
def _glibc():
    """``(malloc_trim, mallinfo2)`` of glibc; ``None`` for what the C library lacks (musl,
    macOS and Windows have neither; glibc before 2.33 has no ``mallinfo2``)."""
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):
        return None, None
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    info = getattr(libc, "mallinfo2", None)
    if info is not None:
        class _Mallinfo2(ctypes.Structure):
            _fields_ = [(f, ctypes.c_size_t) for f in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                "uordblks", "fordblks", "keepcost")]

        info.argtypes, info.restype = [], _Mallinfo2
    return trim, info


def heap_free_bytes() -> int | None:
    """Bytes held free by the C heap (glibc ``mallinfo2().fordblks``, all arenas); ``None``
    where the C library cannot tell."""
    info = _glibc()[1]
    return None if info is None else int(info().fordblks)


@contextlib.contextmanager
def intra_op_threads(n: int):
    """Run the body with ``n`` intra-op threads of torch (``torch.set_num_threads``), then
    restore the former count.

    Why (issue 20): the CPU tally of a dissection is many short, memory-bound operations
    (gathers, ``nonzero``, ``bincount``).  With two OpenMP threads each of them waits for the
    second core; when another process holds that core the waits dominate.  Measured on the
    2-core machine of ``benchmarks/README.md`` (tally pass of 300 images, load 3.5-4): 14.4 and
    31.7 s with two threads against 2.3 and 1.4 s with one.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def release_heap(min_free: int = 0) -> bool:
    """Return the free pages of the C heap to the operating system (glibc ``malloc_trim(0)``).

    Why: on the CPU, PyTorch takes tensor memory from ``malloc``.  Once the dynamic mmap
    threshold of glibc has risen (it does after the first forward pass frees its large
    outputs), tensors of up to 32 MiB come from the heap, and the heap fragments: free chunks
    stay resident (the top of the heap up to twice that threshold, every hole in the middle),
    a later batch of the same sizes takes other holes, and resident memory creeps up batch
    after batch.  Measured on the dissection benchmark (ResNet-18 layer3 + layer4, batch 16):
    60-130 MiB of free but resident heap after a few dozen batches, varying from run to run.
    ``malloc_trim`` gives every free page back (``madvise``), keeping the chunks, so the next
    batch faults in only the pages it touches.  Cost: those page faults, a few percent of a
    forward pass.

    Parameters
    ----------
    min_free : int
        Trim only when the heap holds more than this many free bytes (:func:`heap_free_bytes`;
        always where the C library cannot tell): a cheap guard for loops whose heap grows
        slowly.

    Returns
    -------
    bool
        Whether the heap was trimmed (``False`` where the C library has no ``malloc_trim``).
    """
    trim = _glibc()[0]
    if trim is None:
        return False
    if min_free > 0:
        free = heap_free_bytes()
        if free is not None and free <= min_free:
            return False
    trim(0)
    return True
