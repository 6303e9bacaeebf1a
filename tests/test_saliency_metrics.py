"""Saliency metrics: hand-computed cases, brute-force references, invariants, both protocols."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg  # noqa: F401 - scipy's OpenBLAS is a second BLAS library beside numpy's
from scipy import ndimage
from threadpoolctl import threadpool_info, threadpool_limits

from neuroprobe.errors import UserError
from neuroprobe.saliency import metrics as M
from neuroprobe.saliency.fixations import Fixations

EPS = 2.2204e-16
S6 = np.array([[0.1, 0.5, 0.2], [0.9, 0.3, 0.4]])
FIX6 = np.array([[0.0, 1.0], [1.0, 0.0]])  # (x, y): pixel (1,0) value 0.9 and (0,1) value 0.5


def gt_with(shape, xy, density):
    g = M.GroundTruth.from_fixations(np.asarray(xy, float), shape, density_map=density)
    return g


# ------------------------------------------------------------------ hand-computed cases
def test_auc_judd_hand_computed_both_protocols():
    # exact: negatives are all 6 pixels; 0.9 beats 5 and ties 1 (5.5), 0.5 beats 4, ties 1 (4.5)
    assert M.auc_judd(S6, FIX6, "exact") == pytest.approx(10 / 12)
    # mit: negatives are the 4 non-fixated pixels, all below both thresholds -> perfect
    assert M.auc_judd(S6, FIX6, "mit") == pytest.approx(1.0)


def test_nss_hand_computed_ddof_per_protocol():
    # mean 0.4; squared deviations sum to 0.40
    z0 = [(0.9 - 0.4) / math.sqrt(0.40 / 6), (0.5 - 0.4) / math.sqrt(0.40 / 6)]
    z1 = [(0.9 - 0.4) / math.sqrt(0.40 / 5), (0.5 - 0.4) / math.sqrt(0.40 / 5)]
    assert M.nss(S6, FIX6, "exact") == pytest.approx(np.mean(z0))  # ddof 0
    assert M.nss(S6, FIX6, "mit") == pytest.approx(np.mean(z1))  # ddof 1 (MATLAB std)
    assert M.nss(S6, FIX6, "mit") == pytest.approx(1.0606601717798212)
    # a repeated fixation counts twice in exact, once in mit
    rep = np.vstack([FIX6, [[0.0, 1.0]]])
    assert M.nss(S6, rep, "exact") == pytest.approx((2 * z0[0] + z0[1]) / 3)
    assert M.nss(S6, rep, "mit") == pytest.approx(np.mean(z1))


def test_sim_cc_kl_ig_hand_computed():
    s = np.array([[1.0, 1.0], [0.0, 2.0]])
    g = np.array([[0.0, 1.0], [1.0, 2.0]])
    for p in M.PROTOCOLS:
        gt = gt_with((2, 2), [[1.0, 1.0]], g)
        r = M.evaluate_map(s, gt, p, ("sim", "cc", "kl", "ig"), baseline=np.ones((2, 2)))
        # distributions [.25 .25 0 .5] and [0 .25 .25 .5]
        assert r["sim"] == pytest.approx(0.75)
        # centred [0 0 -1 1] and [-1 0 0 1]: 1 / (sqrt2 sqrt2)
        assert r["cc"] == pytest.approx(0.5)
        # only the pixel with p = .25, q = 0 contributes: .25 * log(.25 / eps)
        assert r["kl"] == pytest.approx(0.25 * math.log(0.25 / EPS), rel=1e-9)
        # fixation on the pixel with s-probability .5 against a uniform baseline (.25): log2 2
        assert r["ig"] == pytest.approx(1.0)


def test_auc_borji_and_sauc_hand_cases():
    s = np.zeros((100, 100))
    s[50, 50] = 1.0
    fix = np.array([[50.0, 50.0]])
    # one fixated pixel holding the only non-zero value: random negatives almost never beat it
    assert M.auc_borji(s, fix, "mit") == pytest.approx(1.0, abs=1e-3)
    assert M.auc_borji(s, fix, "exact") == pytest.approx(1.0, abs=1e-3)
    # negatives from other images' fixations on low values -> 1; on the same pixel -> 0.5
    low = np.array([[10.0, 10.0], [20.0, 30.0]])
    for p in M.PROTOCOLS:
        assert M.sauc(s, fix, p, other=low) == pytest.approx(1.0)
        assert M.sauc(s, fix, p, other=fix) == pytest.approx(0.5)


# ------------------------------------------------------------------ brute-force references
def brute_auc(pos, neg):
    pos = np.asarray(pos)[:, None]
    neg = np.asarray(neg)[None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def test_exact_auc_matches_pairwise_brute_force_with_ties():
    rng = np.random.default_rng(3)
    for _ in range(20):
        pos = rng.integers(0, 6, size=rng.integers(1, 30)).astype(float)
        neg = rng.integers(0, 6, size=rng.integers(1, 200)).astype(float)
        assert M._auc_exact(pos, neg) == pytest.approx(brute_auc(pos, neg))
        negs = rng.integers(0, 6, size=(4, 17)).astype(float)
        got = M._auc_exact_splits(pos, negs)
        assert got == pytest.approx([brute_auc(pos, n) for n in negs])


def matlab_auc_judd(smap, fixmap, jitter):
    """Literal transcription of AUC_Judd.m (the threshold loop), given the jitter."""
    s = smap + jitter
    s = (s - s.min()) / (s.max() - s.min())
    sth = s[fixmap > 0]
    nfix, npix = len(sth), s.size
    th = np.sort(sth)[::-1]
    tp = np.zeros(nfix + 2)
    fp = np.zeros(nfix + 2)
    tp[-1] = fp[-1] = 1
    for i, t in enumerate(th, start=1):
        above = (s >= t).sum()
        tp[i] = i / nfix
        fp[i] = (above - i) / (npix - nfix)
    return np.trapz(tp, fp) if hasattr(np, "trapz") else np.trapezoid(tp, fp)


def test_mit_auc_judd_matches_matlab_loop():
    rng = np.random.default_rng(0)
    smap = ndimage.gaussian_filter(rng.random((30, 40)), 2)
    fix = rng.integers(0, [40, 30], size=(25, 2)).astype(float)
    gt = M.GroundTruth.from_fixations(fix, (30, 40))
    got = M.evaluate_map(smap, gt, "mit", ("auc_judd",), rng=np.random.default_rng(5))
    # the protocol stream is spawned from the generator; reproduce it
    seed = np.random.default_rng(5)
    prng = np.random.default_rng(seed.bit_generator.seed_seq.spawn(1)[0])
    jitter = prng.random(smap.size).reshape(smap.shape) / 1e7
    assert got["auc_judd"] == pytest.approx(matlab_auc_judd(smap, gt.binary_map(), jitter))


def test_mit_blur_matches_fourier_reference_sparse_and_dense():
    rng = np.random.default_rng(1)
    for density in (0.002, 0.5):  # sparse path and dense path
        fm = (rng.random((60, 90)) < density).astype(float)
        n = M.mit_transfer_size(fm.shape)
        assert n == 128
        s = 8 / math.sqrt(math.log(2))
        fx, fy = np.meshgrid(np.arange(n) - n / 2, np.arange(n) - n / 2)
        gf = np.fft.fftshift(np.exp(-(fx ** 2 + fy ** 2) / s ** 2))
        ref = np.real(np.fft.ifft2(np.fft.fft2(fm, (n, n)) * gf))[:60, :90]
        assert np.abs(M.mit_blur(fm) - ref).max() < 1e-12


def test_mit_sigma_and_gaussian_density():
    assert M.mit_sigma((768, 1024)) == pytest.approx(24.0, abs=0.1)
    rows, cols = np.array([5, 5, 20]), np.array([7, 7, 30])
    d = M.gaussian_density(rows, cols, (32, 48), 3.0)
    counts = np.zeros((32, 48))
    np.add.at(counts, (rows, cols), 1)
    ref = ndimage.gaussian_filter(counts, 3.0, mode="constant", truncate=20)
    assert np.abs(d - ref / ref.sum()).max() < 1e-12
    assert d.sum() == pytest.approx(1.0)


# ------------------------------------------------------------------ invariants
@pytest.fixture
def scene():
    rng = np.random.default_rng(7)
    shape = (48, 64)
    fix = np.column_stack([rng.normal(32, 8, 60), rng.normal(24, 6, 60)])
    fix = np.clip(fix, 0, [63, 47])
    smap = ndimage.gaussian_filter(rng.random(shape), 3)
    return shape, fix, smap


def test_constant_map_gives_chance(scene):
    shape, fix, _ = scene
    const = np.full(shape, 0.3)
    gt = M.GroundTruth.from_fixations(fix, shape)
    ex = M.evaluate_map(const, gt, "exact", ("auc_judd", "auc_borji", "nss", "cc"), other=fix[::-1] + 1)
    assert ex["auc_judd"] == 0.5 and ex["auc_borji"] == 0.5
    assert ex["nss"] == 0.0 and ex["cc"] == 0.0
    mit = M.evaluate_map(const, gt, "mit", ("auc_judd", "auc_borji", "nss", "cc"))
    assert mit["auc_borji"] == 0.5  # every value ties after min-max: only (0,0), (1,1)
    assert abs(mit["auc_judd"] - 0.5) < 0.1  # the jitter decides: random ranking
    assert mit["nss"] == 0.0 and mit["cc"] == 0.0


def test_empirical_density_gives_cc_sim_one_kl_zero(scene):
    shape, fix, _ = scene
    gt = M.GroundTruth.from_fixations(fix, shape)
    for p in M.PROTOCOLS:
        dens = gt.density(p)
        r = M.evaluate_map(dens, gt, p, ("cc", "sim", "kl"))
        assert r["cc"] == pytest.approx(1.0)
        assert r["sim"] == pytest.approx(1.0)
        assert r["kl"] == pytest.approx(0.0, abs=1e-9)


def test_map_peaked_at_fixations_scores_high(scene):
    shape, fix, _ = scene
    gt = M.GroundTruth.from_fixations(fix, shape)
    peaked = gt.binary_map().astype(float)
    for p in M.PROTOCOLS:
        r = M.evaluate_map(peaked, gt, p, ("nss", "auc_judd"))
        assert r["nss"] > 3 and r["auc_judd"] > 0.95
        r2 = M.evaluate_map(1 - peaked, gt, p, ("nss", "auc_judd"))
        assert r2["nss"] < 0 and r2["auc_judd"] < 0.1


def test_protocols_agree_where_definitions_coincide(scene):
    shape, fix, smap = scene
    # distinct pixels only, so the binary map and the fixation list hold the same fixations
    pix = np.unique(np.round(fix).astype(int), axis=0).astype(float)
    dens = ndimage.gaussian_filter(np.random.default_rng(2).random(shape), 4)
    # minimum 0: the mit KL uses the raw maps, the exact one shifts them to minimum 0
    dens -= dens.min()
    smap = smap - smap.min()
    gt = gt_with(shape, pix, dens)
    mit = M.evaluate_map(smap, gt, "mit")
    ex = M.evaluate_map(smap, gt, "exact", other=pix[::-1] + 2)
    n = smap.size
    assert mit["nss"] == pytest.approx(ex["nss"] * math.sqrt((n - 1) / n))
    for m in ("cc", "sim", "ig"):
        assert mit[m] == pytest.approx(ex[m])
    assert mit["kl"] == pytest.approx(ex["kl"], rel=1e-6)
    # mit negatives exclude fixated pixels, exact include them: differ by O(K / N)
    assert mit["auc_judd"] == pytest.approx(ex["auc_judd"], abs=0.02)
    assert mit["auc_borji"] == pytest.approx(ex["auc_borji"], abs=0.03)


# ------------------------------------------------------------------ batches and inputs
def test_batch_torch_tensor_matches_single_calls(scene):
    torch = pytest.importorskip("torch")
    shape, fix, smap = scene
    fixes = [Fixations("a", fix[:, 0], fix[:, 1], np.zeros(len(fix), int), size=shape),
             Fixations("b", fix[::2, 0] + 1, fix[::2, 1], np.zeros(len(fix[::2]), int),
                       size=shape)]
    maps = np.stack([smap, smap[::-1]])
    rows = M.evaluate_batch(torch.from_numpy(maps)[:, None], fixes, seed=4)
    assert len(rows) == 4 and {r["protocol"] for r in rows} == {"mit", "exact"}
    again = M.evaluate_batch(list(maps), fixes, seed=4)
    assert rows == again  # reproducible with the seed
    # deterministic metrics equal a single call
    single = M.evaluate_map(maps[1], fixes[1], "exact", ("nss", "cc", "auc_judd"))
    got = [r for r in rows if r["index"] == 1 and r["protocol"] == "exact"][0]
    for m in single:
        assert got[m] == pytest.approx(single[m])


def test_fixation_map_and_ground_truth_from_map():
    fm = M.fixation_map([1.2, 1.4, 3.0], [0.0, 0.2, 2.0], (3, 4), counts=True)
    assert fm[0, 1] == 2 and fm[2, 3] == 1 and fm.sum() == 3
    gt = M.GroundTruth.from_map(fm)
    assert len(gt) == 3 and len(gt.unique_flat) == 2


# ------------------------------------------------------------------ bad input
def test_size_mismatch_resized_in_mit_refused_in_exact(scene):
    shape, fix, smap = scene
    half = smap[::2, ::2]
    with pytest.warns(RuntimeWarning, match="resized"):
        r = M.nss(half, M.GroundTruth.from_fixations(fix, shape), "mit")
    assert np.isfinite(r)
    with pytest.raises(UserError, match="does not resize"):
        M.nss(half, M.GroundTruth.from_fixations(fix, shape), "exact")


def test_empty_fixations_nan_with_warning_and_batch_survives(scene):
    shape, fix, smap = scene
    empty = Fixations("e.jpg", np.zeros(0), np.zeros(0), np.zeros(0, int), size=shape)
    with pytest.warns(RuntimeWarning, match="no fixations"):
        r = M.evaluate_map(smap, empty, "exact")
    assert all(math.isnan(v) for v in r.values())
    full = Fixations("f.jpg", fix[:, 0], fix[:, 1], np.zeros(len(fix), int), size=shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = M.evaluate_batch([smap, smap], [empty, full])
    assert math.isnan(rows[0]["nss"]) and np.isfinite(rows[2]["nss"])


def test_nan_map_gives_nan_with_warning(scene):
    shape, fix, smap = scene
    bad = smap.copy()
    bad[3, 3] = np.nan
    with pytest.warns(RuntimeWarning, match="NaN"):
        r = M.evaluate_map(bad, M.GroundTruth.from_fixations(fix, shape), "mit")
    assert all(math.isnan(v) for v in r.values())


def test_outside_fixations_dropped_and_bad_names():
    with pytest.warns(RuntimeWarning, match="outside"):
        gt = M.GroundTruth.from_fixations(np.array([[1.0, 1.0], [50.0, 1.0]]), (4, 4))
    assert len(gt) == 1
    with pytest.raises(UserError, match="protocol"):
        M.nss(np.ones((4, 4)), gt, "tuebingen")
    with pytest.raises(UserError, match="unknown saliency metric"):
        M.evaluate_map(np.ones((4, 4)), gt, "mit", ("aucc",))


def test_emd_optional():
    if not M.has_emd():
        pytest.skip("POT (pip install pot) is not installed: the optional EMD metric is off")
    shape = (64, 64)
    a = np.zeros(shape)
    a[10:14, 10:14] = 1
    gt = gt_with(shape, [[12.0, 12.0]], a)
    assert M.emd(a, gt, "exact", emd_scale=1 / 4) == pytest.approx(0.0, abs=1e-9)
    b = np.zeros(shape)
    b[10:14, 30:34] = 1  # the same blob 20 px (5 cells at 1/4 scale) to the right
    assert M.emd(b, gt, "exact", emd_scale=1 / 4) == pytest.approx(5.0, abs=1e-6)


# ------------------------------------------------------------------ fast paths vs literal versions
def test_fast_auc_judd_both_protocols_match_brute_force_on_tied_maps():
    """The sorted / searchsorted AUC-Judd against the pairwise definition and MATLAB's threshold
    loop, on maps with many ties (values quantised to 5 levels) and repeated fixations."""
    rng = np.random.default_rng(11)
    for trial in range(8):
        if trial < 5:  # few levels: long runs of ties (the jittered map is sorted)
            smap = rng.integers(0, 5, size=(20, 30)).astype(float) / 4
        else:  # near-ties within the jitter's reach (only short runs get jittered)
            smap = np.round(rng.random((20, 30)) * 2e-5, 13) + (trial == 7) * 5.0
        fix = rng.integers(0, [30, 20], size=(40, 2)).astype(float)  # repeats likely
        gt = M.GroundTruth.from_fixations(fix, (20, 30))
        ex = M.evaluate_map(smap, gt, "exact", ("auc_judd",))["auc_judd"]
        assert ex == pytest.approx(brute_auc(smap.ravel()[gt.flat], smap.ravel()))
        got = M.evaluate_map(smap, gt, "mit", ("auc_judd",), rng=np.random.default_rng(trial))
        # the metric's own stream (issue 18): the same as evaluate_map derives from this seed
        prng = M.metric_rng(np.random.default_rng(trial), "mit", "auc_judd")
        # one draw per pixel in the order of the values (fixated pixels first among equal
        # values, row-major within): the documented assignment of the jitter to pixels
        flat = smap.ravel()
        order = np.lexsort((np.arange(flat.size), ~gt.binary_map().ravel(), flat))
        jitter = np.empty(flat.size)
        jitter[order] = prng.random(flat.size) / 1e7
        jitter = jitter.reshape(smap.shape)
        assert got["auc_judd"] == pytest.approx(matlab_auc_judd(smap, gt.binary_map(), jitter))


def _threshold_sweep_auc(sth, neg, step):
    """The MIT code's ROC by a threshold loop from 1 down to 0 in ``step``, closed at (1, 1),
    integrated with trapz (AUC_Borji.m / AUC_shuffled.m)."""
    tp, fp = [0.0], [0.0]
    for t in np.arange(0, int(round(1 / step)) + 1)[::-1] * step:
        tp.append((sth >= t).mean())
        fp.append((neg >= t).mean())
    tp.append(1.0)
    fp.append(1.0)
    return np.trapezoid(tp, fp) if hasattr(np, "trapezoid") else np.trapz(tp, fp)


def literal_sauc_mit(smap, gt, other, rng, n_splits=100, step=0.1):
    """shuffled AUC of Borji's code: a full random permutation per split, threshold loop."""
    s = (smap - smap.min()) / (smap.max() - smap.min())
    flat = s.ravel()
    sth = flat[gt.unique_flat]
    ind = other.unique_flat
    m = min(len(sth), len(ind))
    keys = rng.random((len(ind), n_splits))
    out = []
    for j in range(n_splits):
        neg = flat[ind[np.argsort(keys[:, j])[:m]]]
        out.append(_threshold_sweep_auc(sth, neg, step))
    return float(np.mean(out))


