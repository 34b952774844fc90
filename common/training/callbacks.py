"""Callbacks of a training run: validation with the evaluation protocol, atomic checkpoints, resume state,
NaN guard, and the deterministic fault hooks the tests use.

Order matters and :func:`common.training.runner.make_callbacks` keeps it: learning rate -> NaN guard ->
validation -> checkpoints (best, last) -> resume state -> CSV / TensorBoard / progress. At the end of an epoch
the validation writes ``val_R@1`` ... into the logs, the checkpoints read them, and the resume state is
written last, so a kill between any two writes leaves every file whole (each one is written to a temporary
name and renamed) and the resumed run redoes at most the interrupted epoch.
"""

from __future__ import annotations

import errno
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
TMP_PREFIX = ".tmp-"  # every temporary file of a run directory is DIR/.tmp-<pid>-<final name>


def tmp_path(path: str) -> str:
    """The temporary name ``path`` is written under before the rename: ``DIR/.tmp-<pid>-NAME``. A process
    killed in between leaves it behind; the next start of the run removes those of dead processes
    (:func:`common.training.runner.remove_leftovers`)."""
    return os.path.join(os.path.dirname(path) or ".", f"{TMP_PREFIX}{os.getpid()}-{os.path.basename(path)}")


def _atomic(path: str, write) -> None:
    """``write(tmp)``, then rename ``tmp`` over ``path``; a failed write (a full disk) removes ``tmp``."""
    from common.files import atomic_path

    with atomic_path(path, tmp=tmp_path(path), makedirs=False) as tmp:
        write(tmp)


def atomic_write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    _atomic(path, write)


def atomic_write_json(path: str, obj) -> None:
    """Strict JSON (a non-finite float, e.g. R@1% of fewer than 100 pairs, is written as null), atomically."""
    from common.files import to_json

    atomic_write_text(path, to_json(obj, indent=2) + "\n")


def _variables_bytes(model) -> tuple:
    """(bytes, count) of the variables a save writes: the model's and its optimizer's."""
    variables = list(model.weights)
    if getattr(model, "optimizer", None) is not None:
        variables += list(model.optimizer.variables)
    total = 0
    for v in variables:
        try:
            itemsize = np.dtype(str(v.dtype)).itemsize
        except TypeError:  # bfloat16 and the like
            itemsize = 4
        total += int(np.prod(tuple(v.shape), dtype=np.int64)) * itemsize
    return total, len(variables)


def _ensure_space(model, path: str) -> None:
    """Refuse a checkpoint write that cannot fit, before h5py starts it: a full disk in the middle of an HDF5
    file makes h5py print tracebacks from its destructors and crash the process at exit, where a plain
    ENOSPC here gives the one-line error of :func:`common.errors.run_cli`. The estimate (variable bytes +
    2 KiB per variable + 64 KiB) is above the real size (about 1 KiB per variable of HDF5 overhead)."""
    nbytes, count = _variables_bytes(model)
    need = nbytes + 2048 * count + 65536
    try:
        st = os.statvfs(os.path.dirname(path) or ".")
    except (OSError, AttributeError):
        return
    free = (st.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else st.f_bavail) * st.f_frsize
    if free < need:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (about {need} bytes needed, {free} free)",
                      path)


def atomic_save_model(model, path: str) -> None:
    """``model.save`` to a temporary ``.keras`` name in the same folder, then rename over ``path``."""
    _ensure_space(model, path)
    _atomic(path, model.save)


def atomic_save_weights(model, path: str) -> None:
    """``model.save_weights`` (model and optimizer variables) to a temporary name, then rename."""
    _ensure_space(model, path)
    _atomic(path, model.save_weights)


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
        from common.evaluation.retrieval import recall_at_k

        from common.evaluation.collapse import collapse_line

        t0 = time.time()
        ground, aerial = self.embed_fn(self.model)
        metrics = recall_at_k(ground, aerial, ks=(1, 5, 10))
        self.last = {k: metrics[k] for k in ("R@1", "R@5", "R@10", "R@1%")}
        pess = metrics["pessimistic"] or {}
        spread = min(metrics["descriptors"]["query"]["spread"], metrics["descriptors"]["reference"]["spread"])
        extra = {"R@1_pessimistic": pess.get("R@1"), "spread": spread, "collapsed": float(metrics["collapsed"])}
        if logs is not None:
            for k, v in {**self.last, **extra}.items():
                logs[f"val_{k}"] = float("nan") if v is None else float(v)
        r1p = "-" if metrics["R@1%"] is None else f"{metrics['R@1%']:.2f}"
        print(f"  {self.label} (N={metrics['N']}): R@1 {metrics['R@1']:.2f}  R@5 {metrics['R@5']:.2f}  "
              f"R@10 {metrics['R@10']:.2f}  R@1% {r1p}   (pessimistic R@1 {pess.get('R@1', float('nan')):.2f}, "
              f"spread {spread:.3f})   [{time.time() - t0:.1f} s]", flush=True)
        if metrics["collapsed"]:
            print(f"  epoch {epoch + 1}: " + collapse_line(metrics["collapse_reasons"], "validation descriptors")
                  + "; this epoch cannot become best.keras", flush=True)


