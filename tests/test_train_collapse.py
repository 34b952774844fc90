"""Training's collapse guard: an epoch whose validation descriptors are collapsed (constant / all-zero: R@1 =
100 under the official protocol, since ties favour the query) is reported in one line and never becomes
best.keras; a run whose every epoch collapsed says so and writes no best checkpoint."""

import json
import os

import numpy as np

from tests.train_tiny import array_data, build_tiny, tiny_config


def _train(tmp_path, embed_val, epochs=3):
    from common.training.runner import run_training

    data = array_data()
    data.embed_val = embed_val
    lines = []
    res = run_training(tiny_config(epochs), str(tmp_path / "run"), data, seed=0, verbose=0, build_fn=build_tiny,
                       log=lines.append)
    return res, lines


def test_collapsed_epoch_is_never_best(tmp_path, capsys):
    rng = np.random.default_rng(0)
    healthy = rng.normal(size=(24, 8))
    calls = []

    def embed_val(model):  # epoch 1: distinct descriptors, imperfect; epochs 2-3: all alike (official R@1 100)
        calls.append(1)
        if len(calls) == 1:
            return healthy + 0.8 * rng.normal(size=healthy.shape), healthy
        return np.ones((24, 8)), np.ones((24, 8))

    res, lines = _train(tmp_path, embed_val)
    assert res["best_epoch"] == 1 and res["collapsed_epochs"] == [2, 3]
    assert res["metrics"]["R@1"] < 100.0
    h = res["history"]
    assert h[1]["val_R@1"] == 100.0 and h[1]["val_R@1_pessimistic"] == 0.0 and h[1]["val_collapsed"] == 1.0
    out = capsys.readouterr().out
    assert out.count("COLLAPSED") == 2 and "cannot become best.keras" in out
    assert any("none of them was selected" in ln for ln in lines)


def test_every_epoch_collapsed_writes_no_best(tmp_path):
    res, lines = _train(tmp_path, lambda model: (np.zeros((24, 8)), np.zeros((24, 8))), epochs=2)
    assert res["best_epoch"] is None and res["collapsed_epochs"] == [1, 2]
    assert all(v is None for v in res["metrics"].values())
    run = tmp_path / "run"
    assert not os.path.exists(run / "checkpoints" / "best.keras") and os.path.exists(run / "checkpoints" / "last.keras")
    assert json.loads((run / "results.json").read_text())["collapsed_epochs"] == [1, 2]
    assert any(ln.startswith("WARNING: every validated epoch (2) had collapsed") for ln in lines)