def test_fast_sauc_mit_matches_argsort_loop():
    rng = np.random.default_rng(2)
    smap = ndimage.gaussian_filter(rng.random((40, 50)), 2)
    gt = M.GroundTruth.from_fixations(rng.integers(0, [50, 40], size=(30, 2)).astype(float),
                                      (40, 50))
    for n_other in (12, 200):  # fewer and more negatives than positives
        other = M.GroundTruth.from_fixations(
            rng.integers(0, [50, 40], size=(n_other, 2)).astype(float), (40, 50))
        got = M.evaluate_map(smap, gt, "mit", ("sauc",), other=other,
                             rng=np.random.default_rng(4))["sauc"]
        prng = M.metric_rng(np.random.default_rng(4), "mit", "sauc")  # its own stream
        assert got == pytest.approx(literal_sauc_mit(smap, gt, other, prng), abs=1e-12)


def test_gaussian_density_table_path_equals_exponential_path():
    rows, cols = np.array([3, 3, 17, 30]), np.array([0, 0, 25, 47])
    fast = M.gaussian_density(rows, cols, (32, 48), 4.0)
    # non-integer coordinates take the direct exponential path; an offset of 1e-12 px is nothing
    slow = M.gaussian_density(rows + 1e-12, cols + 1e-12, (32, 48), 4.0)
    assert np.abs(fast - slow).max() < 1e-12
    weighted = M.gaussian_density(np.array([3, 17, 30]), np.array([0, 25, 47]), (32, 48), 4.0,
                                  weights=np.array([2.0, 1.0, 1.0]))
    assert np.abs(fast - weighted).max() < 1e-15


