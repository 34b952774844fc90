"""Parity report: paper rows come from the configs' `expected` entries, matching by config/dataset/split/
protocol, differences per metric, --strict exit codes, and the shipped configs' rows are well formed."""

import json

import pytest
import yaml

from common.models.config import config_paths
from common.errors import CVGLError
from common.evaluation import parity
from experiments import parity as parity_cmd

CFG = {
    "name": "row_a",
    "source": {"paper": "Paper A", "table": "Table 1", "row": "A (polar)"},
    "dataset": "cvact",
    "model": {"family": "geodtr"},
    "expected": [
        {"dataset": "cvact", "split": "val", "protocol": "index", "R@1": 86.21, "R@5": 95.44, "R@10": 96.72,
         "R@1%": 98.77},
        {"dataset": "cvact", "split": "test", "protocol": "radius_5m", "R@1": 64.52, "R@5": 88.59},
    ],
}


@pytest.fixture
def configs(tmp_path, monkeypatch):
    path = tmp_path / "row_a.yaml"
    path.write_text(yaml.safe_dump(CFG))
    (tmp_path / "no_expected.yaml").write_text(yaml.safe_dump({"name": "row_b", "expected": None}))
    paths = [str(path), str(tmp_path / "no_expected.yaml")]
    monkeypatch.setattr(parity, "config_paths", lambda: paths)
    return paths


def _result(r1, split="val", protocol="index", config="row_a", **extra):
    metrics = {"R@1": r1, "R@5": 95.0, "R@10": 96.0, "R@1%": None}
    return dict({"config": config, "dataset": "cvact", "split": split, "protocol": protocol, "metrics": metrics},
                **extra)


def test_rows_come_from_config_expected_entries(configs):
    rows = parity.paper_rows()
    assert [(r["config"], r["split"], r["protocol"]) for r in rows] == [("row_a", "val", "index"),
                                                                        ("row_a", "test", "radius_5m")]
    assert rows[0]["table"] == "Table 1" and rows[0]["row"] == "A (polar)"
    assert rows[1]["metrics"] == {"R@1": 64.52, "R@5": 88.59}


def test_compare_matches_setting_and_computes_differences(configs):
    report = parity.compare([_result(85.0), _result(60.0, split="test", protocol="radius_5m")])
    val, test = report
    assert val["paper"]["split"] == "val" and test["paper"]["split"] == "test"
    assert val["diffs"]["R@1"] == pytest.approx(85.0 - 86.21)
    assert val["diffs"]["R@5"] == pytest.approx(95.0 - 95.44)
    assert "R@1%" not in val["diffs"]  # ours is None: nothing to compare
    assert test["diffs"] == {"R@1": pytest.approx(60.0 - 64.52), "R@5": pytest.approx(95.0 - 88.59)}
    # the 5 m rule spelled "utm_5m" (as some configs do) is the evaluator's "radius_5m"
    assert parity.compare(_result(60.0, split="test", protocol="utm_5m"))[0]["paper"]["split"] == "test"
    # another protocol on the same split (exact id on CVACT_test) has no paper row
    assert parity.compare(_result(70.0, split="test", protocol="index"))[0]["paper"] is None
    text = parity.format_report(report)
    assert "Paper A, Table 1, row \"A (polar)\"" in text
    assert "  R@1         85.00    86.21    -1.21\n" in text


def test_strict_tolerates_one_point(configs):
    assert parity.strict_failures(parity.compare(_result(85.22))) == []  # 0.99 below
    assert len(parity.strict_failures(parity.compare(_result(85.20)))) == 1  # 1.01 below
    assert parity.strict_failures(parity.compare(_result(99.0))) == []  # above the paper


def test_results_file_shapes(configs):
    train_style = _result(86.0, family="geodtr", best_epoch=3)  # experiments.train: RUN/results.json
    assert parity.our_evaluations(train_style)[0]["metrics"]["R@1"] == 86.0
    nested = {"config": "row_a", "evaluations": [{"dataset": "cvact", "split": "val", "protocol": "index",
                                                  "metrics": {"R@1": 1.0}}]}
    assert parity.our_evaluations(nested)[0]["config"] == "row_a"
    assert parity.our_evaluations({"config": "row_a", "metrics": {"R@1": None}}) == []


def test_cli_exit_codes(configs, tmp_path, capsys):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(_result(86.0)))
    bad.write_text(json.dumps(_result(80.0)))
    assert parity_cmd.main(["--results", str(good), "--strict"]) == 0
    assert "parity OK" in capsys.readouterr().out
    assert parity_cmd.main(["--results", str(bad)]) == 0  # a report, not a check
    assert parity_cmd.main(["--results", str(bad), "--strict"]) == 1
    assert "6.21 points below" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_result(80.0, config="unknown_row")))
    assert parity_cmd.main(["--results", str(other)]) == 0
    assert "no paper row" in capsys.readouterr().out
    with pytest.raises(CVGLError, match="nothing was checked"):
        parity_cmd.main(["--results", str(other), "--strict"])
    assert parity_cmd.main(["--results", str(other), "--config", "row_a", "--strict"]) == 1  # explicit row
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(CVGLError, match="not valid JSON"):
        parity_cmd.main(["--results", str(broken)])
    with pytest.raises(CVGLError, match="results file not found"):
        parity_cmd.main(["--results", str(tmp_path / "missing.json")])
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"config": "row_a"}))
    with pytest.raises(CVGLError, match="no evaluation"):
        parity_cmd.main(["--results", str(empty)])


def test_shipped_paper_rows_are_well_formed():
    rows = parity.paper_rows(config_paths())
    for row in rows:
        assert row["dataset"] in ("cvusa", "cvact"), row
        assert row["split"] in ("val", "test"), row
        assert parity._norm_protocol(row["protocol"]) in ("index", "radius_5m"), row  # what evaluate writes
        assert "R@1" in row["metrics"] and all(0 < v <= 100 for v in row["metrics"].values()), row
        assert row["table"] != "?" and row["row"] != "?", row
    # each setting of a config appears once, so a result matches exactly one paper row
    keys = [(r["config"], r["dataset"], r["split"], r["protocol"]) for r in rows]
    assert len(keys) == len(set(keys))


def test_synthetic_results_are_flagged(configs, tmp_path):
    (tmp_path / "synth.json").write_text("{}")
    text = parity.format_report(parity.compare(_result(10.0, root=str(tmp_path))))
    assert "synthetic world" in text
    assert "synthetic world" not in parity.format_report(parity.compare(_result(10.0)))
