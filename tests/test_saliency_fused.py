"""The shared passes of the saliency metrics (neuroprobe.saliency._fused) against plain numpy,
and the metrics computed through them against the metric-by-metric kernels."""
import warnings

import numpy as np
import pytest
from scipy import ndimage

from neuroprobe.saliency import metrics as M
from neuroprobe.saliency._fused import TINY, Own, Scaled, density_sums, map_sums
from neuroprobe.saliency._maps import BLOCK, EPS
from neuroprobe.saliency.groundtruth import _clip_sum, gaussian_density


def _rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


def test_map_sums_equal_the_whole_array_sums():
    rng = np.random.default_rng(0)
    n = 2 * BLOCK + 1234  # several blocks and a short last one
    flat, d1, d2, p1 = rng.random(n), rng.random(n), rng.random(n), rng.random(n)
    total = float(flat.sum())
    q = flat / total
    mean = total / n
    for qq in (q, total):  # the density given, or formed in the pass from the sum
        res = map_sums(flat, mean, qq, cross=[d1, d2], kl=[p1], sim=[(None, d1), (d2, p1)])
        c = flat - mean
        assert _rel(res.ss, float(c @ c)) < 1e-13
        assert abs(res.csum - c.sum()) < 1e-9
        assert _rel(res.cross[0], float(c @ d1)) < 1e-13
        assert _rel(res.cross[1], float(c @ d2)) < 1e-13
        assert _rel(res.kl[0], float(p1 @ np.log(q + EPS))) < 1e-13
        assert _rel(res.sim[0], float(np.minimum(q, d1).sum())) < 1e-13
        assert _rel(res.sim[1], float(np.minimum(d2, p1).sum())) < 1e-13
    with pytest.raises(ValueError):
        map_sums(flat, mean, None, kl=[p1])