def test_release_rebuilds_the_same_densities_and_batch_bounds_memory(scene):
    shape, fix, smap = scene
    gt = M.GroundTruth.from_fixations(fix, shape)
    before = {p: gt.density(p).copy() for p in M.PROTOCOLS}
    M.evaluate_protocols(smap, gt, M.PROTOCOLS, ("cc", "kl", "sim"))
    gt.release()
    assert not any(isinstance(v, np.ndarray) and v.size == smap.size for v in gt._cache.values())
    for p in M.PROTOCOLS:
        assert np.array_equal(gt.density(p), before[p])
    # evaluate_batch keeps the caller's GroundTruth caches and frees the ones it builds
    fx = [Fixations(f"{i}.jpg", fix[:, 0], fix[:, 1], np.arange(len(fix)) % 3, size=shape)
          for i in range(3)]
    rows = M.evaluate_batch([smap] * 3, [gt] + fx[1:], M.PROTOCOLS, ("cc",))
    assert "dens_mit" in gt._cache
    assert rows[0]["cc"] == pytest.approx(rows[2]["cc"])


def _blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_blas_single_thread_limits_every_blas_library_and_restores_them():
    assert _blas_threads(), "no BLAS library found by threadpoolctl"
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        assert set(before) == {2}
        with M.blas_single_thread():
            assert set(_blas_threads()) == {1}
            with M.blas_single_thread():        # nested: still one thread
                np.ones((64, 64)) @ np.ones((64, 64))
            assert set(_blas_threads()) == {1}  # the inner block does not restore
        assert _blas_threads() == before