# ------------------------------------------------------------------------------------------------------
# checkpoints and resume state
# ------------------------------------------------------------------------------------------------------
class Checkpoints(keras.callbacks.Callback):
    """``last.keras`` after every epoch and ``best.keras`` when the monitored metric improves (atomic).

    An epoch whose validation descriptors are collapsed (``val_collapsed``, :mod:`common.evaluation.collapse`) never
    becomes ``best.keras``, whatever its R@1: ties favour the query, so a collapsed model can score high.
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
        collapsed = bool(logs.get("val_collapsed", 0.0))  # never select a collapsed epoch (common.evaluation.collapse)
        improved = value > self.state.best and not collapsed
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
    """Keras ``BackupAndRestore``, made safe against ``kill -9`` at any instant and exact.

    After every epoch it writes ``backup/epoch-<n>.weights.h5`` (model + optimizer variables: weights, BatchNorm
    statistics, moments, step counter) to a temporary name and renames it, then ``backup/state.json`` the same
    way: the epoch, the global step, the data position (pass and batch of the stream; the batches are a pure
    function of the seed and the global step, :func:`common.data.pipeline.make_dataset`), the state of every
    random generator of the model (dropout masks, GeoDTR's counterfactual noise: ``keras.random.SeedGenerator``
    states, which ``save_weights`` does not hold), best metric so far and history; then it rewrites
    ``logs/train.csv`` from that history and deletes older weight files. The JSON is the commit point: a kill
    before it (in the middle of an epoch, or while any file is being written) leaves the previous state valid,
    a kill after it the new one. On start the state is loaded and the interrupted epoch is replayed from its
    first step with the same batches and random numbers, so with a deterministic run
    (``train.deterministic``) the resumed run ends bit-identical to an uninterrupted one.
    """

    def __init__(self, backup_dir: str, state: RunState, steps_per_epoch: int = 0, csv_path: str | None = None,
                 data_position=None, kill_in_write: int | None = None):
        super().__init__(backup_dir=backup_dir, save_freq="epoch", delete_checkpoint=False,
                         double_checkpoint=False)
        self.state = state
        self.state_path = os.path.join(backup_dir, "state.json")
        self.resumed_from = None
        self.steps_per_epoch = int(steps_per_epoch)
        self.csv_path = csv_path
        self.data_position = data_position or (lambda step: {})
        self.kill_in_write = kill_in_write

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
        set_random_states(self.model, saved.get("random_states"))
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
        path = os.path.join(self.backup_dir, name)
        if self.kill_in_write == epoch + 1:  # test hook: die with the new weights half-committed
            self.model.save_weights(tmp_path(path))
            os.kill(os.getpid(), signal.SIGKILL)
        atomic_save_weights(self.model, path)
        step = (epoch + 1) * self.steps_per_epoch
        atomic_write_json(self.state_path, {
            "epoch": epoch + 1, "global_step": step, "data": self.data_position(step), "weights": name,
            "random_states": random_states(self.model), "run": self.state.to_json()})
        self.write_csv()
        for old in os.listdir(self.backup_dir):
            if old.startswith("epoch-") and old != name:
                os.remove(os.path.join(self.backup_dir, old))

    def write_csv(self):
        """``logs/train.csv`` from the committed history: one row per finished epoch (1-based), never a row
        twice or missing, whatever was interrupted."""
        if not self.csv_path or not self.state.history:
            return
        keys = ["epoch"] + sorted({k for h in self.state.history for k in h} - {"epoch", "epoch_time_s"}) + [
            "epoch_time_s"]
        lines = [",".join(keys)]
        def cell(v):  # a missing or non-finite value is an empty cell (as it reads back from state.json)
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                return ""
            return repr(v) if isinstance(v, float) else str(v)

        for h in self.state.history:
            lines.append(",".join(cell(h.get(k)) for k in keys))
        atomic_write_text(self.csv_path, "\n".join(lines) + "\n")

    def on_train_end(self, logs=None):
        pass


def random_states(model) -> list:
    """The state of every ``keras.random.SeedGenerator`` of ``model`` (in variable order), as lists."""
    return [np.asarray(v).tolist() for v in _seed_state_variables(model)]


def set_random_states(model, states) -> None:
    """Restore what :func:`random_states` returned (a resume written before it existed passes None)."""
    if states is None:
        return
    variables = _seed_state_variables(model)
    if len(states) != len(variables):
        raise CVGLError(f"the resume state holds {len(states)} random-generator states but the model has "
                        f"{len(variables)}; it was written by another model: delete the backup folder to restart")
    for v, value in zip(variables, states):
        v.assign(np.asarray(value, dtype=v.dtype))


def _seed_state_variables(model):
    return [v for v in model.non_trainable_variables if v.path.endswith("seed_generator_state")]


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


