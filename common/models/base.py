"""The two-tower contract every model family implements (GeoDTR, MGTL, SAFA).

Inputs of ``call`` / ``fit``: a dict ``{"ground": (B, Hg, Wg, 3), "aerial": (B, Ha, Wa, 3)}`` of float32
images already normalised per the model's :class:`~common.data.specs.InputSpec`, optionally with
``"position": (B, 2)`` metres (used by losses that mask near pairs, never by the towers). Targets: none.

``call`` returns a dict with at least ``"ground"`` and ``"aerial"``: (B, d) unit-norm descriptors. A family
may add per-sample training outputs (GeoDTR's counterfactual descriptors, MGTL's generated tokens); every
value in the dict has the batch on axis 0, so the training system can gather it across replicas and compute
the loss on the whole global batch.

``embed_ground`` / ``embed_aerial`` run one tower alone (retrieval, export). ``family_loss(outputs,
positions)`` is the family's total loss on one (global) batch; :meth:`compute_loss` wires it into
``fit``. ``components()`` maps paper component names to the layers holding their weights, for the
parameter report.
"""

from __future__ import annotations

import keras
from keras import ops

from common.data.specs import get_spec


def _collective(strategy) -> bool:
    """Whether ``strategy`` is a MultiWorkerMirroredStrategy (its extended class, whatever the alias)."""
    return type(getattr(strategy, "extended", None)).__name__ == "CollectiveAllReduceExtended"


class CrossViewModel(keras.Model):
    """Base class: subclasses build towers and implement embed_ground / embed_aerial / family_loss."""

    def __init__(self, input_spec, **kwargs):
        super().__init__(**kwargs)
        self.input_spec_ = get_spec(input_spec)

    # --- towers -------------------------------------------------------------------------------------
    def embed_ground(self, ground, training=False):
        raise NotImplementedError

    def embed_aerial(self, aerial, training=False):
        raise NotImplementedError

    def call(self, inputs, training=None):
        return {
            "ground": self.embed_ground(inputs["ground"], training=training),
            "aerial": self.embed_aerial(inputs["aerial"], training=training),
        }

    # --- loss ----------------------------------------------------------------------------------------
    def family_loss(self, outputs, positions=None):
        raise NotImplementedError

    def gather_outputs(self, outputs):
        """Gather per-sample outputs (batch on axis 0) across replicas, so the loss sees the global batch.

        Identity on one device and off the TensorFlow backend; under a ``tf.distribute`` strategy with
        several replicas an all-gather in the replica context (:mod:`common.models.replicas`).
        """
        from common.models.replicas import gather_across_replicas

        return gather_across_replicas(outputs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The family loss on the whole global batch, in float32.

        Under R > 1 replicas every replica computes the loss of the gathered global batch; the value is
        divided by R (Keras' per-replica convention: gradients are summed over replicas, the logged loss is
        multiplied back), which makes the summed gradients equal to the one-device gradients.
        """
        from common.models.replicas import loss_scale_for_replicas

        positions = x.get("position") if isinstance(x, dict) else None
        outputs = dict(y_pred)
        if positions is not None:
            outputs["__position"] = positions
        outputs = self.gather_outputs(outputs)
        positions = outputs.pop("__position", None)
        loss = ops.cast(self.family_loss(outputs, positions), "float32")
        extra = self.losses
        if extra:
            loss = loss + ops.cast(ops.sum([ops.cast(v, "float32") for v in extra]), "float32")
        scale = loss_scale_for_replicas()
        if scale != 1.0:
            loss = loss * scale
        return loss

    # --- reporting -----------------------------------------------------------------------------------
    def components(self) -> dict:
        """{paper component name: [layers]} covering every weight exactly once."""
        raise NotImplementedError

    def train_step(self, *args):
        """Keras's step; under ``MultiWorkerMirroredStrategy`` its scalar logs are returned with one axis,
        because Keras 3 averages them across the workers with ``strategy.reduce("MEAN", v, axis=0)``, which
        fails on a scalar ("Invalid reduction dimension 0 for input with 0 dimensions", tensorflow#72388);
        the reduction turns them back into scalars."""
        logs = super().train_step(*args)  # TensorFlow: (data,) -> logs; JAX: (state, data) -> (logs, state)
        if keras.backend.backend() == "tensorflow" and _collective(getattr(self, "_distribute_strategy", None)):
            logs = {k: ops.reshape(v, (1,)) if len(ops.shape(v)) == 0 else v for k, v in logs.items()}
        return logs

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras's build from the first batch, made to work under ``MultiWorkerMirroredStrategy``: Keras 3
        averages the whole (nested) per-replica batch in one ``strategy.reduce`` call, which that strategy
        refuses for a dict of tensors ("Attempt to convert a value ({'ground': PerReplica ...}) to a Tensor").
        Only the shapes matter here, so under it the first replica's local batch is used instead."""
        strategy = getattr(self, "_distribute_strategy", None)
        if iterator is None or not _collective(strategy):
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        import tensorflow as tf

        for _, _, it in iterator:
            batch = next(it)
            break
        else:
            return None
        local = keras.tree.map_structure(
            lambda v: strategy.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues)
            else v, batch)
        with strategy.scope():
            self._symbolic_build(data_batch=local)
        return None

    def get_config(self):
        config = super().get_config()
        config["input_spec"] = self.input_spec_.to_config()
        return config

    # keys renamed since a model was saved: {old: new}; from_config reads files written before the rename
    LEGACY_KEYS: dict = {}

    @classmethod
    def from_config(cls, config):
        return super().from_config(rename_legacy_keys(config, cls.LEGACY_KEYS))


def rename_legacy_keys(config: dict, renames: dict) -> dict:
    """``config`` with every old key of ``renames`` ({old: new}) under its new name (new wins if both)."""
    if not any(k in config for k in renames):
        return config
    config = dict(config)
    for old, new in renames.items():
        if old in config:
            value = config.pop(old)
            config.setdefault(new, value)
    return config
