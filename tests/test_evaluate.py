"""End-to-end tests of ``python -m experiments.evaluate`` and common.evaluation.embedding on a tiny CVUSA-layout world.

The stand-in model (tests/helpers/evaluation.py) embeds an image as its normalised mean colour and pair k's
two views share one flat colour, so the expected ranks follow from the colours alone (a NumPy oracle,
independent of the pipeline, the model and the retrieval code). Swapping the aerial colours of two pairs
plants known misses; giving the two pairs the same position shows the 5 m rule forgiving them.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from common.errors import CVGLError
from tests.helpers.evaluation import MeanColourModel, write_raw_export, write_tiny_cvusa

N = 12
SWAP = ((0, 1), (4, 7))


def _oracle(cols):
    """R@1/R@5/R@10 (percent) from the colours: strict rank of the true aerial, ground k vs aerial colours."""
    g = cols.astype(np.float64) / 127.5 - 1
    a = g.copy()
    for i, j in SWAP:
        a[[i, j]] = a[[j, i]]
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    d = 2 - 2 * g @ a.T
    ranks = (d < np.diag(d)[:, None]).sum(1)
    return {k: 100.0 * np.mean(ranks < k) for k in (1, 5, 10)}, ranks


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("world"))
    pos = np.array([[10.0 * k, 0.0] for k in range(N)])
    pos[1] = pos[0] + [3.0, 0.0]  # pairs 0 and 1 stand 3 m apart; 4 and 7 are 30 m apart
    cols = write_tiny_cvusa(root, n=N, swap=SWAP, positions=pos)
    return root, cols


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("model") / "colour.keras")
    model = MeanColourModel(input_spec="geodtr_raw")
    model.build()
    model.save(path)
    return path


@pytest.fixture(autouse=True)
def _pipeline_or_standin(monkeypatch):
    """Use the project's pipeline when it exists, else the minimal stand-in reader."""
    try:
        import common.data.pipeline  # noqa: F401
    except ImportError:
        from common.evaluation import embedding
        from tests.helpers.evaluation import view_dataset

        monkeypatch.setattr(embedding, "_default_view_dataset", lambda: view_dataset)


def _run(argv):
    from experiments.evaluate import main

    return main(argv)


