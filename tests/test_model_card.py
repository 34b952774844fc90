"""The model card and parity of a synthetic-world run say so, list the run's overrides and include every
evaluation that was run (the run's results.json and each eval_*.json), with no paper number beside them."""

import json

from common.evaluation.parity import compare, format_report
from common.serving.export import model_card


def _meta():
    return {"name": "geodtr_cvusa_polar_ls", "family": "geodtr", "parameters": 1_500_000, "descriptor_dim": 512,
            "fingerprint": "f" * 64, "aerial_source_size": None, "max_abs_diff_vs_keras": 1e-7,
            "input_spec": {"ground_size": [32, 192], "aerial_size": [32, 192], "polar": True,
                           "normalisation": "tanh"}, "aerial_extent_m": 150.0, "aerial_px": 128}


def test_synthetic_run_card_lists_overrides_and_every_evaluation(tmp_path):
    world = tmp_path / "city"
    world.mkdir()
    (world / "synth.json").write_text("{}")
    metrics = {"R@1": 5.6, "R@5": 18.2, "R@10": 26.4, "R@1%": 31.0}
    run = {"config": "geodtr_cvusa_polar_ls", "dataset": "cvusa", "split": "val", "protocol": "index",
           "metrics": metrics, "root": str(world), "synthetic": True, "val_note": "city A val",
           "overrides": {"model.ffn_dim": 256, "train.optimizer.learning_rate": 0.001}}
    cross = {"config": "geodtr_cvusa_polar_ls", "dataset": "cvact", "split": "val", "protocol": "index",
             "metrics": {"R@1": 1.2, "R@5": 4.0, "R@10": 8.0, "R@1%": None}, "root": str(world)}
    card = model_card(_meta(), {"dataset": "cvusa", "train": {}, "source": {"paper": "GeoDTR"}}, [run, cross])
    assert "trained on the project's synthetic world" in card
    assert "differs from the paper row in 2 keys: `model.ffn_dim` = 256; `train.optimizer.learning_rate` = 0.001" in card
    assert "| cvusa | val | index | 5.60 | 18.20 | 26.40 | 31.00 | not comparable (synthetic world) |" in card
    assert "| cvact | val | index | 1.20 | 4.00 | 8.00 | - | not comparable (synthetic world) |" in card
    assert "95.43" not in card  # the paper's R@1 is not put beside synthetic numbers
    assert "training aerial tiles cover 150 m at 128 px (1.172 m/px)" in card
    report = format_report(compare(json.loads(json.dumps(run))))
    assert "note: these results are on a synthetic world" in report


def test_a_paper_recipe_run_says_it_has_no_overrides():
    run = {"config": "geodtr_cvusa_polar_ls", "dataset": "cvusa", "split": "val", "protocol": "index",
           "metrics": {"R@1": 95.1}, "overrides": {}}
    card = model_card(_meta(), {"dataset": "cvusa", "train": {}}, run)
    assert "the paper row's recipe, no overrides" in card and "95.43" in card
