"""One training run over ``model.fit``: recipe -> strategy / precision -> model + optimizer -> callbacks ->
run directory. :mod:`experiments.train` (the CLI) and :mod:`experiments.demo` call :func:`run_training`.

Run directory::

    RUN/config.yaml            the resolved config (paper row + overrides + flags), written before training
    RUN/checkpoints/best.keras the epoch with the best validation R@1 (the papers' selection rule)
    RUN/checkpoints/last.keras the last finished epoch
    RUN/backup/                resume state (weights + optimizer + epoch + best so far), see ResumeState
    RUN/logs/train.csv         one row per finished epoch (1-based; loss, learning_rate, val_R@1 ...), rewritten from the
                               committed history at every backup, so a resume never repeats or loses a row
    RUN/logs/tensorboard/      TensorBoard event files
    RUN/results.json           val metrics of the best checkpoint, epochs, time, config hash

Rerunning the same command on an existing run directory resumes it (the same config, ``train.epochs`` aside);
a finished run is reported as such and left alone, and a larger ``--epochs`` extends it (the schedule is then
resolved over the new total; fewer epochs than were done is refused). ``RUN/.lock`` (an exclusive ``flock``
holding the pid) keeps a second process off a run directory in use; the temporary files (``.tmp-PID-NAME``)
of killed processes are removed at the next start.

Determinism (``train.deterministic: true`` or ``--deterministic``; on in the demo and the tests): Keras, NumPy and
Python seeded with ``--seed``, ``tf.config.experimental.enable_op_determinism()``, deterministic tf.data. The
training stream is a pure function of the seed and the global step (pass-indexed shuffles, stateless
augmentation keys), so the same command twice gives bit-identical weights, logs and metrics, and a resumed
run replays exactly what the interrupted one would have done (see :class:`common.training.callbacks
.ResumeState`).

The training stream is :class:`common.training.data.TrainData` (:func:`~common.training.data.records_data`
builds it from a dataset folder); the cross-city augmentations (``train.azimuth_roll``,
``train.colour_shuffle``) are in :mod:`common.data.augment`, the fault hooks of the tests in
:mod:`common.training.faults`.
"""

from __future__ import annotations

import copy
import errno
import json
import math
import os
import re
import sys
import time
from typing import Optional

import keras
import yaml

from common.data.specs import get_spec
from common.synthetic import is_synthetic_root
from common.errors import CVGLError
from common.data.augment import azimuth_roll, colour_shuffle
from common.training import callbacks as cb
from common.training.data import TrainData
from common.training.faults import KILL_ENV, NAN_ENV, KillSwitch, _inject_nan
from common.training.distribute import is_chief, make_strategy
from common.training.optim import build_optimizer, set_precision
from common.training.recipe import config_hash
from common.training.schedule import EpochLearningRate, check_schedule


def set_determinism(seed: int, deterministic: bool) -> None:
    """Seed Keras / NumPy / Python with ``seed``; with ``deterministic`` also make TensorFlow's kernels
    deterministic (``enable_op_determinism``: process-wide, and it cannot be switched off again)."""
    keras.utils.set_random_seed(int(seed))
    if deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def _has_progress(out: str) -> bool:
    """Whether a run directory holds anything a rerun would resume from (a committed epoch, a checkpoint)."""
    ckpts = os.path.join(out, "checkpoints")
    return (os.path.isfile(os.path.join(out, "backup", "state.json"))
            or (os.path.isdir(ckpts) and any(f.endswith(".keras") for f in os.listdir(ckpts))))


def _identity(cfg: dict) -> str:
    """The hash that says "the same run": the resolved config without ``train.epochs`` (a finished run can be
    extended with a larger ``--epochs``)."""
    cfg = copy.deepcopy(cfg) if isinstance(cfg, dict) else {}
    if isinstance(cfg.get("train"), dict):
        cfg["train"].pop("epochs", None)
    return config_hash(cfg)