def test_weights_end_to_end_matches_oracle(world, weights, tmp_path, capsys):
    root, cols = world
    out = str(tmp_path / "res.json")
    assert _run(["--dataset", "cvusa", "--split", "val", "--root", root, "--weights", weights, "--out", out,
                 "--batch-size", "5", "--chunk-size", "5", "--no-progress"]) == 0
    res = json.load(open(out))
    expect, _ = _oracle(cols)
    assert res["protocol"] == "index" and res["N"] == N and res["K_1pct"] == 0
    for k in (1, 5, 10):
        assert res["metrics"][f"R@{k}"] == pytest.approx(expect[k], abs=1e-9)
    assert res["metrics"]["R@1%"] is None  # N < 100
    assert expect[1] < 100.0  # the planted misses are visible
    assert res["dataset"] == "cvusa" and res["split"] == "val" and res["model"] == "colour"
    assert res["descriptor_dim"] == 3 and len(res["curve"]) == 10
    with open(str(tmp_path / "res.png"), "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "protocol index" in table and f"{expect[1]:6.2f}" in table


def test_radius_protocol_forgives_a_swap_within_5m(world, weights, tmp_path):
    root, cols = world
    out = str(tmp_path / "radius.json")
    _run(["--dataset", "cvusa", "--split", "val", "--root", root, "--weights", weights, "--out", out,
          "--protocol", "radius", "--no-progress"])
    res = json.load(open(out))
    _, ranks = _oracle(cols)
    assert res["protocol"] == "radius_5m" and res["radius_m"] == 5.0 and res["no_positive"] == 0
    # pairs 0/1 (3 m apart) now hit at rank 0; pairs 4/7 (30 m apart) keep their index-protocol ranks
    radius_ranks = ranks.copy()
    radius_ranks[[0, 1]] = 0
    assert res["metrics"]["R@1"] == pytest.approx(100.0 * np.mean(radius_ranks < 1), abs=1e-9)
    assert res["metrics"]["R@1"] > _oracle(cols)[0][1]


def test_run_directory_and_export(world, weights, tmp_path):
    import shutil

    root, cols = world
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(weights, run / "checkpoints" / "best.keras")
    (run / "config.yaml").write_text("name: tiny_colour\ndataset: cvusa\ninput_spec: geodtr_raw\n")
    _run(["--dataset", "cvusa", "--split", "val", "--root", root, "--run", str(run), "--no-progress"])
    res = json.load(open(run / "eval_cvusa_val.json"))
    assert res["model"] == "tiny_colour" and res["config"] == "tiny_colour"
    assert isinstance(res["config_hash"], str) and len(res["config_hash"]) == 12
    assert res["source"]["kind"] == "run"

    export = tmp_path / "export"
    write_raw_export(str(export))
    out = str(tmp_path / "exp.json")
    _run(["--dataset", "cvusa", "--split", "val", "--root", root, "--export", str(export), "--out", out,
          "--batch-size", "4", "--no-progress"])
    res_e = json.load(open(out))
    assert res_e["source"]["kind"] == "export"
    assert res_e["metrics"] == res["metrics"]  # raw-image endpoints give the same retrieval


def test_strict_json_and_saved_descriptors(world, weights, tmp_path):
    """Fewer than 100 pairs: R@1% is null in the file (never a bare NaN: strict parsers reject it); the
    descriptors go to .npz and to .mat (the names the MATLAB evaluations of the research code read)."""
    import numpy as np
    import scipy.io

    root, _ = world
    out = tmp_path / "e.json"
    for ext in (".npz", ".mat"):
        _run(["--dataset", "cvusa", "--split", "val", "--root", root, "--weights", weights, "--out", str(out),
              "--no-progress", "--save-descriptors", str(tmp_path / f"d{ext}")])
    text = out.read_text()
    assert "NaN" not in text and json.loads(text)["metrics"]["R@1%"] is None
    with np.load(tmp_path / "d.npz") as z:
        ground, aerial, ids = z["ground"], z["aerial"], z["ids"]
    mat = scipy.io.loadmat(tmp_path / "d.mat")
    np.testing.assert_array_equal(mat["grd_global_descriptor"], ground)
    np.testing.assert_array_equal(mat["sat_global_descriptor"], aerial)
    assert ground.shape == aerial.shape and len(ids) == ground.shape[0]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_embed_records_order_and_batches(world, weights):
    import keras

    from common.data.readers import read_split
    from common.evaluation.embedding import embed_records

    root, cols = world
    records = read_split("cvusa", root, "val")
    model = keras.saving.load_model(weights, compile=False)
    g, a = embed_records(model, records, batch_size=5, progress=False)
    assert g.dtype == np.float32 and g.shape == (N, 3) and a.shape == (N, 3)
    v = cols.astype(np.float64) / 127.5 - 1
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    np.testing.assert_allclose(g, v, atol=2e-3)  # record order kept, last partial batch kept (float32 means)
    with pytest.raises(CVGLError, match="empty"):
        embed_records(model, [], batch_size=4, progress=False)
    with pytest.raises(CVGLError, match="batch size"):
        embed_records(model, records, batch_size=0, progress=False)


@pytest.mark.parametrize(
    "case, match",
    [
        ("cvusa_test", "CVUSA has no test split"),
        ("missing_weights", "model file not found"),
        ("radius_without_positions", "radius protocol needs a position"),
        ("corrupt_weights", "cannot load model"),
        ("empty_export", "not an export directory: export.json is missing"),
        ("zero_batch", "--batch-size"),
        ("not_keras", "expects a .keras"),
    ],
)
def test_bad_input_is_a_clear_error(world, weights, tmp_path, case, match):
    root, _ = world
    split, source, extra = "val", ["--weights", weights], []
    if case == "cvusa_test":
        split = "test"
    elif case == "missing_weights":
        source = ["--weights", str(tmp_path / "nowhere.keras")]
    elif case == "radius_without_positions":
        root = str(tmp_path / "nopos")
        write_tiny_cvusa(root, n=3)  # no coordinates.csv
        extra = ["--protocol", "radius"]
    elif case == "corrupt_weights":
        (tmp_path / "bad.keras").write_bytes(b"not a zip")
        source = ["--weights", str(tmp_path / "bad.keras")]
    elif case == "empty_export":
        (tmp_path / "empty").mkdir()
        source = ["--export", str(tmp_path / "empty")]
    elif case == "zero_batch":
        extra = ["--batch-size", "0"]
    elif case == "not_keras":
        (tmp_path / "w.h5").write_bytes(b"x")
        source = ["--weights", str(tmp_path / "w.h5")]
    with pytest.raises(CVGLError, match=match):
        _run(["--dataset", "cvusa", "--split", split, "--root", root, *source, *extra, "--no-progress"])


def test_cli_bad_input_exits_with_one_line(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("CVGL_TRACEBACK", None)
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.evaluate", "--dataset", "cvact", "--split", "test", "--root",
         str(tmp_path / "missing"), "--weights", "x.keras"],
        capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env=env,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [lines[0]] and lines[0].startswith("error: dataset root not found")


@pytest.mark.parametrize("bias", [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], ids=["constant", "all-zero"])
def test_collapsed_descriptors_are_reported(world, tmp_path, capsys, bias):
    """A model whose descriptors are all alike (kernel 0: every image -> the same vector, or all zeros) scores
    R@1 = 100 under the official protocol (ties favour the query); evaluate reports the pessimistic R@1 0,
    the tie count, and a COLLAPSED line, in the table and the JSON."""
    root, _ = world
    model = MeanColourModel(input_spec="geodtr_raw")
    model.build()
    for dense in (model.ground_dense, model.aerial_dense):
        dense.kernel.assign(np.zeros((3, 3), "float32"))
        dense.bias.assign(np.asarray(bias, "float32"))
    path = str(tmp_path / "collapsed.keras")
    model.save(path)
    out = str(tmp_path / "res.json")
    assert _run(["--dataset", "cvusa", "--split", "val", "--root", root, "--weights", path, "--out", out,
                 "--no-progress"]) == 0
    res = json.load(open(out))
    guard = res["collapse_guard"]
    assert res["metrics"]["R@1"] == 100.0  # the official protocol is fooled ...
    assert guard["pessimistic"]["R@1"] == 0.0 and guard["ties"] == N * (N - 1) and guard["tied_queries"] == N
    assert guard["collapsed"] is True and guard["collapse_reasons"]  # ... the guard is not
    table = capsys.readouterr().out
    assert "COLLAPSED" in table and "pessimistic" in table


def test_healthy_model_is_not_collapsed(world, weights, tmp_path, capsys):
    root, _ = world
    out = str(tmp_path / "res.json")
    _run(["--dataset", "cvusa", "--split", "val", "--root", root, "--weights", weights, "--out", out,
          "--no-progress"])
    guard = json.load(open(out))["collapse_guard"]
    assert guard["collapsed"] is False and guard["ties"] == 0
    assert guard["pessimistic"] == json.load(open(out))["metrics"]
    assert "COLLAPSED" not in capsys.readouterr().out
