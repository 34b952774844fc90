"""experiments.demo end to end at a reduced size (MGTL only, a small city A, a few epochs): the run-directory
layout the issue names, demo_results.json, the pictures, the export, and the localisation of a held-out query
through the demo's own export (its true match must be among the top 5 of city A's val aerials).

The full-size demo (`make demo`, both models, 23m36s on a 2-core machine) is measured by hand; its figures are in
docs/training.md. This test runs the same code path with
`--train 128 --val-a 16 --val-b 50 --epochs 4 --models mgtl` (81 s alone; the held-out query's true match
ranks 1st of 16: deterministic, so on every run).
"""

import json
import os

import pytest


@pytest.mark.slow
def test_demo_end_to_end_reduced(tmp_path):
    from experiments import demo

    out = tmp_path / "demo"
    args = ["--out", str(out), "--models", "mgtl", "--train", "128", "--val-a", "16", "--val-b", "50",
            "--epochs", "4", "--workers", "1", "--map-queries", "3", "--map-stride-m", "50"]
    assert demo.main(args) == 0

    results = json.loads((out / "demo_results.json").read_text())
    assert isinstance(results, list) and [e["model"] for e in results] == ["mgtl"]
    entry = results[0]
    for key in ("R@1", "R@5", "R@10"):
        assert 0.0 <= entry[key] <= 100.0
        assert 0.0 <= entry["baseline"][key] <= 100.0
    assert entry["R@1%"] is None and entry["baseline"]["R@1%"] is None  # N = 50 < 100: no 1 % slot
    assert entry["N"] == 50

    run = out / "runs" / "mgtl"
    for name in ("results.json", "config.yaml", "checkpoints/best.keras", "checkpoints/last.keras",
                 "recall_curve.png", "retrieval_grid.png", "mgtl_attention.png"):
        assert (run / name).is_file(), name
    assert (out / "recall_curves.png").is_file()
    export = out / "exports" / "mgtl"
    assert (export / "model.keras").is_file() and (export / "saved_model" / "saved_model.pb").is_file()

    # the held-out query (city A val pair 0, never trained on) is localised through the demo's export
    assert entry["export"]["status"] == "done"
    loc = entry["export"]["localize"]
    assert loc["true_id"] is not None and loc["true_rank"] is not None
    assert entry["localize_true_rank"] == loc["true_rank"]
    assert loc["true_rank"] <= 5, f"true match ranked {loc['true_rank']} of 16"
    assert any(h["true_match"] for h in loc["hits"])
    assert any(f.endswith(".png") for f in os.listdir(run / "localize"))
    mp = entry["map"]  # the map path: city A's orthophoto, 25 tiles every 50 m, 3 new panoramas in lat/lon
    assert mp["tiles"] == 25 and mp["stride_m"] == 50 and mp["queries"] == 3 and 0 <= mp["inside_top1_tile"] <= 100
    assert 0 < mp["chance_inside_top1_tile"] < 100 and mp["median_error_m"] >= 0
    located = json.loads((run / "localize_map" / "q00001.json").read_text())
    assert located["true_latlon"] and all(h["latlon"] and h["metres_from_true"] is not None for h in located["hits"])
    assert (run / "localize_map" / "q00001.png").is_file() and (out / "data" / "map_a" / "orthophoto.tif").is_file()


@pytest.mark.parametrize("name", ["geodtr", "mgtl"])
def test_demo_configs_build_at_demo_size(name):
    """Each model's demo recipe resolves from its paper-row config, marks every demo override, and builds
    the real model class at the demo input size (one forward pass of a batch of 2 gives unit descriptors)."""
    import numpy as np

    from common.models.config import build_model
    from experiments import demo

    cfg, marked = demo.demo_config(name)
    assert cfg["name"] == demo.demo_recipes()[name]["config"]
    expected = set(demo.COMMON) | set(demo.demo_recipes()[name]["overrides"]) | {"train.epochs"}
    assert set(marked) == expected
    assert cfg["train"]["epochs"] == demo.demo_recipes()[name]["epochs"]
    assert cfg["train"]["azimuth_roll"] is True and cfg["train"]["colour_shuffle"] is True
    model = build_model(cfg)
    h, w = cfg["input_spec"]["ground_size"]
    ha, wa = cfg["input_spec"]["aerial_size"]
    rng = np.random.default_rng(0)
    out = model({"ground": rng.normal(size=(2, h, w, 3)).astype("float32"),
                 "aerial": rng.normal(size=(2, ha, wa, 3)).astype("float32")}, training=False)
    for view in ("ground", "aerial"):
        norms = np.linalg.norm(np.asarray(out[view]), axis=-1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-4)
