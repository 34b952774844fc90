"""common/training/losses.py against the official GeoDTR losses (tests/fixtures/geodtr/losses.npz) and a hand-computed
UTM mask case."""

import math
import os

import numpy as np
import pytest
import tensorflow as tf

from geodtr_tf.losses import counterfactual_loss
from common.training.losses import soft_margin_triplet, utm_far_mask

TOL = dict(rtol=1e-4, atol=1e-7)


@pytest.fixture(scope="module")
def z():
    return np.load(os.path.join(os.path.dirname(__file__), "fixtures", "geodtr", "losses.npz"))


def _with_grads(fn, a, b):
    a = tf.constant(a)
    b = tf.constant(b)
    with tf.GradientTape() as tape:
        tape.watch([a, b])
        loss = fn(a, b)
    ga, gb = tape.gradient(loss, [a, b])
    return float(loss), ga.numpy(), gb.numpy()


@pytest.mark.parametrize("prefix,suffix", [("", ""), ("corr_", "_corr")])
def test_triplet_matches_official(z, prefix, suffix):
    alpha = float(z["alpha"])
    loss, g_sat, g_grd = _with_grads(lambda s, g: soft_margin_triplet(s, g, alpha=alpha),
                                     z["sat" + suffix], z["grd" + suffix])
    np.testing.assert_allclose(loss, z[prefix + "triplet_loss"], **TOL)
    np.testing.assert_allclose(loss, z[prefix + "triplet_loss_f64"], rtol=1e-5)  # softplus: no cancellation
    np.testing.assert_allclose(g_sat, z[prefix + "triplet_grad_sat"], **TOL)
    np.testing.assert_allclose(g_grd, z[prefix + "triplet_grad_grd"], **TOL)


@pytest.mark.parametrize("view", ["sat", "grd"])
def test_counterfactual_matches_official(z, view):
    beta = float(z["beta"])
    loss, g_f, g_fhat = _with_grads(lambda f, h: counterfactual_loss(f, h, beta=beta), z[view], z[view + "_hat"])
    np.testing.assert_allclose(loss, z[f"cf_loss_{view}"], **TOL)
    np.testing.assert_allclose(loss, z[f"cf_loss_{view}_f64"], rtol=1e-5)
    np.testing.assert_allclose(g_f, z[f"cf_grad_f_{view}"], **TOL)
    np.testing.assert_allclose(g_fhat, z[f"cf_grad_fhat_{view}"], **TOL)


def test_total_loss_as_train_py(z):
    total = (float(soft_margin_triplet(z["sat"], z["grd"], alpha=10.0))
             + 0.5 * (float(counterfactual_loss(z["sat"], z["sat_hat"], 5.0))
                      + float(counterfactual_loss(z["grd"], z["grd_hat"], 5.0))))
    np.testing.assert_allclose(total, z["total_loss"], **TOL)


def test_geodtr_family_loss_is_the_official_total(z):
    from common.data.specs import InputSpec
    from geodtr_tf.model import GeoDTR

    model = GeoDTR(input_spec=InputSpec("t", (32, 32), (32, 32), True, "tanh"), num_descriptors=1, num_layers=0)
    outputs = {"aerial": z["sat"], "ground": z["grd"], "aerial_cf": z["sat_hat"], "ground_cf": z["grd_hat"]}
    np.testing.assert_allclose(float(model.family_loss(outputs)), z["total_loss"], **TOL)
    plain = {"aerial": z["sat"], "ground": z["grd"]}
    np.testing.assert_allclose(float(model.family_loss(plain)), z["triplet_loss"], **TOL)


def test_utm_mask_hand_computed():
    # three points: A and B 20 m apart (near), C 30 m from A and ~36 m from B (far)
    pos = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 30.0]], np.float32)
    want = np.array([[0, 0, 1], [0, 0, 1], [1, 1, 0]], np.float32)  # diagonal: 0 m < 25 m
    np.testing.assert_array_equal(np.asarray(utm_far_mask(pos, 25.0)), want)
    # exactly 25 m counts as far (>=)
    np.testing.assert_array_equal(np.asarray(utm_far_mask(np.array([[0, 0], [25, 0]], np.float32)))[0, 1], 1)

    # masked triplet by hand, B=3, alpha=1, 1-d unit descriptors
    a = np.array([[1.0], [1.0], [-1.0]], np.float32)
    g = np.array([[1.0], [-1.0], [-1.0]], np.float32)
    d = 2 - 2 * a @ g.T
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    num = 0.0
    pairs = [(i, j) for i in range(3) for j in range(3) if i != j and want[i, j]]
    for i, j in pairs:
        num += sp(d[j, j] - d[i, j]) + sp(d[i, i] - d[i, j])
    expect = 0.5 * num / len(pairs)
    got = float(soft_margin_triplet(a, g, alpha=1.0, mask=want))
    np.testing.assert_allclose(got, expect, rtol=1e-6)
