"""Classical saliency models and pop-out search arrays: singletons, channel selectivity, metrics."""
from __future__ import annotations

import numpy as np
import pytest

from neuroprobe.errors import UserError
from neuroprobe.saliency import classical as C
from neuroprobe.saliency import popout as P


def disc_image(shape=(96, 128), centre=(30, 90), radius=8, fg=(1.0, 1.0, 1.0), bg=0.3):
    img = np.full(shape + (3,), bg)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2
    img[mask] = fg
    return img, mask


def hit(smap, mask, margin=6):
    from scipy import ndimage

    r, c = np.unravel_index(np.argmax(smap), smap.shape)
    return bool(ndimage.binary_dilation(mask, iterations=margin)[r, c])


@pytest.mark.parametrize("name", ["itti", "spectral", "signature"])
def test_models_find_an_obvious_singleton(name):
    img, mask = disc_image()
    smap = C.get_model(name)(img)
    assert smap.shape == img.shape[:2] and smap.min() >= 0 and smap.max() == pytest.approx(1.0)
    assert hit(smap, mask)


# spectral residual works on the grey image (as in the paper), so it gets the size singleton
@pytest.mark.parametrize("name,feature,diff", [("itti", "colour", 180), ("signature", "colour", 180),
                                               ("spectral", "size", 2.5)])
def test_models_find_a_singleton_among_distractors(name, feature, diff):
    arr = P.make_array(feature, diff, seed=3, size=224)
    smap = C.get_model(name)(arr.image)
    assert P.gsi(smap, arr.target_mask, arr.distractor_mask) > 0.2
    assert P.score_array(smap, arr)["fixations"] <= 3


def test_centre_bias_peaks_at_centre_and_ignores_content():
    img, _ = disc_image()
    m = C.centre_bias(img)
    r, c = np.unravel_index(np.argmax(m), m.shape)
    assert abs(r - 47.5) <= 0.5 and abs(c - 63.5) <= 0.5
    assert np.array_equal(m, C.centre_bias(np.zeros_like(img)))
    assert np.array_equal(m, C.centre_bias((96, 128)))


def test_itti_channels_respond_to_their_own_feature_only():
    # grey world, bright disc: no colour signal at all
    img, mask = disc_image(fg=(0.9, 0.9, 0.9))
    _, maps = C.itti_koch(img, return_maps=True)
    assert np.abs(maps["colour"]).max() == 0.0
    assert hit(maps["intensity"], mask)
    # isoluminant colour singleton: red disc on a green field of equal intensity
    img, mask = disc_image(fg=(0.6, 0.0, 0.0), bg=0.0)
    img[~mask] = (0.0, 0.6, 0.0)
    _, maps = C.itti_koch(img, return_maps=True)
    assert np.abs(maps["intensity"]).max() == 0.0
    assert np.abs(maps["orientation"]).max() < 1e-9
    assert hit(maps["colour"], mask)


def test_itti_orientation_channel_finds_orientation_singleton_without_colour():
    o_gsi, i_gsi = [], []
    for seed in range(3):
        arr = P.make_array("orientation", 90, seed=seed, size=448)
        grey = arr.image.mean(axis=2, keepdims=True).repeat(3, axis=2)
        _, maps = C.itti_koch(grey, return_maps=True)
        assert np.abs(maps["colour"]).max() == 0.0
        o_gsi.append(P.gsi(maps["orientation"], arr.target_mask, arr.distractor_mask))
        i_gsi.append(P.gsi(maps["intensity"], arr.target_mask, arr.distractor_mask))
    # the target differs only in orientation: the orientation channel prefers it, intensity not
    assert np.mean(o_gsi) > 0.15 and min(o_gsi) > 0.1
    assert abs(np.mean(i_gsi)) < 0.1


def test_itti_normalise_promotes_a_single_peak():
    one = np.zeros((40, 40))
    one[20, 20] = 1
    many = np.zeros((40, 40))
    many[5::10, 5::10] = 1
    assert C.itti_normalise(one).max() == pytest.approx(1.0)  # no other maxima: (1 - 0)^2
    assert C.itti_normalise(many).max() == pytest.approx(0.0)  # equal peaks: (1 - 1)^2


def test_resize_map_matches_skimage_and_conserves_mean():
    from skimage.transform import resize

    a = np.random.default_rng(0).random((37, 50))
    up = C.resize_map(a, (150, 200))
    assert np.abs(up - resize(a, (150, 200), order=1, mode="edge")).max() < 1e-12
    big = np.random.default_rng(1).random((600, 800))
    assert C.resize_map(big, (48, 64)).mean() == pytest.approx(big.mean())


def test_image_inputs_and_bad_names():
    img, _ = disc_image()
    u8 = (img * 255).round().astype(np.uint8)
    assert np.allclose(C.spectral_residual(u8), C.spectral_residual(u8 / 255.0))
    assert C.image_signature(img[..., 0]).shape == img.shape[:2]  # grey image
    with pytest.raises(UserError, match="closest"):
        C.get_model("itty")
    assert C.get_model("center") is C.centre_bias
    with pytest.raises(UserError, match="NaN"):
        C.itti_koch(np.full((32, 32, 3), np.nan))


