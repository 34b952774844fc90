"""Three GeoDTR training steps at full paper size against the official PyTorch code
(tests/fixtures/geodtr/train_step.npz, README §6).

The official ``GeoDTR`` (polar, K=8, 2 layers, 4 heads, FFN 2048, dropout 0, no counterfactual branch) was
filled with the NumPy weight recipe below and trained for 3 steps as its ``train.py`` loop does (soft-margin
triplet α=10, ``clip_grad_norm_(1.0)``, ``torch.optim.AdamW(1e-4, weight_decay=0.03, eps=1e-6)``, B=2).
Here our GeoDTR is built from the project's paper config, gets the same weights through
:mod:`geodtr_tf.convert`, and is trained with the project's own path (``build_optimizer`` from the config's
``train.optimizer``, ``compile`` + ``train_on_batch``; eagerly, which runs the same ``train_step`` without
the ~30 s graph trace) on the same batches. Compared after every step:

* the loss (computed before that step's update, as the official ``loss.item()``);
* the moving mean / variance of all 72 BatchNorms of both ResNet-34 towers;
* per parameter tensor (280), the update Δ = p_t − p_0 through Σ Δ², Σ Δ and Σ Δ·r (r a fixed random
  tensor), as the largest, the median and (Σ Δ²) the all-tensor total of the relative gaps;
* after step 1, every entry of every 1-D parameter (BN γ/β, biases, LayerNorms: 48,960 numbers).

**Step 1 is compared at float32 noise; steps 2-3 only at the level float32 allows.** With B=2 the
gradients of the early BatchNorm layers carry float32 noise of up to ~1% of the clipped gradient, and
AdamW's first steps are nearly sign updates (± lr for every |g| ≫ eps), so a handful of entries near zero
gradient move by +lr in one float32 run and −lr in another. Those differences change the next steps'
gradients: the official code's own float32 run leaves its float64 run by 2.6e-4 (loss, step 2) and 1.4e-2
(step 3), and two runs of ours that differ only in thread count or graph/eager execution differ by as much.
The tolerances below are ~5-10x the largest gap measured over four such runs of ours (README §6).

The old Keras behaviour misses the step-1 checks by orders of magnitude, shown from this run:

* plain ``keras.layers.BatchNormalization`` folds the biased batch variance into the moving variance; the
  moving variance it would have after step 1 is derived from the fixture's own statistics (n, momentum) and
  misses the official one by 9e-4 relative (tolerance 1e-5);
* ``keras.optimizers.AdamW`` (epsilon before the bias correction) is replayed for step 1 from our
  optimizer's step-1 moments (m = 0.1 g, v = 0.001 g², g the clipped gradient): its total Σ Δ² misses the
  official one by 71% (tolerance 5e-5). Run for all 3 steps it misses the step-2 loss by 9% and the total
  Σ Δ² by 63-71% at every step.
"""

import math
import os
import time
import zlib

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "geodtr", "train_step.npz")
SEED = 2023
H, W = 122, 671

# relative gaps unless noted; measured maxima over four runs of ours are in README §6
STEP1_TOL = {
    "loss": 2e-5,                # measured 3.4e-6
    "running_mean": 2e-5,        # |ours - official| / max |official| per BatchNorm; measured 2.2e-6
    "running_var": 1e-5,         # measured 1.4e-6 (plain Keras BN: 9e-4)
    "delta_sq_total": 5e-5,      # Σ over tensors of Σ Δ²; measured 4.3e-6 (Keras AdamW: 0.71)
    "delta_sq_median": 1e-3,     # measured 1.0e-4 (Keras AdamW: 0.59)
    "delta_sq_max": 5e-2,        # a 64-entry BN tensor with an entry near eps; measured 1.4e-2
    "delta_sum_median": 3e-2,    # |Σ Δ ours − official| / sqrt(Σ Δ² official); measured 8.7e-3
    "delta_proj_median": 3e-2,   # likewise for Σ Δ·r; measured 5.2e-3
    "delta_sum_max": 0.75,       # one flipped entry (±lr) of a 64-entry tensor is 0.25; measured 0.25
    "delta_proj_max": 0.75,      # measured 0.25
}
LATER_TOL = {  # steps 2 and 3: measured maxima 3.4e-2, 3.4e-3, 1.2e-3, 2.0e-3, 9.2e-3, 8.6e-2, 9.3e-2, 9.4e-2
    "loss": 0.1, "running_mean": 2e-2, "running_var": 1e-2, "delta_sq_total": 1e-2, "delta_sq_median": 5e-2,
    "delta_sq_max": 0.3, "delta_sum_median": 0.3, "delta_proj_median": 0.3,
}


