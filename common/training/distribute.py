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

The full-batch loss under several replicas is :mod:`common.models.replicas`.
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
    if name == "multiworker" or (name == "auto" and os.environ.get("TF_CONFIG")):
        return _multiworker()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        if len(gpus) > 1:
            name = "mirrored"
        else:
            return tf.distribute.get_strategy()
    if name == "one":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    raise AssertionError(name)  # every name is handled above


_MULTIWORKER = []  # the process's one MultiWorkerMirroredStrategy (it can be created once, at startup)


def _multiworker():
    """The MultiWorkerMirroredStrategy of this process, created on the first call.

    TensorFlow configures the collective ops when its context starts, so the strategy must exist before
    anything else touches TensorFlow (listing devices, a tf.data pipeline, a tensor): ``experiments.train`` calls
    :func:`make_strategy` first thing; created later it fails with "Collective ops must be configured at program
    startup", which is said here in one line with the fix."""
    if _MULTIWORKER:
        return _MULTIWORKER[0]
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise CVGLError(
            "--strategy multiworker needs TF_CONFIG in the environment of every worker, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
        )
    try:
        cfg = json.loads(raw)
        workers = cfg["cluster"]["worker"]
        int(cfg["task"]["index"])
    except (ValueError, KeyError, TypeError):
        raise CVGLError(f"TF_CONFIG must be JSON with cluster.worker (a list of host:port) and task.index, got "
                        f"{raw[:120]!r} (see docs/training.md, multi-worker training)") from None
    if not isinstance(workers, list) or not workers:
        raise CVGLError(f"TF_CONFIG cluster.worker must be a non-empty list of host:port, got {workers!r}")
    tf = _tf()
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as exc:
        if "program startup" in str(exc):
            raise CVGLError("the multi-worker strategy must be created before TensorFlow starts: call "
                            "common.training.distribute.make_strategy('multiworker') first thing in the "
                            "process (experiments.train does)") from None
        raise
    _MULTIWORKER.append(strategy)
    return strategy


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