# ------------------------------------------------------------------ pop-out arrays
def test_popout_generator_is_deterministic_and_graded():
    a = list(P.generate(6, seed=2, size=112))
    b = list(P.generate(9, seed=2, size=112))[:6]
    for x, y in zip(a, b):
        assert np.array_equal(x.image, y.image) and x.meta == y.meta
    assert [x.meta["feature"] for x in a[:3]] == list(P.FEATURES)
    assert a[3].meta["difference"] == P.LEVELS["colour"][1]
    for x in a:
        assert x.target_mask.any() and x.distractor_mask.any()
        assert not (x.target_mask & x.distractor_mask).any()
        # 49 items: the target and 48 distractor bars
        from scipy import ndimage

        assert ndimage.label(x.distractor_mask)[1] == 48
        r, c = x.meta["target_row"], x.meta["target_col"]
        assert x.meta["target_position"] == r * 7 + c + 1
        cy, cx = np.argwhere(x.target_mask).mean(axis=0)
        cell = x.meta["cell"]
        assert int(cy // cell) == r and int(cx // cell) == c


def test_popout_features_differ_only_in_their_feature():
    col = P.make_array("colour", 90, seed=1, size=112)
    assert col.meta["target_colour"] != col.meta["distractor_colour"]
    assert col.meta["target_orientation"] == col.meta["distractor_orientation"]
    ori = P.make_array("orientation", 45, seed=1, size=112)
    assert ori.meta["target_colour"] == ori.meta["distractor_colour"]
    assert (ori.meta["target_orientation"] - ori.meta["distractor_orientation"]) % 180 == \
        pytest.approx(45)
    siz = P.make_array("size", 2.0, seed=1, size=112)
    assert siz.target_mask.sum() > 3 * siz.distractor_mask.sum() / 48


def test_popout_metrics_hand_cases():
    t = np.zeros((50, 50), bool)
    t[10:14, 10:14] = True
    d = np.zeros((50, 50), bool)
    d[30:34, 30:34] = True
    s = np.zeros((50, 50))
    s[t] = 1.0
    s[d] = 0.5
    assert P.gsi(s, t, d) == pytest.approx((1 - 0.5) / 1.5)
    assert P.max_saliency_ratios(s, t, d)[0] == pytest.approx(2.0)
    assert P.max_saliency_ratios(s, t, d)[1] == float("inf")
    assert P.fixations_to_target(s, t, ior_radius=5) == (1, True)
    # the distractor is the peak: first fixation there, the second on the target
    s2 = s.copy()
    s2[d] = 2.0
    assert P.fixations_to_target(s2, t, ior_radius=5) == (2, True)
    # a target never reached
    assert P.fixations_to_target(np.where(t, -1.0, 1.0), t, ior_radius=1,
                                 max_fixations=5) == (5, False)
    with pytest.raises(UserError, match="empty"):
        P.gsi(s, np.zeros_like(t), d)
    with pytest.raises(UserError, match="differ"):
        P.gsi(s[:10], t, d)


# ------------------------------------------------------------------ fast paths vs literal versions
def test_itti_stacked_normalise_equals_per_channel():
    rng = np.random.default_rng(0)
    from scipy import ndimage

    stack = ndimage.gaussian_filter(rng.random((5, 30, 40)), (0, 2, 2))
    stack[3] = 0.25  # a flat map -> zeros
    stack[1, 12, 17] = 5.0  # a single strong peak
    got = C._itti_normalise_stack(stack.copy())
    for ch in range(stack.shape[0]):
        assert np.array_equal(got[ch], C.itti_normalise(stack[ch]))
    small = rng.random((3, 7, 9))
    grown = C._resize_stack(small, (20, 25))
    shrunk = C._resize_stack(rng.random((3, 40, 50)), (9, 11))
    assert np.array_equal(grown[1], C.resize_map(small[1], (20, 25)))
    assert shrunk.shape == (3, 9, 11)


def test_gabor_energy_matches_direct_convolution():
    from scipy import ndimage

    rng = np.random.default_rng(1)
    level = ndimage.gaussian_filter(rng.random((24, 31)), 1)
    got = C._gabor_energy(level)
    assert got.shape == (24, 31, 4)
    for t, k in enumerate(C._gabor_kernels()):
        re = ndimage.convolve(level, k.real, mode="mirror")
        im = ndimage.convolve(level, k.imag, mode="mirror")
        assert np.abs(got[:, :, t] - np.hypot(re, im)).max() < 1e-12


def test_pyramid_channel_first_equals_channel_last():
    rng = np.random.default_rng(2)
    a = rng.random((37, 50, 3)).astype(np.float32)
    last = C.gaussian_pyramid(a, 6)
    first = C.gaussian_pyramid(np.ascontiguousarray(np.moveaxis(a, -1, 0)), 6, axes=(1, 2))
    for x, y in zip(last, first):
        assert np.array_equal(x, np.moveaxis(y, 0, -1))


def test_itti_uint8_and_float_inputs_agree_and_blur_option():
    rng = np.random.default_rng(3)
    img = (rng.random((64, 80, 3)) * 255).astype(np.uint8)
    a = C.itti_koch(img)
    b = C.itti_koch(img.astype(np.float64) / 255.0)
    assert np.array_equal(a, b)  # the uint8 table is exactly the float path
    blurred = C.itti_koch(img, blur_sigma=6.0)
    assert blurred.max() == pytest.approx(1.0)
    # a blur spreads the peaks: more of the map is near its maximum
    assert (blurred > 0.5).mean() > (a > 0.5).mean()


def test_reduce_without_padding_equals_the_padded_formula():
    rng = np.random.default_rng(4)
    for n in range(3, 21):
        x = rng.random((n, 4))
        p = np.pad(x, ((2, 2), (0, 0)), mode="reflect")
        m = (n + 1) // 2
        t = [p[k: k + 2 * m - 1: 2] for k in range(5)]
        ref = (t[0] + t[4] + 4.0 * (t[1] + t[3]) + 6.0 * t[2]) * (1.0 / 16.0)
        assert np.array_equal(C._reduce_axis(x, 0), ref), n
        assert np.array_equal(C._reduce_axis(x.T.copy(), 1), ref.T), n
