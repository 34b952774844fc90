"""``adamw_torch`` (common.training.optim.TorchAdamW) against a NumPy transcription of torch.optim.AdamW and
torch.nn.utils.clip_grad_norm_, in float64:

    clip:   total = sqrt(sum_i ||g_i||^2);  g <- g * min(1, max_norm / (total + 1e-6))
    step t: p <- p (1 - lr wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
            p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

Tolerances are float32 noise (params ~ N(0, 1), updates ~ lr = 1e-2): 5e-7 relative to max(|p|, 1) on the
parameters (a few float32 roundings of p per step), 1e-6 relative on the moment slots. Keras' own AdamW and
clip_by_global_norm are checked to miss the same oracle by orders of magnitude more, so the tests can tell
the two apart.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from common.errors import CVGLError
from common.training.optim import TorchAdamW, build_optimizer, set_precision, torch_clip_grad_norm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = [(3, 4), (5,), (2, 2, 3), (4,)]  # the last variable always gets a zero gradient: weight decay alone


def torch_adamw_oracle(params, grad_steps, lr, weight_decay, eps, max_norm=None, beta_1=0.9, beta_2=0.999):
    """params: arrays; grad_steps: one list of gradient arrays per step. Returns (params, m, v), float64."""
    p = [np.asarray(x, np.float64).copy() for x in params]
    m = [np.zeros_like(x) for x in p]
    v = [np.zeros_like(x) for x in p]
    for t, grads in enumerate(grad_steps, start=1):
        g = [np.asarray(x, np.float64) for x in grads]
        if max_norm is not None:
            total = np.sqrt(sum(np.sum(x * x) for x in g))
            g = [x * min(1.0, max_norm / (total + 1e-6)) for x in g]
        for i in range(len(p)):
            p[i] *= 1.0 - lr * weight_decay
            m[i] = beta_1 * m[i] + (1 - beta_1) * g[i]
            v[i] = beta_2 * v[i] + (1 - beta_2) * g[i] ** 2
            denom = np.sqrt(v[i]) / np.sqrt(1 - beta_2 ** t) + eps
            p[i] -= lr / (1 - beta_1 ** t) * m[i] / denom
    return p, m, v


def _problem(seed, steps=4):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    grad_steps = []
    for t in range(steps):
        grads = []
        for i, s in enumerate(SHAPES):
            if i == len(SHAPES) - 1:
                grads.append(np.zeros(s, np.float32))
                continue
            # magnitudes from 1e-9 to 1: some far below eps (where the epsilon placement matters), some above
            scale = 10.0 ** rng.uniform(-9, 0, s)
            grads.append((rng.standard_normal(s) * scale * (1 + t)).astype(np.float32))
        grad_steps.append(grads)
    return params, grad_steps


def _run(optimizer, params, grad_steps):
    variables = [keras.Variable(x, name=f"p{i}") for i, x in enumerate(params)]
    for grads in grad_steps:
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
    return [np.asarray(v.numpy(), np.float64) for v in variables]


def _max_gap(a, b):
    """max |a - b| / max(|b|, 1): float32 rounding of a parameter is relative to its size."""
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - y) / np.maximum(np.abs(y), 1.0)))
               for x, y in zip(a, b))


@pytest.mark.parametrize("max_norm", [None, 0.05, 1e3], ids=["no-clip", "clip-active", "clip-inactive"])
def test_several_steps_match_the_torch_oracle(max_norm):
    lr, wd, eps = 1e-2, 0.03, 1e-6
    params, grad_steps = _problem(0)
    opt = build_optimizer({"name": "adamw_torch", "learning_rate": lr, "weight_decay": wd, "epsilon": eps,
                           **({} if max_norm is None else {"global_clipnorm": max_norm})})
    got = _run(opt, params, grad_steps)
    want, want_m, want_v = torch_adamw_oracle(params, grad_steps, lr, wd, eps, max_norm)
    assert _max_gap(got, want) < 5e-7, _max_gap(got, want)
    assert int(opt.iterations.numpy()) == len(grad_steps)
    for i, var_m, var_v in zip(range(len(SHAPES)), opt._momentums, opt._velocities):
        # m sums gradients of both signs: its rounding is relative to the variable's largest entry
        np.testing.assert_allclose(var_m.numpy(), want_m[i], rtol=1e-6, atol=1e-6 * np.max(np.abs(want_m[i])))
        np.testing.assert_allclose(var_v.numpy(), want_v[i], rtol=1e-6, atol=0)
    # the zero-gradient variable decays by (1 - lr wd) per step and nothing else
    np.testing.assert_allclose(got[-1], params[-1] * (1 - lr * wd) ** len(grad_steps), rtol=1e-6)
    # Keras' AdamW (epsilon before the bias correction, its own clip) misses the same oracle by far more
    keras_opt = keras.optimizers.AdamW(learning_rate=lr, weight_decay=wd, epsilon=eps,
                                       global_clipnorm=max_norm)
    assert _max_gap(_run(keras_opt, params, grad_steps), want) > 1e-4


def test_clip_is_torchs_formula_including_the_1e6():
    rng = np.random.default_rng(1)
    base = [rng.standard_normal(s).astype(np.float32) for s in SHAPES[:3]]
    total = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in base))
    for max_norm, want_coef in ((0.5 * total, 0.5 * total / (total + 1e-6)),  # active
                                (total, total / (total + 1e-6)),            # at the norm: torch still scales
                                (2 * total, 1.0)):                           # inactive: unchanged
        got = torch_clip_grad_norm([keras.ops.convert_to_tensor(g) for g in base] + [None], max_norm)
        assert got[-1] is None
        for g, x in zip(got[:-1], base):
            np.testing.assert_allclose(np.asarray(g), x * want_coef, rtol=2e-7, atol=0)
    # a norm of 1e-3 at max_norm 1e-3: torch scales by 1/1.001, Keras' clip_by_global_norm by 1
    small = [g * np.float32(1e-3 / total) for g in base]
    from keras.src.optimizers.base_optimizer import clip_by_global_norm

    ours = np.asarray(torch_clip_grad_norm(small, 1e-3)[0])
    theirs = np.asarray(clip_by_global_norm([keras.ops.convert_to_tensor(g) for g in small], 1e-3)[0])
    np.testing.assert_allclose(ours, small[0] / 1.001, rtol=1e-5)
    assert np.max(np.abs(theirs - ours) / np.abs(small[0])) > 5e-4


def test_compile_fit_matches_the_oracle_and_resumes(tmp_path):
    """A linear model trained by ``fit`` (full batch, MSE): the gradient is known in closed form, so the
    weights after 3 steps have a NumPy oracle; then save_weights / load_weights resume bit for bit."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    y = rng.standard_normal((8, 2)).astype(np.float32)
    w0 = rng.standard_normal((3, 2)).astype(np.float32)
    cfg = {"name": "adamw_torch", "learning_rate": 1e-2, "weight_decay": 0.03, "epsilon": 1e-6,
           "global_clipnorm": 0.1}

    def make():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, use_bias=False, name="d")])
        model.get_layer("d").kernel.assign(w0)
        model.compile(optimizer=build_optimizer(cfg), loss="mse")
        return model

    def fit(model, steps):
        for _ in range(steps):
            model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)

    # oracle: d/dW mean((xW - y)^2) = 2 x^T (xW - y) / (N * 2)
    w, m, v = np.asarray(w0, np.float64), None, None
    p = [w]
    grads = []
    for _ in range(3):
        g = 2 * x.T.astype(np.float64) @ (x.astype(np.float64) @ p[0] - y) / y.size
        grads.append([g])
        p, m, v = torch_adamw_oracle([w0], grads, 1e-2, 0.03, 1e-6, 0.1)
    full = make()
    fit(full, 3)
    assert _max_gap([full.get_layer("d").kernel.numpy()], p) < 5e-7

    half = make()
    fit(half, 2)
    half.save_weights(tmp_path / "run.weights.h5")
    resumed = make()
    resumed.optimizer.build(resumed.trainable_variables)
    resumed.load_weights(tmp_path / "run.weights.h5")
    assert int(resumed.optimizer.iterations.numpy()) == 2
    fit(resumed, 1)
    np.testing.assert_array_equal(resumed.get_layer("d").kernel.numpy(), full.get_layer("d").kernel.numpy())

    # .keras file: the optimizer comes back as TorchAdamW with its config and its slots
    full.save(tmp_path / "run.keras")
    loaded = keras.saving.load_model(tmp_path / "run.keras")
    assert type(loaded.optimizer) is TorchAdamW
    assert loaded.optimizer.get_config() == full.optimizer.get_config()
    assert int(loaded.optimizer.iterations.numpy()) == 3
    for a, b in zip(loaded.optimizer.variables, full.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_loss_scale_optimizer_unscales_before_the_torch_step():
    """precision float16: LossScaleOptimizer(TorchAdamW); grads given scaled by the loss scale land on the
    oracle of the unscaled grads; a fit under mixed_float16 runs and keeps float32 variables."""
    lr, wd, eps = 1e-2, 0.03, 1e-6
    params, grad_steps = _problem(3, steps=3)
    opt = build_optimizer({"name": "adamw_torch", "learning_rate": lr, "weight_decay": wd, "epsilon": eps,
                           "global_clipnorm": 0.05}, precision="float16")
    assert isinstance(opt, keras.optimizers.LossScaleOptimizer) and type(opt.inner_optimizer) is TorchAdamW
    variables = [keras.Variable(x) for x in params]
    opt.build(variables)
    for grads in grad_steps:
        scale = float(opt.dynamic_scale.numpy())
        opt.apply([keras.ops.convert_to_tensor(g * np.float32(scale)) for g in grads], variables)
    want = torch_adamw_oracle(params, grad_steps, lr, wd, eps, 0.05)[0]
    assert _max_gap([v.numpy() for v in variables], want) < 5e-7
    try:
        set_precision("float16")
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(2)])
        model.compile(optimizer=build_optimizer({"name": "adamw_torch", "learning_rate": 1e-2,
                                                 "global_clipnorm": 1.0}, precision="float16"), loss="mse")
        before = [w.copy() for w in model.get_weights()]
        rng = np.random.default_rng(4)
        # 8 steps: the first ones may overflow at the initial loss scale 2^15 and be skipped (scale halved)
        model.fit(rng.standard_normal((16, 3)), rng.standard_normal((16, 2)), batch_size=2, epochs=1,
                  verbose=0)
        assert int(model.optimizer.inner_optimizer.iterations.numpy()) >= 1
        after = model.get_weights()
        assert all(w.dtype == np.float32 and np.all(np.isfinite(w)) for w in after)
        assert max(float(np.max(np.abs(a - b))) for a, b in zip(after, before)) > 1e-3
    finally:
        set_precision("off")