def _epochs_done(out: str) -> int:
    """Epochs committed in ``out``'s resume state (0 if none or unreadable: the resume reports that itself)."""
    try:
        with open(os.path.join(out, "backup", "state.json")) as fh:
            return int(json.load(fh).get("epoch", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def _check_existing_run(out: str, cfg: dict, epochs: int, log=print):
    path = os.path.join(out, "config.yaml")
    if not os.path.exists(path):
        return
    try:
        with open(path) as fh:
            old = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError):
        old = {}
    if not isinstance(old, dict):
        old = {}
    if _identity(old) != _identity(cfg):
        if not _has_progress(out):
            return  # a start that failed before its first epoch: nothing to protect, the corrected config wins
        raise CVGLError(
            f"run directory {out} holds a run of another config (hash {config_hash(old)}, this one "
            f"{config_hash(cfg)}); use a new --out, or delete that directory to start over"
        )
    done = _epochs_done(out)
    if epochs < done:
        raise CVGLError(f"--epochs {epochs} (train.epochs) is fewer than the {done} epochs run directory {out} has "
                        f"finished; rerun with --epochs {done} or more (more extends it), or use another --out")
    old_epochs = (old.get("train") or {}).get("epochs")
    if done and old_epochs != epochs:
        if isinstance(old_epochs, int) and done >= old_epochs:
            log(f"extending a finished run from {old_epochs} to {epochs} epochs; the schedule now spans "
                f"{epochs} epochs")
        else:
            log(f"changing the run (epoch {done} of {old_epochs} done) to {epochs} epochs; the schedule now "
                f"spans {epochs} epochs")


# ------------------------------------------------------------------------------------------------------
# the run directory lock and the leftovers of killed processes
# ------------------------------------------------------------------------------------------------------
LOCK_NAME = ".lock"
_LEFTOVER = re.compile(r"^" + re.escape(cb.TMP_PREFIX) + r"(\d+)-.+")  # cb.tmp_path's names


def lock_run_dir(out: str):
    """Take the exclusive lock of run directory ``out`` (``out/.lock``, non-blocking ``flock``, holding this
    process's pid); returns the open descriptor (closing it, or the process ending in any way, releases it).
    Another process holding it: CVGLError naming its pid."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform: no lock
        return None
    try:
        os.makedirs(out, exist_ok=True)
        fd = os.open(os.path.join(out, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError as exc:
        raise CVGLError(f"cannot write the run directory {out} ({exc.strerror}); use another --out") from None
    except OSError as exc:
        if exc.errno == errno.EROFS:
            raise CVGLError(f"cannot write the run directory {out} (read-only file system); use another --out") \
                from None
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                return None  # a file system without locks (some network mounts): run unlocked
            raise
        holder = ""
        for _ in range(20):  # the holder writes its pid right after taking the lock
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            if holder:
                break
            time.sleep(0.025)
        os.close(fd)
        raise CVGLError(f"run directory {out} is in use by process {holder or '(unknown pid)'} (another "
                        "experiments.train); wait for it or use another --out") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def unlock_run_dir(fd) -> None:
    if fd is None:
        return
    try:
        os.ftruncate(fd, 0)
    except OSError:
        pass
    os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():  # this process has written nothing yet: a reused pid's leftover
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def remove_leftovers(out: str) -> list:
    """Remove the temporary files (``.tmp-PID-NAME``, :func:`common.training.callbacks.tmp_path`) that killed
    processes left in ``out``, ``out/checkpoints``, ``out/backup`` and ``out/logs``: only those whose PID is
    not a live process. Returns the removed paths."""
    removed = []
    for d in (out, *(os.path.join(out, s) for s in ("checkpoints", "backup", "logs"))):
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            m = _LEFTOVER.match(name)
            path = os.path.join(d, name)
            if not m or _pid_alive(int(m.group(1))) or not os.path.isfile(path):
                continue
            try:
                os.remove(path)
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def run_training(cfg: dict, out: str, data: TrainData, *, strategy: str = "auto", precision: str = "off",
                 seed: int = 0, steps_per_epoch: Optional[int] = None, verbose: int | None = None,
                 validate_every: int = 1, log=print, build_fn=None, extra_callbacks=(), overrides=None) -> dict:
    """Train ``cfg`` (resolved) into run directory ``out``; returns the results dict (also results.json).
    ``overrides``: ``{dotted key: value}`` where the run differs from its paper-row config (recorded in results.json,
    listed by the model card)."""
    from common.training.schema import check_run_config

    check_run_config(cfg)
    train_cfg = cfg["train"]
    epochs = int(train_cfg["epochs"])
    batch_size = int(train_cfg["batch_size"])
    if epochs < 1 or batch_size < 2:
        raise CVGLError(f"train.epochs must be >= 1 and train.batch_size >= 2 (the triplet loss needs a "
                        f"negative); got epochs={epochs}, batch_size={batch_size}")
    schedule = check_schedule(train_cfg.get("schedule"))
    chief = is_chief()
    # the lock first, before anything is written: a second process on this run directory stops here
    lock = lock_run_dir(out) if chief else None
    try:
        return _run_locked(cfg, out, data, epochs, batch_size, schedule, chief, strategy=strategy,
                           precision=precision, seed=seed, steps_per_epoch=steps_per_epoch, verbose=verbose,
                           validate_every=validate_every, log=log, build_fn=build_fn,
                           extra_callbacks=extra_callbacks, overrides=overrides)
    finally:
        unlock_run_dir(lock)


def _run_locked(cfg, out, data, epochs, batch_size, schedule, chief, *, strategy, precision, seed,
                steps_per_epoch, verbose, validate_every, log, build_fn, extra_callbacks, overrides=None) -> dict:
    train_cfg = cfg["train"]
    if chief:
        gone = remove_leftovers(out)
        if gone:
            log(f"removed {len(gone)} temporary file(s) left by killed processes: "
                + ", ".join(os.path.relpath(p, out) for p in gone))
    cfg_hash = config_hash(cfg)
    _check_existing_run(out, cfg, epochs, log)

    deterministic = bool(train_cfg.get("deterministic", False))
    set_determinism(seed, deterministic)
    policy = set_precision(precision)
    strat = make_strategy(strategy) if keras.backend.backend() == "tensorflow" else None
    replicas = strat.num_replicas_in_sync if strat is not None else 1

    if chief:  # the other workers of a multi-worker run write nothing into the run directory
        os.makedirs(os.path.join(out, "checkpoints"), exist_ok=True)
        os.makedirs(os.path.join(out, "logs"), exist_ok=True)
        cb.atomic_write_text(os.path.join(out, "config.yaml"), yaml.safe_dump(cfg, sort_keys=False))

    if build_fn is None:
        from common.models.config import build_model as build_fn

    scope = strat.scope() if strat is not None else _nullcontext()
    with scope:
        model = build_fn(cfg)
        model(data.example, training=False)
        optimizer = build_optimizer(train_cfg.get("optimizer"), precision=precision, num_replicas=replicas)
        # TensorFlow: no XLA (op determinism and the golden training step are checked without it); other
        # backends (JAX) compile the step as they normally do
        model.compile(optimizer=optimizer, jit_compile=False if keras.backend.backend() == "tensorflow" else "auto")
        # Optimizer slots made now, not in the first step: a tf.function that creates variables is traced
        # twice, and the optimizer's update is most of the trace (GeoDTR's first step: 108 s -> 53 s)
        model.optimizer.build(model.trainable_variables)

    # One pass of the dataset is one epoch; it is repeated and cut into epochs by steps_per_epoch, so a
    # shorter --steps-per-epoch still walks through all the data over the epochs.
    steps = data.n_train // batch_size if train_cfg.get("drop_remainder") else math.ceil(data.n_train / batch_size)
    if steps_per_epoch is not None:
        steps = int(steps_per_epoch)
    if steps < 1:
        raise CVGLError(f"{data.n_train} training pairs give no batch of {batch_size}; lower --batch-size")

    state = cb.RunState("val_R@1" if data.embed_val is not None else "-loss")
    # a non-chief worker keeps its own resume state in a private temporary folder (Keras's rule for
    # multi-worker backups: only the chief's is the run's)
    backup_dir = os.path.join(out, "backup") if chief else _worker_backup_dir(out)
    kill_at = os.environ.get(KILL_ENV)
    kill_in_write = None
    if kill_at and kill_at.endswith(":write"):
        kill_in_write, kill_at = int(kill_at.split(":")[0]), None
    resume = cb.ResumeState(backup_dir, state, steps_per_epoch=steps,
                            csv_path=os.path.join(out, "logs", "train.csv") if chief else None,
                            data_position=lambda step: {"seed": seed, "global_step": step},
                            kill_in_write=kill_in_write)
    saved = resume.read()
    start = int(saved["epoch"]) if saved else 0
    if strat is not None and replicas > 1 and _is_collective(strat):
        saved, start = _agree_on_start(strat, chief, saved, start, backup_dir)

    # the stream of global batches from the first step this process runs (a pure function of seed and step)
    start_step = start * steps
    ramp_epochs = train_cfg.get("augment_ramp_epochs", 0)
    if not isinstance(ramp_epochs, int) or isinstance(ramp_epochs, bool) or ramp_epochs < 0:
        raise CVGLError(f"train.augment_ramp_epochs must be a whole number of epochs >= 0, got {ramp_epochs!r}")
    ramp_steps = ramp_epochs * steps
    ds = data.train_dataset(batch_size, seed, start_step).enumerate(start=start_step)
    if train_cfg.get("azimuth_roll"):
        if not get_spec(cfg["input_spec"]).polar:
            raise CVGLError("train.azimuth_roll needs a polar aerial input (input_spec.polar: true)")
        ds = azimuth_roll(ds, seed, ramp_steps)
    if train_cfg.get("colour_shuffle"):
        ds = colour_shuffle(ds, seed, ramp_steps)
    nan_at = os.environ.get(NAN_ENV)
    if nan_at:
        ds = _inject_nan(ds, int(nan_at))
    ds = ds.map(lambda step, batch: batch)

    callbacks = [EpochLearningRate(float(train_cfg["optimizer"]["learning_rate"]), schedule, epochs), cb.NanGuard(state)]
    validation = None
    if data.embed_val is not None:
        validation = cb.RecallValidation(data.embed_val, state, epochs, every=validate_every)
        callbacks.append(validation)
    callbacks += [cb.Checkpoints(os.path.join(out, "checkpoints"), state, chief=chief), resume]
    callbacks += list(extra_callbacks)
    if chief:
        if _tensorboard_available():
            callbacks.append(keras.callbacks.TensorBoard(os.path.join(out, "logs", "tensorboard"),
                                                         write_graph=False, profile_batch=0))
        else:
            log("TensorBoard logging off: the tensorboard package is not installed (pip install tensorboard)")
    if kill_at:
        callbacks.append(KillSwitch(kill_at))

    log(f"run directory: {out}   config hash {cfg_hash}")
    log(f"strategy: {type(strat).__name__ if strat is not None else keras.backend.backend()} "
        f"({replicas} replica{'s' if replicas > 1 else ''}), global batch {batch_size}"
        f"{f' = {replicas} x {batch_size // replicas}' if replicas > 1 else ''}, precision {policy}, "
        f"{'deterministic' if deterministic else 'not deterministic (train.deterministic: false)'}, seed {seed}")
    log(f"training pairs: {data.n_train}, {steps} steps per epoch, {epochs} epochs, "
        f"schedule {schedule['name']} stepped per epoch; validation: {data.val_note if data.embed_val else 'off'}")
    if start >= epochs:
        state.load_json(saved.get("run", {}))  # fit does not run, so the resume callback does not load it
        resume.resumed_from = start
        log(f"already complete: {start}/{epochs} epochs in {out} (results.json is up to date)")
    elif start:
        log(f"resuming from the saved state after epoch {start}/{epochs} (global step {start_step}; the "
            f"interrupted epoch is replayed from its first batch)")

    t0 = time.time()
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    if start < epochs:
        try:
            model.fit(ds, epochs=epochs, steps_per_epoch=steps, callbacks=callbacks, verbose=verbose,
                      shuffle=False)
        except Exception as exc:  # noqa: BLE001  (an image TensorFlow cannot decode: name the file)
            named = data.image_error(exc) if data.image_error is not None else None
            if named is not None:
                raise named from None
            if replicas > 1 and _is_collective(strat) and type(exc).__name__ in ("UnavailableError",
                                                                                 "AbortedError", "InternalError"):
                raise CVGLError(f"another worker of this multi-worker run stopped ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:160]}); relaunch every worker with the same command: "
                                f"the run resumes from its last backup ({backup_dir})") from None
            raise
    elapsed = time.time() - t0
    if state.nan_at is not None:
        e, s = state.nan_at
        last = os.path.join(out, "checkpoints", "last.keras")
        kept = (f"the last good checkpoint {last} (epoch {len(state.history)}) is intact"
                if os.path.exists(last) else "no epoch had finished, so no checkpoint was written")
        raise CVGLError(f"training loss became NaN at epoch {e}, step {s}; stopped, {kept}. Lower "
                        f"train.optimizer.learning_rate or check the input images; rerunning the same "
                        f"command resumes from the last good epoch")
    results = _results(cfg, cfg_hash, state, data, epochs, elapsed, policy, strategy, replicas, resume.resumed_from)
    results["overrides"] = dict(overrides or {})
    if results["collapsed_epochs"]:
        from common.evaluation.collapse import ADVICE

        n_bad = len(results["collapsed_epochs"])
        if state.best_epoch is None and data.embed_val is not None:
            log(f"WARNING: every validated epoch ({n_bad}) had collapsed descriptors; no best.keras was written "
                f"and results.json has no metrics. The model did not learn; try: {ADVICE}")
        else:
            log(f"note: {n_bad} epoch(s) had collapsed validation descriptors ({results['collapsed_epochs']}); "
                f"none of them was selected")
    if chief:
        cb.atomic_write_json(os.path.join(out, "results.json"), results)
    return results


def _is_collective(strategy) -> bool:
    from common.models.base import _collective

    return _collective(strategy)


def _agree_on_start(strat, chief, saved, start, backup_dir):
    """Every worker of a multi-worker run resumes from the chief's epoch. The chief's start is summed across the
    workers (only the chief contributes), so each worker learns it: a fresh chief makes a worker with a stale
    private state start fresh too; a chief resuming from an epoch a worker has no state for is an error."""
    import shutil

    import tensorflow as tf

    mine = start if chief else 0
    total = strat.reduce(tf.distribute.ReduceOp.SUM, strat.run(lambda: tf.constant(float(mine))), axis=None)
    chief_start = int(round(float(total)))
    if chief or start == chief_start:
        return saved, start
    if chief_start == 0:  # the chief starts fresh: this worker's state is of an earlier run
        shutil.rmtree(backup_dir, ignore_errors=True)
        os.makedirs(backup_dir, exist_ok=True)
        return None, 0
    raise CVGLError(f"this worker's saved state ({backup_dir}) is at epoch {start}, the chief resumes after epoch "
                    f"{chief_start}: the workers' backups disagree. Relaunch every worker with the same run "
                    "directory, or start the run afresh in a new one")


def _worker_backup_dir(out: str) -> str:
    """The private resume folder of a non-chief worker: under the system's temporary folder, named after the
    run directory and the worker's task index (the same on a relaunch, so the worker resumes too)."""
    import hashlib
    import json
    import tempfile

    task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {})
    tag = hashlib.sha256(os.path.abspath(out).encode()).hexdigest()[:12]
    path = os.path.join(tempfile.gettempdir(), f"cvgl-worker-{tag}-{task.get('type', 'worker')}-{task.get('index', 0)}")
    os.makedirs(path, exist_ok=True)
    return path


