"""A tiny CrossViewModel for the training-system tests (no BatchNorm, no dropout: deterministic).

Two dense towers over flattened images; ``call`` adds a per-sample extra output, and the loss uses the
positions (the 25 m mask), so the tests see that *every* per-sample output and the positions are gathered
across replicas. ``CVGL_TINY_NAN_AT_STEP`` is not needed here: NaN injection lives in the data hook of the
training runner.
"""

import keras
from keras import layers, ops

from common.training.losses import soft_margin_triplet, utm_far_mask
from common.models.base import CrossViewModel


@keras.saving.register_keras_serializable(package="cvgl_tests")
class TinyTwoTower(CrossViewModel):
    def __init__(self, input_spec="geodtr_raw", dim=8, **kwargs):
        super().__init__(input_spec=input_spec, **kwargs)
        self.dim = dim
        self.ground_tower = keras.Sequential(
            [layers.AveragePooling2D(4, padding="same"), layers.Flatten(), layers.Dense(16, activation="tanh"),
             layers.Dense(dim)], name="ground_tower")
        self.aerial_tower = keras.Sequential(
            [layers.AveragePooling2D(4, padding="same"), layers.Flatten(), layers.Dense(16, activation="tanh"),
             layers.Dense(dim)], name="aerial_tower")

    def embed_ground(self, ground, training=False):
        return ops.normalize(self.ground_tower(ground, training=training), axis=-1)

    def embed_aerial(self, aerial, training=False):
        return ops.normalize(self.aerial_tower(aerial, training=training), axis=-1)

    def call(self, inputs, training=None):
        g = self.embed_ground(inputs["ground"], training=training)
        a = self.embed_aerial(inputs["aerial"], training=training)
        return {"ground": g, "aerial": a, "extra": ops.sum(g * a, axis=-1)}

    def family_loss(self, outputs, positions=None):
        mask = None if positions is None else utm_far_mask(positions, 25.0)
        return soft_margin_triplet(outputs["aerial"], outputs["ground"], mask=mask) + 0.1 * ops.mean(
            ops.square(outputs["extra"]))

    def components(self):
        return {"ground tower": [self.ground_tower], "aerial tower": [self.aerial_tower]}

    def get_config(self):
        cfg = super().get_config()
        cfg.update(dim=self.dim)
        return cfg


def build_model(model_cfg, input_spec):
    return TinyTwoTower(input_spec=input_spec, **model_cfg)


# ------------------------------------------------------------------------------------------------------
# a tiny run: config, in-memory data, builder (for tests of the run loop that do not need the data layer)
# ------------------------------------------------------------------------------------------------------
def tiny_spec():
    from common.data.specs import InputSpec

    return InputSpec("tiny", (8, 16), (8, 8), False, "tanh")


def tiny_config(epochs=3, batch_size=8):
    return {
        "name": "tiny_run", "dataset": "cvusa", "input_spec": tiny_spec().to_config(),
        "model": {"family": "tiny", "dim": 8},
        "train": {"optimizer": {"name": "adamw", "learning_rate": 1e-2, "weight_decay": 0.03, "epsilon": 1e-6,
                                "global_clipnorm": 1.0},
                  "schedule": {"name": "warmup_cosine", "warmup_epochs": 1},
                  "epochs": epochs, "batch_size": batch_size, "drop_remainder": True},
    }


def build_tiny(cfg):
    from common.data.specs import get_spec

    model_cfg = dict(cfg["model"])
    model_cfg.pop("family")
    return TinyTwoTower(input_spec=get_spec(cfg["input_spec"]), **model_cfg)


def geodtr_tiny_config(epochs=3, batch_size=8):
    """A tiny real GeoDTR with every source of randomness on: dropout, counterfactual noise, the azimuth roll
    and colour shuffle (on the data of :func:`array_data` at ``size=32``), deterministic."""
    from common.data.specs import InputSpec

    spec = InputSpec("tiny_polar", (32, 64), (32, 32), True, "tanh")
    return {
        "name": "tiny_geodtr_run", "dataset": "cvusa", "input_spec": spec.to_config(),
        "model": {"family": "geodtr", "num_descriptors": 2, "num_layers": 1, "num_heads": 2, "ffn_dim": 16,
                  "dropout": 0.2, "backbone_widths": [4, 4, 8, 8], "backbone_depths": [1, 1, 1, 1],
                  "backbone_weights": "random"},
        "train": {"optimizer": {"name": "adamw", "learning_rate": 1e-3, "weight_decay": 0.03, "epsilon": 1e-6,
                                "global_clipnorm": 1.0},
                  "schedule": {"name": "warmup_cosine", "warmup_epochs": 1}, "deterministic": True,
                  "azimuth_roll": True, "colour_shuffle": True,
                  "epochs": epochs, "batch_size": batch_size, "drop_remainder": True},
    }


def array_data(n_train=48, n_val=24, seed=0, size=8):
    """TrainData over random arrays where ground k and aerial k share a signal (so the loss can fall).

    Aerial ``size x size``, ground ``size x 2 size`` (the aerial and its mirror image side by side)."""
    import numpy as np
    import tensorflow as tf

    from common.training.data import TrainData

    rng = np.random.default_rng(seed)
    n = n_train + n_val
    base = rng.normal(size=(n, size, size, 3)).astype("float32")
    ground = np.concatenate([base, base[:, :, ::-1]], axis=2) + 0.3 * rng.normal(
        size=(n, size, 2 * size, 3)).astype("float32")
    aerial = base + 0.3 * rng.normal(size=(n, size, size, 3)).astype("float32")
    tr = {"ground": ground[:n_train], "aerial": aerial[:n_train]}

    def train_dataset(batch_size, seed_, start_step=0):
        # the runner's contract: the endless stream of per-pass batches from global batch start_step on, each
        # pass a pure function of (seed, pass)
        from common.data.pipeline import pass_order

        per_pass = n_train // batch_size
        first = start_step // per_pass

        def one_pass(p):
            order = pass_order(n_train, seed_, p, shuffle=True)[:per_pass * batch_size]
            skip = tf.where(tf.equal(p, first), tf.cast(start_step % per_pass * batch_size, tf.int64),
                            tf.constant(0, tf.int64))
            return tf.data.Dataset.from_tensor_slices(tf.gather(order, tf.range(skip, per_pass * batch_size)))

        passes = tf.data.Dataset.range(first, 2 ** 62).flat_map(one_pass)
        return passes.map(lambda i: {k: tf.gather(v, i) for k, v in tr.items()}).batch(batch_size)

    def embed_val(model):
        g = np.asarray(model.embed_ground(ground[n_train:]))
        a = np.asarray(model.embed_aerial(aerial[n_train:]))
        return g, a

    example = {"ground": ground[:1], "aerial": aerial[:1]}
    return TrainData(train_dataset, n_train, example, embed_val, f"random arrays ({n_val} pairs)", n_val)