def test_blas_single_thread_sees_a_library_loaded_after_first_use():
    code = """
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits
from neuroprobe.saliency._blas import blas_single_thread
threadpool_limits(limits=2, user_api="blas")
with blas_single_thread():
    pass
import scipy.linalg
threadpool_limits(limits=2, user_api="blas")
with blas_single_thread():
    inside = [(i["filepath"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]
print(len(inside), sorted({n for _, n in inside}))
"""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert r.returncode == 0, r.stderr
    count, threads = r.stdout.split(maxsplit=1)
    assert int(count) >= 1 and threads.strip() == "[1]"


def test_leave_out_density_equals_the_direct_blur_of_the_rest():
    rng = np.random.default_rng(9)
    shape = (40, 56)
    xy = rng.integers(0, [56, 40], size=(60, 2)).astype(float)
    xy[30:35] = xy[:5]  # pixels fixated by several observers (and twice by one)
    obs = np.arange(60) % 6
    for sigma in (None, 3.0):
        gt = M.GroundTruth.from_fixations(xy, shape, sigma=sigma)
        for o in range(6):
            held = M.GroundTruth.from_fixations(xy[obs == o], shape, sigma=sigma)
            rest = M.GroundTruth.from_fixations(xy[obs != o], shape, sigma=sigma)
            for p in M.PROTOCOLS:
                got = M.leave_out_density(gt, held, p)
                ref = rest.density(p)
                assert np.abs(got - ref).max() < 1e-14 * ref.max()
    with pytest.raises(UserError, match="subset"):
        M.leave_out_density(M.GroundTruth.from_fixations(xy[:3], shape),
                            M.GroundTruth.from_fixations(xy[3:9], shape), "mit")


