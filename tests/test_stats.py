"""Streaming statistics against exact NumPy answers."""
import numpy as np
import pytest
import torch

from neuroprobe.stats import IoUTally, MinMax, NSSTally, Quantile, TopK


def rank_error(data: np.ndarray, est: np.ndarray, q: float) -> float:
    """Largest distance (over units) between q and the empirical CDF interval of the estimate."""
    worst = 0.0
    for u in range(data.shape[1]):
        s = np.sort(data[:, u])
        lo = np.searchsorted(s, est[u], side="left") / len(s)
        hi = np.searchsorted(s, est[u], side="right") / len(s)
        worst = max(worst, 0.0 if lo <= q <= hi else min(abs(lo - q), abs(hi - q)))
    return worst


def _data(kind, rng, n, u):
    if kind == "uniform":
        return rng.random((n, u))
    if kind == "normal":
        return rng.standard_normal((n, u))
    if kind == "lognormal":
        return rng.lognormal(0.0, 2.0, (n, u))
    if kind == "pareto":
        return rng.pareto(1.1, (n, u))
    return np.maximum(rng.standard_normal((n, u)), 0.0)  # relu: many ties at 0


@pytest.mark.parametrize("kind", ["uniform", "normal", "lognormal", "pareto", "relu"])
def test_quantile_rank_error_at_0995(kind):
    rng = np.random.default_rng(1)
    data = _data(kind, rng, 200_000, 4).astype(np.float32)
    sk = Quantile(capacity=1024)   # small capacity so that many compactions happen
    x = torch.from_numpy(data)
    for s in range(0, len(data), 7_000):
        sk.add(x[s:s + 7_000])
    assert not sk.exact and len(sk.levels) > 5
    est = sk.quantile(0.995).numpy()
    assert rank_error(data, est, 0.995) < 3e-4
    # the documented worst-case bound really bounds every rank
    for q in (0.5, 0.9):
        assert rank_error(data, sk.quantile(q).numpy(), q) <= sk.rank_error_bound()


def test_quantile_default_capacity_error_and_merge():
    rng = np.random.default_rng(2)
    data = rng.lognormal(0.0, 1.5, (400_000, 3)).astype(np.float32)
    parts = [Quantile() for _ in range(3)]
    for i, s in enumerate(range(0, len(data), 20_000)):
        parts[i % 3].add(torch.from_numpy(data[s:s + 20_000]))
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert merged.n == len(data)
    for q in (0.99, 0.995):
        assert rank_error(data, merged.quantile(q).numpy(), q) < 1e-4


def test_quantile_exact_while_small_equals_numpy():
    rng = np.random.default_rng(3)
    data = rng.standard_normal((1000, 5))
    sk = Quantile(capacity=4096)
    sk.add(torch.from_numpy(data[:300]))
    sk.add(torch.from_numpy(data[300:]))
    assert sk.exact
    qs = [0.0, 0.005, 0.5, 0.99, 0.995, 1.0]
    np.testing.assert_allclose(sk.quantiles(qs).numpy(), np.quantile(data, qs, axis=0).T,
                               rtol=0, atol=1e-12)


def test_quantile_independent_of_batching_and_resumes_exactly():
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.standard_normal((50_000, 3)).astype(np.float32))
    a = Quantile(capacity=256)
    a.add(x)
    b = Quantile(capacity=256)
    for s in range(0, len(x), 999):
        b.add(x[s:s + 999])
    assert torch.equal(a.quantiles([0.1, 0.995]), b.quantiles([0.1, 0.995]))
    c = Quantile(capacity=256)
    c.add(x[:20_000])
    d = Quantile()
    d.load_state_dict(c.state_dict())
    d.add(x[20_000:])
    assert torch.equal(a.quantiles([0.3, 0.995]), d.quantiles([0.3, 0.995]))
    assert torch.equal(torch.cat(a.levels, 1), torch.cat(d.levels, 1))


def test_quantile_bad_input():
    with pytest.raises(ValueError):
        Quantile(capacity=6)
    sk = Quantile()
    with pytest.raises(ValueError):
        sk.quantile(0.5)
    sk.add(torch.zeros(3, 2))
    with pytest.raises(ValueError):
        sk.add(torch.zeros(3, 4))
    with pytest.raises(ValueError):
        sk.add(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError):
        sk.quantile(1.5)