def _results(cfg, cfg_hash, state, data, epochs, elapsed, policy, strategy, replicas, resumed_from) -> dict:
    best = next((h for h in state.history if h["epoch"] == state.best_epoch), None) or {}
    metrics = {k: best.get(f"val_{k}") for k in ("R@1", "R@5", "R@10", "R@1%")}
    metrics = {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in metrics.items()}
    return {
        "config": cfg.get("name"),
        "config_hash": cfg_hash,
        "family": cfg["model"].get("family"),
        "dataset": cfg.get("dataset"),
        "split": "val",
        "protocol": "index",
        "val_note": data.val_note,
        "root": data.root,
        "synthetic": is_synthetic_root(data.root),
        "metrics": metrics,
        "best_epoch": state.best_epoch,
        "selected_by": state.monitor,
        "selection_rule": "the best monitored value among epochs whose validation descriptors are not collapsed",
        "collapsed_epochs": [h["epoch"] for h in state.history if h.get("val_collapsed")],
        "deterministic": bool(cfg["train"].get("deterministic", False)),
        "epochs": epochs,
        "epochs_done": len(state.history),
        "time_s": round(sum(h.get("epoch_time_s", 0.0) for h in state.history), 2),
        "time_this_session_s": round(elapsed, 2),
        "resumed_from_epoch": resumed_from,
        "precision": policy,
        "strategy": strategy,
        "replicas": replicas,
        "checkpoint": "checkpoints/best.keras",
        "history": state.history,
    }


def _tensorboard_available() -> bool:
    import importlib.util

    return keras.backend.backend() == "tensorflow" and importlib.util.find_spec("tensorboard") is not None


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
