"""SAFA's published TensorFlow 1 checkpoints load into the Keras SAFA and reproduce SAFA's own graph.

Golden: tests/fixtures/safa/golden.npz holds the descriptors of SAFA's official TF1 graph (its ``VGG.py`` and
``spatial_net.py`` run unmodified under ``tf.compat.v1``, by tests/fixtures/safa/make_golden.py) for seeded
weights and inputs at 112x616, B = 2, and the names and shapes of its 60 variables. Here the same seeded
weights (tests/helpers/safa_golden.py) are written under those names as a TF1 checkpoint with
``tf.compat.v1.train.Saver`` (the format SAFA releases, plus Adam slots as a training checkpoint has),
converted by ``experiments.convert_weights --from safa-tf1``, and the Keras SAFA's descriptors must equal the
stored ones. Measured: max |difference| 3.7e-8 (ground) and 4.5e-8 (aerial) on unit descriptors.
"""

import os

import numpy as np
import pytest

from common.errors import CVGLError
from tests.helpers import safa_golden as golden

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "safa", "golden.npz")
TOL = 1e-6  # measured 3.7e-8 (ground), 4.5e-8 (aerial)


def _golden():
    with np.load(FIXTURE, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _values(g, skip=(), reshape=None):
    out = {}
    for name, shape in zip(g["names"], g["shapes"]):
        name, shape = str(name), tuple(int(s) for s in str(shape).split(","))
        if name in skip:
            continue
        if reshape and name in reshape:
            shape = reshape[name]
        out[name] = golden.weight(name, shape)
    return out


def write_tf1_checkpoint(values: dict, prefix: str) -> str:
    """``values`` as TF1 variables in a fresh graph, saved with ``tf.compat.v1.train.Saver``: the format of
    SAFA's ``model.ckpt``."""
    import tensorflow as tf

    v1 = tf.compat.v1
    with tf.Graph().as_default():
        variables = [v1.Variable(v, name=n) for n, v in values.items()]
        saver = v1.train.Saver(variables)
        with v1.Session() as sess:
            sess.run(v1.variables_initializer(variables))
            return saver.save(sess, prefix, write_meta_graph=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    g = _golden()
    values = _values(g)
    # what a training checkpoint also holds: Adam's slots, its beta powers, the step counter
    for name in ("VGG_grd/conv1_1/weights", "spatial_sat/weights1"):
        values[name + "/Adam"] = np.zeros_like(values[name])
        values[name + "/Adam_1"] = np.zeros_like(values[name])
    values.update({"beta1_power": np.float32(0.9), "beta2_power": np.float32(0.999), "Variable": np.int32(7)})
    prefix = write_tf1_checkpoint(values, str(tmp_path_factory.mktemp("safa") / "model.ckpt"))
    return g, prefix


def test_fixture_is_safas_graph():
    g = _golden()
    assert len(g["names"]) == 60
    n = sum(int(np.prod([int(d) for d in str(s).split(",")])) for s in g["shapes"])
    assert n == 29_533_696  # SAFA's trainable variables, also the count of the Keras SAFA
    shapes = dict(zip((str(x) for x in g["names"]), (str(s) for s in g["shapes"])))
    assert shapes["spatial_grd/weights1"] == "80,40,8" and shapes["spatial_sat/biases2"] == "1,80,8"
    assert shapes["VGG_sat/conv5_3/weights"] == "3,3,512,512"
    for view in ("ground", "aerial"):
        d = g[view]
        assert d.shape == (2, 4096) and np.allclose(np.linalg.norm(d, axis=1), 1, atol=1e-5)
        assert abs(float(d[0] @ d[1])) < 0.999  # two different descriptors, not a collapsed pair


@pytest.mark.slow
def test_converted_checkpoint_reproduces_safas_descriptors(checkpoint, tmp_path, capsys):
    import keras

    import mgtl_tf  # noqa: F401
    from experiments import convert_weights

    g, prefix = checkpoint
    out = str(tmp_path / "safa.keras")
    assert convert_weights.main(["--from", "safa-tf1", "--checkpoint", prefix, "--out", out]) == 0
    said = capsys.readouterr().out
    assert "SAFA, d = 8, input 112x616" in said and "60 variables (29,533,696 weights)" in said
    assert "7 optimizer variables set aside" in said
    model = keras.saving.load_model(out, compile=False)
    x = golden.inputs()
    for view, embed in (("ground", model.embed_ground), ("aerial", model.embed_aerial)):
        ours = np.asarray(embed(x[view], training=False))
        diff = float(np.abs(ours - g[view]).max())
        assert diff < TOL, f"{view}: max |Keras - SAFA TF1| = {diff:.3g}"


def test_mismatches_load_nothing_and_are_all_named():
    from mgtl_tf.safa.convert import convert_safa_tf1

    g = _golden()
    values = _values(g, skip=("VGG_sat/conv3_2/biases",), reshape={"spatial_sat/weights2": (40, 80, 4)})
    values["spatial_grd/extra"] = np.zeros(3, np.float32)
    with pytest.raises(CVGLError) as exc:
        convert_safa_tf1(values, source="model.ckpt")
    msg = str(exc.value)
    assert "nothing was loaded" in msg
    assert "1 missing: VGG_sat/conv3_2/biases" in msg
    assert "1 unexpected: spatial_grd/extra" in msg
    assert "1 mis-shaped: spatial_sat/weights2 [40, 80, 4]" in msg

    with pytest.raises(CVGLError, match=r"P = 80 feature positions, but input size 128x512 gives 4x16 = 64"):
        convert_safa_tf1(_values(g), input_size="128x512")
    small = _values(g, reshape={"spatial_sat/weights1": (64, 32, 8)})
    with pytest.raises(CVGLError, match="non-polar SAFA"):
        convert_safa_tf1(small)


def test_cli_on_an_incomplete_checkpoint_is_one_line_and_writes_nothing(tmp_path):
    from tests.helpers.cli_cases import assert_one_error, run_cases

    g = _golden()
    spatial = {k: v for k, v in _values(g, skip=[str(n) for n in g["names"] if "VGG" in str(n)]).items()}
    prefix = write_tf1_checkpoint(spatial, str(tmp_path / "model.ckpt"))
    out = tmp_path / "safa.keras"
    data_only = tmp_path / "lost"
    data_only.mkdir()
    open(data_only / "model.ckpt.index", "wb").write(open(prefix + ".index", "rb").read())
    res = run_cases([
        ("experiments.convert_weights", ["--from", "safa-tf1", "--checkpoint", prefix, "--out", out]),
        ("experiments.convert_weights", ["--from", "safa-tf1", "--checkpoint", data_only / "model.ckpt",
                                         "--out", out]),
        ("experiments.convert_weights", ["--from", "safa-tf1", "--checkpoint", tmp_path / "none.ckpt",
                                         "--out", out]),
    ], families="")
    assert_one_error(res[0], "52 missing: VGG_grd/conv1_1/biases, VGG_grd/conv1_1/weights", "nothing was loaded")
    assert_one_error(res[1], "no model.ckpt.data-* file")
    assert_one_error(res[2], "none.ckpt")
    assert not out.exists() and not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_evaluate_takes_a_checkpoint_prefix_and_names_the_paper_row(monkeypatch):
    """``evaluate --weights model.ckpt`` converts in memory and compares with SAFA's row for the dataset."""
    import experiments.evaluate as ev

    seen = {}

    def fake(sd, args):
        seen["args"] = args
        return "model", "SAFA, d = 8"

    import mgtl_tf  # noqa: F401
    from common.models import registry

    fam = registry.get_family("safa")
    monkeypatch.setitem(fam.converters, "safa-tf1", fake)
    monkeypatch.setattr("common.backbones.tf1_checkpoint.read_tf1_checkpoint", lambda p: {})
    model, note, config = ev._convert_tf1("SAFA_CVACT/model.ckpt", "cvact")
    assert (model, note, config) == ("model", "SAFA, d = 8", "safa_cvact")
    assert seen["args"].checkpoint == "SAFA_CVACT/model.ckpt"