def test_minmax_and_merge():
    rng = np.random.default_rng(5)
    data = rng.standard_normal((500, 6)).astype(np.float32)
    a, b = MinMax(), MinMax()
    a.add(torch.from_numpy(data[:200]))
    b.add(torch.from_numpy(data[200:]))
    a.merge(b)
    np.testing.assert_array_equal(a.min.numpy(), data.min(0))
    np.testing.assert_array_equal(a.max.numpy(), data.max(0))
    c = MinMax()
    c.load_state_dict(a.state_dict())
    assert torch.equal(c.max, a.max) and c.n == 500


def test_topk_selection_ties_and_merge():
    vals = torch.tensor([[1.0, 5.0], [3.0, 5.0], [3.0, 0.0], [2.0, 5.0]])   # 4 images, 2 units
    ids = torch.tensor([10, 11, 12, 13])
    t = TopK(k=2)
    t.add(vals[:2], ids[:2])
    t.add(vals[2:], ids[2:])
    assert t.values.tolist() == [[3.0, 3.0], [5.0, 5.0]]
    assert t.index.tolist() == [[11, 12], [10, 11]]          # ties -> smaller id first
    a, b = TopK(k=2), TopK(k=2)
    a.add(vals[2:], ids[2:])   # merged in the other order gives the same selection
    b.add(vals[:2], ids[:2])
    a.merge(b)
    assert torch.equal(a.values, t.values) and torch.equal(a.index, t.index)


def test_iou_tally_merge_is_exact():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand((6, 3, 4, 4), generator=g)
    layers = torch.randint(0, 4, (6, 1, 8, 8), generator=g)
    whole = torch.tensor([[4], [0], [4], [0], [0], [4]])
    cats = torch.ones((6, 2), dtype=torch.bool)
    cat_of = torch.tensor([-1, 0, 0, 1, 1])
    thr = torch.full((3,), 0.6)
    one = IoUTally(3, 5, cat_of, 2)
    one.add(maps, thr, layers, whole, cats)
    a, b = IoUTally(3, 5, cat_of, 2), IoUTally(3, 5, cat_of, 2)
    a.add(maps[:2], thr, layers[:2], whole[:2], cats[:2])
    b.add(maps[2:], thr, layers[2:], whole[2:], cats[2:])
    a.merge(b)
    for f in IoUTally.fields:
        assert torch.equal(getattr(a, f), getattr(one, f))
    iou = one.iou()
    assert iou.shape == (3, 5) and (iou[:, 0] == 0).all() and (iou <= 1).all()


def test_nss_tally_state_round_trip():
    t = NSSTally(2, 3)
    maps = torch.arange(8.0).reshape(1, 2, 2, 2)
    layers = torch.zeros((1, 1, 4, 4), dtype=torch.int64)
    layers[0, 0, :2, :2] = 1
    t.add(maps, torch.zeros(2), torch.full((2,), 8.0), layers, [torch.tensor([[0.0, 0.0]])],
          (4, 4))
    s = NSSTally(2, 3)
    s.load_state_dict(t.state_dict())
    assert torch.equal(s.total, t.total) and s.regions.tolist() == [0, 1, 0]
    assert torch.isnan(s.mean()[:, 0]).all()


def test_quantile_top_values_exact_through_merges():
    """The top capacity/2 values stay exact: shard merges give the single-stream threshold
    (and numpy's) whenever fewer values than that lie above it (neuroprobe.distributed)."""
    import numpy as np

    g = torch.Generator().manual_seed(3)
    x = torch.randn(60000, 3, generator=g) ** 3
    whole = Quantile(256)
    for s in range(0, len(x), 1000):
        whole.add(x[s:s + 1000])
    parts = [Quantile(256) for _ in range(3)]
    for j, s in enumerate(range(0, len(x), 1000)):
        parts[j % 3].add(x[s:s + 1000])
    merged = Quantile(256)
    for p in parts:
        merged.merge(p)
    q = 0.998   # 120 values above, < 128
    want = torch.from_numpy(np.quantile(x.numpy(), q, axis=0, method="linear")).float()
    assert not whole.exact and torch.equal(whole.quantile(q), merged.quantile(q))
    assert torch.allclose(whole.quantile(q), want, rtol=0, atol=1e-5)


