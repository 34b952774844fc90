"""Run one tiny training in this process (used by tests/test_train_resume.py through a subprocess).

Usage: python tests/_train_run_worker.py RUN_DIR EPOCHS [geodtr | tiny-exact]. Data: 48 random pairs (seeded), the tiny
two-tower model of tests/train_tiny.py, AdamW + warm-up cosine, validation on 24 pairs; with ``geodtr``: a tiny
real GeoDTR with dropout, counterfactual noise, azimuth roll and colour shuffle, deterministic, on 32 pairs of
32x64 / 32x32 arrays (tests/train_tiny.geodtr_tiny_config). The fault hooks
(CVGL_TEST_KILL_AT, CVGL_TEST_NAN_AT) come from the environment, as for the real command.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import experiments  # noqa: E402,F401  (the shipped model families, registered as for the commands)

import numpy as np  # noqa: E402

from common.errors import run_cli  # noqa: E402
from tests.train_tiny import tiny_config, array_data, build_tiny  # noqa: E402


def main(argv=None):
    from common.training.runner import run_training

    out, epochs = sys.argv[1], int(sys.argv[2])
    if len(sys.argv) > 3 and sys.argv[3] == "geodtr":  # the real model, every source of randomness on
        import warnings

        from tests.train_tiny import geodtr_tiny_config

        warnings.simplefilter("ignore")
        run_training(geodtr_tiny_config(epochs), out, array_data(32, 16, size=32), strategy="auto", seed=3,
                     verbose=0)
    else:  # the tiny two-tower model; "tiny-exact": deterministic, for the bit-for-bit resume test
        cfg = tiny_config(epochs)
        if len(sys.argv) > 3 and sys.argv[3] == "tiny-exact":
            cfg["train"]["deterministic"] = True
        run_training(cfg, out, array_data(), strategy="auto", seed=0, verbose=0, build_fn=build_tiny)
    print("finished")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    run_cli(main)
