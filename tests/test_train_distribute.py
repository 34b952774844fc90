"""Full-batch loss under MirroredStrategy: two logical CPU replicas == one device on the same global batch.

Runs tests/_train_distribute_worker.py in a fresh process (logical devices must be configured before
TensorFlow initialises, and must not leak into other tests). The worker checks, on a global batch of 8 split
4 + 4 over two replicas, with a loss that needs every in-batch negative, a per-sample extra output and the
positions (25 m mask):
* the logged loss of one ``fit`` step equals the hand-computed full-batch loss;
* the gradient (SGD with lr 1: the update) equals the one-device gradient;
* one AdamW step with an active global-norm clip (the GeoDTR recipe) gives the same weights.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_mirrored_two_replicas_match_one_device():
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "_train_distribute_worker.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    assert out["one_loss_diff"] < 1e-5 and out["mirrored_loss_diff"] < 1e-5, out
    assert out["mirrored_grad_scale"] > 0.1  # the gradient is not trivially zero
    assert out["one_grad_diff"] < 1e-5 and out["mirrored_grad_diff"] < 1e-5, out
    assert out["adamw_moved"] > 1e-4  # the step did something
    assert out["adamw_weight_diff"] < 1e-6, out
