"""Per-batch tally helpers: bounded chunks give the same active pixels; the heap is released."""
import platform

import pytest
import torch


def _active_reference(a, thr, size):
    """Every pixel of the full upsampled maps above the unit's threshold, as sorted triples."""
    from neuroprobe.tally import upsample

    up = upsample(a, size)
    b, u, p = (up > thr[None, :, None, None]).reshape(a.shape[0], a.shape[1], -1).nonzero(
        as_tuple=True)
    return sorted(zip(b.tolist(), u.tolist(), p.tolist()))


@pytest.mark.parametrize("cell_values", [1, 64, 1000, 1 << 20])
def test_active_pixels_same_whatever_the_chunk_size(monkeypatch, cell_values):
    """CELL_VALUES bounds the temporaries of one chunk of hot cells (1: one cell per chunk);
    the active pixels are the same, in the same order, as one chunk and as the full maps."""
    import neuroprobe.tally as T

    g = torch.Generator().manual_seed(1)
    a = torch.relu(torch.randn((3, 5, 7, 7), generator=g))   # ties at 0, as after a ReLU
    thr = torch.quantile(a.transpose(0, 1).reshape(5, -1), 0.8, dim=1)
    whole = T.active_pixels(a, thr, (112, 112))
    monkeypatch.setattr(T, "CELL_VALUES", cell_values)
    got = T.active_pixels(a, thr, (112, 112))
    for x, y in zip(got, whole):
        assert torch.equal(x, y)
    triples = sorted(zip(*(t.tolist() for t in got)))
    assert triples and triples == _active_reference(a, thr, (112, 112))


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2 ** 20


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="malloc_trim is glibc's (Linux)")
def test_release_heap_returns_free_holes_to_the_system():
    """Free chunks between live ones stay resident after free(); release_heap gives them back,
    and with ``min_free`` only when the heap holds more than that free."""
    from neuroprobe.utils import heap_free_bytes, release_heap

    keep, drop = [], []
    for i in range(1200):   # 100 kB each: below glibc's mmap threshold, so from the heap
        (keep if i % 2 else drop).append(bytearray(b"\x01" * 100_000))
    before = _rss_mib()
    drop.clear()            # 600 holes of 100 kB (57 MiB) between the kept blocks
    free = heap_free_bytes()
    if free is not None:    # glibc >= 2.33
        assert free >= 600 * 100_000
        assert release_heap(min_free=free + 1) is False
        assert _rss_mib() > before - 10   # nothing given back yet
    assert release_heap(min_free=10 << 20) is True
    after = _rss_mib()
    assert before - after > 40, (before, after)
    assert sum(len(b) for b in keep) == 600 * 100_000   # the live blocks are untouched
    assert all(b[0] == 1 and b[-1] == 1 for b in keep)


def test_release_heap_without_malloc_trim(monkeypatch):
    """Under a C library without malloc_trim nothing is done and False is returned."""
    import neuroprobe.utils as U

    monkeypatch.setattr(U, "_glibc", lambda: (None, None))
    assert U.release_heap() is False and U.heap_free_bytes() is None
