"""Per-batch tally helpers: bounded chunks give the same active pixels; the heap is released."""
import functools
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


def _random_batch(seed=0, B=6, U=4, h=7, H=28, L=9, K=2):
    g = torch.Generator().manual_seed(seed)
    a = torch.relu(torch.randn((B, U, h, h), generator=g))
    thr = torch.quantile(a.transpose(0, 1).reshape(U, -1), 0.7, dim=1)
    layers = torch.randint(0, L, (B, K, H, H), generator=g)
    layers[:, :, : H // 3] = 0                                    # unlabelled rows
    whole = torch.randint(0, L, (B, 2), generator=g)
    whole[0] = 0                                                  # an image without any
    cat_of = torch.tensor([-1, 0, 0, 1, 1, 2, -1, 2, 0])[:L]      # label 6: no category
    return a, thr, layers, whole, cat_of


def test_present_categories_from_the_label_counts_equal_labelled_categories():
    """NetDissect's category flags from the per-image label counts (computed once per batch for
    all layers) are those of labelled_categories, which reads the label maps."""
    from neuroprobe.tally import image_label_counts, labelled_categories, present_categories

    for seed in range(3):
        _, _, layers, whole, cat_of = _random_batch(seed)
        layers[1] = 0
        whole[1] = torch.tensor([6, 0])                           # only a label without category
        truth = image_label_counts(layers, whole, 9)
        got = present_categories(truth, cat_of, 3)
        assert torch.equal(got, labelled_categories(layers, whole, cat_of, 3))
        assert not got[1].any() and got.any()


def test_image_label_counts_by_brute_force():
    from neuroprobe.tally import image_label_counts

    _, _, layers, whole, _ = _random_batch(1)
    got = image_label_counts(layers.to(torch.int16), whole, 9)
    for b in range(layers.shape[0]):
        for lab in range(1, 9):
            want = int((layers[b] == lab).sum()) + int((whole[b] == lab).sum()) * 28 * 28
            assert got[b, lab] == want
    assert not got[:, 0].any()
    with pytest.raises(ValueError, match="outside the label table"):
        image_label_counts(layers, whole, 8)


@pytest.mark.parametrize("kernel", [False, True])
@pytest.mark.parametrize("denominator", ["netdissect", "annotated", "lite", "all"])
def test_iou_counts_paths_agree(monkeypatch, denominator, kernel):
    """The per-image counts (dense or, past IMAGE_BINS, by sorting) sum to the batch's counts,
    which equal those counted without them and with the label counts given or not; the
    intersections equal a brute-force count over the full upsampled maps.  ``kernel``: the
    tensor operations (False) or the compiled loop (True, not for the lite rule)."""
    import neuroprobe.tally as T

    if kernel:
        pytest.importorskip("numba", reason="the compiled tally needs Numba")
        if denominator == "lite":
            pytest.skip("the lite rule is counted with tensor operations only")
    monkeypatch.setattr(T, "iou_counts", functools.partial(T.iou_counts, kernel=kernel))

    a, thr, layers, whole, cat_of = _random_batch(2)
    B, U = a.shape[:2]
    C = 1 if denominator == "all" else 3
    if denominator == "all":
        cat_of = torch.where(cat_of >= 0, 0, -1)
    cats = torch.ones((B, C), dtype=torch.bool)
    args = (a, thr, layers, whole, cats, cat_of, 9, C, denominator)
    inter, act = T.iou_counts(*args)
    truth = T.image_label_counts(layers, whole, 9)
    i2, a2, dense = T.iou_counts(*args, per_image=True, truth=truth)
    monkeypatch.setattr(T, "IMAGE_BINS", 0)
    i3, a3, sparse = T.iou_counts(*args, per_image=True)
    for i, x in ((i2, a2), (i3, a3)):
        assert torch.equal(i, inter) and torch.equal(x, act)
    for k in dense:
        assert torch.equal(dense[k], sparse[k]), k
    per = torch.zeros((B * U, 9), dtype=torch.int64)
    per.index_put_((dense["inter_pair"], dense["inter_label"]), dense["inter"], accumulate=True)
    assert torch.equal(per.view(B, U, 9).sum(0), inter)
    up = T.upsample(a, (28, 28)) > thr[None, :, None, None]          # (B, U, H, W)
    want = torch.zeros((U, 9), dtype=torch.int64)
    for lab in range(1, 9):
        on = (layers == lab).sum(1)[:, None] + (whole == lab).sum(1)[:, None, None, None]
        want[:, lab] = (up * on).sum((0, 2, 3))
    assert torch.equal(inter, want) and inter.sum() > 0


def _kernel_case(B, U, h, w, H, W, K, L, n_whole, dtype, seed, q=0.97):
    """Random maps with values on, just below and just above each unit's threshold, random
    labels (a third of each mask unlabelled) and whole-image labels (none on image 0)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn((B, U, h, w), generator=g)
    thr = torch.quantile(a.transpose(0, 1).reshape(U, -1), q, dim=1)
    flat = a.view(B, U, -1)
    flat[:, :, 0] = thr[None]
    flat[:, :, 1] = torch.nextafter(thr, torch.full_like(thr, -1e9))[None]
    flat[:, :, 2] = torch.nextafter(thr, torch.full_like(thr, 1e9))[None]
    layers = torch.randint(0, L, (B, K, H, W), generator=g).to(dtype)
    layers[:, :, : H // 3] = 0
    whole = torch.randint(0, L, (B, n_whole), generator=g)
    if n_whole:
        whole[0] = 0
    cats = torch.rand((B, 3), generator=g) > 0.5
    cat_of = torch.randint(-1, 3, (L,), generator=g)
    return a, thr, layers, whole, cats, cat_of, L


@pytest.mark.parametrize("shape", [
    (4, 16, 7, 7, 112, 112, 3, 50, 2, torch.int16),     # ResNet layer4 on Broden masks
    (3, 8, 14, 14, 112, 112, 2, 30, 0, torch.int16),    # layer3, no whole-image labels
    (2, 5, 56, 56, 112, 112, 1, 20, 1, torch.int64),    # 2x upsampling
    (2, 5, 13, 9, 50, 70, 2, 20, 1, torch.int32),       # odd factors, not square
    (2, 5, 8, 8, 8, 8, 2, 20, 1, torch.uint8),          # same size
    (4, 5, 16, 16, 8, 8, 2, 20, 1, torch.int16, 0.8),   # downsampling (2x2 means)
])
def test_compiled_tally_equals_tensor_tally(shape):
    """The compiled CPU loop gives the tensor path's counts entry for entry and in the same
    order: intersections, activation counts under every rule, and the per-image counts,
    with values on and one ulp either side of the thresholds."""
    pytest.importorskip("numba", reason="the compiled tally needs Numba")
    from neuroprobe.tally import iou_counts

    a, thr, layers, whole, cats, cat_of, L = _kernel_case(*shape[:10], seed=sum(shape[:4]),
                                                          q=shape[10] if len(shape) > 10 else 0.97)
    for denominator in ("netdissect", "annotated", "all"):
        args = (a, thr, layers, whole, cats, cat_of, L, 3, denominator)
        for per_image in (False, True):
            want = iou_counts(*args, per_image=per_image, kernel=False)
            for threads in (1, 3):   # images counted in groups side by side: same result
                got = iou_counts(*args, per_image=per_image, kernel=True, threads=threads)
                assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
                if per_image:
                    assert got[2].keys() == want[2].keys()
                    for k, v in want[2].items():
                        assert got[2][k].dtype == v.dtype and torch.equal(got[2][k], v), k
    assert want[0].sum() > 0


def test_compiled_tally_refuses_what_it_cannot_count():
    pytest.importorskip("numba", reason="the compiled tally needs Numba")
    from neuroprobe.tally import iou_counts

    a, thr, layers, whole, cats, cat_of, L = _kernel_case(2, 3, 7, 7, 28, 28, 1, 5, 1,
                                                          torch.int16, seed=0)
    with pytest.raises(ValueError, match="compiled tally"):
        iou_counts(a, thr, layers, whole, cats, cat_of, L, 3, "lite", kernel=True)
    # label ids beyond the table under active pixels (a caller's truth vouching for them) are
    # refused, never read past the loop's tables
    truth = torch.zeros((2, L), dtype=torch.int64)
    for bad_layers, bad_whole in ((layers.clone().fill_(L + 2), whole),
                                  (layers, whole.clone().fill_(L + 2))):
        with pytest.raises(ValueError, match=f"label id {L + 2} is outside the label table"):
            iou_counts(a, thr, bad_layers, bad_whole, cats, cat_of, L, 3, kernel=True,
                       truth=truth)


@pytest.mark.parametrize("dtype", [torch.int16, torch.int32, torch.int64, torch.uint8])
def test_compiled_label_counts_equal_tensor_label_counts(monkeypatch, dtype):
    """The images' label counts from the compiled loop equal the tensor operations' (negative
    ids and label 0 ignored, a whole-image label counting every pixel), and both refuse an id
    outside the table naming the largest one."""
    pytest.importorskip("numba", reason="the compiled tally needs Numba")
    import neuroprobe.tally as T

    g = torch.Generator().manual_seed(3)
    low = 0 if dtype == torch.uint8 else -2
    layers = torch.randint(low, 9, (5, 3, 12, 10), generator=g).to(dtype)
    whole = torch.randint(-1, 9, (5, 2), generator=g)
    got = T.image_label_counts(layers, whole, 9)
    assert torch.equal(T.image_label_counts(layers, whole, 9, threads=2), got)
    monkeypatch.setattr(T._kernel, "available", lambda: False)
    want = T.image_label_counts(layers, whole, 9)
    assert got.dtype == want.dtype == torch.int64 and torch.equal(got, want)
    assert want[:, 1:].sum() > 0
    monkeypatch.undo()
    bad = layers.clone()
    bad[1, 0, 0, 0], bad[3, 2, 5, 5] = 9, 11
    for threads in (1, 2):
        with pytest.raises(ValueError, match="label id 11 is outside the label table"):
            T.image_label_counts(bad, whole, 9, threads=threads)