# --- the NumPy recipe of README §6 (written here again, independently of the generator) -------------------

def key_rng(key, stream=0):
    return np.random.default_rng([SEED, zlib.crc32(key.encode("utf-8")), stream])


def recipe(key, shape):
    """Initial value of official state-dict entry ``key`` (float32)."""
    shape = tuple(shape)
    z = key_rng(key).standard_normal(shape)
    last = key.rsplit(".", 1)[-1]
    if last == "running_mean":
        a = 0.1 * z
    elif last == "running_var":
        a = np.exp(0.2 * z)
    elif len(shape) == 4:  # conv, He-normal
        a = z * math.sqrt(2.0 / (shape[1] * shape[2] * shape[3]))
    elif last == "w1":
        a = 0.01 * z
    elif last == "w2":
        a = 0.05 * z
    elif key.endswith("pos_encoder.linear"):
        a = 0.02 * z
    elif len(shape) == 2:  # nn.Linear / in_proj (out, in)
        a = z / math.sqrt(shape[1])
    elif last == "weight" and len(shape) == 1:  # BN / LayerNorm gamma
        a = 1.0 + 0.1 * z
    else:  # biases, b1, b2, IAPE bias
        a = 0.1 * z
    return a.astype(np.float32)


def batch(step):
    """Step ``step``'s images, NCHW as generated, returned NHWC for Keras (values in [-1, 1))."""
    rng = np.random.default_rng([SEED, 100 + step])
    sat = rng.uniform(-1.0, 1.0, (2, 3, H, W)).astype(np.float32)
    grd = rng.uniform(-1.0, 1.0, (2, 3, H, W)).astype(np.float32)
    return {"ground": grd.transpose(0, 2, 3, 1).copy(), "aerial": sat.transpose(0, 2, 3, 1).copy()}


def _rel(a, b, floor=1e-30):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), floor)))


def _bn_count(prefix):
    """n = B*H*W reduced by the BatchNorm under official ``prefix`` (122x671 input, B=2)."""
    rest = prefix.split(".layers.", 1)[1]
    index = int(rest.split(".")[0])
    hw = {1: (61, 336), 3: (61, 336), 4: (31, 168), 5: (16, 84), 6: (8, 42)}[index]
    return 2 * hw[0] * hw[1]


def _step_gaps(now, p0, proj, z, step, keys, bn_keys):
    """The gaps of one step (see the module docstring) between our state ``now`` and the fixture."""
    g = {}
    g["running_mean"] = max(float(np.max(np.abs(now[f"{k}.running_mean"] - z[f"running_mean/{k}"][step])))
                            / float(np.max(np.abs(z[f"running_mean/{k}"][step]))) for k in bn_keys)
    g["running_var"] = max(_rel(now[f"{k}.running_var"], z[f"running_var/{k}"][step]) for k in bn_keys)
    sq, sm, pr = [], [], []
    for k in keys:
        d = now[k].astype(np.float64) - p0[k]
        sq.append(np.sum(d * d))
        sm.append(np.sum(d))
        pr.append(np.sum(d * proj[k]))
    want_sq = z["delta_sq"][step]
    rel_sq = np.abs(np.array(sq) - want_sq) / want_sq
    g["delta_sq_total"] = abs(sum(sq) - float(np.sum(want_sq))) / float(np.sum(want_sq))
    g["delta_sq_median"] = float(np.median(rel_sq))
    g["delta_sq_max"] = float(np.max(rel_sq))
    for name, got in (("delta_sum", sm), ("delta_proj", pr)):
        rel = np.abs(np.array(got) - z[name][step]) / np.sqrt(want_sq)
        g[f"{name}_median"] = float(np.median(rel))
        g[f"{name}_max"] = float(np.max(rel))
    return g


