"""The full-batch loss under several replicas (tf.distribute).

The triplet loss needs every in-batch negative, but each replica only sees its share
of the global batch. :func:`gather_across_replicas` (installed as ``CrossViewModel.gather_outputs``)
all-gathers every per-sample output along axis 0 inside the replica context, so each replica computes the
loss of the whole global batch. TensorFlow's ``all_gather`` gradient sums the upstream gradients of all
replicas and keeps the local slice, so replica r's parameter gradient is R times the contribution of its own
samples; Keras then sums gradients over replicas. :meth:`CrossViewModel.compute_loss` therefore returns the
gathered loss divided by R (Keras' own ``scale_loss_for_distribution`` convention, which its loss tracker
undoes for the logs), and the summed gradient is exactly the one-device gradient of the global batch.
Batch-normalisation statistics stay per replica unless a family uses ``synchronized=True``.
"""

from __future__ import annotations

import keras


def _tf():
    import tensorflow as tf

    return tf


def num_replicas() -> int:
    """Replicas in sync of the current strategy (1 off the TensorFlow backend)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    return int(_tf().distribute.get_strategy().num_replicas_in_sync)


def replica_context():
    """The TF replica context when the loss runs on one of several replicas, else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    tf = _tf()
    if tf.distribute.in_cross_replica_context():
        return None
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync <= 1:
        return None
    return ctx


def gather_across_replicas(outputs: dict) -> dict:
    """All-gather every value of ``outputs`` (batch on axis 0) across replicas; identity on one replica."""
    ctx = replica_context()
    if ctx is None:
        return outputs
    # One all_gather per tensor: TF's all_gather gradient packs the upstream gradients of a list into one
    # tensor, which fails when the gathered tensors have different ranks.
    return {k: ctx.all_gather(v, axis=0) for k, v in outputs.items()}


def loss_scale_for_replicas() -> float:
    """1/R inside a replica context of R > 1 replicas (Keras' per-replica loss convention), else 1."""
    ctx = replica_context()
    return 1.0 if ctx is None else 1.0 / float(ctx.num_replicas_in_sync)
