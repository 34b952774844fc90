"""Bad inputs around run directories, full disks and synth flags, each through the command line in a fresh
process: exit status 2, one ``error:`` line naming the thing, no traceback, nothing changed outside the
expected outputs. (The catalogue of other bad inputs: tests/test_bad_inputs.py.)

* a second ``experiments.train`` on a run directory in use (``RUN/.lock`` held) is refused, naming the pid;
* a finished run is extended by a larger ``--epochs`` (one CSV row per epoch, results.json up to date); fewer
  epochs than were done are refused;
* the temporary files of killed processes (``.tmp-PID-NAME``) are removed at the next start, those of live
  processes are kept;
* a NaN stop leaves no row of the NaN epoch in train.csv, and the resume adds no duplicate row;
* a full disk (ENOSPC) is one line, and no temporary file is left behind (a real size-limited tmpfs when it
  can be mounted, and unit tests of :func:`common.errors.run_cli` and the atomic writes);
* out-of-range ``experiments.synth`` flags are refused before anything is written.

The training runs are the stand-in family (tests/standin_family) on a tiny world, 3 steps an epoch.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = "3"  # steps per epoch of every run here (part of the config: the same for the fixture and its copies)


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=ROOT, CVGL_FAMILIES="tests.standin_family", TF_CPP_MIN_LOG_LEVEL="3",
               KERAS_BACKEND="tensorflow")
    for k in ("CVGL_TRACEBACK", "CVGL_TEST_KILL_AT", "CVGL_TEST_NAN_AT"):
        env.pop(k, None)
    env.update(extra)
    return env


def _cli(module, args, **env):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=_env(**env),
                          capture_output=True, text=True, timeout=300)


def _train(world, out, epochs, **env):
    return _cli("experiments.train", ["--config", "standin_tiny", "--root", world, "--out", out, "--epochs", epochs,
                                      "--steps-per-epoch", STEPS], **env)


def _one_error(res, *needles) -> str:
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, res.stderr[-3000:]
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


def _snapshot(folder, skip=()) -> dict:
    out = {}
    for dp, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(dp, f)
            rel = os.path.relpath(p, folder)
            if rel in skip:
                continue
            with open(p, "rb") as fh:
                out[rel] = (hashlib.sha256(fh.read()).hexdigest(), os.path.getmtime(p))
    return out


def _csv_rows(run):
    with open(os.path.join(run, "logs", "train.csv")) as fh:
        text = fh.read()
    return text, list(csv.DictReader(text.splitlines()))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch run of the stand-in family (copied by each test that changes it)."""
    from tests.helpers.world import tiny_world

    base = tmp_path_factory.mktemp("runs")
    world = tiny_world(base, "cvusa", n_train=8, n_val=8, aerial_size=64, pano_size=(16, 88))
    run = str(base / "finished")
    res = _train(world, run, 2)
    assert res.returncode == 0, res.stderr[-3000:]
    return {"world": world, "run": run}


def _copy(finished, tmp_path) -> str:
    run = str(tmp_path / "run")
    shutil.copytree(finished["run"], run)
    return run


