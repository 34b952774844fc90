"""The SAFA polar transform (protocol.md §1): analytic markers, the formula by hand, and the three paths
(float64 reference, cv2 fast path, Keras layer) against each other (the layer's serialisation:
tests/test_harness_layers.py)."""

import numpy as np
import pytest

from common.errors import CVGLError
from common.data.polar import polar_grid, polar_transform, polar_transform_fast
from common.data.polar_layer import PolarTransform

S, H, W = 100, 32, 128


def _marker(row, col, size=S):
    img = np.zeros((size, size), np.uint8)
    img[row, col] = 255
    return img


def _paths(img):
    """The three implementations on one uint8 image (HxW)."""
    ref = polar_transform(img, H, W)
    fast = polar_transform_fast(img, H, W).astype(np.float32)
    layer = np.asarray(PolarTransform(H, W)(img[None, :, :, None].astype(np.float32)))[0, :, :, 0]
    return {"reference": ref, "fast": fast, "layer": layer}


@pytest.mark.parametrize(
    "where, row, col, column",
    [("north", 10, 50, W // 2), ("east", 50, 90, 3 * W // 4), ("south", 90, 50, 0), ("west", 50, 10, W // 4)],
)
def test_marker_lands_at_its_bearing(where, row, col, column):
    for name, out in _paths(_marker(row, col)).items():
        r, c = np.unravel_index(np.argmax(out), out.shape)
        assert c == column, (where, name, c)
        # radius 40 of 50: rho_i = 50 (H-1-i)/H = 40 -> i = 5.4, i.e. near the top (far) rows
        assert r in (5, 6), (where, name, r)


def test_centre_fills_bottom_row():
    for name, out in _paths(_marker(S // 2, S // 2)).items():
        np.testing.assert_allclose(out[-1], 255.0, atol=0.02, err_msg=name)  # rho = 0: the centre pixel S/2
        assert out[:-1].max() < 1e-3, name


def test_formula_by_hand_and_zero_padding():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (S, S, 3)).astype(np.uint8)
    out = polar_transform(img, H, W)
    assert out.dtype == np.float32 and out.shape == (H, W, 3)
    i, j = 7, 19
    rho = (S / 2) * (H - 1 - i) / H
    theta = 2 * np.pi * j / W
    yr, yc = S / 2 + rho * np.cos(theta), S / 2 - rho * np.sin(theta)
    r0, c0 = int(yr), int(yc)
    r1, c1 = r0 + 1, c0 + 1
    f = img.astype(np.float64)
    want = (c1 - yc) * ((r1 - yr) * f[r0, c0] + (yr - r0) * f[r1, c0]) + (yc - c0) * (
        (r1 - yr) * f[r0, c1] + (yr - r0) * f[r1, c1])
    np.testing.assert_allclose(out[i, j], want, rtol=0, atol=1e-4)
    # zero outside: with S <= 2H the top row's far neighbour of column 0 (south) is row S, outside the image,
    # so on an all-ones image that pixel keeps only the weight of the inside neighbour.
    ones = np.ones((40, 40))
    out = polar_transform(ones, H, W)
    yr = 20 + 20 * (H - 1) / H  # 39.375: r0 = 39 inside, r1 = 40 outside
    assert out[0, 0] == pytest.approx(40 - yr, abs=1e-6)
    assert out[H // 2, 5] == pytest.approx(1.0, abs=1e-6)


def test_fast_path_within_tolerance_and_rounded():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)
    ref = polar_transform(img, 122, 671).astype(np.float64)
    fast = polar_transform_fast(img, 122, 671)
    assert fast.dtype == np.uint8 and fast.shape == (122, 671, 3)
    err = np.abs(fast - ref)
    assert err.max() <= 4.0 and err.mean() <= 0.5
    # documented choice: rounded to the nearest grey level, not truncated
    assert np.abs(fast - np.round(ref)).max() <= 1.0
    assert abs((fast - ref).mean()) < 0.05  # no truncation bias (-0.5)


def test_layer_matches_reference_and_gathers_batch():
    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, (2, 64, 64, 3)).astype(np.float32)
    layer = PolarTransform(24, 80)
    out = np.asarray(layer(imgs))
    assert out.shape == (2, 24, 80, 3)
    for b in range(2):
        assert np.abs(out[b] - polar_transform(imgs[b], 24, 80)).max() <= 0.02
    # the gather grid reproduces the reference exactly (up to float32)
    idx, wts = polar_grid(64, 24, 80)
    flat = imgs[0].reshape(-1, 3).astype(np.float64)
    via_grid = sum(wts[k][:, None] * flat[idx[k]] for k in range(4)).reshape(24, 80, 3)
    assert np.abs(via_grid - polar_transform(imgs[0], 24, 80)).max() < 1e-3


def test_bad_inputs():
    with pytest.raises(CVGLError, match="square"):
        polar_transform(np.zeros((10, 12, 3)), 4, 8)
    with pytest.raises(CVGLError, match="square"):
        polar_transform_fast(np.zeros((10, 12, 3), np.uint8), 4, 8)
    with pytest.raises(CVGLError, match="uint8"):
        polar_transform_fast(np.zeros((10, 10, 3), np.float32), 4, 8)
    with pytest.raises(CVGLError, match="square"):
        PolarTransform(4, 8)(np.zeros((1, 10, 12, 3), np.float32))


def test_roundings_by_hand():
    """The three ways float samples become uint8 (common.data.polar.ROUNDINGS), on a hand-made array."""
    from common.data.polar import to_uint8

    x = np.array([[0.2, 0.5, 1.7], [99.5, 200.49, 254.9]])
    np.testing.assert_array_equal(to_uint8(x, "round"), [[0, 0, 2], [100, 200, 255]])  # rint: half to even
    np.testing.assert_array_equal(to_uint8(x, "floor"), [[0, 0, 1], [99, 200, 254]])
    # bytescale: (x - 0.2) * 255 / (254.9 - 0.2), then + 0.5, truncated (scipy.misc.bytescale)
    expect = np.floor((x - 0.2) * (255.0 / 254.7) + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(to_uint8(x, "bytescale"), expect)
    assert to_uint8(x, "bytescale").max() == 255 and to_uint8(x, "bytescale").min() == 0
    np.testing.assert_array_equal(to_uint8(np.full((2, 2), 7.0), "bytescale"), np.zeros((2, 2)))  # flat map
    with pytest.raises(CVGLError, match="polar rounding 'ceil'"):
        to_uint8(x, "ceil")


@pytest.mark.parametrize("source,size", [(750, (122, 671)), (1200, (112, 616))])
def test_each_rounding_equals_its_definition_at_real_size(source, size):
    """At CVUSA (750) and CVACT (1200) aerial sizes: each mode of the fast path equals its definition applied
    to the float64 reference map, in every pixel (the fast path is the reference's float64 arithmetic with its
    sampling cached; OpenCV's remap, which quantises positions to 1/32 px, put 48 of 245,586 values one grey
    level off)."""
    from common.data.polar import to_uint8

    rng = np.random.default_rng(source)
    y, x = np.mgrid[0:source, 0:source] / source
    smooth = np.stack([128 + 100 * np.sin(7 * x + 3 * y), 128 + 90 * np.cos(5 * y), 60 + 150 * x * y], -1)
    img = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
    ref = polar_transform(img, *size, dtype=np.float64)  # float64, as the original scripts compute it
    for rounding in ("round", "floor", "bytescale"):
        np.testing.assert_array_equal(polar_transform_fast(img, *size, rounding=rounding), to_uint8(ref, rounding),
                                      err_msg=rounding)
    assert (to_uint8(ref, "floor").astype(int) - to_uint8(ref, "round")).mean() < -0.3  # floor: ~ -0.5 bias
