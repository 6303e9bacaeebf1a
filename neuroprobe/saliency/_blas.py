"""BLAS on one thread for the duration of a block (the saliency metric loops).

OpenBLAS starts a thread per core for a long inner product or a mid-sized matrix product; on a
loaded machine (more runnable processes than cores) those threads wait for each other and an
800x600 inner product takes 30 times longer than on one thread.  The metric loop is
single-threaded by nature, so :func:`blas_single_thread` limits every BLAS library loaded in
the process to one thread for its duration, through threadpoolctl: OpenBLAS (numpy's and
scipy's, which are two libraries with different symbol names), MKL, BLIS and FlexiBLAS.

threadpoolctl finds the libraries by scanning the loaded shared objects, which costs about a
millisecond; the scan is kept (:class:`threadpoolctl.ThreadpoolController`) and redone only when
Python modules were imported since, the way a new BLAS library comes into the process.
"""
from __future__ import annotations

import sys
import threading
from contextlib import contextmanager

from threadpoolctl import ThreadpoolController

__all__ = ["blas_single_thread", "blas_controller"]

_LOCK = threading.Lock()
_STATE = {"controller": None, "modules": -1, "depth": 0, "limiter": None}


def blas_controller() -> ThreadpoolController:
    """A :class:`~threadpoolctl.ThreadpoolController` of the libraries loaded now (cached until
    more Python modules are imported)."""
    with _LOCK:
        return _controller()


def _controller() -> ThreadpoolController:
    if _STATE["controller"] is None or _STATE["modules"] != len(sys.modules):
        _STATE["controller"] = ThreadpoolController()
        _STATE["modules"] = len(sys.modules)
    return _STATE["controller"]


@contextmanager
def blas_single_thread():
    """Run the block with every loaded BLAS library on one thread; the previous limits are
    restored when the outermost such block ends (blocks nest, also across threads)."""
    with _LOCK:
        if _STATE["depth"] == 0:
            _STATE["limiter"] = _controller().limit(limits=1, user_api="blas")
        _STATE["depth"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _STATE["depth"] -= 1
            if _STATE["depth"] == 0:
                _STATE["limiter"].restore_original_limits()
                _STATE["limiter"] = None