def test_factory_config_and_serialisation():
    opt = build_optimizer({"name": "adamw_torch", "learning_rate": 1e-4, "weight_decay": 0.03,
                           "epsilon": 1e-6, "global_clipnorm": 1.0})
    assert type(opt) is TorchAdamW
    got = (opt.weight_decay, opt.epsilon, opt.global_clipnorm, opt.beta_1, opt.beta_2)
    assert got == (0.03, 1e-6, 1.0, 0.9, 0.999)
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(clone) is TorchAdamW and clone.get_config() == opt.get_config()
    assert type(build_optimizer({"name": "adamw", "learning_rate": 1e-4})) is keras.optimizers.AdamW
    with pytest.raises(CVGLError, match="clipnorm"):
        build_optimizer({"name": "adamw_torch", "learning_rate": 1e-4, "clipnorm": 1.0})
    with pytest.raises(CVGLError, match="global_clipnorm"):
        TorchAdamW(clipvalue=1.0)


@pytest.mark.slow
def test_mirrored_two_replicas_match_one_device():
    """adamw_torch with an active clip: MirroredStrategy on 2 logical CPUs == one device (fresh process)."""
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "_optim_torch_distribute_worker.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2 and out["clip_active"], out
    assert out["moved"] > 1e-4, out
    assert out["weight_diff"] < 1e-6, out