def test_metric_titles_say_which_way_is_better():
    from neuroprobe.saliency.metrics import metric_title

    assert metric_title("nss") == "NSS (higher is better)"
    assert metric_title("kl") == "KL divergence (lower is better)"
    assert metric_title("auc_judd") == "AUC-Judd (higher is better)"
    assert metric_title("loss") == "loss (lower is better)"
    assert metric_title("accuracy") == "accuracy (higher is better)"
    assert metric_title("custom") == "custom"


# ------------------------------------------------------------------ conventions (issue 18)
def test_exact_sim_kl_do_not_shift_a_non_negative_map():
    """pysaliency's convert_saliency_map_to_density: a map >= 0 is only divided by its sum."""
    s = np.array([[1.0, 2.0], [3.0, 4.0]])  # minimum 1: the old code shifted it to 0
    p = np.array([[0.4, 0.3], [0.2, 0.1]])
    gt = M.GroundTruth((2, 2), np.array([0]), np.array([0]), density_map=p)
    q = s.ravel() / 10
    pv = p.ravel()
    assert M.sim(s, gt, "exact") == pytest.approx(0.1 + 0.2 + 0.2 + 0.1, abs=1e-15)
    kl_hand = sum(a * math.log((a + EPS) / (b + EPS)) for a, b in zip(pv, q))
    assert M.kl(s, gt, "exact") == pytest.approx(kl_hand, abs=1e-14)
    assert kl_hand == pytest.approx(0.4 * math.log(4) + 0.3 * math.log(1.5)
                                    + 0.2 * math.log(2 / 3) + 0.1 * math.log(0.25))
    # a map with negative values is shifted to minimum 0 first (both codes agree there)
    neg = s - 2.0
    qs = np.array([0.0, 1.0, 2.0, 3.0]) / 6
    assert M.sim(neg, gt, "exact") == pytest.approx(np.minimum(qs, pv).sum(), abs=1e-15)
    assert M.kl(neg, gt, "exact") == pytest.approx(
        sum(a * math.log((a + EPS) / (b + EPS)) for a, b in zip(pv, qs)), abs=1e-13)
    # mit: KLdiv.m divides the raw map by its sum; similarity.m min-max normalises first
    assert M.kl(s, gt, "mit") == pytest.approx(
        sum(a * math.log(EPS + a / (b + EPS)) for a, b in zip(pv, q)), abs=1e-14)
    pm = (pv - pv.min()) / (pv - pv.min()).sum()
    assert M.sim(s, gt, "mit") == pytest.approx(np.minimum(qs, pm).sum(), abs=1e-15)


