"""MGTL / SAFA around the models: the paper-row configs, the summary command, the attention picture."""

import json
import os

import cv2
import keras
import numpy as np
import pytest

import mgtl_tf
from common.models.config import config_paths, load_config
from mgtl_tf.safa.specs import SAFA_POLAR
from common.errors import CVGLError
from experiments import summary, visualize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILY_DIRS = (os.path.join(ROOT, "mgtl_tf", "configs"), os.path.join(ROOT, "mgtl_tf", "safa", "configs"))


def mgtl_configs():
    """The configs of MGTL and of its SAFA baseline."""
    return [p for p in config_paths() if os.path.dirname(p) in FAMILY_DIRS]


def test_every_paper_row_has_a_config():
    names = {os.path.splitext(os.path.basename(p))[0] for p in mgtl_configs()}
    for ds in ("cvusa", "cvact"):
        for row in ("full", "backbone_only", "no_cmi", "steps1", "steps3", "steps9", "naive"):
            assert f"mgtl_{ds}_{row}" in names
        assert f"safa_{ds}" in names and f"safa_{ds}_ls" in names


@pytest.mark.parametrize("path", mgtl_configs(), ids=lambda p: os.path.basename(p))
def test_config_is_valid_and_follows_the_recipe(path):
    cfg = load_config(path)
    assert cfg["name"] == os.path.splitext(os.path.basename(path))[0]
    assert cfg["input_spec"] == "safa_polar"
    model = dict(cfg["model"])
    family = model["family"]
    assert family in ("mgtl", "safa")
    from common.models.config import split_model_cfg
    from mgtl_tf.model import MGTL
    from mgtl_tf.safa.model import SAFA
    import inspect

    cls = MGTL if family == "mgtl" else SAFA
    known = tuple(inspect.signature(cls.__init__).parameters)
    split_model_cfg(model, known, family)  # raises on an unknown key
    assert model.get("utm_mask", False) == (cfg["dataset"] == "cvact")  # SAFA's 25 m rule on CVACT only
    opt = cfg["train"]["optimizer"]
    assert opt["name"] == "adam" and opt["learning_rate"] == pytest.approx(1e-5)
    assert cfg["train"]["schedule"]["name"] == "constant"
    assert (cfg["train"]["batch_size"], cfg["train"]["epochs"]) == ((16, 150) if family == "mgtl" else (32, 100))
    for entry in cfg.get("expected") or []:
        assert entry["dataset"] == cfg["dataset"] and entry["split"] in ("val", "test")
        assert all(0 < entry[k] <= 100 for k in ("R@1", "R@5", "R@10", "R@1%") if k in entry)
    if not cfg.get("expected"):
        assert cfg.get("note"), "a row without numbers must say why"


def test_table_numbers():
    assert load_config("mgtl_cvusa_full")["expected"][0]["R@1"] == 94.11
    assert load_config("mgtl_cvact_no_cmi")["expected"][0]["R@1"] == 81.25
    assert load_config("mgtl_cvact_steps3")["expected"][0] == {"dataset": "cvact", "split": "val",
                                                              "protocol": "index", "R@1": 80.51}
    safa_act = load_config("safa_cvact")["expected"]
    assert [e["protocol"] for e in safa_act] == ["index", "radius_5m"]


