"""Fault hooks for the tests, inactive unless their environment variable is set.

* ``CVGL_TEST_KILL_AT=EPOCH:STEP``: SIGKILL right after that training step (:class:`KillSwitch`);
  ``CVGL_TEST_KILL_AT=EPOCH:write``: SIGKILL in the middle of that epoch's backup write
  (:class:`common.training.callbacks.ResumeState`'s ``kill_in_write``);
* ``CVGL_TEST_NAN_AT=STEP``: the ground images of that global training step (1-based) become NaN.

Deterministic stand-ins for a crash, a preemption and a diverging step, used by the resume and NaN tests.
"""

from __future__ import annotations

import os
import signal

import keras

from common.errors import CVGLError


NAN_ENV = "CVGL_TEST_NAN_AT"


def _inject_nan(ds, step: int):
    import tensorflow as tf

    def put(i, batch):
        batch = dict(batch)
        bad = tf.equal(i, step - 1)
        batch["ground"] = tf.where(bad, batch["ground"] * float("nan"), batch["ground"])
        return i, batch

    return ds.map(put)


KILL_ENV = "CVGL_TEST_KILL_AT"  # "EPOCH:STEP", 1-based: SIGKILL right after that training step


class KillSwitch(keras.callbacks.Callback):
    """Send SIGKILL to this process after step ``STEP`` of epoch ``EPOCH`` (``CVGL_TEST_KILL_AT``).

    Deterministic stand-in for a crash / preemption in the resume test; inactive unless the variable is set.
    """

    def __init__(self, spec: str):
        super().__init__()
        try:
            e, s = spec.split(":")
            self.at = (int(e), int(s))
        except ValueError:
            raise CVGLError(f"{KILL_ENV} must be EPOCH:STEP (1-based), got {spec!r}") from None
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch + 1, batch + 1) == self.at:
            os.kill(os.getpid(), signal.SIGKILL)
