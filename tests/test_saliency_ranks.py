"""AUC-Judd's partial sort (neuroprobe.saliency._ranks) against brute force and the full sort."""
import numpy as np
import pytest

from neuroprobe.saliency import metrics as M
from neuroprobe.saliency._ranks import partial_sort


def _maps():
    rng = np.random.default_rng(3)
    smooth = rng.random((60, 80)) ** 3
    ties = np.round(rng.random((60, 80)) * 7) / 7  # 8 levels: heavy ties
    zeros = np.where(rng.random((60, 80)) < 0.5, 0.0, smooth)
    signed = zeros.copy()
    signed[::3, ::2] = -0.0  # signed zeros equal to 0.0
    wide = rng.random((60, 80)) * 10.0 ** rng.integers(-30, 3, (60, 80))  # many binades
    return {"smooth": smooth, "ties": ties, "zeros": zeros, "signed": signed, "wide": wide,
            "constant": np.full((60, 80), 0.5)}


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
@pytest.mark.parametrize("name", list(_maps()))
def test_partial_sort_ranks_and_values_equal_brute_force(name, compiled):
    flat = _maps()[name].ravel().copy()
    rng = np.random.default_rng(0)
    v = flat[rng.integers(0, flat.size, 40)]
    lo = np.concatenate([v, v - 3e-7])
    hi = np.concatenate([v, v + 2e-7])
    part = partial_sort(flat, float(flat.max()), lo, hi, np.empty_like(flat), max_fraction=1.0,
                        compiled=compiled)
    assert part is not None
    srt = np.sort(flat)
    # queries: the edges, the values and points inside the bands
    q = np.concatenate([lo, hi, v + 1e-7, v - 1e-7])
    for side in ("left", "right"):
        brute = np.array([(flat < x).sum() if side == "left" else (flat <= x).sum() for x in q])
        np.testing.assert_array_equal(part.searchsorted(q, side=side), brute)
    # every gathered position holds the full sort's value there, and every pixel inside an
    # interval was gathered
    np.testing.assert_array_equal(part.values, srt[part.positions])
    inside = np.zeros(flat.size, dtype=bool)
    for a, b in zip(lo, hi):
        inside |= (flat >= a) & (flat <= b)
    pos_inside = np.flatnonzero(np.isin(np.arange(flat.size),
                                        np.concatenate([np.arange(np.searchsorted(srt, a),
                                                                  np.searchsorted(srt, b, "right"))
                                                        for a, b in zip(lo, hi)])))
    assert inside.sum() == len(pos_inside)
    np.testing.assert_array_equal(part[pos_inside], srt[pos_inside])


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
def test_partial_sort_refuses_outside_and_declines_when_too_many_or_tiny(compiled):
    flat = np.random.default_rng(1).random(5000)
    part = partial_sort(flat, float(flat.max()), np.array([0.5]), np.array([0.5]),
                        np.empty_like(flat), compiled=compiled)
    with pytest.raises(ValueError):
        part.searchsorted(np.array([0.9]))
    with pytest.raises(IndexError):
        part[np.array([0])]
    # an interval over most of the pixels: None (the caller sorts everything)
    assert partial_sort(flat, float(flat.max()), np.array([0.0]), np.array([0.9]),
                        np.empty_like(flat), compiled=compiled) is None
    # the limit is "more than max_fraction": 4,000 values one bucket apart (2**-12 in [1, 2)),
    # of which 2,000 may be gathered at max_fraction 0.5 and 2,001 may not
    step = np.random.default_rng(2).permutation(4000) * 2.0 ** -12 + 1.0
    for k, ok in ((2000, True), (2001, False)):
        got = partial_sort(step, float(step.max()), np.array([1.0]),
                           np.array([1.0 + (k - 1) * 2.0 ** -12]), np.empty_like(step),
                           max_fraction=0.5, compiled=compiled)
        assert (got is not None) == ok
        if ok:
            assert len(got.values) == k
    tiny = flat * 1e-305  # 0.0 would not share bucket 0 with -0.0
    assert partial_sort(tiny, float(tiny.max()), tiny[:3], tiny[:3], np.empty_like(tiny),
                        compiled=compiled) is None


