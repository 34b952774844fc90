"""Callbacks of a training run: validation with the evaluation protocol, atomic checkpoints, resume state,
NaN guard, and the deterministic fault hooks the tests use.

Order matters and :func:`common.training.runner.make_callbacks` keeps it: learning rate -> NaN guard ->
validation -> checkpoints (best, last) -> resume state -> CSV / TensorBoard / progress. At the end of an epoch
the validation writes ``val_R@1`` ... into the logs, the checkpoints read them, and the resume state is
written last, so a kill between any two writes leaves every file whole (each one is written to a temporary
name and renamed) and the resumed run redoes at most the interrupted epoch.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time

import keras
import numpy as np

from common.errors import CVGLError


# ------------------------------------------------------------------------------------------------------
# atomic files
# ------------------------------------------------------------------------------------------------------
def atomic_write_text(path: str, text: str) -> None:
    tmp = os.path.join(os.path.dirname(path) or ".", f".tmp-{os.getpid()}-{os.path.basename(path)}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def atomic_save_model(model, path: str) -> None:
    """``model.save`` to a temporary ``.keras`` name in the same folder, then rename over ``path``."""
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.getpid()}-{os.path.basename(path)}")
    model.save(tmp)
    os.replace(tmp, path)


def atomic_save_weights(model, path: str) -> None:
    """``model.save_weights`` (model and optimizer variables) to a temporary name, then rename."""
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.getpid()}-{os.path.basename(path)}")
    model.save_weights(tmp)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------------
# shared run state (NaN flag, best metric) read by the callbacks below
# ------------------------------------------------------------------------------------------------------
class RunState:
    """Mutable state shared by the callbacks of one run; saved in the resume state."""

    def __init__(self, monitor: str = "val_R@1"):
        self.monitor = monitor
        self.best = -math.inf
        self.best_epoch = None
        self.nan_at = None  # (epoch, step) where the loss stopped being finite
        self.history = []  # one dict per finished epoch

    def to_json(self):
        return {"monitor": self.monitor, "best": None if self.best == -math.inf else self.best,
                "best_epoch": self.best_epoch, "history": self.history}

    def load_json(self, d):
        self.best = -math.inf if d.get("best") is None else float(d["best"])
        self.best_epoch = d.get("best_epoch")
        self.history = list(d.get("history", []))


# ------------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------------
class RecallValidation(keras.callbacks.Callback):
    """At the end of every epoch: embed the validation split with the model and compute R@1/5/10/1%.

    ``embed_fn(model) -> (ground (N, d), aerial (N, d))`` embeds the split (index protocol: pair k is the true
    match of query k). The metrics go into the epoch logs as ``val_R@1`` etc., where the checkpoint selection
    and the CSV log read them. ``every`` > 1 validates every n-th epoch (and always the last one).
    """

    def __init__(self, embed_fn, state: RunState, total_epochs: int, every: int = 1, label: str = "val"):
        super().__init__()
        self.embed_fn = embed_fn
        self.state = state
        self.total_epochs = total_epochs
        self.every = max(1, int(every))
        self.label = label
        self.last = None

    def on_epoch_end(self, epoch, logs=None):
        if self.state.nan_at is not None:
            return
        if (epoch + 1) % self.every and epoch + 1 != self.total_epochs:
            return
        from common.retrieval import recall_at_k

        t0 = time.time()
        ground, aerial = self.embed_fn(self.model)
        metrics = recall_at_k(ground, aerial, ks=(1, 5, 10))
        self.last = {k: metrics[k] for k in ("R@1", "R@5", "R@10", "R@1%")}
        if logs is not None:
            for k, v in self.last.items():
                logs[f"val_{k}"] = float("nan") if v is None else float(v)
        r1p = "-" if metrics["R@1%"] is None else f"{metrics['R@1%']:.2f}"
        print(f"  {self.label} (N={metrics['N']}): R@1 {metrics['R@1']:.2f}  R@5 {metrics['R@5']:.2f}  "
              f"R@10 {metrics['R@10']:.2f}  R@1% {r1p}   [{time.time() - t0:.1f} s]", flush=True)


# ------------------------------------------------------------------------------------------------------
# checkpoints and resume state
# ------------------------------------------------------------------------------------------------------
class Checkpoints(keras.callbacks.Callback):
    """``last.keras`` after every epoch and ``best.keras`` when the monitored metric improves (atomic).

    Without validation metrics in the logs (validation off), ``best.keras`` follows the lowest training loss.
    Only the chief writes (multi-worker).
    """

    def __init__(self, ckpt_dir: str, state: RunState, chief: bool = True):
        super().__init__()
        self.ckpt_dir = ckpt_dir
        self.state = state
        self.chief = chief
        self.t0 = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.state.nan_at is not None:
            return
        value = logs.get(self.state.monitor)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            value = -float(logs.get("loss", math.inf))
        improved = value > self.state.best
        if improved:
            self.state.best = float(value)
            self.state.best_epoch = epoch + 1
        record = {"epoch": epoch + 1, "epoch_time_s": round(time.time() - self.t0, 3)}
        record.update({k: float(v) for k, v in logs.items() if isinstance(v, (int, float, np.floating))})
        self.state.history.append(record)
        if not self.chief:
            return
        os.makedirs(self.ckpt_dir, exist_ok=True)
        atomic_save_model(self.model, os.path.join(self.ckpt_dir, "last.keras"))
        if improved:
            atomic_save_model(self.model, os.path.join(self.ckpt_dir, "best.keras"))


class ResumeState(keras.callbacks.BackupAndRestore):
    """Keras ``BackupAndRestore``, made safe against ``kill -9`` at any instant and aware of the run state.

    After every epoch it writes ``backup/epoch-<n>.weights.h5`` (model + optimizer variables) to a temporary
    name and renames it, then ``backup/state.json`` (epoch, best metric so far, history, the weights file's
    name) the same way, then deletes older weight files. The JSON is the commit point: a kill before it
    leaves the previous state valid; a kill after it leaves the new one. On start, the state (if any) is
    loaded: weights, optimizer moments and step counter, ``initial_epoch``, best metric and history.
    """

    def __init__(self, backup_dir: str, state: RunState):
        super().__init__(backup_dir=backup_dir, save_freq="epoch", delete_checkpoint=False,
                         double_checkpoint=False)
        self.state = state
        self.state_path = os.path.join(backup_dir, "state.json")
        self.resumed_from = None

    def read(self):
        if not os.path.exists(self.state_path):
            return None
        try:
            with open(self.state_path) as fh:
                return json.load(fh)
        except (OSError, ValueError) as exc:
            raise CVGLError(f"resume state {self.state_path} is unreadable ({exc}); delete the folder "
                            f"{os.path.dirname(self.state_path)} to start the run from scratch") from None

    def _load_model(self):
        saved = self.read()
        if saved is None:
            return
        weights = os.path.join(self.backup_dir, saved["weights"])
        if not os.path.exists(weights):
            raise CVGLError(f"resume state {self.state_path} names {weights}, which is missing; delete "
                            f"{self.backup_dir} to start the run from scratch")
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(weights)
        self.model._initial_epoch = int(saved["epoch"])
        self.state.load_json(saved.get("run", {}))
        self.resumed_from = int(saved["epoch"])

    def on_train_batch_end(self, batch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        if self.state.nan_at is not None:
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        name = f"epoch-{epoch + 1}.weights.h5"
        atomic_save_weights(self.model, os.path.join(self.backup_dir, name))
        atomic_write_json(self.state_path, {"epoch": epoch + 1, "weights": name, "run": self.state.to_json()})
        for old in os.listdir(self.backup_dir):
            if old.startswith("epoch-") and old != name:
                os.remove(os.path.join(self.backup_dir, old))

    def on_train_end(self, logs=None):
        pass


# ------------------------------------------------------------------------------------------------------
# NaN guard
# ------------------------------------------------------------------------------------------------------
class NanGuard(keras.callbacks.Callback):
    """Keras' ``TerminateOnNaN`` that keeps the last good weights.

    When a batch's loss is not finite it records where, stops training, and tells the other callbacks (via
    :class:`RunState`) not to write: ``last.keras``, ``best.keras`` and the resume state keep the last good
    epoch. The runner then raises a :class:`CVGLError` naming the epoch, step and the intact checkpoint.
    """

    def __init__(self, state: RunState):
        super().__init__()
        self.state = state
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and self.state.nan_at is None:
            self.state.nan_at = (self.epoch + 1, batch + 1)
            self.model.stop_training = True


# ------------------------------------------------------------------------------------------------------
# fault hook for the tests: die by SIGKILL at a given epoch/step
# ------------------------------------------------------------------------------------------------------
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