def _run_summary(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        from common.errors import run_cli

        run_cli(summary.main, list(argv))
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_summary_json_safa_and_backbone_only(capsys):
    report = json.loads(_run_summary(capsys, "--model", "safa", "--json"))
    assert report["params"] == 29_533_696 and abs(report["params"] / 29.53e6 - 1) < 0.01
    assert sum(c["params"] for c in report["components"]) == report["params"]
    assert report["extra"]["GMACs per pair"] == pytest.approx(42.25, abs=0.01)
    table = _run_summary(capsys, "--model", "mgtl", "--variant", "backbone_only")
    assert "29,429,376" in table and "difference +0.03%" in table


def test_summary_paper_figure_only_for_the_paper_setting():
    import argparse

    from mgtl_tf.summary import summarize

    report = summarize(argparse.Namespace(model="mgtl", variant="no_cmi", steps=1, literal_block=False))
    assert report["paper_params"] is None  # Table 2 counts L = 6
    assert report["params"] == 29_429_376 + 2 * (196_992 + 8_448) + 2 * 1_774_464


def _write_pair(tmp_path):
    rng = np.random.default_rng(0)
    ground = rng.integers(0, 255, (64, 320, 3), dtype=np.uint8)
    aerial = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
    g, a = str(tmp_path / "g.png"), str(tmp_path / "a.png")
    cv2.imwrite(g, ground)
    cv2.imwrite(a, aerial)
    return g, a


def test_visualize_cli_draws_mgtl_attention(tmp_path):
    spec = SAFA_POLAR.replace(ground_size=(32, 160), aerial_size=(32, 160))
    keras.utils.set_random_seed(0)
    model = mgtl_tf.build_model(dict(dim=12, num_heads=6, ffn_dim=24, generator_dim=24, vgg_widths=[4, 4, 8, 8, 8],
                                     steps=2, backbone_weights=None), spec)
    weights = str(tmp_path / "m.keras")
    model.save(weights)
    g, a = _write_pair(tmp_path)
    out = str(tmp_path / "att.png")
    assert visualize.main(["--weights", weights, "--ground", g, "--aerial", a, "--out", out, "--head", "2"]) == 0
    image = cv2.imread(out)
    assert image is not None and image.shape[0] > 400 and image.shape[1] > 400
    assert not [f for f in os.listdir(os.path.dirname(out)) if ".tmp" in f]
    from mgtl_tf.visualize import attention_maps, prepare_pair, read_rgb

    ground, aerial = prepare_pair(read_rgb(g), read_rgb(a), spec)
    assert ground.shape == aerial.shape == (1, 32, 160, 3)
    one_head = attention_maps(model, ground, aerial, head=3)
    assert len(one_head["ground"]) == 2 and one_head["aerial"][1].shape == (5, 5)
    with pytest.raises(CVGLError, match="out of range"):
        attention_maps(model, ground, aerial, head=9)
    with pytest.raises(CVGLError, match="missing.png"):
        visualize.main(["--weights", weights, "--ground", str(tmp_path / "missing.png"), "--aerial", a,
                             "--out", out])
    with pytest.raises(CVGLError, match="not found"):
        visualize.main(["--weights", str(tmp_path / "none.keras"), "--ground", g, "--aerial", a, "--out", out])


def test_attention_picture_refuses_backbone_only(tmp_path):
    from mgtl_tf.model import MGTL
    from mgtl_tf.visualize import unwrap_model

    with pytest.raises(CVGLError, match="backbone_only"):
        unwrap_model(MGTL(variant="backbone_only"))
    with pytest.raises(CVGLError, match="not an MGTL"):
        unwrap_model(keras.Sequential([keras.layers.Dense(1)]))


def test_analytical_flops_agree_with_tensorflow_profiler():
    """Ours counts convolutions, dense layers and attention products; TF's profiler also counts bias adds,
    softmax and norms, so it must be a little higher, and close."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from mgtl_tf.model import MGTL
    from mgtl_tf.summary import tower_macs

    spec = SAFA_POLAR.replace(ground_size=(64, 320), aerial_size=(64, 320))
    model = MGTL(input_spec=spec, dim=48, num_heads=6, ffn_dim=96, generator_dim=96, vgg_widths=[8, 8, 16, 16, 32],
                 steps=2)
    model.build()
    fn = tf.function(lambda x: model.ground_tower(x))
    frozen = convert_variables_to_constants_v2(fn.get_concrete_function(tf.TensorSpec((1, 64, 320, 3))))
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    profiled = tf.compat.v1.profiler.profile(graph=frozen.graph, options=opts).total_float_ops
    ours = 2 * tower_macs(model.ground_tower, (64, 320))
    assert ours <= profiled <= 1.03 * ours