@pytest.mark.parametrize("name", list(_maps()))
def test_compiled_partial_sort_equals_numpy(name):
    """The compiled pass (one loop over the map) gives the numpy path's flags, counts below
    the flagged buckets, values and positions, on maps with ties, zeros, signed zeros, a
    constant and values over many binades; bands that overlap and share buckets."""
    pytest.importorskip("numba", reason="the compiled partial sort needs Numba")
    flat = _maps()[name].ravel().copy()
    rng = np.random.default_rng(4)
    v = flat[rng.integers(0, flat.size, 60)]
    lo = np.concatenate([v, v - 3e-7, [0.0]])
    hi = np.concatenate([v, v + 2e-7, [0.0]])
    hi_val = float(flat.max())
    a = partial_sort(flat, hi_val, lo, hi, np.empty_like(flat), max_fraction=1.0)
    b = partial_sort(flat, hi_val, lo, hi, np.empty_like(flat), max_fraction=1.0,
                     compiled=False)
    if a is None or b is None:
        assert a is None and b is None
        return
    np.testing.assert_array_equal(a._flagged, b._flagged)
    np.testing.assert_array_equal(a._below[a._flagged], b._below[b._flagged])
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.positions, b.positions)


@pytest.mark.parametrize("name", list(_maps()) + ["negative", "spread"])
def test_auc_judd_partial_equals_full_sort(name, monkeypatch):
    maps = _maps()
    spread = np.random.default_rng(2).permutation(4800).reshape(60, 80) / 4800
    smap = {"negative": spread - 0.3, "spread": spread}.get(name, maps.get(name))
    rng = np.random.default_rng(5)
    xy = np.stack([rng.uniform(0, 79, 30), rng.uniform(0, 59, 30)], 1)
    xy[:5] = np.round(xy[:5]) + 0.5  # coordinates ending in .5: the protocols' pixels differ
    fast = M.evaluate_image(smap, xy, metrics=("auc_judd",), shape=(60, 80), rng=7)
    monkeypatch.setattr(M, "partial_sort", lambda *a, **k: None)  # always the full sort
    full = M.evaluate_image(smap, xy, metrics=("auc_judd",), shape=(60, 80), rng=7)
    assert fast == full
    # and both agree with a brute-force exact ROC (ties scored 0.5) at every fixation
    gt = M.GroundTruth.from_fixations(xy, (60, 80))
    flat = smap.ravel()
    pos = flat[gt.flat]
    brute = np.mean([(p > flat).mean() + 0.5 * (p == flat).mean() for p in pos])
    assert full["exact"]["auc_judd"] == pytest.approx(brute, abs=1e-12)
    # the mit AUC-Judd of a map whose values lie 2e-4 apart is the MATLAB ROC (the jitter, at
    # most 1e-7, cannot reorder its pixels): brute-force thresholds
    if name in ("spread", "negative"):
        at = gt.at("mit").unique_flat
        neg = np.delete(flat, at)
        th = np.sort(flat[at])[::-1]
        tp = np.concatenate([[0], np.arange(1, len(th) + 1) / len(th), [1]])
        fp = np.concatenate([[0], [(neg >= t).mean() for t in th], [1]])
        area = float(np.sum(np.diff(fp) * (tp[1:] + tp[:-1]) / 2))
        assert fast["mit"]["auc_judd"] == pytest.approx(area, abs=1e-12)


def test_likely_too_many_tells_tie_heavy_maps_from_smooth_ones():
    from neuroprobe.saliency._ranks import likely_too_many

    rng = np.random.default_rng(5)
    smooth = rng.random(200_000)
    at = rng.integers(0, smooth.size, 150)
    assert not likely_too_many(smooth, smooth[at] - 3e-7, smooth[at] + 2e-7)
    eight_bit = np.round(smooth * 255) / 255  # 256 values: each bucket holds ~0.4 % of pixels
    assert likely_too_many(eight_bit, eight_bit[at] - 3e-7, eight_bit[at] + 2e-7)
    # no estimate for a map without a positive value: left to partial_sort
    assert not likely_too_many(np.zeros(1000), np.zeros(3), np.zeros(3))
    # a sample pixel counts once where intervals overlap (50 copies of 2 % of the pixels)
    assert not likely_too_many(smooth, np.full(50, 0.30), np.full(50, 0.32))
    assert likely_too_many(smooth, np.full(50, 0.30), np.full(50, 0.50))


