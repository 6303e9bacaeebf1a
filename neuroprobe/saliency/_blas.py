"""OpenBLAS on one thread for the duration of a block (the saliency metric loops).

OpenBLAS starts a thread per core for a long inner product or a mid-sized matrix product; on a
loaded machine (more runnable processes than cores) those threads wait for each other and an
800x600 inner product takes 30 times longer than on one thread.  The metric loop is
single-threaded by nature, so :func:`blas_single_thread` pins OpenBLAS to one thread for its
duration (as threadpoolctl would, which is not a dependency).
"""
from __future__ import annotations

import ctypes
import glob
import os
from contextlib import contextmanager

import numpy as np

__all__ = ["blas_single_thread"]

_BLAS_FUNCS: list | None = None


def _openblas_thread_funcs() -> list:
    global _BLAS_FUNCS
    if _BLAS_FUNCS is not None:
        return _BLAS_FUNCS
    funcs = []
    paths = set()
    try:
        with open("/proc/self/maps") as fh:
            paths = {ln.split()[-1] for ln in fh if "openblas" in ln.lower() and "/" in ln}
    except OSError:
        libdir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
        paths = set(glob.glob(os.path.join(libdir, "*openblas*")))
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_", "64_"), ("", "64_"), ("", "")):
            get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
            put = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                get.restype = ctypes.c_int
                put.argtypes = [ctypes.c_int]
                funcs.append((get, put))
                break
    _BLAS_FUNCS = funcs
    return funcs


@contextmanager
def blas_single_thread():
    """Run the block with OpenBLAS on one thread (restored afterwards); a no-op without it."""
    try:
        funcs = _openblas_thread_funcs()
        saved = [(put, get()) for get, put in funcs]
    except Exception:  # pragma: no cover - an unusual BLAS build; run as is
        saved = []
    try:
        for put, _ in saved:
            put(1)
        yield
    finally:
        for put, n in saved:
            put(n)