# ------------------------------------------------------------------------------------------------------
# 1. the run directory lock
# ------------------------------------------------------------------------------------------------------
@pytest.mark.slow  # trains (the shared 2-epoch run of the fixture, then more)
def test_second_process_on_a_run_directory_in_use_is_refused(finished, tmp_path):
    run = _copy(finished, tmp_path)
    fd = os.open(os.path.join(run, ".lock"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # this test process holds the run directory
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        before, world = _snapshot(run), _snapshot(finished["world"])
        res = _train(finished["world"], run, 3)  # 3 > 2: without the lock this would train and write
        _one_error(res, f"run directory {run} is in use by process {os.getpid()}", "another --out")
        assert _snapshot(run) == before  # train.csv and every other file untouched
        assert _snapshot(finished["world"]) == world
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------------
# 2. extending a finished run; fewer epochs than done
# ------------------------------------------------------------------------------------------------------
@pytest.mark.slow  # trains (the shared 2-epoch run of the fixture, then more)
def test_finished_run_extends_to_more_epochs(finished, tmp_path):
    run = _copy(finished, tmp_path)
    with open(os.path.join(run, "results.json")) as fh:
        old = json.load(fh)
    res = _train(finished["world"], run, 3)
    assert res.returncode == 0, res.stderr[-3000:]
    line = "extending a finished run from 2 to 3 epochs; the schedule now spans 3 epochs"
    assert res.stdout.count(line) == 1, res.stdout[-3000:]
    text, rows = _csv_rows(run)
    assert len(text.splitlines()) == 4 and text.splitlines()[0].startswith("epoch,")  # one header, 3 rows
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    with open(os.path.join(run, "results.json")) as fh:
        results = json.load(fh)
    assert results["epochs_done"] == 3 and results["epochs"] == 3 and results["resumed_from_epoch"] == 2
    assert results["history"][:2] == old["history"]  # the two finished epochs are kept, not redone
    import yaml

    with open(os.path.join(run, "config.yaml")) as fh:
        assert yaml.safe_load(fh)["train"]["epochs"] == 3


@pytest.mark.slow  # trains (the shared 2-epoch run of the fixture, then more)
def test_fewer_epochs_than_done_are_refused(finished, tmp_path):
    run = _copy(finished, tmp_path)
    before = _snapshot(run, skip=(".lock",))  # the lock file is the one thing a start writes
    res = _train(finished["world"], run, 1)
    _one_error(res, "--epochs 1", "2 epochs", run)
    assert _snapshot(run, skip=(".lock",)) == before


# ------------------------------------------------------------------------------------------------------
# 3. leftovers of killed processes
# ------------------------------------------------------------------------------------------------------
def _dead_pid() -> int:
    for pid in range(999999, 900000, -1):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            continue
    pytest.skip("no unused pid found between 900000 and 999999")


@pytest.mark.slow  # trains (the shared 2-epoch run of the fixture, then more)
def test_leftovers_of_killed_processes_are_removed(finished, tmp_path):
    run = _copy(finished, tmp_path)
    dead = _dead_pid()
    leftovers = [f"checkpoints/.tmp-{dead}-last.keras", f"checkpoints/.tmp-{dead}-best.keras",
                 f"backup/.tmp-{dead}-epoch-3.weights.h5", f"backup/.tmp-{dead}-state.json",
                 f"logs/.tmp-{dead}-train.csv", f".tmp-{dead}-results.json"]
    kept = [f"checkpoints/.tmp-{os.getpid()}-last.keras",  # a live process's (this test's) file stays
            "checkpoints/notes.txt"]
    for rel in leftovers + kept:
        with open(os.path.join(run, rel), "wb") as fh:
            fh.write(b"half a file")
    csv_before = _csv_rows(run)[0]
    res = _train(finished["world"], run, 2)  # the same command: already complete, nothing retrained
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"removed {len(leftovers)} temporary file(s) left by killed processes" in res.stdout
    for rel in leftovers:
        assert not os.path.exists(os.path.join(run, rel)), rel
    for rel in kept:
        assert os.path.isfile(os.path.join(run, rel)), rel
    assert _csv_rows(run)[0] == csv_before


# ------------------------------------------------------------------------------------------------------
# 4. NaN stop, then resume: train.csv keeps one row per finished epoch
# ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_nan_epoch_leaves_no_csv_row_and_the_resume_no_duplicate(finished, tmp_path):
    run = _copy(finished, tmp_path)
    csv_before, _ = _csv_rows(run)
    nan_step = 2 * int(STEPS) + 2  # global step 8: epoch 3, step 2 of 3 (in the middle of the epoch)
    bad = _train(finished["world"], run, 3, CVGL_TEST_NAN_AT=str(nan_step))
    _one_error(bad, "NaN at epoch 3, step 2", "epoch 2")
    assert _csv_rows(run)[0] == csv_before  # no row of the NaN epoch
    with open(os.path.join(run, "backup", "state.json")) as fh:
        assert json.load(fh)["epoch"] == 2
    again = _train(finished["world"], run, 3)
    assert again.returncode == 0, again.stderr[-3000:]
    text, rows = _csv_rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and text.count("epoch,") == 1
    assert "nan" not in text.lower()
    assert text.splitlines()[:3] == csv_before.splitlines()
    with open(os.path.join(run, "results.json")) as fh:
        assert json.load(fh)["epochs_done"] == 3


# ------------------------------------------------------------------------------------------------------
# 5. a full disk
# ------------------------------------------------------------------------------------------------------
def _run_cli_stderr(fn, capsys):
    from common.errors import run_cli

    with pytest.raises(SystemExit) as exc:
        run_cli(fn, [])
    err = capsys.readouterr().err
    return exc.value.code, err


def test_run_cli_turns_a_full_disk_into_one_line(capsys, monkeypatch):
    monkeypatch.delenv("CVGL_TRACEBACK", raising=False)
    tail = "; free space and rerun the same command: finished files are kept whole and the rest is done again\n"

    def enospc(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/r/checkpoints/.tmp-123-last.keras")

    assert _run_cli_stderr(enospc, capsys) == (
        2, "error: no space left on device (writing /r/checkpoints/last.keras)" + tail)

    def edquot(argv):
        raise OSError(errno.EDQUOT, "Disk quota exceeded", "/w/bingmap/19/0000001.jpg.tmp4242")

    assert _run_cli_stderr(edquot, capsys) == (2, "error: no space left on device (writing /w/bingmap/19/0000001.jpg)"
                                               + tail)

    def h5py_like(argv):  # h5py reports ENOSPC inside its message, without an errno
        raise RuntimeError("Can't decrement id ref count (file write failed: time = x, filename = "
                           "'/r/backup/.tmp-7-epoch-1.weights.h5', file descriptor = 5, errno = 28, error message "
                           "= 'No space left on device', buf = 0x1)")

    assert _run_cli_stderr(h5py_like, capsys) == (
        2, "error: no space left on device (writing /r/backup/epoch-1.weights.h5)" + tail)

    def wrapped(argv):  # raised from a full disk, the file unknown
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise ValueError("saving failed") from exc

    assert _run_cli_stderr(wrapped, capsys) == (2, "error: no space left on device" + tail)

    def other(argv):  # any other OSError is not hidden
        raise OSError(errno.EACCES, "Permission denied", "/r/x")

    from common.errors import run_cli

    with pytest.raises(PermissionError):
        run_cli(other, [])


def test_atomic_writes_remove_their_temporary_file_on_failure(tmp_path, monkeypatch):
    from common.synthetic import layouts
    from common.training import callbacks as cb

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    target = str(tmp_path / "results.json")
    with monkeypatch.context() as m:
        m.setattr(cb.os, "fsync", full)
        with pytest.raises(OSError) as exc:
            cb.atomic_write_json(target, {"a": 1})
    assert exc.value.errno == errno.ENOSPC and exc.value.filename == target  # the line names the real file
    assert os.listdir(tmp_path) == []

    class HalfModel:  # writes half a file, then the disk is full
        weights, optimizer = [], None

        def save(self, path):
            with open(path, "wb") as fh:
                fh.write(b"half")
            full()

        save_weights = save

    for fn, name in ((cb.atomic_save_model, "last.keras"), (cb.atomic_save_weights, "epoch-1.weights.h5")):
        with pytest.raises(OSError):
            fn(HalfModel(), str(tmp_path / name))
        assert os.listdir(tmp_path) == [], name

    class Var:
        shape, dtype = (1 << 40,), "float32"  # 4 TiB: cannot fit, refused before anything is written

    class HugeModel(HalfModel):
        weights = [Var()]

    with pytest.raises(OSError) as exc:
        cb.atomic_save_weights(HugeModel(), str(tmp_path / "epoch-2.weights.h5"))
    assert exc.value.errno == errno.ENOSPC and os.listdir(tmp_path) == []

    jpg = str(tmp_path / "bingmap" / "19" / "0000001.jpg")
    with monkeypatch.context() as m:
        m.setattr(layouts.os, "replace", full)
        with pytest.raises(OSError) as exc:
            layouts.atomic_write(jpg, b"\xff\xd8 jpeg bytes")
    assert exc.value.filename == jpg and os.listdir(os.path.dirname(jpg)) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (we are root in the sandbox); skipped where it cannot be mounted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(disk)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here ({(res.stderr or res.stdout).strip()}); the full-disk "
                    "path is covered by the run_cli and atomic-write unit tests")
    try:
        yield str(disk)
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_synth_into_a_full_disk_is_one_line_and_leaves_no_temporary_file(small_disk, workers):
    """Also with worker processes: a worker's full disk is the same one line (no traceback from the pool)."""
    # most of the 2 MiB taken by a filler, so that a dozen small pairs fill the rest
    free = shutil.disk_usage(small_disk).free
    filler = os.path.join(small_disk, "filler")
    with open(filler, "wb") as fh:
        fh.write(b"\0" * (free - 150 * 1024))
    out = os.path.join(small_disk, "world")
    args = ["--layout", "cvusa", "--out", out, "--train", "12", "--aerial-size", "256", "--pano-size", "64x352",
            "--no-sheet", "--workers", str(workers)]
    res = _cli("experiments.synth", args)
    line = _one_error(res, "no space left on device (writing " + out, "free space and rerun")
    assert line.endswith(".jpg); free space and rerun the same command: finished files are kept whole and the "
                         "rest is done again"), line
    names = [os.path.join(d, f) for d, _, fs in os.walk(small_disk) for f in fs]
    assert not [n for n in names if ".tmp" in os.path.basename(n)], names
    import cv2

    jpgs = [n for n in names if n.endswith(".jpg")]
    assert jpgs and all(cv2.imread(n) is not None for n in jpgs)  # what was written is whole
    os.remove(filler)  # space freed: the same command resumes and finishes
    again = _cli("experiments.synth", args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert os.path.isfile(os.path.join(out, "synth.json"))


def _fill(disk, leave=0):
    """Fill ``disk`` until (about) ``leave`` bytes are free."""
    filler = os.path.join(disk, "filler")
    with open(filler, "ab") as fh:
        try:
            while shutil.disk_usage(disk).free > leave:
                fh.write(b"\0" * max(4096, min(1 << 20, shutil.disk_usage(disk).free - leave)))
                fh.flush()
        except OSError:
            pass
    return filler


@pytest.mark.slow
def test_serving_outputs_on_a_full_disk(small_disk, tmp_path):
    """export, index build, evaluate --out and localize --out into a full disk: one line each, naming what it
    was writing, rc 2, no temporary file left, and the good files already on the disk (an earlier
    localisation's JSON and picture, an earlier index) untouched."""
    from tests.helpers.cli_cases import assert_one_error, run_cases
    from tests.helpers.world import tiny_world

    import tests.standin_family as fam
    from common.data.readers import read_split
    from common.serving.export import load_export, write_export
    from common.serving.index import build_index
    from common.serving.preprocess import end_to_end

    world = tiny_world(tmp_path, "cvusa", n_train=4, n_val=6, aerial_size=64, pano_size=(16, 88))
    model = fam.build_model({}, fam.STANDIN_SPEC)
    weights = str(tmp_path / "best.keras")
    model.save(weights)
    export = str(tmp_path / "export")
    write_export(end_to_end(model), export, {"name": "standin_tiny", "model": {"family": "standin"}})
    query = read_split("cvusa", world, "val")[0].ground
    index = os.path.join(small_disk, "earlier.npz")
    build_index(load_export(export), read_split("cvusa", world, "val"), index, progress=False)
    loc_out = os.path.join(small_disk, "loc")
    first = run_cases([("experiments.localize", ["--export", export, "--index", index, "--query", query,
                                                 "--out", loc_out])])[0]
    assert first["rc"] == 0, first["stderr"][-2000:]
    before = _snapshot(small_disk)
    filler = _fill(small_disk)

    cases = {
        "export": (("experiments.export", ["--weights", weights, "--config", "standin_tiny", "--out",
                                           os.path.join(small_disk, "new_export")]), "new_export"),
        "index build": (("experiments.index", ["build", "--export", export, "--dataset", "cvusa", "--root", world,
                                               "--split", "val", "--out", os.path.join(small_disk, "new.npz")]),
                        "new.npz"),
        "evaluate --out": (("experiments.evaluate", ["--dataset", "cvusa", "--split", "val", "--root", world,
                                                     "--export", export, "--no-progress", "--out",
                                                     os.path.join(small_disk, "e.json")]), "e.json"),
        "localize (again, same --out)": (("experiments.localize", ["--export", export, "--index", index, "--query",
                                                                   query, "--out", loc_out]), loc_out),
    }
    results = run_cases([c for c, _ in cases.values()])
    for (name, (_, needle)), res in zip(cases.items(), results):
        try:
            line = assert_one_error(res, "no space left on device", needle)
        except AssertionError as exc:
            raise AssertionError(f"case {name!r}: {exc}") from None
        assert "free space" in line, line
    os.remove(filler)
    assert _snapshot(small_disk) == before  # nothing half-written, the earlier files as they were


# ------------------------------------------------------------------------------------------------------
# 6. out-of-range synth flags
# ------------------------------------------------------------------------------------------------------
SYNTH_CASES = [
    (["--aerial-size", "0"], "--aerial-size"),
    (["--aerial-size", "-64"], "--aerial-size"),
    (["--aerial-size", "5000"], "--aerial-size"),
    (["--train", "-1"], "--train"),
    (["--val", "-2"], "--val"),
    (["--test", "-3"], "--test"),
    (["--pano-size", "0x0"], "--pano-size"),
    (["--pano-size", "32x5000"], "--pano-size"),
    (["--workers", "0"], "--workers"),
    (["--vfov", "0"], "--vfov"),
    (["--vfov", "270"], "--vfov"),
    (["--heading-noise", "-1"], "--heading-noise"),
    (["--near-fraction", "1.5"], "--near-fraction"),
    (["--seed", "-1"], "--seed"),
    (["--baseline-size", "0x88"], "--baseline-size"),
]


def test_synth_out_of_range_flags_are_refused(tmp_path):
    for extra, flag in SYNTH_CASES:
        out = tmp_path / "world"
        res = _cli("experiments.synth", ["--layout", "cvusa", "--out", out, "--train", "4", "--val", "2", *extra])
        try:
            line = _one_error(res, flag, extra[-1])
        except AssertionError as exc:
            raise AssertionError(f"synth {' '.join(extra)}: {exc}") from None
        assert "must be" in line, line
        assert os.listdir(tmp_path) == [], extra  # refused before anything was written