def _terms(n, kind):
    """Arrays for a shared pass: a map of the given kind and two densities (one with zeros)."""
    rng = np.random.default_rng(7)
    flat = {"smooth": rng.random(n) ** 3, "ties": np.round(rng.random(n) * 4) / 4,
            "zeros": np.where(rng.random(n) < 0.6, 0.0, rng.random(n)),
            "constant": np.full(n, 0.25)}[kind]
    d1 = rng.random(n) ** 6
    d1[: n // 3] = 0.0  # a density with zeros (the mit p log p is 0 there)
    d2 = rng.random(n)
    d2 /= d2.sum()
    return flat, d1, d2


@pytest.mark.parametrize("n", [BLOCK + 37, 2 * BLOCK, 100])  # a short last block, whole ones, one
@pytest.mark.parametrize("kind", ["smooth", "ties", "zeros", "constant"])
def test_compiled_map_sums_equal_numpy(kind, n):
    """The compiled sums (both protocols' terms as evaluate_image asks for them: densities,
    distributions formed in the pass, the image's own terms) against the numpy path; ``ss``
    (NSS's) must be the same number, the others agree to rounding."""
    pytest.importorskip("numba", reason="the compiled pass needs Numba")
    flat, d1, d2 = _terms(n, kind)
    total = float(flat.sum())
    mean = total / n
    p1 = Scaled(d1, 1.0 / float(d1.sum()))
    own = [Own("mit", p1, d1, float(d1.sum()) / n), Own("exact", d2, d2, 1.0 / n),
           Own(None, d2, d2, 0.5), Own("exact", d1, None, None)]
    for q in (total, flat / total):  # the density formed in the pass, or given
        args = (flat, mean, q, [d1, d2], [p1, d2], [(None, p1), (None, d2), (d1, p1)], own)
        a = map_sums(*args)
        b = map_sums(*args, compiled=False)
        assert a.ss == b.ss  # numpy's in both: NSS must not move
        assert abs(a.csum - b.csum) <= 1e-12 * max(1.0, abs(total))
        for x, y in zip(a.cross + a.kl + a.sim + a.own + a.gss,
                        b.cross + b.kl + b.sim + b.own + b.gss):
            assert abs(x - y) <= 1e-13 * max(abs(y), 1e-300), (x, y)
        assert a.gss[3] == b.gss[3] == 0.0 and a.own[2] == b.own[2] == 0.0  # not asked for


def test_compiled_map_sums_propagate_nan_as_numpy():
    """A NaN in a given density (a user's map) makes the sums that read it NaN, as
    np.minimum and the products do in the numpy path; the others stay finite."""
    pytest.importorskip("numba", reason="the compiled pass needs Numba")
    flat, d1, d2 = _terms(BLOCK + 70, "smooth")
    d1[BLOCK + 3] = np.nan
    total = float(flat.sum())
    for compiled in (True, False):
        res = map_sums(flat, total / flat.size, total, [d1, d2], [d1], [(None, d1), (d1, d2),
                       (d2, d1), (None, d2)], [Own("mit", d1, d1, 0.1)], compiled=compiled)
        assert np.isnan(res.cross[0]) and np.isfinite(res.cross[1]) and np.isnan(res.kl[0])
        assert np.isnan(res.sim[:3]).all() and np.isfinite(res.sim[3])
        assert np.isnan(res.own[0]) and np.isnan(res.gss[0])


def test_compiled_map_sums_fall_back_where_arrays_do_not_fit():
    """A read-only or strided array, or more operands than one compiled call takes: the numpy
    path runs, with the same results."""
    flat, d1, d2 = _terms(3000, "smooth")
    ro = d1.copy()
    ro.flags.writeable = False
    mean = float(flat.mean())
    for cross in ([ro], [np.repeat(d2, 2)[::2]], [d1 * k for k in range(1, 9)]):
        a = map_sums(flat, mean, None, cross)
        b = map_sums(flat, mean, None, cross, compiled=False)
        assert a.ss == b.ss and a.cross == b.cross


def test_density_sums_equal_the_whole_array_sums():
    rng = np.random.default_rng(1)
    n = 3 * BLOCK + 7
    d = rng.random(n) ** 4
    d[:50] = 0.0  # p log p is 0 where p is 0
    res = density_sums(d, own="mit", cc=True)
    p = d / d.sum()
    assert _rel(res["total"], d.sum()) < 1e-13 and res["min"] == 0.0
    assert _rel(res["mean"], d.mean()) < 1e-13
    assert _rel(res["gss"], float(((d - d.mean()) ** 2).sum())) < 1e-12
    assert np.allclose(res["p"], p, rtol=1e-15, atol=0)
    assert _rel(res["own"], float(p @ np.log(np.maximum(p, TINY)))) < 1e-13
    e = density_sums(p, own="exact", cc=False, total=1.0, lo=0.0)
    assert "gss" not in e and _rel(e["own"], float(p @ np.log(p + EPS))) < 1e-13
    assert density_sums(d, own=None, cc=False)["total"] == res["total"]


def test_clip_sum_clips_in_place_and_sums():
    rng = np.random.default_rng(2)
    d = rng.normal(size=BLOCK + 99)
    ref = np.maximum(d, 0.0)
    total, lo = _clip_sum(d)
    assert np.array_equal(d, ref) and lo == 0.0 and _rel(total, ref.sum()) < 1e-13


@pytest.mark.parametrize("n", [BLOCK + 99, 64, 5])
def test_compiled_clip_sum_equals_numpy(n):
    pytest.importorskip("numba", reason="the compiled clip needs Numba")
    rng = np.random.default_rng(8)
    d = rng.normal(size=n)
    d[:3] = [-0.0, 0.0, -1e-300]
    a, b = d.copy(), d.copy()
    ta, la = _clip_sum(a)
    tb, lb = _clip_sum(b, compiled=False)
    assert np.array_equal(a, b) and la == lb == 0.0 and ta == tb  # numpy's sums, reproduced
    pos = np.abs(d) + 0.5  # nothing to clip: the minimum is the smallest value
    assert _clip_sum(pos.copy())[1] == pos.min()
    nan = d.copy()
    nan[n // 2] = np.nan  # NaN stays NaN, as np.maximum keeps it
    assert np.isnan(_clip_sum(nan)[0]) and np.isnan(nan[n // 2])


def test_pairwise_sum_is_numpys_sum():
    pytest.importorskip("numba", reason="the kernels need Numba")
    from neuroprobe.saliency._kernels_numba import pairwise_sum

    rng = np.random.default_rng(10)
    for n in (0, 5, 8, 127, 128, 129, 1000, 8193, BLOCK, 3 * BLOCK + 17):
        a = rng.normal(size=n + 3) * 10.0 ** rng.integers(-8, 8, n + 3)
        assert pairwise_sum(a, 3, n) == a[3:].sum(), n


def test_kernel_eps_is_the_metrics_eps():
    pytest.importorskip("numba", reason="the kernels need Numba")
    from neuroprobe.saliency import _kernels_numba

    assert _kernels_numba.EPS == EPS and _kernels_numba.TINY == TINY


def test_gaussian_density_normalised_through_its_factors():
    rng = np.random.default_rng(3)
    rows, cols = rng.integers(0, 60, 40), rng.integers(0, 80, 40)
    w = rng.integers(1, 4, 40).astype(float)
    got = gaussian_density(rows, cols, (60, 80), 5.0, weights=w)
    raw = gaussian_density(rows, cols, (60, 80), 5.0, weights=w, normalise=False)
    assert abs(got.sum() - 1.0) < 1e-14
    assert np.abs(got - raw / raw.sum()).max() <= 1e-15 * got.max()


def _maps(shape):
    rng = np.random.default_rng(4)
    smooth = ndimage.gaussian_filter(rng.random(shape), 6)
    smooth -= smooth.min()  # minimum 0: the density formed in the pass
    return {"min 0": smooth, "positive": smooth + 0.3, "signed": smooth - 0.5 * smooth.max(),
            "constant": np.full(shape, 0.25), "8-bit": np.round(smooth / smooth.max() * 255)}


@pytest.mark.parametrize("name", list(_maps((150, 260))))
def test_shared_passes_equal_the_metric_by_metric_kernels(name, monkeypatch):
    """evaluate_image (the shared passes over map and densities) against each metric computed
    alone in one protocol (the kernels' own code), on an image of several blocks."""
    shape = (150, 260)
    smap = _maps(shape)[name]
    rng = np.random.default_rng(5)
    fix = np.column_stack([rng.uniform(0, 259, 60), rng.uniform(0, 149, 60)])
    fix[40:45] = fix[:5]  # pixels fixated twice
    fix[50, 0] = 100.5  # a coordinate the protocols round differently
    other = M.GroundTruth.from_fixations(rng.uniform(0, 149, (200, 2)), shape)
    calls = []
    monkeypatch.setattr(M, "map_sums", lambda *a, **k: calls.append(1) or map_sums(*a, **k))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the signed map warns (mit KL), as it should
        res = M.evaluate_image(smap, M.GroundTruth.from_fixations(fix, shape), other=other,
                               rng=2)
        assert len(calls) == 1  # the shared pass ran (once, for both protocols)
        calls.clear()
        for p in M.PROTOCOLS:
            for m in M.METRICS:
                alone = M.evaluate_map(smap, M.GroundTruth.from_fixations(fix, shape), p, (m,),
                                       other=other, rng=2)[m]
                if np.isnan(alone):  # the mit KL of a signed map (log of a negative)
                    assert np.isnan(res[p][m]), (p, m)
                elif m in ("auc_judd", "auc_borji", "sauc", "nss", "ig"):
                    assert res[p][m] == alone, (p, m)  # the same computation
                else:
                    assert abs(res[p][m] - alone) <= 1e-13 * max(1.0, abs(alone)), (p, m)
        assert not calls  # one metric in one protocol: the kernels' own code


def test_metrics_without_a_density_make_none():
    shape = (150, 260)
    rng = np.random.default_rng(6)
    gt = M.GroundTruth.from_fixations(np.column_stack([rng.uniform(0, 259, 30),
                                                       rng.uniform(0, 149, 30)]), shape)
    M.evaluate_image(_maps(shape)["min 0"], gt, ("auc_judd", "auc_borji", "nss", "ig"))
    for p in M.PROTOCOLS:
        assert not any(k.startswith("dens_") for k in gt.at(p)._cache)
    M.evaluate_image(_maps(shape)["min 0"], gt, ("cc", "nss"))
    assert all("dens_" + p in gt.at(p)._cache for p in M.PROTOCOLS)


@pytest.mark.parametrize("name", list(_maps((150, 260))))
def test_compiled_and_numpy_paths_agree_end_to_end(name, monkeypatch):
    """Every metric in both protocols with the compiled kernels and without Numba (the numpy
    code): AUCs, NSS and IG the same numbers, CC, KL and SIM within 1e-13."""
    pytest.importorskip("numba", reason="the compiled path needs Numba")
    from neuroprobe.saliency import _kernels

    shape = (150, 260)
    smap = _maps(shape)[name]
    rng = np.random.default_rng(12)
    fix = np.column_stack([rng.uniform(0, 259, 80), rng.uniform(0, 149, 80)])
    fix[60:65] = fix[:5]  # pixels fixated twice
    other = M.GroundTruth.from_fixations(rng.uniform(0, 149, (400, 2)), shape)

    def run():
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return M.evaluate_image(smap, M.GroundTruth.from_fixations(fix, shape),
                                    other=other, rng=3)

    fast = run()
    monkeypatch.setattr(_kernels, "compiled", lambda: None)
    slow = run()
    for p in M.PROTOCOLS:
        for m in M.METRICS:
            a, b = fast[p][m], slow[p][m]
            if m in ("auc_judd", "auc_borji", "sauc", "nss", "ig") or np.isnan(b):
                assert a == b or (np.isnan(a) and np.isnan(b)), (p, m, a, b)
            else:
                assert abs(a - b) <= 1e-13 * max(1.0, abs(b)), (p, m, a, b)