@pytest.mark.slow
def test_three_training_steps_match_the_official_code():
    from common.models.config import build_model, load_config
    from common.training.optim import TorchAdamW, build_optimizer
    from common.backbones.torch_weights import assign_state_dict, export_state_dict, torch_shape
    from geodtr_tf.convert import geodtr_weights

    t0 = time.time()
    z = np.load(FIXTURE, allow_pickle=False)
    keys = [str(k) for k in z["keys"]]
    bn_keys = [str(k) for k in z["bn_keys"]]
    steps = int(z["config/steps"])
    lr = float(z["config/lr"])

    cfg = load_config("geodtr_cvusa_polar_ls")
    cfg["model"].update(dropout=0.0, counterfactual=False, backbone_weights="random")
    opt_cfg = cfg["train"]["optimizer"]
    assert opt_cfg["name"] == "adamw_torch"
    assert (float(opt_cfg["learning_rate"]), float(opt_cfg["weight_decay"]), float(opt_cfg["epsilon"]),
            float(opt_cfg["global_clipnorm"])) == (lr, z["config/weight_decay"], z["config/epsilon"],
                                                   z["config/max_norm"])
    assert float(cfg["model"]["alpha"]) == z["config/alpha"]
    model = build_model(cfg)
    assert type(model.backbone_ground.bn1).__name__ == "TorchBatchNormalization"

    mapping, optional = geodtr_weights(model)
    sd = {k: recipe(k, torch_shape(target, kind)) for k, (target, kind) in mapping.items()}
    assert set(keys) <= set(mapping) and {f"{k}.running_var" for k in bn_keys} <= set(mapping)
    # the regenerated weights are the generator's (checksums of the initial values)
    np.testing.assert_allclose([np.sum(sd[k], dtype=np.float64) for k in keys], z["init_sum"], rtol=1e-12,
                               atol=1e-9)
    assign_state_dict(mapping, sd, optional, source="recipe")
    p0 = {k: sd[k].astype(np.float64) for k in keys}
    proj = {k: key_rng(k, 1).standard_normal(sd[k].shape) for k in keys}
    del sd

    optimizer = build_optimizer(opt_cfg)
    assert type(optimizer) is TorchAdamW
    model.compile(optimizer=optimizer, jit_compile=False, run_eagerly=True)
    assert np.all(z["grad_norm"] > 10 * z["config/max_norm"])  # the clip is active in every official step

    gaps, keras_adamw_gap, step1_1d = [], None, None
    for step in range(steps):
        loss = float(model.train_on_batch(batch(step)))
        now = export_state_dict(mapping)
        g = _step_gaps(now, p0, proj, z, step, keys, bn_keys)
        g["loss"] = _rel(loss, z["loss"][step])
        gaps.append(g)
        if step == 0:
            keras_adamw_gap = _keras_adamw_step1_gap(optimizer, mapping, keys, p0, z)
            step1_1d = {}
            for part in ("backbone", "ge_"):
                diff = np.concatenate([np.abs(now[k] - z[f"step1/{k}"]) for k in keys
                                       if p0[k].ndim == 1 and k.startswith(part)])
                step1_1d[part] = (float(np.max(diff)), float(np.quantile(diff, 0.99)),
                                  float(np.mean(diff > 1e-5)))
        del now
    elapsed = time.time() - t0

    report = "; ".join(f"{name} " + " ".join(f"{g.get(name, float('nan')):.2e}" for g in gaps)
                       for name in STEP1_TOL)
    print(f"\nours vs official, steps 1..{steps}: {report}; step-1 1-D entries (max, 99%, share > 1e-5): "
          f"{step1_1d}; Keras AdamW step-1 total Σ Δ² gap {keras_adamw_gap:.2e}; {elapsed:.0f}s")
    for name, tol in STEP1_TOL.items():
        assert gaps[0][name] <= tol, ("step 1", name, gaps[0][name], tol, report)
    for step in range(1, steps):
        for name, tol in LATER_TOL.items():
            assert gaps[step][name] <= tol, (f"step {step + 1}", name, gaps[step][name], tol, report)
    # 1-D parameters after step 1. GLE biases / LayerNorms (14,912 entries): float32 noise, measured max
    # 9.2e-7. BN gamma / beta (34,048): their B=2 gradients are float32 noise for a few entries, whose update
    # (at most ±lr) then differs; measured 99th percentile 4.3e-6, 0.47% above 1e-5, max 1.9e-4 < 2 lr
    # (the official float32 run is off its float64 run by up to 1.8e-4 there too)
    assert step1_1d["ge_"][0] <= 5e-6, step1_1d
    bn_max, bn_q99, bn_share = step1_1d["backbone"]
    assert bn_max <= 2.1 * lr and bn_q99 <= 5e-5 and bn_share <= 2e-2, step1_1d

    # plain Keras BN: moving_var_1 = m var_0 + (1 - m) biased; the batch's unbiased variance is read back from
    # the official statistics, so this is the gap keras.layers.BatchNormalization would show at step 1
    plain_gap = 0.0
    for k in bn_keys:
        rv = z[f"running_var/{k}"][0].astype(np.float64)
        prev = recipe(f"{k}.running_var", rv.shape).astype(np.float64)
        n = _bn_count(k)
        plain = 0.9 * prev + (rv - 0.9 * prev) * (n - 1) / n
        plain_gap = max(plain_gap, _rel(plain, rv))
    assert plain_gap > 30 * STEP1_TOL["running_var"], plain_gap
    assert keras_adamw_gap > 1000 * STEP1_TOL["delta_sq_total"], keras_adamw_gap


