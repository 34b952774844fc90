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
