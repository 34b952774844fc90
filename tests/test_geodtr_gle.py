"""Geometric Layout Extractor against the official GeoDTR outputs (tests/fixtures/geodtr/gle_tiny.npz:
GeoLayoutExtractor(in_dim=336, n_des=2, tr_heads=2, tr_layers=2, d_hid=64), eval mode)."""

import os

import numpy as np
import pytest

from common.backbones.torch_weights import assign_state_dict
from geodtr_tf.layers import GeometricLayoutExtractor, hardtanh, layout_descriptor_pooling

STAGES = ("E", "E_pe", "layer0_out", "layer1_out", "T", "Q", "P")


@pytest.fixture(scope="module")
def z():
    return np.load(os.path.join(os.path.dirname(__file__), "fixtures", "geodtr", "gle_tiny.npz"))


def _state_dict(z, variant):
    keys = [k[3:] for k in z.files if k.startswith("sd/")]
    if variant == "plain":
        return {k: z["sd/" + k] for k in keys}
    out = {}
    for k in keys:  # the fixture README's recipe for the stress weights
        if "stress_sd/" + k in z:
            out[k] = z["stress_sd/" + k]
        elif "stress_factor/" + k in z:
            out[k] = (z["sd/" + k] * z["stress_factor/" + k]).astype(np.float32)
        else:
            out[k] = z["sd/" + k]
    return out


def _r(z):
    """NCHW (2, 512, 8, 42) -> (B, N, C) with n = h·42 + w (PyTorch's view of NCHW)."""
    return np.transpose(z["r"], (0, 2, 3, 1)).reshape(2, 336, 512)


def _run(z, variant, num_layers=2):
    gle = GeometricLayoutExtractor(336, num_descriptors=2, num_layers=num_layers, num_heads=2, ffn_dim=64,
                                   dropout=0.3)
    gle.build()
    sd = _state_dict(z, variant)
    mapping = gle.torch_weights()
    if num_layers == 0:
        sd = {k: v for k, v in sd.items() if not k.startswith("tr_module")}
    assert assign_state_dict(mapping, sd) == len(sd)  # every official tensor has a home, none left over
    q, inter = gle(_r(z), training=False, return_intermediates=True)
    inter = {k: np.asarray(v) for k, v in inter.items()}
    inter["P"] = np.asarray(hardtanh(q))
    inter["f"] = np.asarray(layout_descriptor_pooling(_r(z), inter["P"]))
    inter["f_unnorm"] = np.asarray(layout_descriptor_pooling(_r(z), inter["P"], normalize=False))
    return inter


@pytest.mark.parametrize("variant,prefix", [("plain", ""), ("stress", "stress/")])
def test_gle_matches_official(z, variant, prefix):
    out = _run(z, variant)
    assert np.array_equal(out["idx"], z[prefix + "idx"])
    np.testing.assert_array_equal(out["M"], z[prefix + "M"])
    np.testing.assert_array_equal(out["u"], z[prefix + "u"])
    for name in STAGES:
        assert out[name].shape == z[prefix + name].shape, name
        assert np.abs(out[name] - z[prefix + name]).max() <= 1e-5, name
    assert np.abs(out["f"] - z[prefix + "f"]).max() <= 1e-6
    np.testing.assert_allclose(out["f_unnorm"], z[prefix + "f_unnorm"].reshape(2, -1), rtol=1e-5, atol=1e-5)
    # against the float64 run of the official code, same tolerances
    f64 = "f64/" if variant == "plain" else "stress_f64/"
    assert np.abs(out["Q"] - z[f64 + "Q"]).max() <= 1e-5
    assert np.abs(out["f"] - z[f64 + "f"]).max() <= 1e-6


def test_stress_variant_exercises_clipping(z):
    """Guard that the stress weights do what the fixture promises (so hardtanh is really tested)."""
    q = z["stress/Q"]
    assert (np.abs(q) > 1).mean() > 0.1
    np.testing.assert_array_equal(z["stress/P"], np.clip(q, -1, 1))


def test_no_transformer_branch(z):
    out = _run(z, "plain", num_layers=0)
    for name in ("Q", "P"):
        assert np.abs(out[name] - z["notr/" + name]).max() <= 1e-5
    assert np.abs(out["f"] - z["notr/f"]).max() <= 1e-6


def test_initialisation_as_official():
    gle = GeometricLayoutExtractor(336, num_descriptors=8, num_layers=2, num_heads=4, ffn_dim=2048)
    gle.build()
    for w in (gle.w1, gle.w2, gle.tr_module.pos_encoder.linear):
        assert abs(float(np.std(w.numpy())) - 0.005) < 2e-4
    np.testing.assert_array_equal(gle.b1.numpy(), 0.1 * np.ones((1, 8, 168), np.float32))
    np.testing.assert_array_equal(gle.b2.numpy(), 0.1 * np.ones((1, 8, 336), np.float32))
    np.testing.assert_array_equal(gle.tr_module.pos_encoder.embedding_parameter.numpy(), 0)
    layer0, layer1 = gle.tr_module.encoder_layers
    for a, b in zip(layer0.weights, layer1.weights):  # torch deep-copies the encoder layer
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    attn = layer0.self_attn
    bound = np.sqrt(6.0 / (168 + 3 * 168))  # xavier_uniform over the packed (504, 168) in_proj
    q = attn.query_kernel.numpy()
    assert np.abs(q).max() <= bound and np.abs(q).max() > 0.9 * bound
    np.testing.assert_array_equal(attn.query_bias.numpy(), 0)
    assert np.abs(attn.output_kernel.numpy()).max() <= 1 / np.sqrt(168)
    assert np.abs(layer0.linear2.kernel.numpy()).max() <= 1 / np.sqrt(2048)
    assert layer0.norm1.epsilon == 1e-5 and gle.tr_module.norm.epsilon == 1e-5


def test_gradient_flows_through_saliency_not_index():
    import tensorflow as tf

    gle = GeometricLayoutExtractor(4, num_descriptors=2, num_layers=1, num_heads=1, ffn_dim=8)
    r = tf.constant(np.random.default_rng(0).random((1, 4, 5)).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(r)
        loss = tf.reduce_sum(gle(r, training=False))
    g = tape.gradient(loss, r).numpy()
    # only the channel maximum at each position receives gradient (through M)
    mask = r.numpy() == r.numpy().max(-1, keepdims=True)
    assert np.all(g[~mask] == 0) and np.any(g[mask] != 0)


def test_odd_positions_rejected():
    with pytest.raises(ValueError, match="even"):
        GeometricLayoutExtractor(7)
