"""Image-sized float64 buffers reused from one image to the next by an evaluation loop.

Scoring one 800x600 image in both protocols makes about ten image-sized arrays (the two
densities, the sorted and centred map, the distributions, logs, a work array).  Allocated
afresh for every image, each costs its size in page faults: the C library hands memory of that
size back to the kernel when the image's arrays are freed together, so the next image maps and
zeroes new pages (about 3,000 faults, a fifth of the CPU time per image on the project's
machine).  A loop that owns its ground truths and maps lends them a :class:`Workspace`: their
arrays are taken from it and given back when the image is done, so the pages stay mapped.

Only arrays nobody else can hold are given back: the buffers a prepared map made for itself, and
the cached densities of a :class:`~neuroprobe.saliency.groundtruth.GroundTruth` the loop built
(never one the caller passed in).
"""
from __future__ import annotations

import numpy as np

__all__ = ["Workspace", "take"]


class Workspace:
    """A free list of flat float64 buffers per size (at most ``keep`` of each size)."""

    def __init__(self, keep: int = 16):
        self.keep = keep
        self._free: dict[int, list[np.ndarray]] = {}

    def take(self, n: int) -> np.ndarray:
        """A flat float64 buffer of ``n`` elements, content undefined."""
        free = self._free.get(n)
        return free.pop() if free else np.empty(n)

    def give(self, arrays) -> None:
        """Return buffers (or views of whole buffers) for reuse; each array object once."""
        seen = set()
        for a in arrays:
            if not isinstance(a, np.ndarray):
                continue
            base = a if a.base is None else a.base
            if (not isinstance(base, np.ndarray) or base.dtype != np.float64 or base.ndim != 1
                    or id(base) in seen or not base.flags.owndata or a.size != base.size):
                continue
            seen.add(id(base))
            free = self._free.setdefault(base.size, [])
            if len(free) < self.keep and not any(f is base for f in free):
                free.append(base)


def take(ws: Workspace | None, n: int) -> np.ndarray:
    """``ws.take(n)``, or a new buffer without a workspace."""
    return ws.take(n) if ws is not None else np.empty(n)