@pytest.mark.parametrize("name", list(_maps()))
def test_rank_table_sums_equal_the_sorted_counts(name):
    """RankTable's integer sums (positives above / equal to each negative) against sorting,
    on maps with ties, zeros, signed zeros and many binades; the exact sAUC and AUC-Borji
    through it equal auc_exact / auc_exact_splits to the bit."""
    pytest.importorskip("numba", reason="the rank table needs Numba")
    from neuroprobe.saliency._ranks import RankTable
    from neuroprobe.saliency._roc import auc_exact, auc_exact_splits

    flat = _maps()[name].ravel().copy()
    rng = np.random.default_rng(9)
    at = rng.integers(0, flat.size, 50)
    at[:5] = at[0]  # a pixel fixated five times
    pos = flat[at]
    table = RankTable.make(pos, float(flat.min()), float(flat.max()))
    assert table is not None
    neg_idx = rng.integers(0, flat.size, (7, 300))
    neg_idx[0, :20] = at[:20]  # negatives equal to positives
    g, e = table.sums(flat, neg_idx)
    for s in range(neg_idx.shape[0]):
        neg = flat[neg_idx[s]]
        assert g[s] == sum(int((pos > x).sum()) for x in neg)
        assert e[s] == sum(int((pos == x).sum()) for x in neg)
        assert float((g[s] + 0.5 * e[s]) / (len(pos) * neg.size)) == auc_exact(pos, neg)
    got = (g + 0.5 * e) / neg_idx.shape[1] / len(pos)
    np.testing.assert_array_equal(got, auc_exact_splits(pos, flat[neg_idx]))


def test_rank_table_declines_negative_or_tiny_maps():
    pytest.importorskip("numba", reason="the rank table needs Numba")
    from neuroprobe.saliency._ranks import RankTable

    v = np.array([0.1, 0.5])
    assert RankTable.make(v, -0.1, 1.0) is None  # bit patterns not monotone
    assert RankTable.make(v * 1e-305, 0.0, 1e-305) is None  # 0.0 and -0.0 in other buckets
    assert RankTable.make(v[:0], 0.0, 1.0) is None


def _split_counts_ref(keys_t, m, vals, th):
    picks = np.argpartition(keys_t, m - 1, axis=1)[:, :m].T
    return (vals[picks][None, :, :] >= th[:, None, None]).sum(axis=1)


def test_split_counts_equal_argpartition():
    """The mit sAUC's compiled selection: the m smallest keys per split, counted at the
    thresholds, as argpartition picks them; keys crowded above the cut-off (every key read)
    and a tie at the m-th key (declined: the set is not unique)."""
    pytest.importorskip("numba", reason="the compiled selection needs Numba")
    from neuroprobe.saliency._kernels_numba import split_counts
    from neuroprobe.saliency._roc import thresholds

    rng = np.random.default_rng(11)
    th = thresholds(0.1)
    vals = np.round(rng.random(500), 1)  # values on the thresholds too
    for m in (1, 37, 499):
        keys = rng.random((20, 500))
        counts, ok = split_counts(keys, m, vals, th)
        assert ok
        np.testing.assert_array_equal(counts, _split_counts_ref(keys, m, vals, th))
    crowded = 0.9 + 0.1 * rng.random((5, 500))  # nothing below the cut-off
    counts, ok = split_counts(crowded, 37, vals, th)
    assert ok
    np.testing.assert_array_equal(counts, _split_counts_ref(crowded, 37, vals, th))
    tied = rng.random((3, 500))
    order = np.argsort(tied[1])
    tied[1, order[37]] = tied[1, order[36]]  # the 37th and 38th smallest equal
    assert not split_counts(tied, 37, vals, th)[1]
    assert split_counts(tied, 38, vals, th)[1]  # both taken: no ambiguity
