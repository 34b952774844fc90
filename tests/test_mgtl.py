"""MGTL: parameter counts and shapes at 112x616 for every variant and L, the generative loss (formula,
stop-gradient), a training step per variant, circular padding of the naive generators, attention maps and bad
configs (.keras round trip and mixed precision: tests/test_harness_layers.py)."""

import gc

import keras
import numpy as np
import pytest
import tensorflow as tf

import mgtl_tf
from mgtl_tf.safa.specs import SAFA_POLAR
from common.errors import CVGLError
from common.training.losses import soft_margin_triplet
from mgtl_tf.layers import CrossModalGenerator, GenerativeKnowledgeTransformer
from mgtl_tf.model import MGTL, generative_loss

TINY = SAFA_POLAR.replace(ground_size=(32, 160), aerial_size=(32, 160))  # 1x5 feature map -> 5 tokens
TINY_CFG = dict(dim=12, num_heads=6, ffn_dim=24, generator_dim=24, vgg_widths=[4, 4, 8, 8, 8], steps=2,
                backbone_weights=None)

VGG_X2 = 29_429_376
NECK_POS = 2 * (512 * 384 + 384 + 20 * 384 + 2 * 384)  # both views: FCN neck, positional embedding, its LN
GEN = 2 * (2 * (384 * 1536 + 1536 + 1536 * 384 + 384))  # encoder + decoder, per step, both views
BLOCK = 2 * (4 * (384 * 384 + 384) + 2 * 384 + (384 * 1536 + 1536 + 1536 * 384 + 384) + 2 * 384)  # + step LN


def full_size_params(variant, steps, literal=False):
    if variant == "backbone_only":
        return VGG_X2
    block = BLOCK - (2 * (384 * 1536 + 1536 + 1536 * 384 + 384) if literal else 0)
    gen = {"no_cmi": 0, "full": GEN, "naive": 3 * GEN - 2 * 2 * 2 * (1536 + 384)}[variant]  # biases once
    return VGG_X2 + NECK_POS + steps * (block + gen)


# (variant, steps, literal, exact count, paper count)
CASES = [
    ("backbone_only", 6, False, 29_429_376, 29.42e6),
    ("no_cmi", 6, False, 51_133_824, 50.92e6),
    ("full", 6, False, 79_491_456, 79.27e6),
    ("full", 1, False, None, None),
    ("full", 3, False, None, None),
    ("full", 9, False, None, None),
    ("naive", 1, False, None, None),
    ("full", 1, True, None, None),
    ("naive", 6, False, 136_114_560, None),  # built, not extrapolated: the formula below must agree
    ("full", 6, True, 65_312_640, None),
]


@pytest.mark.slow
@pytest.mark.parametrize("variant,steps,literal,exact,paper", CASES)
def test_full_size_params_and_shapes(variant, steps, literal, exact, paper):
    model = MGTL(variant=variant, steps=steps, literal_block=literal, input_spec=SAFA_POLAR)
    model.build()
    n = model.count_params()
    assert n == full_size_params(variant, steps, literal)
    if exact is not None:
        assert n == exact
    if paper is not None:
        assert abs(n - paper) / paper < 0.01  # mgtl.md: within 1% of MGTL Table 2
    from common.models.summary import count_weights

    assert sum(count_weights(v) for v in model.components().values()) == n  # components cover every weight
    details = model.ground_tower(keras.KerasTensor((1, 112, 616, 3)), return_details=True)
    want_d = 20 * 512 if variant == "backbone_only" else 20 * 384
    assert tuple(details["descriptor"].shape) == (1, want_d) == (1, model.descriptor_dim())
    if variant != "backbone_only":
        assert len(details["tokens"]) == steps and len(details["attention"]) == steps
        assert all(tuple(t.shape) == (1, 20, 384) for t in details["tokens"])
        assert all(tuple(a.shape) == (1, 6, 20, 20) for a in details["attention"])
        assert len(details["generated"]) == (0 if variant == "no_cmi" else steps)
    if variant == "full" and steps == 6 and not literal:  # the paper's model: one real forward at batch 1
        x = np.random.default_rng(0).normal(0, 50, size=(1, 112, 616, 3)).astype("float32")
        out = model({"ground": x, "aerial": x}, training=False)
        assert out["ground"].shape == (1, 7680) and out["aerial"].shape == (1, 7680)
        np.testing.assert_allclose(np.linalg.norm(np.asarray(out["ground"]), axis=1), 1.0, rtol=1e-5)
    del model
    gc.collect()


