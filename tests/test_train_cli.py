"""experiments.train end to end on a tiny synthetic world (the real readers, pipeline, model class and fit),
plus its one-line errors for bad input."""

import json
import os

import pytest
import yaml

from common.errors import CVGLError

TINY_MGTL = {
    "name": "mgtl_cli_tiny",
    "dataset": "cvusa",
    "input_spec": "safa_polar",
    "model": {"family": "mgtl", "variant": "full", "steps": 1, "dim": 16, "num_heads": 2, "ffn_dim": 16,
              "generator_dim": 16, "vgg_widths": [4, 4, 8, 8, 8], "backbone_weights": None},
    "train": {"optimizer": {"name": "adam", "learning_rate": 1.0e-5}, "schedule": {"name": "constant"},
              "epochs": 150, "batch_size": 16},
}


@pytest.fixture
def world(tmp_path):
    from tests.helpers.world import tiny_world

    return tiny_world(tmp_path, "cvusa", n_train=12, n_val=8, aerial_size=64, pano_size=(16, 88))


@pytest.mark.slow
def test_train_command_writes_the_run_directory(tmp_path, world, capsys):
    from experiments.train import main

    cfg_path = tmp_path / "mgtl_cli_tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(TINY_MGTL))
    out = tmp_path / "run"
    args = ["--config", str(cfg_path), "--root", world, "--out", str(out), "--epochs", "2",
            "--steps-per-epoch", "1", "--batch-size", "4", "input_spec.ground_size=[16,88]",
            "input_spec.aerial_size=[16,88]", "train.optimizer.learning_rate=1e-3"]
    assert main(args) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert any("train.optimizer.learning_rate" in ln and ln.rstrip().endswith("<- override") for ln in lines)
    assert any("train.epochs" in ln and ln.rstrip().endswith("<- flag") for ln in lines)
    assert any("model.steps" in ln and not ln.rstrip().endswith(("override", "flag")) for ln in lines)
    assert "this is the test split" in text  # CVUSA: validation is the test split, said out loud

    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["train"]["epochs"] == 2 and resolved["train"]["batch_size"] == 4
    assert resolved["input_spec"]["ground_size"] == [16, 88] and resolved["model"]["steps"] == 1
    for name in ("checkpoints/best.keras", "checkpoints/last.keras", "backup/state.json", "logs/train.csv"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert results["epochs_done"] == 2 and results["config"] == "mgtl_cli_tiny"
    assert results["selected_by"] == "val_R@1" and 0.0 <= results["metrics"]["R@1"] <= 100.0
    assert len(results["config_hash"]) == 12

    # the same run directory with another recipe is refused, not silently mixed
    with pytest.raises(CVGLError, match="another config"):
        main(args[:-1] + ["train.optimizer.learning_rate=2e-3"])


def test_train_command_bad_input(tmp_path, world):
    from experiments.train import main

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(TINY_MGTL))
    base = ["--config", str(cfg_path), "--out", str(tmp_path / "r")]
    with pytest.raises(CVGLError, match="dataset folder"):
        main(base + ["--root", str(tmp_path / "missing")])
    with pytest.raises(CVGLError, match="no key 'optimiser'"):
        main(base + ["--root", world, "train.optimiser.learning_rate=1"])
    with pytest.raises(CVGLError, match="config not found"):
        main(["--config", "no_such_paper_row", "--root", world, "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit):
        main(base + ["--root", world, "--mixed-precision", "float8"])
