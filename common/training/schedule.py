"""Learning-rate schedules of the paper recipes, stepped per EPOCH as the official code steps them.

* ``warmup_cosine`` (GeoDTR, geodtr.md §9): ``WarmupCosineSchedule(warmup=5, total=epochs)`` of the official
  PyTorch code, a ``LambdaLR`` stepped once per epoch. The multiplier of the base rate in epoch ``e``
  (0-based) is ``e / warmup`` for ``e < warmup`` -- so **epoch 0 runs at lr 0** -- and
  ``0.5 * (1 + cos(pi * (e - warmup) / (total - warmup)))`` afterwards.
* ``constant`` (SAFA, MGTL: Adam at a constant 1e-5).

:class:`EpochLearningRate` is the Keras callback that sets ``optimizer.learning_rate`` at the start of every
epoch from the formula (piecewise constant per epoch, exactly the official stepping). Because the rate is a
pure function of the epoch index, a resumed run (``initial_epoch > 0``) lands on the same rate.
"""

from __future__ import annotations

import math

import keras

from common.errors import CVGLError

SCHEDULES = ("warmup_cosine", "constant")


def warmup_cosine_factor(epoch: int, warmup_epochs: int, total_epochs: int) -> float:
    """Multiplier of the base learning rate in (0-based) ``epoch``; see the module docstring."""
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return float(epoch) / float(warmup_epochs)
    span = max(1, total_epochs - warmup_epochs)
    return 0.5 * (1.0 + math.cos(math.pi * float(epoch - warmup_epochs) / float(span)))


def check_schedule(schedule: dict | None) -> dict:
    """Validate a config's ``train.schedule`` mapping and return it with defaults filled in."""
    schedule = dict(schedule or {"name": "constant"})
    name = schedule.get("name", "constant")
    if name not in SCHEDULES:
        raise CVGLError(f"train.schedule.name must be one of {list(SCHEDULES)}, got {name!r}")
    if name == "warmup_cosine":
        w = schedule.setdefault("warmup_epochs", 5)
        if not isinstance(w, int) or w < 0:
            raise CVGLError(f"train.schedule.warmup_epochs must be a non-negative integer, got {w!r}")
    schedule["name"] = name
    return schedule


def lr_for_epoch(base_lr: float, schedule: dict | None, epoch: int, total_epochs: int) -> float:
    """Learning rate of (0-based) ``epoch`` under ``schedule`` (a config's ``train.schedule``)."""
    schedule = check_schedule(schedule)
    if schedule["name"] == "constant":
        return float(base_lr)
    return float(base_lr) * warmup_cosine_factor(epoch, schedule["warmup_epochs"], total_epochs)


def _inner_optimizer(optimizer):
    return getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer wraps the real one


class EpochLearningRate(keras.callbacks.Callback):
    """Set the optimizer's learning rate at the start of every epoch from :func:`lr_for_epoch`."""

    def __init__(self, base_lr: float, schedule: dict | None, total_epochs: int, verbose: bool = False):
        super().__init__()
        self.base_lr = float(base_lr)
        self.schedule = check_schedule(schedule)
        self.total_epochs = int(total_epochs)
        self.verbose = verbose

    def on_epoch_begin(self, epoch, logs=None):
        lr = lr_for_epoch(self.base_lr, self.schedule, epoch, self.total_epochs)
        _inner_optimizer(self.model.optimizer).learning_rate.assign(lr)
        if self.verbose:
            print(f"epoch {epoch + 1}: learning rate {lr:.3e}")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(_inner_optimizer(self.model.optimizer).learning_rate))
