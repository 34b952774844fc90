"""Resume after kill -9 and the NaN guard, on a tiny run in a subprocess (tests/_train_run_worker.py).

* kill -9 during epoch 2 (a deterministic SIGKILL after step 3, ``CVGL_TEST_KILL_AT``): every file already in
  the run directory is whole (config, checkpoints load, resume state parses, no temporary files); rerunning
  the same command resumes after epoch 1 and ends with all 3 epochs, one CSV row per epoch.
* a NaN injected into the ground images of global step 9 (epoch 2, step 3; ``CVGL_TEST_NAN_AT``) stops the
  run with exit status 2 and a one-line message naming the epoch/step and the intact checkpoint; the
  checkpoint holds the finite weights of epoch 1; rerunning without the NaN resumes and finishes.
"""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "_train_run_worker.py")


def _run(out, epochs, extra=(), **env_extra):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("CVGL_TEST_KILL_AT", None)
    env.pop("CVGL_TEST_NAN_AT", None)
    env.update(env_extra)
    return subprocess.run([sys.executable, WORKER, str(out), str(epochs), *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _load(path):
    import keras

    import tests.train_tiny  # noqa: F401  (registers the tiny model)

    return keras.saving.load_model(path, compile=False)


def _check_whole(run):
    """Every file of the run directory is complete and readable."""
    import yaml

    names = [os.path.join(d, f) for d, _, fs in os.walk(run) for f in fs]
    assert not [n for n in names if os.path.basename(n).startswith(".tmp-")], names
    with open(os.path.join(run, "config.yaml")) as fh:
        assert yaml.safe_load(fh)["name"] == "tiny_run"
    with open(os.path.join(run, "backup", "state.json")) as fh:
        state = json.load(fh)
    for name in ("last.keras", "best.keras"):
        model = _load(os.path.join(run, "checkpoints", name))
        assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    return state


def _csv_epochs(run):
    with open(os.path.join(run, "logs", "train.csv")) as fh:
        return [int(r["epoch"]) for r in csv.DictReader(fh)]


@pytest.mark.slow
def test_kill_during_epoch_2_then_resume(tmp_path):
    run = tmp_path / "run"
    killed = _run(run, 3, CVGL_TEST_KILL_AT="2:3")
    assert killed.returncode == -9, killed.stderr[-2000:]
    state = _check_whole(run)
    assert state["epoch"] == 1
    assert not (run / "results.json").exists()
    epoch1 = state["run"]["history"][0]

    again = _run(run, 3)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from the saved state after epoch 1/3" in again.stdout
    state = _check_whole(run)
    results = json.loads((run / "results.json").read_text())
    assert results["epochs_done"] == 3 and results["epochs"] == 3 and state["epoch"] == 3
    assert results["resumed_from_epoch"] == 1
    assert results["history"][0] == epoch1  # the epoch before the kill is kept, not redone
    assert [h["epoch"] for h in results["history"]] == [1, 2, 3]
    assert _csv_epochs(run) == [1, 2, 3]
    assert results["metrics"]["R@1"] is not None

    done = _run(run, 3)  # a finished run is left alone
    assert done.returncode == 0 and "already complete: 3/3" in done.stdout
    again_results = json.loads((run / "results.json").read_text())
    assert again_results["metrics"] == results["metrics"] and again_results["epochs_done"] == 3
    assert again_results["best_epoch"] == results["best_epoch"]


@pytest.mark.slow
def test_nan_stops_with_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    bad = _run(run, 3, CVGL_TEST_NAN_AT="9")
    assert bad.returncode == 2, bad.stderr[-2000:]
    lines = [ln for ln in bad.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in bad.stderr
    assert "NaN at epoch 2, step 3" in lines[0] and "last good checkpoint" in lines[0] and "epoch 1" in lines[0]
    state = _check_whole(run)
    assert state["epoch"] == 1
    assert not (run / "results.json").exists()
    last = _load(str(run / "checkpoints" / "last.keras"))
    best = _load(str(run / "checkpoints" / "best.keras"))
    for a, b in zip(last.get_weights(), best.get_weights()):
        np.testing.assert_array_equal(a, b)  # epoch 1 was both the last and the best

    again = _run(run, 3)  # without the NaN the same command resumes and finishes
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((run / "results.json").read_text())["epochs_done"] == 3


# --- exact resume: the real GeoDTR (dropout, counterfactual noise, azimuth roll, colour shuffle), deterministic
def _weights(path):
    import keras

    import geodtr_tf  # noqa: F401
    import tests.train_tiny  # noqa: F401

    model = keras.saving.load_model(path, compile=False)
    return [np.asarray(v) for v in model.weights]


def _untimed(history):
    return [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in history]


def _csv_untimed(run):
    with open(os.path.join(run, "logs", "train.csv")) as fh:
        return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in csv.DictReader(fh)]


EXACT_EPOCHS = 2  # killed in epoch 2, its last: the resumed run replays it and must end as the uninterrupted one


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The uninterrupted 2-epoch run of a model ("geodtr" or "tiny-exact"), made once per module."""
    runs = {}

    def get(model):
        if model not in runs:
            run = tmp_path_factory.mktemp("exact") / f"uninterrupted-{model}"
            done = _run(run, EXACT_EPOCHS, extra=[model])
            assert done.returncode == 0, done.stderr[-3000:]
            runs[model] = run
        return runs[model]

    return get


def _assert_same_run(a, b):
    ra, rb = (json.loads((r / "results.json").read_text()) for r in (a, b))
    assert _untimed(ra["history"]) == _untimed(rb["history"])  # every loss, lr and val metric, bit for bit
    assert ra["metrics"] == rb["metrics"] and ra["best_epoch"] == rb["best_epoch"]
    for name in ("last.keras", "best.keras"):
        wa, wb = _weights(str(a / "checkpoints" / name)), _weights(str(b / "checkpoints" / name))
        assert len(wa) == len(wb)
        for x, y in zip(wa, wb):
            np.testing.assert_array_equal(x, y)
    assert _csv_untimed(a) == _csv_untimed(b)
    sa, sb = (json.loads((r / "backup" / "state.json").read_text()) for r in (a, b))
    assert sa["random_states"] == sb["random_states"] and sa["global_step"] == sb["global_step"]


@pytest.mark.slow
@pytest.mark.parametrize("model,kill_at", [("geodtr", "2:2"), ("tiny-exact", "2:write")])
def test_resume_is_bit_identical_to_an_uninterrupted_run(uninterrupted, tmp_path, model, kill_at):
    """Killed in the middle of epoch 2 (after its step 2 of 4: the real GeoDTR, with dropout, counterfactual
    noise, the azimuth roll and the colour shuffle), or in the middle of epoch 2's backup write (new weights on
    disk under a temporary name, state.json not yet committed: the file protocol, shown on the tiny model): the
    same command resumes after epoch 1, replays epoch 2 from its first batch, and ends bit-identical to the
    uninterrupted run."""
    run = tmp_path / "run"
    killed = _run(run, EXACT_EPOCHS, extra=[model], CVGL_TEST_KILL_AT=kill_at)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert json.loads((run / "backup" / "state.json").read_text())["epoch"] == 1
    again = _run(run, EXACT_EPOCHS, extra=[model])
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from the saved state after epoch 1/{EXACT_EPOCHS}" in again.stdout
    _assert_same_run(uninterrupted(model), run)
