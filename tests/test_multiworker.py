"""Two real worker processes (``MultiWorkerMirroredStrategy``, ``TF_CONFIG`` on loopback ports, CPU) train the
tiny deterministic run of tests/_train_run_worker.py (2 epochs):

* their weights equal a one-process run with the same global batch (8 = 2 workers x 4) to float noise (the
  all-reduce sums in another order; measured 8.9e-8), every epoch's loss to 1e-6;
* only the chief (worker 0) writes the run directory: worker 1, given a run directory of its own, leaves it
  uncreated and keeps its resume state in a private temporary folder;
* worker 1 killed in the middle of epoch 2 (kill -9 after its step 2): worker 0 stops with one line naming the
  way out, relaunching both resumes after epoch 1, and the run ends equal to the uninterrupted two-worker run.

Each process stops by itself (timeouts bound every wait).
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "_train_run_worker.py")
EPOCHS = "2"  # killed in epoch 2, the last: the relaunch replays it


def _ports(n=2):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _env(**extra):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    for key in ("CVGL_TEST_KILL_AT", "CVGL_TEST_NAN_AT", "TF_CONFIG"):
        env.pop(key, None)
    env.update(extra)
    return env


def _two_workers(run0, run1, tmp, kill1=None, timeout=240, also=None):
    """Launch workers 0 and 1 (and ``also``, a one-process command run meanwhile); (rc, stdout, stderr) each."""
    ports = _ports()
    procs = [] if also is None else [subprocess.Popen(also, cwd=ROOT, env=_env(TMPDIR=str(tmp)), text=True,
                                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)]
    for index, run in ((0, run0), (1, run1)):
        tf_config = json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                                "task": {"type": "worker", "index": index}})
        extra = {"TF_CONFIG": tf_config, "TMPDIR": str(tmp)}  # the workers' private folders go there
        if index == 1 and kill1:
            extra["CVGL_TEST_KILL_AT"] = kill1
        procs.append(subprocess.Popen([sys.executable, WORKER, str(run), EPOCHS, "tiny-exact"], cwd=ROOT,
                                      env=_env(**extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append((p.returncode, out, err))
    return outs


def _weights(path):
    import keras

    import tests.train_tiny  # noqa: F401  (registers the tiny model)

    return [np.asarray(w) for w in keras.saving.load_model(path, compile=False).get_weights()]


def _history(run):
    return [h["loss"] for h in json.loads((run / "results.json").read_text())["history"]]


@pytest.mark.slow  # three two-worker launches, one with a single run beside it (~2 min)
def test_two_workers_equal_one_process_write_only_as_chief_and_resume_after_a_kill(tmp_path):
    one, tmp = tmp_path / "one", tmp_path / "tmp"
    tmp.mkdir()
    run, other = tmp_path / "two", tmp_path / "worker1_run"
    single, *workers = _two_workers(run, other, tmp, also=[sys.executable, WORKER, str(one), EPOCHS, "tiny-exact"])
    assert single[0] == 0, single[2][-2000:]
    for code, out, err in workers:
        assert code == 0, err[-3000:]
        assert "2 replicas" in out
    assert not other.exists()  # worker 1 wrote nothing where it was pointed ...
    assert [p.name.split("-")[-2:] for p in tmp.iterdir()] == [["worker", "1"]]  # ... only its private state
    np.testing.assert_allclose(_history(run), _history(one), rtol=1e-6)
    for a, b in zip(_weights(str(run / "checkpoints" / "last.keras")), _weights(str(one / "checkpoints" / "last.keras"))):
        np.testing.assert_allclose(a, b, atol=1e-6)

    again, other2 = tmp_path / "killed", tmp_path / "worker1_killed"
    (code0, out0, err0), (code1, _, _) = _two_workers(again, other2, tmp, kill1="2:2")
    assert code1 == -9
    assert code0 == 2 and "another worker of this multi-worker run stopped" in err0 and "Traceback" not in err0
    assert json.loads((again / "backup" / "state.json").read_text())["epoch"] == 1
    relaunched = _two_workers(again, other2, tmp)
    for code, out, err in relaunched:
        assert code == 0, err[-3000:]
        assert "resuming from the saved state after epoch 1/2" in out
    assert _history(again) == _history(run)
    for a, b in zip(_weights(str(again / "checkpoints" / "last.keras")),
                    _weights(str(run / "checkpoints" / "last.keras"))):
        np.testing.assert_array_equal(a, b)
    assert not other2.exists()
