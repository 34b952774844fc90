"""Optimizers of the paper recipes and mixed precision through Keras dtype policies.

Config (``train.optimizer``)::

    {name: adamw, learning_rate: 1.0e-4, weight_decay: 0.03, epsilon: 1.0e-6, global_clipnorm: 1.0}  # GeoDTR
    {name: adam, learning_rate: 1.0e-5}                                                              # SAFA, MGTL

GeoDTR (geodtr.md §9/§13.10): ``keras.optimizers.AdamW`` with ``global_clipnorm`` (torch's
``clip_grad_norm_`` is a global norm; Keras' ``clipnorm`` would clip per variable), weight decay on every
variable (no exclusions, as the official code). SAFA / MGTL: Adam, constant 1e-5.

**Clipping under several replicas.** Keras 3's TensorFlow optimizer clips each replica's gradients *before*
summing them across replicas, so a global-norm clip under ``MirroredStrategy`` would differ from one device.
:func:`reduce_before_clipping` makes the optimizer sum first and clip the global gradient (then skip its own
second sum), so the update is the one-device update on the same global batch (tests/test_train_distribute.py).

Mixed precision (:func:`set_precision`): ``float16`` -> policy ``mixed_float16`` with a
``LossScaleOptimizer`` (dynamic loss scaling); ``bfloat16`` -> ``mixed_bfloat16`` (no scaling needed);
``off`` -> ``float32``. Losses are computed in float32 (:mod:`common.losses` casts, and
:meth:`CrossViewModel.compute_loss` casts the total), and the families keep normalisations in float32.
"""

from __future__ import annotations

import types

import keras

from common.errors import CVGLError

OPTIMIZERS = ("adamw", "adam", "sgd")
PRECISIONS = {"off": "float32", "float32": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
_KNOWN_KEYS = {
    "adamw": {"learning_rate", "weight_decay", "epsilon", "beta_1", "beta_2", "global_clipnorm", "clipnorm"},
    "adam": {"learning_rate", "epsilon", "beta_1", "beta_2", "global_clipnorm", "clipnorm", "weight_decay"},
    "sgd": {"learning_rate", "momentum", "global_clipnorm", "clipnorm", "weight_decay"},
}


def set_precision(mode: str) -> str:
    """Set the global Keras dtype policy for ``mode`` in {off, float16, bfloat16}; return the policy name."""
    if mode not in PRECISIONS:
        raise CVGLError(f"--mixed-precision must be one of off, float16, bfloat16; got {mode!r}")
    policy = PRECISIONS[mode]
    keras.mixed_precision.set_global_policy(policy)
    return policy


def build_optimizer(opt_cfg: dict, precision: str = "off", num_replicas: int = 1):
    """A Keras optimizer from a config's ``train.optimizer`` mapping (see the module docstring)."""
    opt_cfg = dict(opt_cfg or {})
    name = str(opt_cfg.pop("name", "adam")).lower()
    if name not in OPTIMIZERS:
        raise CVGLError(f"train.optimizer.name must be one of {list(OPTIMIZERS)}, got {name!r}")
    unknown = set(opt_cfg) - _KNOWN_KEYS[name]
    if unknown:
        raise CVGLError(
            f"train.optimizer has keys {sorted(unknown)} that {name} does not take; known: {sorted(_KNOWN_KEYS[name])}"
        )
    if "learning_rate" not in opt_cfg:
        raise CVGLError("train.optimizer.learning_rate is missing (the paper's base rate, e.g. 1.0e-4)")
    kwargs = {k: (float(v) if isinstance(v, (int, float, str)) else v) for k, v in opt_cfg.items()}
    cls = {"adamw": keras.optimizers.AdamW, "adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}[name]
    optimizer = cls(**kwargs)
    if num_replicas > 1:
        reduce_before_clipping(optimizer)
    if PRECISIONS.get(precision, precision) == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def reduce_before_clipping(optimizer):
    """Make a TF-backend optimizer sum gradients over replicas *before* clipping (see module docstring).

    Patches the instance only (its class, and so every saved checkpoint, stays the plain Keras optimizer).
    A no-op outside a replica context or with one replica, and on other backends.
    """
    if keras.backend.backend() != "tensorflow":
        return optimizer
    import tensorflow as tf

    original_clip = optimizer._clip_gradients
    original_reduce = optimizer._all_reduce_sum_gradients

    def _replicas():
        ctx = tf.distribute.get_replica_context()
        return ctx if ctx is not None and ctx.num_replicas_in_sync > 1 else None

    def _clip_gradients(self, grads):
        ctx = _replicas()
        if ctx is not None:
            present = [g for g in grads if g is not None]
            summed = iter(ctx.all_reduce(tf.distribute.ReduceOp.SUM, present)) if present else iter(())
            grads = [None if g is None else next(summed) for g in grads]
        return original_clip(grads)

    def _all_reduce_sum_gradients(self, grads_and_vars):
        if _replicas() is not None:
            return list(grads_and_vars)  # already summed in _clip_gradients
        return original_reduce(grads_and_vars)

    optimizer._clip_gradients = types.MethodType(_clip_gradients, optimizer)
    optimizer._all_reduce_sum_gradients = types.MethodType(_all_reduce_sum_gradients, optimizer)
    optimizer._cvgl_reduce_before_clipping = True
    return optimizer
