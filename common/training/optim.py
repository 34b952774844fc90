"""Optimizers of the paper recipes and mixed precision through Keras dtype policies.

Config (``train.optimizer``)::

    {name: adamw_torch, learning_rate: 1.0e-4, weight_decay: 0.03, epsilon: 1.0e-6, global_clipnorm: 1.0}
    {name: adam, learning_rate: 1.0e-5}

(the first is GeoDTR's, the second SAFA's and MGTL's).

Names: ``adamw_torch`` (:class:`TorchAdamW`, ``torch.optim.AdamW`` + ``clip_grad_norm_`` as PyTorch computes
them), ``adamw`` (``keras.optimizers.AdamW``), ``adam`` (``keras.optimizers.Adam``), ``sgd``.

GeoDTR (geodtr.md §9/§13.10): the official code runs ``clip_grad_norm_(params, 1.0)`` (a global norm) and
``torch.optim.AdamW(lr, weight_decay=0.03, eps=1e-6)`` with weight decay on every parameter (no exclusions).
Keras' AdamW differs from it in two places, both fixed by :class:`TorchAdamW`:

* epsilon: Keras divides by ``sqrt(v) + eps`` and folds the bias corrections into the step size, torch divides
  by ``sqrt(v / (1 - b2^t)) + eps``, so Keras' effective epsilon is ``eps / sqrt(1 - b2^t)``, 31.6x torch's at
  step 1 (with eps 1e-6 and gradients clipped to a global norm of 1 over GeoDTR's 48M parameters, the
  squared norm of the step-1 update comes out 71% off the official one: tests/test_geodtr_train_step.py);
* clipping: Keras scales by ``clip / max(norm, clip)``, torch by ``min(1, clip / (norm + 1e-6))``.

The decoupled weight decay ``p <- p (1 - lr wd)`` before the Adam update is the same in both.
SAFA / MGTL: Adam, constant 1e-5.

**Clipping under several replicas.** Keras 3's TensorFlow optimizer clips each replica's gradients *before*
summing them across replicas, so a global-norm clip under ``MirroredStrategy`` would differ from one device.
:func:`reduce_before_clipping` makes the optimizer sum first and clip the global gradient (then skip its own
second sum), so the update is the one-device update on the same global batch (tests/test_train_distribute.py).

Mixed precision (:func:`set_precision`): ``float16`` -> policy ``mixed_float16`` with a
``LossScaleOptimizer`` (dynamic loss scaling); ``bfloat16`` -> ``mixed_bfloat16`` (no scaling needed);
``off`` -> ``float32``. Losses are computed in float32 (:mod:`common.training.losses` casts, and
:meth:`CrossViewModel.compute_loss` casts the total), and the families keep normalisations in float32.
"""

from __future__ import annotations

import math
import types

import keras
from keras import ops

from common.errors import CVGLError

OPTIMIZERS = ("adamw_torch", "adamw", "adam", "sgd")
PRECISIONS = {"off": "float32", "float32": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
_KNOWN_KEYS = {
    "adamw_torch": {"learning_rate", "weight_decay", "epsilon", "beta_1", "beta_2", "global_clipnorm"},
    "adamw": {"learning_rate", "weight_decay", "epsilon", "beta_1", "beta_2", "global_clipnorm", "clipnorm"},
    "adam": {"learning_rate", "epsilon", "beta_1", "beta_2", "global_clipnorm", "clipnorm", "weight_decay"},
    "sgd": {"learning_rate", "momentum", "global_clipnorm", "clipnorm", "weight_decay"},
}


TORCH_CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_: clip_coef = max_norm / (total_norm + 1e-6)


def torch_clip_grad_norm(grads, max_norm):
    """``torch.nn.utils.clip_grad_norm_(norm_type=2)`` on a list of gradients (None entries kept).

    total = ||(||g_1||, ..., ||g_n||)||_2; every gradient is multiplied by min(1, max_norm / (total + 1e-6)).
    """
    present = [g for g in grads if g is not None]
    if not present:
        return list(grads)
    norms = ops.stack([ops.sqrt(ops.sum(ops.square(ops.cast(g, "float32")))) for g in present])
    total = ops.sqrt(ops.sum(ops.square(norms)))
    coef = ops.minimum(ops.cast(max_norm, "float32") / (total + TORCH_CLIP_EPS), 1.0)
    return [None if g is None else g * ops.cast(coef, g.dtype) for g in grads]


@keras.saving.register_keras_serializable(package="cvgl")
class TorchAdamW(keras.optimizers.Optimizer):
    """``torch.optim.AdamW`` (amsgrad off, maximize off) with ``global_clipnorm`` = ``clip_grad_norm_``.

    For every trainable variable p with gradient g at step t = iterations + 1 (torch's single-tensor code)::

        g  <- g * min(1, global_clipnorm / (||all g||_2 + 1e-6))     (if global_clipnorm is set)
        p  <- p * (1 - lr * weight_decay)                             (before the update, every variable)
        m  <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
        p  <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    Defaults are torch's (lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2). Slots ``momentum`` and
    ``velocity`` per variable are optimizer variables, so they are saved and restored with the model
    (``save_weights`` / ``.keras``). Works inside ``LossScaleOptimizer`` and ``tf.distribute`` (see
    :func:`reduce_before_clipping` for the order of the cross-replica sum and the clip).
    """

    def __init__(self, learning_rate=0.001, weight_decay=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 global_clipnorm=None, name=None, **kwargs):
        for key in ("clipnorm", "clipvalue"):
            if kwargs.get(key) is not None:
                raise CVGLError(f"TorchAdamW takes global_clipnorm (torch's clip_grad_norm_), not {key}")
            kwargs.pop(key, None)
        if weight_decay is None:
            weight_decay = 0.0
        super().__init__(learning_rate=learning_rate, weight_decay=float(weight_decay),
                         global_clipnorm=global_clipnorm, name=name, **kwargs)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(var_list, ["momentum", "velocity"])

    def _clip_gradients(self, grads):
        if self.global_clipnorm is not None and self.global_clipnorm > 0:
            return torch_clip_grad_norm(grads, self.global_clipnorm)
        return list(grads)

    def update_step(self, gradient, variable, learning_rate):
        # the decoupled decay p *= (1 - lr wd) already ran (Optimizer._apply_weight_decay, before this step)
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        # 1 - b^t as -expm1(t log b) with log b taken in float64: torch computes the bias corrections in
        # double; float32 1 - 0.999^t would be off by 1.3e-5 relative (0.999 is not a float32)
        bias_1 = -ops.expm1(step * math.log(self.beta_1))
        bias_2_sqrt = ops.sqrt(-ops.expm1(step * math.log(self.beta_2)))
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1.0 - self.beta_1))
        self.assign(v, ops.add(ops.multiply(v, self.beta_2),
                               ops.multiply(ops.square(gradient), 1.0 - self.beta_2)))
        denom = ops.add(ops.divide(ops.sqrt(v), bias_2_sqrt), self.epsilon)
        self.assign_sub(variable, ops.multiply(lr / bias_1, ops.divide(m, denom)))

    def get_config(self):
        config = super().get_config()
        config.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon)
        return config


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
    cls = {"adamw_torch": TorchAdamW, "adamw": keras.optimizers.AdamW, "adam": keras.optimizers.Adam,
           "sgd": keras.optimizers.SGD}[name]
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