def test_mit_rounds_coordinates_like_matlab():
    assert M.matlab_round([0.5, 1.5, 2.5, 2.4999, -0.5, 3.0]).tolist() == [1, 2, 3, 2, 0, 3]
    s = np.arange(20, dtype=float).reshape(4, 5) ** 1.5
    xy = np.array([[2.5, 1.0], [0.5, 2.5], [3.0, 3.0]])  # x, y
    gt = M.GroundTruth.from_fixations(xy, (4, 5))
    # numpy (exact): 2.5 -> 2, 0.5 -> 0; MATLAB (mit): 2.5 -> 3, 0.5 -> 1
    assert list(zip(gt.rows, gt.cols)) == [(1, 2), (2, 0), (3, 3)]
    assert list(zip(gt.at("mit").rows, gt.at("mit").cols)) == [(1, 3), (3, 1), (3, 3)]
    assert M.fixation_map(xy[:, 0], xy[:, 1], (4, 5), protocol="mit")[3, 1]
    v = s.ravel()
    nss_mit = (np.mean([s[1, 3], s[3, 1], s[3, 3]]) - v.mean()) / v.std(ddof=1)
    nss_exact = (np.mean([s[1, 2], s[2, 0], s[3, 3]]) - v.mean()) / v.std(ddof=0)
    assert M.nss(s, xy, "mit", shape=(4, 5)) == pytest.approx(nss_mit, abs=1e-14)
    assert M.nss(s, xy, "exact", shape=(4, 5)) == pytest.approx(nss_exact, abs=1e-14)
    # the densities follow the pixels of their protocol
    assert np.allclose(gt.density("mit"), M.GroundTruth((4, 5), np.array([1, 3, 3]),
                                                        np.array([3, 1, 3])).density("mit"))
    # integer coordinates: one ground truth serves both protocols
    g2 = M.GroundTruth.from_fixations(np.array([[1.0, 2.0]]), (4, 5))
    assert g2.at("mit") is g2