def _batch(n=4, seed=0, positions=False):
    rng = np.random.default_rng(seed)
    x = {"ground": rng.normal(0, 50, size=(n, 32, 160, 3)).astype("float32"),
         "aerial": rng.normal(0, 50, size=(n, 32, 160, 3)).astype("float32")}
    if positions:
        x["position"] = (rng.uniform(0, 1000, size=(n, 2))).astype("float32")
    return x


def tiny(variant="full", **kw):
    keras.utils.set_random_seed(0)
    return mgtl_tf.build_model(dict(TINY_CFG, variant=variant, **kw), TINY)


@pytest.mark.parametrize("variant,kw", [("backbone_only", {}), ("no_cmi", {}), ("full", {}), ("naive", {}),
                                        ("full", {"literal_block": True, "descriptor": "mean",
                                                  "utm_mask": True})])
def test_tiny_training_step(variant, kw):
    model = tiny(variant, **kw)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)
    x = _batch(positions=kw.get("utm_mask", False))
    out = model(x, training=True)
    has_gen = variant in ("full", "naive")
    assert ("ground_generated" in out) == has_gen
    for value in out.values():
        assert value.shape[0] == 4  # batch on axis 0: gatherable across replicas
    if has_gen:
        assert tuple(out["ground_generated"].shape) == (4, 2, 5, 12) == tuple(out["aerial_tokens"].shape)
    before = [np.asarray(w).copy() for w in model.trainable_weights]
    hist = model.fit(x, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    changed = [not np.array_equal(b, np.asarray(w)) for b, w in zip(before, model.trainable_weights)]
    assert all(changed), "every weight should receive a gradient"


def test_family_loss_is_triplet_plus_generative():
    model = tiny("full")
    out = model(_batch(), training=True)
    trip = float(soft_margin_triplet(out["aerial"], out["ground"], alpha=10.0))
    gen_np = 0.0
    for gen_key, tgt_key in (("ground_generated", "aerial_tokens"), ("aerial_generated", "ground_tokens")):
        g, t = np.asarray(out[gen_key], np.float64), np.asarray(out[tgt_key], np.float64)
        gen_np += sum(np.mean((g[:, l] - t[:, l]) ** 2) for l in range(g.shape[1]))
    assert float(generative_loss(out, 0.05)) == pytest.approx(0.05 * gen_np, rel=1e-5)
    assert float(model.family_loss(out)) == pytest.approx(trip + 0.05 * gen_np, rel=1e-5)
    no_gen = model.family_loss({"ground": out["ground"], "aerial": out["aerial"]})
    assert float(no_gen) == pytest.approx(trip, rel=1e-6)


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_generative_loss_gradient_reaches_other_view_only_without_stop_gradient(stop_gradient):
    model = tiny("full")
    x = _batch()
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        g2s = generative_loss(out, 0.05, stop_gradient=stop_gradient, directions=("g2s",))
    aerial_vars = model.aerial_tower.trainable_weights
    ground_vars = model.ground_tower.trainable_weights
    grads = tape.gradient(g2s, aerial_vars + ground_vars)
    aerial_grads = grads[:len(aerial_vars)]
    ground_grads = grads[len(aerial_vars):]
    aerial_norm = sum(float(tf.reduce_sum(tf.abs(g))) for g in aerial_grads if g is not None)
    if stop_gradient:
        assert aerial_norm == 0.0  # the target (aerial tokens) is a constant for the G2S term
    else:
        assert aerial_norm > 0.0
    assert sum(float(tf.reduce_sum(tf.abs(g))) for g in ground_grads if g is not None) > 0.0


def test_naive_generator_is_circular():
    gen = CrossModalGenerator(dim=4, hidden=6, kind="conv")
    x = np.random.default_rng(0).normal(size=(2, 7, 4)).astype("float32")
    y = np.asarray(gen(x))
    # circular padding: rolling the azimuth tokens rolls the output (no edge effects)
    np.testing.assert_allclose(np.asarray(gen(np.roll(x, 3, axis=1))), np.roll(y, 3, axis=1), atol=1e-5)
    mlp = CrossModalGenerator(dim=4, hidden=6, kind="mlp")
    np.testing.assert_allclose(np.asarray(mlp(x[:, :1])), np.asarray(mlp(x))[:, :1], atol=1e-6)  # per token


def test_block_formula_literal_and_full():
    rng = np.random.default_rng(1)
    tokens = rng.normal(size=(1, 5, 12)).astype("float32")
    memory = rng.normal(size=(1, 5, 12)).astype("float32")
    for literal in (True, False):
        block = GenerativeKnowledgeTransformer(12, 6, 24, literal=literal)
        out, scores = block(tokens, memory, return_attention=True)
        f_prime = np.asarray(block.attention(tokens, memory, memory)) + tokens
        tail = block.norm(f_prime) if literal else block.ffn_out(block.ffn_in(block.norm(f_prime)))
        np.testing.assert_allclose(np.asarray(out), f_prime + np.asarray(tail), atol=1e-5)
        np.testing.assert_allclose(np.asarray(scores).sum(-1), 1.0, atol=1e-5)


def test_attention_maps_per_step():
    model = tiny("full", steps=3)
    x = _batch(1)
    maps = model.attention_maps(ground=x["ground"], aerial=x["aerial"])
    assert len(maps["ground"]) == 3 and len(maps["aerial"]) == 3
    assert tuple(maps["ground"][0].shape) == (1, 6, 5, 5)


def test_bad_configs_are_clear_errors():
    from common.models.config import build_model

    # layers and models raise ValueError; the config boundary turns it into one CVGLError naming the config
    with pytest.raises(ValueError, match="variant"):
        mgtl_tf.build_model({"variant": "huge", "backbone_weights": None}, TINY)
    with pytest.raises(CVGLError, match=r"row\.yaml: the mgtl model cannot be built .*variant"):
        build_model({"_path": "row.yaml", "model": {"family": "mgtl", "variant": "huge", "backbone_weights": None},
                     "input_spec": TINY.to_config()})
    with pytest.raises(CVGLError, match="unknown model key.*stepz"):
        mgtl_tf.build_model({"stepz": 3}, TINY)
    with pytest.raises(ValueError, match="descriptor"):
        MGTL(descriptor="max")
    model = MGTL(input_spec=TINY, utm_mask=True, **{k: v for k, v in TINY_CFG.items() if k != "backbone_weights"})
    assert model.needs_positions
    with pytest.raises(CVGLError, match="position"):
        model.family_loss({"ground": np.eye(2, dtype="float32"), "aerial": np.eye(2, dtype="float32")})


JAX_SCRIPT = """
import numpy as np, keras
assert keras.backend.backend() == "jax"
import mgtl_tf
from mgtl_tf.safa import model as safa
from mgtl_tf.safa.specs import SAFA_POLAR
spec = SAFA_POLAR.replace(ground_size=(32, 160), aerial_size=(32, 160))
rng = np.random.default_rng(0)
x = {"ground": rng.normal(0, 50, (4, 32, 160, 3)).astype("float32"),
     "aerial": rng.normal(0, 50, (4, 32, 160, 3)).astype("float32"),
     "position": rng.uniform(0, 100, (4, 2)).astype("float32")}
for variant in ("full", "naive"):
    m = mgtl_tf.build_model(dict(dim=12, num_heads=6, ffn_dim=24, generator_dim=24, vgg_widths=[4, 4, 8, 8, 8],
                                 steps=2, backbone_weights=None, variant=variant, utm_mask=True), spec)
    m.compile(optimizer=keras.optimizers.Adam(1e-3))
    assert np.isfinite(m.fit(x, epochs=1, batch_size=4, verbose=0).history["loss"][0])
s = safa.build_model({"backbone_weights": None, "vgg_widths": [4, 4, 8, 8, 8]}, spec)
s.compile(optimizer="adam")
assert np.isfinite(s.fit(x, epochs=1, batch_size=4, verbose=0).history["loss"][0])
print("jax ok")
"""


@pytest.mark.skipif(__import__("importlib").util.find_spec("jax") is None, reason="jax is not installed")
def test_trains_under_the_jax_backend():
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", JAX_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "jax ok" in done.stdout, done.stderr[-2000:]
