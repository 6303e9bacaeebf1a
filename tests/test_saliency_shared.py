"""Shared ground truth and the fast paths of the saliency metrics (issue 20) against their plain
versions: the sparse AUC-Judd jitter, the reused buffers, the other-image fixations from one
concatenation, the row-grouped density products and the blocked sums."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from neuroprobe.saliency import metrics as M
from neuroprobe.saliency._maps import BLOCK, block_sum
from neuroprobe.saliency._workspace import Workspace
from neuroprobe.saliency.groundtruth import (
    _mit_circulant,
    _outer_sum,
    mit_transfer_size,
)


def _images(n=4, shape=(90, 120), seed=0):
    rng = np.random.default_rng(seed)
    maps, gts = [], []
    for i in range(n):
        maps.append(ndimage.gaussian_filter(rng.random(shape), 4) + (i == 1) * -0.3)
        fix = np.column_stack([rng.normal(60, 25, 50).clip(0, 119),
                               rng.normal(45, 15, 50).clip(0, 89)])
        gts.append(M.GroundTruth.from_fixations(np.round(fix * 2) / 2, shape))  # .5 coords
    return maps, gts


def test_sparse_jitter_draws_the_numbers_of_a_full_draw():
    full = np.random.default_rng(5).random(10_000)
    rng = np.random.default_rng(5)
    starts, stops = np.array([3, 700, 9000]), np.array([10, 1500, 9001])
    jit = M._SparseJitter(rng, starts, stops, 10_000)
    idx = np.concatenate([np.arange(3, 10), np.arange(700, 1500), [9000]])
    assert np.array_equal(jit[idx], full[idx])
    # the generator is left where the full draw leaves it
    after = np.random.default_rng(5)
    after.random(10_000)
    assert rng.random() == after.random()
    with pytest.raises(IndexError):
        jit[np.array([11])]


def test_mit_auc_judd_sparse_jitter_equals_the_full_draw(monkeypatch):
    rng = np.random.default_rng(4)
    shape = (480, 640)  # large enough that only a few runs of the sorted map are drawn
    smooth = ndimage.gaussian_filter(rng.random(shape), 8)
    maps = [smooth, np.round(smooth, 2), np.round(smooth, 4), np.round(smooth, 7)]  # ties
    fix = np.column_stack([rng.uniform(0, 639, 40), rng.uniform(0, 479, 40)])
    gt = M.GroundTruth.from_fixations(fix, shape)
    kinds = [type(M._jitter(np.random.default_rng(0), np.sort(m.ravel()),
                            m.ravel()[gt.at("mit").unique_flat], np.empty(m.size)))
             for m in maps]
    assert M._SparseJitter in kinds and np.ndarray in kinds  # both paths are compared
    fast = [M.auc_judd(m, gt, "mit", rng=9) for m in maps]
    monkeypatch.setattr(M, "_jitter", lambda rng, srt, fixed, out: rng.random(out=out))
    slow = [M.auc_judd(m, gt, "mit", rng=9) for m in maps]
    assert fast == slow  # the same numbers, not merely close


def test_evaluate_image_equals_evaluate_map_per_protocol_and_shares_the_ground_truth():
    maps, gts = _images(2)
    other = M.GroundTruth.from_fixations(np.array([[5.0, 7.0], [100.0, 80.0]]), (90, 120))
    res = M.evaluate_image(maps[0], gts[0], protocols=M.PROTOCOLS, other=other, rng=3)
    assert set(res) == set(M.PROTOCOLS) and set(res["mit"]) == set(M.METRICS)
    for p in M.PROTOCOLS:
        one = M.evaluate_map(maps[0], gts[0], p, other=other, rng=3)
        assert one == res[p]
    dens = gts[0].density("exact")
    M.evaluate_image(maps[1], gts[0], ("cc", "kl"))
    assert gts[0].density("exact") is dens  # built once, reused by the next model
    assert "sauc" not in M.evaluate_image(maps[0], gts[0])["mit"]  # no other -> no sAUC


def test_workspace_reuses_buffers_without_changing_results():
    maps, gts = _images(4)
    plain = [M.evaluate_protocols(m, g, rng=1, other=gts[(i + 1) % 4])
             for i, (m, g) in enumerate(zip(maps, gts))]
    for g in gts:
        g.release()
    ws = Workspace()
    lent = []
    for i, (m, g) in enumerate(zip(maps, gts)):
        g.lend(ws)
        lent.append(M.evaluate_protocols(m, g, rng=1, other=gts[(i + 1) % 4], workspace=ws))
        g.release()
    assert lent == plain
    assert ws._free[90 * 120]  # buffers came back
    # a buffer is never handed out twice
    a, b = ws.take(90 * 120), ws.take(90 * 120)
    assert a is not b
    ws.give([a, a, a.reshape(90, 120)])
    assert sum(x is a for x in ws._free[90 * 120]) == 1


def test_batch_does_not_lend_the_callers_ground_truths():
    maps, gts = _images(3)
    mine = M.GroundTruth.from_fixations(np.column_stack([gts[0].cols, gts[0].rows]), (90, 120))
    dens = mine.density("mit")
    keep = dens.copy()
    rows = M.evaluate_batch(maps, [mine] + gts[1:], M.PROTOCOLS, M.METRICS)
    assert mine._ws is None and mine.density("mit") is dens
    assert np.array_equal(dens, keep)
    again = M.evaluate_batch(maps, [mine] + gts[1:], M.PROTOCOLS, M.METRICS)
    assert [r["kl"] for r in rows] == [r["kl"] for r in again]


def test_other_fixations_from_one_concatenation_equal_the_loop():
    _, gts = _images(5)
    others = M.OtherFixations(gts)
    for i in range(5):
        for p in M.PROTOCOLS:
            for n_other in (2, 10):
                a = others(i, p, n_other, rng=[0, i, 1])
                b = M.other_fixations(gts, i, p, n_other, rng=[0, i, 1])
                assert np.array_equal(a.rows, b.rows) and np.array_equal(a.cols, b.cols)
                assert a.shape == b.shape
    mixed = gts[:2] + [M.GroundTruth.from_fixations(np.array([[3.0, 4.0]]), (45, 60))]
    a = M.OtherFixations(mixed)(0, "exact")
    b = M.other_fixations(mixed, 0, "exact")
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.cols, b.cols)


@pytest.mark.parametrize("by", ["rows", "cols"])
def test_grouped_outer_sum_equals_the_rank_k_product(by):
    rng = np.random.default_rng(1)
    shape = (40, 56)
    ky = _mit_circulant(shape[0], mit_transfer_size(shape), 8.0)
    kx = _mit_circulant(shape[1], mit_transfer_size(shape), 8.0)
    # few distinct rows (or columns) so that each grouping is exercised
    if by == "rows":
        rows, cols = rng.integers(0, 4, 30), rng.integers(0, 56, 30)
    else:
        rows, cols = rng.integers(0, 40, 30), rng.integers(0, 4, 30)
    w = rng.random(30)
    ref = (ky[rows] * w[:, None]).T @ kx[cols]
    got = _outer_sum(ky, kx, rows, cols, w, None)
    assert np.abs(got - ref).max() <= 1e-14 * np.abs(ref).max()


def test_block_sum_equals_the_whole_array_reduction():
    rng = np.random.default_rng(3)
    for n in (5, BLOCK, 3 * BLOCK + 17):
        a, b = rng.random(n), rng.random(n)
        got = block_sum(lambda x, y, w: np.multiply(x, y, out=w).sum(), a, b)
        assert got == pytest.approx(float(a @ b), rel=1e-14)


def test_group_sum_equals_reduceat_bit_for_bit():
    from neuroprobe.saliency.groundtruth import _group_sum

    rng = np.random.default_rng(4)
    for trial in range(60):
        n = int(rng.integers(1, 120))
        group = np.unique(rng.integers(0, int(rng.integers(1, n + 1)), n), return_inverse=True)[1]
        k = rng.random((40, 9)) * 10.0 ** rng.integers(-30, 2, (40, 9))  # many binades
        at = rng.integers(0, 40, n)
        w = np.ones(n) if trial % 2 else rng.integers(1, 4, n).astype(float)
        order = np.argsort(group, kind="stable")
        starts = np.flatnonzero(np.diff(group[order], prepend=-1))
        ref = np.add.reduceat(k[at[order]] * w[order, None], starts, axis=0)
        assert np.array_equal(_group_sum(k, at, w, group), ref)  # the same numbers
