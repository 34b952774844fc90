"""SAFA: the spatial-aware aggregation layer against a NumPy oracle of its formula, the full model's
shapes and parameter count at 112x616, a training step, the .keras round trip and the 25 m mask (mixed
precision: tests/test_harness_layers.py)."""

import keras
import numpy as np
import pytest

from mgtl_tf.safa.specs import SAFA_POLAR
from common.errors import CVGLError
from mgtl_tf.safa.layers import SpatialAwareAggregation
from common.training.losses import soft_margin_triplet
from mgtl_tf.safa import model as safa

TINY = SAFA_POLAR.replace(ground_size=(32, 160), aerial_size=(32, 160))
TINY_CFG = {"vgg_widths": [4, 4, 8, 8, 8], "backbone_weights": None}


def safa_oracle(f, w1, b1, w2, b2, reduce):
    """protocol.md §3 in plain NumPy, one embedding and one channel at a time."""
    bsz, h, w, c = f.shape
    k_n, p, _ = w1.shape
    flat = f.reshape(bsz, p, c).astype(np.float64)
    out = np.zeros((bsz, k_n * c))
    for b in range(bsz):
        v = flat[b].mean(axis=1) if reduce == "mean" else flat[b].max(axis=1)
        for k in range(k_n):
            a = (v @ w1[k] + b1[k]) @ w2[k] + b2[k]  # linear, no activation
            for ch in range(c):
                out[b, k * c + ch] = np.sum(flat[b, :, ch] * a)
        out[b] /= np.linalg.norm(out[b])
    return out


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_aggregation_matches_numpy_oracle(reduce):
    rng = np.random.default_rng(0)
    layer = SpatialAwareAggregation(num_embeddings=3, reduce=reduce)
    f = rng.normal(size=(2, 2, 4, 5)).astype("float32")
    layer.build(f.shape)
    # replace the tiny init by O(1) weights so every term matters
    for var in layer.weights:
        var.assign(rng.normal(size=var.shape).astype("float32"))
    got = np.asarray(layer(f))
    want = safa_oracle(f, *[np.asarray(v, dtype=np.float64) for v in (layer.w1, layer.b1, layer.w2, layer.b2)],
                       reduce=reduce)
    assert got.shape == (2, 15)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def test_aggregation_init_and_params_at_4x20x512():
    layer = SpatialAwareAggregation()
    layer.build((None, 4, 20, 512))
    assert layer.count_params() == 8 * (80 * 40 + 40 + 40 * 80 + 80) == 52_160
    assert tuple(layer.w1.shape) == (8, 80, 40) and tuple(layer.w2.shape) == (8, 40, 80)
    np.testing.assert_array_equal(np.asarray(layer.b1), np.float32(0.1))
    w = np.asarray(layer.w1)
    assert np.abs(w).max() <= 2 * 0.005 + 1e-7  # truncated at two standard deviations
    assert 0.003 < w.std() < 0.006
    with pytest.raises(ValueError, match="reduce"):
        SpatialAwareAggregation(reduce="sum")


def test_full_size_shapes_and_param_count():
    model = safa.SAFA(input_spec=SAFA_POLAR)
    model.build()
    assert model.count_params() == 29_533_696  # protocol.md §3; paper 29.53M
    assert abs(model.count_params() - 29.53e6) / 29.53e6 < 0.01
    x = np.zeros((1, 112, 616, 3), "float32")
    g = np.asarray(model.embed_ground(x))
    assert g.shape == (1, 4096)
    a = model.embed_aerial(keras.KerasTensor((1, 112, 616, 3)))
    assert tuple(a.shape) == (1, 4096)
    assert model.macs() == pytest.approx(42.25e9, rel=1e-3)


def _batch(n=4, size=(32, 160), seed=0):
    rng = np.random.default_rng(seed)
    return {"ground": rng.normal(0, 50, size=(n, *size, 3)).astype("float32"),
            "aerial": rng.normal(0, 50, size=(n, *size, 3)).astype("float32")}


def test_training_step_and_keras_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
    model = safa.build_model(dict(TINY_CFG, vgg_dropout=0.0), TINY)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)
    x = _batch()
    out = model(x)
    want = float(soft_margin_triplet(out["aerial"], out["ground"], alpha=10.0))
    assert float(model.compute_loss(x, None, out)) == pytest.approx(want, rel=1e-6)
    before = [np.asarray(w).copy() for w in model.trainable_weights]
    hist = model.fit(x, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    unmoved = [w.path for b, w in zip(before, model.trainable_weights) if np.array_equal(b, np.asarray(w))]
    assert unmoved == []  # one Adam step moves every weight that has a gradient, and every weight has one
    path = str(tmp_path / "safa.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, safa.SAFA) and loaded.reduce == "mean"
    for key in ("ground", "aerial"):
        np.testing.assert_array_equal(np.asarray(model(x)[key]), np.asarray(loaded(x)[key]))


def test_utm_mask_needs_positions_and_masks_near_pairs():
    model = safa.SAFA(input_spec=TINY, vgg_widths=(2, 2, 2, 2, 4), utm_mask=True)
    assert model.needs_positions
    rng = np.random.default_rng(3)
    out = {k: v / np.linalg.norm(v, axis=1, keepdims=True)
           for k, v in (("ground", rng.normal(size=(3, 8))), ("aerial", rng.normal(size=(3, 8))))}
    with pytest.raises(CVGLError, match="position"):
        model.family_loss(out, None)
    pos = np.array([[0.0, 0.0], [10.0, 0.0], [100.0, 0.0]], "float32")  # 0 and 1 are 10 m apart
    mask = np.ones((3, 3)) - np.eye(3)
    mask[0, 1] = mask[1, 0] = 0
    want = float(soft_margin_triplet(out["aerial"], out["ground"], mask=mask))
    assert float(model.family_loss(out, pos)) == pytest.approx(want, rel=1e-6)