def literal_auc_borji_mit(smap, gt, rng, n_splits=100, step=0.1):
    """AUC_Borji.m: min-max normalise, per split randi negatives, threshold loop, trapz."""
    s = ((smap - smap.min()) / (smap.max() - smap.min())).ravel()
    sth = s[gt.unique_flat]
    r = rng.integers(0, s.size, size=(len(sth), n_splits))
    out = []
    for j in range(n_splits):
        neg = s[r[:, j]]
        out.append(_threshold_sweep_auc(sth, neg, step))
    return float(np.mean(out))


def test_random_metrics_do_not_depend_on_the_other_metrics_requested():
    rng = np.random.default_rng(8)
    smap = ndimage.gaussian_filter(rng.random((30, 40)), 2)
    gt = M.GroundTruth.from_fixations(rng.integers(0, [40, 30], size=(25, 2)).astype(float),
                                      (30, 40))
    other = M.GroundTruth.from_fixations(rng.integers(0, [40, 30], size=(60, 2)).astype(float),
                                         (30, 40))
    full = M.evaluate_protocols(smap, gt, M.PROTOCOLS, M.METRICS, other=other, rng=3)
    for p in M.PROTOCOLS:
        for m in ("auc_judd", "auc_borji", "sauc"):
            alone = M.evaluate_map(smap, gt, p, (m,), other=other, rng=3)[m]
            assert alone == full[p][m]  # bit for bit: its own stream
            only_p = M.evaluate_protocols(smap, gt, (p,), (m, "nss"), other=other, rng=3)
            assert only_p[p][m] == full[p][m]  # nor on the other protocols requested
    # and the stream is the documented one: AUC_Borji.m by hand with metric_rng's draws
    assert full["mit"]["auc_borji"] == pytest.approx(
        literal_auc_borji_mit(smap, gt, M.metric_rng(3, "mit", "auc_borji")), abs=1e-12)
    # exact AUC-Borji: pairwise ROC against metric_rng's uniform pixels per split
    r = M.metric_rng(3, "exact", "auc_borji").integers(0, smap.size, size=(100, len(gt)))
    pos = smap.ravel()[gt.flat]
    assert full["exact"]["auc_borji"] == pytest.approx(
        np.mean([brute_auc(pos, smap.ravel()[r[j]]) for j in range(100)]), abs=1e-12)
    with pytest.raises(UserError, match="draws no random"):
        M.metric_rng(3, "mit", "nss")


def test_metric_docstrings_explain_each_protocol():
    for name in M.METRICS + ("emd",):
        doc = getattr(M, name).__doc__
        if name != "emd":  # EMD is defined alike in both protocols
            assert "``mit``" in doc and "``exact``" in doc, name
        for section in ("Parameters", "Returns", "References"):
            assert section in doc, (name, section)
    assert "z-score" in M.nss.__doc__ and "ddof=1" in M.nss.__doc__