def _reference_quantile(batches, capacity, seed, hra, merge_from=None):
    """The compactor hierarchy as documented, written plainly on NumPy arrays: append to level
    0, then compact every level holding ``capacity`` values or more, bottom up (a merge appends
    the other sketch's level h to level h first).  Returns (levels, compactions, n)."""
    from neuroprobe.stats import _coin

    k, half = capacity, capacity // 2
    levels, comps, n = [np.zeros((batches[0].shape[1], 0), batches[0].dtype)], [0], 0

    def compact():
        h = 0
        while h < len(levels):
            buf = levels[h]
            if buf.shape[1] >= k:
                if h + 1 == len(levels):
                    levels.append(buf[:, :0]), comps.append(0)
                ups = []
                if hra:
                    kept, pos = buf[:, :half], half
                    while buf.shape[1] - pos >= half:
                        srt = np.sort(np.concatenate([kept, buf[:, pos:pos + half]], 1), 1)
                        off = _coin(seed, h, comps[h])
                        comps[h] += 1
                        ups.append(srt[:, off:half:2])
                        kept, pos = srt[:, half:], pos + half
                    levels[h] = np.concatenate([kept, buf[:, pos:]], 1)
                else:
                    pos = 0
                    while buf.shape[1] - pos >= k:
                        srt = np.sort(buf[:, pos:pos + k], 1)
                        off = _coin(seed, h, comps[h])
                        comps[h] += 1
                        ups.append(srt[:, off::2])
                        pos += k
                    levels[h] = buf[:, pos:]
                levels[h + 1] = np.concatenate([levels[h + 1]] + ups, 1)
            h += 1

    for x in batches:
        levels[0] = np.concatenate([levels[0], x.T], 1)
        n += len(x)
        compact()
    if merge_from is not None:
        o_levels, o_comps, o_n = merge_from
        for h, b in enumerate(o_levels):
            if h == len(levels):
                levels.append(b[:, :0]), comps.append(0)
            levels[h] = np.concatenate([levels[h], b], 1)
            comps[h] += o_comps[h]
        n += o_n
        compact()
    return levels, comps, n


@pytest.mark.parametrize("hra", [True, False])
def test_quantile_in_place_levels_equal_the_plain_algorithm(hra):
    """The in-place sketch (fixed level buffers) keeps exactly the values, in the same order,
    of the algorithm written plainly, for uneven batches and for a merge."""
    rng = np.random.default_rng(6)
    data = np.maximum(rng.standard_normal((9000, 3)), 0).astype(np.float32) ** 3  # ties at 0
    cuts = np.cumsum([1, 3, 63, 64, 65, 331, 7, 1000] * 6)
    batches = np.split(data, cuts[cuts < len(data)])
    sk = Quantile(64, seed=5, hra=hra)
    for x in batches:
        sk.add(torch.from_numpy(x))
    want, comps, n = _reference_quantile(batches, 64, 5, hra)
    assert sk.n == n and sk.compactions == comps and len(sk.levels) == len(want) > 4
    for got, ref in zip(sk.levels, want):
        np.testing.assert_array_equal(got.numpy(), ref)
    other = Quantile(64, seed=5, hra=hra)
    other.add(torch.from_numpy(data[:2500]))
    sk.merge(other)
    o_ref = _reference_quantile([data[:2500]], 64, 5, hra)
    want, comps, n = _reference_quantile(batches, 64, 5, hra, merge_from=o_ref)
    assert sk.n == n and sk.compactions == comps and len(sk.levels) == len(want)
    for got, ref in zip(sk.levels, want):
        np.testing.assert_array_equal(got.numpy(), ref)


def test_quantile_levels_are_never_reallocated():
    """Adding batches writes into the same level buffers (no heap churn in a long run); the
    levels and the state_dict are views of them, and a loaded state is a copy."""
    g = torch.Generator().manual_seed(7)
    sk = Quantile(256)
    sk.add(torch.randn(20_000, 4, generator=g))
    depth = len(sk.levels)
    ptrs = [lv.data_ptr() for lv in sk.levels]
    for _ in range(10):     # 250 values: level 0 compacts, nothing reaches a new level
        sk.add(torch.randn(25, 4, generator=g))
    assert len(sk.levels) == depth, "the test assumes no new level"
    assert [lv.data_ptr() for lv in sk.levels] == ptrs
    state = sk.state_dict()
    assert [lv.data_ptr() for lv in state["levels"]] == ptrs
    copy = Quantile()
    copy.load_state_dict(state)
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(copy.levels, sk.levels))
    assert torch.equal(copy.quantiles([0.5, 0.995]), sk.quantiles([0.5, 0.995]))