def _keras_adamw_step1_gap(optimizer, mapping, keys, p0, z):
    """Total Σ Δ² of step 1 as keras.optimizers.AdamW would have made it, vs the official one (relative).

    Keras AdamW, step 1: p1 = p0 (1 - lr wd) - lr sqrt(1 - b2) / (1 - b1) * m / (sqrt(v) + eps), with the
    moments m = (1 - b1) g and v = (1 - b2) g² that our optimizer holds after step 1 (Keras' clip differs
    from torch's only by the 1e-6 in the denominator, a 1e-8 relative change at gradient norms of ~100)."""
    from common.backbones.torch_weights import _variables, export_state_dict

    lr, wd, eps = float(z["config/lr"]), float(z["config/weight_decay"]), float(z["config/epsilon"])
    slots = {}
    for k in keys:
        target, kind = mapping[k]
        vs = _variables(target)
        for name, table in (("m", optimizer._momentums), ("v", optimizer._velocities)):
            s = tuple(table[optimizer._get_variable_index(v)] for v in vs)
            slots[f"{name}/{k}"] = (s if len(s) > 1 else s[0], kind)
    state = export_state_dict(slots)
    total = 0.0
    for k in keys:
        m, v = state[f"m/{k}"].astype(np.float64), state[f"v/{k}"].astype(np.float64)
        delta = -p0[k] * lr * wd - lr * math.sqrt(1 - 0.999) / (1 - 0.9) * m / (np.sqrt(v) + eps)
        total += float(np.sum(delta * delta))
    want = float(np.sum(z["delta_sq"][0]))
    return abs(total - want) / want
