"""Run in a fresh process by tests/test_optim_torch.py: ``adamw_torch`` on one device vs MirroredStrategy on
2 logical CPUs, two ``fit`` steps on the same global batch of 8 with an active torch-style global-norm clip.

Prints one JSON line: whether the clip was active, how far the weights moved, the max abs weight difference.
"""

import json

import _two_cpu_replicas  # noqa: F401  (first: two logical CPUs, TensorFlow backend, project on the path)
import numpy as np
import tensorflow as tf  # noqa: F401

import keras  # noqa: E402

from common.data.specs import InputSpec  # noqa: E402
from common.training.distribute import make_strategy  # noqa: E402
from common.training.optim import TorchAdamW, build_optimizer  # noqa: E402
from tests.train_tiny import TinyTwoTower  # noqa: E402

SPEC = InputSpec("tiny", (8, 16), (8, 8), False, "tanh")
B = 8
MAX_NORM = 1e-3
OPT = {"name": "adamw_torch", "learning_rate": 1e-2, "weight_decay": 0.03, "epsilon": 1e-6,
       "global_clipnorm": MAX_NORM}
rng = np.random.default_rng(0)
data = {
    "ground": rng.normal(size=(B, 8, 16, 3)).astype("float32"),
    "aerial": rng.normal(size=(B, 8, 8, 3)).astype("float32"),
    "position": np.concatenate([[[0.0, 0.0], [10.0, 0.0]],
                                rng.uniform(100, 1000, size=(B - 2, 2))]).astype("float32"),
}


def make(strategy):
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = TinyTwoTower(input_spec=SPEC)
        model({k: v[:1] for k, v in data.items()})
        model.compile(optimizer=build_optimizer(OPT, num_replicas=strategy.num_replicas_in_sync))
    return model


def train(strategy, init):
    model = make(strategy)
    assert isinstance(model.optimizer, TorchAdamW)
    model.set_weights(init)
    ds = tf.data.Dataset.from_tensor_slices(data).batch(B)
    model.fit(ds, epochs=2, verbose=0, shuffle=False)
    return [np.asarray(w) for w in model.get_weights()]


one = tf.distribute.OneDeviceStrategy("/cpu:0")
mirrored = make_strategy("mirrored")
assert mirrored.num_replicas_in_sync == 2, mirrored.num_replicas_in_sync
init = make(one).get_weights()

ref = make(one)
ref.set_weights(init)
with tf.GradientTape() as tape:
    ref_loss = ref.compute_loss(x=data, y_pred=ref(data, training=True))
grad_norm = float(tf.linalg.global_norm(tape.gradient(ref_loss, ref.trainable_weights)))

w_one = train(one, init)
w_mir = train(mirrored, init)
print(json.dumps({
    "replicas": mirrored.num_replicas_in_sync,
    "clip_active": grad_norm > 10 * MAX_NORM,
    "grad_norm": grad_norm,
    "moved": max(float(np.max(np.abs(a - b))) for a, b in zip(w_one, init)),
    "weight_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(w_one, w_mir)),
}))
