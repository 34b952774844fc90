"""Run in a fresh process by tests/test_train_distribute.py: one device vs MirroredStrategy on 2 logical CPUs.

Prints one JSON line: the max abs differences of loss, gradients and updated weights.
"""

import json

import _two_cpu_replicas  # noqa: F401  (first: two logical CPUs, TensorFlow backend, project on the path)
import numpy as np
import tensorflow as tf  # noqa: F401

import keras  # noqa: E402

from common.data.specs import InputSpec  # noqa: E402
from common.training.distribute import make_strategy  # noqa: E402
from common.training.optim import build_optimizer  # noqa: E402
from tests.train_tiny import TinyTwoTower  # noqa: E402

SPEC = InputSpec("tiny", (8, 16), (8, 8), False, "tanh")
B = 8
rng = np.random.default_rng(0)
data = {
    "ground": rng.normal(size=(B, 8, 16, 3)).astype("float32"),
    "aerial": rng.normal(size=(B, 8, 8, 3)).astype("float32"),
    # pairs 0 and 1 are 10 m apart, so the 25 m mask matters and needs the gathered positions
    "position": np.concatenate([[[0.0, 0.0], [10.0, 0.0]], rng.uniform(100, 1000, size=(B - 2, 2))]).astype("float32"),
}


def make(strategy, opt_cfg):
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = TinyTwoTower(input_spec=SPEC)
        model({k: v[:1] for k, v in data.items()})
        model.compile(optimizer=build_optimizer(opt_cfg, num_replicas=strategy.num_replicas_in_sync))
    return model


def one_step(strategy, opt_cfg, init):
    model = make(strategy, opt_cfg)
    model.set_weights(init)
    ds = tf.data.Dataset.from_tensor_slices(data).batch(B)
    hist = model.fit(ds, epochs=1, verbose=0, shuffle=False)
    return float(hist.history["loss"][0]), [np.asarray(w) for w in model.get_weights()]


one = tf.distribute.OneDeviceStrategy("/cpu:0")
mirrored = make_strategy("mirrored")
assert mirrored.num_replicas_in_sync == 2, mirrored.num_replicas_in_sync

init = make(one, {"name": "sgd", "learning_rate": 1.0}).get_weights()

# reference gradient: the loss of the full batch on one device, by hand
ref = make(one, {"name": "sgd", "learning_rate": 1.0})
ref.set_weights(init)
with tf.GradientTape() as tape:
    y = ref(data, training=True)
    ref_loss = ref.compute_loss(x=data, y_pred=y)
ref_grads = [np.asarray(g) for g in tape.gradient(ref_loss, ref.trainable_weights)]
order = [id(v) for v in ref.weights]
tw = [order.index(id(v)) for v in ref.trainable_weights]

out = {"replicas": mirrored.num_replicas_in_sync, "ref_loss": float(ref_loss)}
sgd = {"name": "sgd", "learning_rate": 1.0}
for name, strategy in (("one", one), ("mirrored", mirrored)):
    loss, w = one_step(strategy, sgd, init)
    grads = [init[i] - w[i] for i in tw]  # SGD with lr 1: the update is the gradient
    out[f"{name}_loss_diff"] = abs(loss - float(ref_loss))
    out[f"{name}_grad_diff"] = max(float(np.max(np.abs(g - r))) for g, r in zip(grads, ref_grads))
    out[f"{name}_grad_scale"] = max(float(np.max(np.abs(r))) for r in ref_grads)

# AdamW with an active global-norm clip (the GeoDTR recipe): the updated weights must agree
adamw = {"name": "adamw", "learning_rate": 1e-2, "weight_decay": 0.03, "epsilon": 1e-6, "global_clipnorm": 1e-3}
_, w_one = one_step(one, adamw, init)
_, w_mir = one_step(mirrored, adamw, init)
out["adamw_weight_diff"] = max(float(np.max(np.abs(a - b))) for a, b in zip(w_one, w_mir))
out["adamw_moved"] = max(float(np.max(np.abs(a - b))) for a, b in zip(w_one, init))
print(json.dumps(out))
