"""tf.distribute strategies and the full-batch loss under several replicas.

``--strategy``:

* ``auto``: ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` is set, ``MirroredStrategy`` over all GPUs
  when there are several, otherwise the default (one-device) strategy;
* ``one``: ``OneDeviceStrategy`` on the first GPU, else the CPU;
* ``mirrored``: ``MirroredStrategy`` over every GPU (on a machine without GPUs: over every logical CPU device,
  which is how the tests run two replicas on one CPU);
* ``multiworker``: ``MultiWorkerMirroredStrategy``; every worker runs the same command with its own
  ``TF_CONFIG`` (``{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker",
  "index": i}}``). Worker 0 is the chief: it writes checkpoints, logs and ``results.json``; the other workers
  write their backup state to a private folder, as Keras requires.

**The full-batch loss.** The triplet loss needs every in-batch negative, but each replica only sees its share
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

import json
import os

import keras

from common.errors import CVGLError

STRATEGIES = ("auto", "one", "mirrored", "multiworker")


def _tf():
    import tensorflow as tf

    return tf


def make_strategy(name: str = "auto"):
    """A ``tf.distribute.Strategy`` for ``--strategy`` (see the module docstring)."""
    if name not in STRATEGIES:
        raise CVGLError(f"--strategy must be one of {', '.join(STRATEGIES)}; got {name!r}")
    if keras.backend.backend() != "tensorflow":
        raise CVGLError(
            f"--strategy {name} needs the TensorFlow backend (KERAS_BACKEND={keras.backend.backend()}); "
            "unset KERAS_BACKEND or set it to tensorflow"
        )
    tf = _tf()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        if os.environ.get("TF_CONFIG"):
            name = "multiworker"
        elif len(gpus) > 1:
            name = "mirrored"
        else:
            return tf.distribute.get_strategy()
    if name == "one":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise CVGLError(
            "--strategy multiworker needs TF_CONFIG in the environment of every worker, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
        )
    try:
        json.loads(raw)
    except ValueError:
        raise CVGLError(f"TF_CONFIG is not valid JSON: {raw[:80]!r} (see README, multi-worker training)") from None
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief() -> bool:
    """True on the worker that writes shared files: always, except on non-chief multi-worker tasks."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    cfg = json.loads(raw)
    task = cfg.get("task", {})
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    if "chief" in cfg.get("cluster", {}):
        return kind == "chief"
    return kind == "worker" and index == 0


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
