"""The keras.ops "area" resize of the export preprocessing (common/serving/preprocess.py, for backends without
one, e.g. JAX) against TensorFlow's ``tf.image.resize(method="area")``: integer and non-integer downscales,
upscales, mixed, and a dynamic-shape graph."""

import numpy as np
import pytest
import tensorflow as tf

from common.serving.preprocess import area_resize, area_weights

SIZES = [
    ((24, 48), (8, 16)),     # integer downscale (3x, 3x): block means
    ((24, 48), (7, 13)),     # non-integer downscale
    ((20, 30), (8, 12)),     # non-integer downscale (2.5x)
    ((5, 7), (12, 16)),      # upscale
    ((16, 9), (8, 20)),      # down along H (integer), up along W
    ((13, 13), (13, 5)),     # unchanged H, non-integer down along W
    ((104, 208), (32, 176)),  # a CVACT-like crop to a tiny GeoDTR ground
    ((224, 1232), (122, 671)),  # a CVUSA panorama to GeoDTR's ground size
]


@pytest.mark.parametrize("size_in,size_out", SIZES)
def test_area_resize_equals_tensorflow(size_in, size_out):
    x = np.random.default_rng(sum(size_in)).uniform(0, 255, (2, *size_in, 3)).astype(np.float32)
    want = tf.image.resize(x, size_out, method="area").numpy()
    got = np.asarray(area_resize(x, size_out))
    assert got.shape == want.shape == (2, *size_out, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=255 * 2e-6)  # float32 rounding of 0..255 pixels


def test_area_weights_rows_sum_to_one_and_are_overlaps():
    w = np.asarray(area_weights(5, 2, "float64"))  # s = 2.5: [0, 2.5) and [2.5, 5)
    np.testing.assert_allclose(w, [[0.4, 0.4, 0.2, 0, 0], [0, 0, 0.2, 0.4, 0.4]], atol=1e-12)
    for n_in, n_out in ((7, 3), (3, 7), (10, 10)):
        np.testing.assert_allclose(np.asarray(area_weights(n_in, n_out, "float64")).sum(1), 1.0, atol=1e-12)


def test_area_resize_with_dynamic_shapes_in_a_graph():
    fn = tf.function(lambda x: area_resize(x, (7, 11)),
                     input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])
    for size in ((21, 22), (9, 30), (4, 5)):
        x = np.random.default_rng(size[0]).uniform(0, 255, (1, *size, 3)).astype(np.float32)
        want = tf.image.resize(x, (7, 11), method="area").numpy()
        np.testing.assert_allclose(fn(x).numpy(), want, atol=5e-4)
