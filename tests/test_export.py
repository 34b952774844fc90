"""Export: in-graph preprocessing against its definition, SavedModel == Keras to 1e-5 in a fresh process that
never imports the project (GeoDTR polar and MGTL, the real classes at tiny sizes), TFSMLayer, the .keras
round trip, the export command, and clear failures for missing / corrupt / mismatched export directories."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
import yaml

from common.data.specs import InputSpec, normalise
from geodtr_tf.specs import GEODTR_RAW
from mgtl_tf.safa.specs import SAFA_POLAR
from common.errors import CVGLError
from common.serving.export import load_export, write_export
from common.data.polar import polar_transform, polar_transform_fast
from common.serving.preprocess import AerialPreprocess, GroundPreprocess, end_to_end, polar_any_size

TINY_GEODTR = InputSpec("tiny_geodtr_polar", (32, 176), (32, 176), True, "tanh")
TINY_SAFA = SAFA_POLAR.replace(name="tiny_safa_polar", ground_size=(32, 160), aerial_size=(32, 160))
MGTL_TINY = {"vgg_widths": [4, 4, 8, 8, 8], "backbone_weights": None, "dim": 16, "num_heads": 2, "ffn_dim": 32,
             "generator_dim": 32, "steps": 2}
S = 64  # aerial source size of the MGTL export (--aerial-size)


def _images(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "ground_cvusa": rng.integers(0, 256, (3, 56, 308, 3), dtype=np.uint8),   # aspect 5.5: used whole
        "ground_cvact": rng.integers(0, 256, (2, 104, 208, 3), dtype=np.uint8),  # aspect 2: middle half
        "aerial_s": rng.integers(0, 256, (3, S, S, 3), dtype=np.uint8),          # already at S
        "aerial_big": rng.integers(0, 256, (2, 96, 100, 3), dtype=np.uint8),     # non-square, resized to S
    }


# ------------------------------------------------------------------------------------------ preprocessing
def test_ground_preprocess_crop_rule_and_area_resize():
    rng = np.random.default_rng(1)
    layer = GroundPreprocess(GEODTR_RAW)
    cvact = rng.integers(0, 256, (1, 832, 1664, 3), dtype=np.uint8)
    crop = cvact[0, 208:624].astype(np.float32)  # rows 208:624 of 832, as SAFA / GeoDTR prepare CVACT
    ref = normalise(cv2.resize(crop, (671, 122), interpolation=cv2.INTER_AREA), GEODTR_RAW)
    got = np.asarray(layer(cvact))[0]
    assert got.shape == (122, 671, 3)
    assert np.max(np.abs(got - ref)) * 127.5 < 0.02  # grey levels
    cvusa = rng.integers(0, 256, (1, 224, 1232, 3), dtype=np.uint8)
    ref = normalise(cv2.resize(cvusa[0].astype(np.float32), (671, 122), interpolation=cv2.INTER_AREA), GEODTR_RAW)
    assert np.max(np.abs(np.asarray(layer(cvusa))[0] - ref)) * 127.5 < 0.02
    # a prepared CVACT ground (already the crop, aspect > 3) is not cropped again
    prepared = rng.integers(0, 256, (1, 122, 671, 3), dtype=np.uint8)
    np.testing.assert_allclose(np.asarray(layer(prepared))[0], normalise(prepared[0].astype(np.float32), GEODTR_RAW),
                               atol=1e-6)


@pytest.mark.parametrize("side", [64, 750])
def test_aerial_polar_as_is_matches_the_reference_transform(side):
    rng = np.random.default_rng(side)
    aerial = rng.integers(0, 256, (2, side, side, 3), dtype=np.uint8)
    got = np.asarray(polar_any_size(aerial.astype(np.float32), 28, 154))
    layer = np.asarray(AerialPreprocess(TINY_SAFA.replace(aerial_size=(28, 154)))(aerial))
    for b in range(2):
        np.testing.assert_allclose(got[b], polar_transform(aerial[b], 28, 154), atol=1e-3)  # float64 formula
        prepared = polar_transform_fast(aerial[b], 28, 154).astype(np.float32)  # what prepare stores (rounded)
        diff = np.abs(layer[b] - normalise(prepared, TINY_SAFA))
        assert diff.max() <= 0.6  # the rounding of the stored maps (+ OpenCV fixed-point weights)
        assert diff.mean() < 0.3


def test_aerial_polar_with_source_size_resizes_first():
    rng = np.random.default_rng(2)
    spec = TINY_SAFA.replace(aerial_size=(28, 154))
    aerial = rng.integers(0, 256, (1, 2 * S, 2 * S, 3), dtype=np.uint8)
    got = np.asarray(AerialPreprocess(spec, source_size=S)(aerial))[0]
    small = cv2.resize(aerial[0].astype(np.float32), (S, S), interpolation=cv2.INTER_AREA)
    ref = normalise(polar_transform(small, 28, 154), spec)
    assert np.max(np.abs(got - ref)) < 1e-3
    # a non-square input is centre-cropped first; the result equals the crop's
    wide = np.concatenate([rng.integers(0, 256, (1, 2 * S, 8, 3), dtype=np.uint8), aerial,
                           rng.integers(0, 256, (1, 2 * S, 8, 3), dtype=np.uint8)], axis=2)
    np.testing.assert_allclose(np.asarray(AerialPreprocess(spec, source_size=S)(wide))[0], got, atol=1e-5)


def test_aerial_raw_resizes_to_the_spec():
    layer = AerialPreprocess(GEODTR_RAW)
    x = np.random.default_rng(3).integers(0, 256, (1, 512, 512, 3), dtype=np.uint8)
    ref = normalise(cv2.resize(x[0].astype(np.float32), (256, 256), interpolation=cv2.INTER_AREA), GEODTR_RAW)
    assert np.max(np.abs(np.asarray(layer(x))[0] - ref)) * 127.5 < 0.02


# ------------------------------------------------------------------------------------------------- export
def _geodtr():
    from geodtr_tf import build_model

    return build_model({"backbone_weights": "random", "num_descriptors": 2, "num_layers": 1, "num_heads": 1,
                        "ffn_dim": 32, "backbone_widths": [8, 8, 16, 16], "backbone_depths": [1, 1, 1, 1]},
                       TINY_GEODTR)


def _mgtl():
    import mgtl_tf

    return mgtl_tf.build_model(dict(MGTL_TINY), TINY_SAFA)



MGTL_CFG = {"name": "mgtl_tiny_run", "dataset": "cvusa", "input_spec": TINY_SAFA.to_config(),
            "source": {"paper": "MGTL", "table": "Table 1", "row": "MGTL"},
            "model": dict(MGTL_TINY, family="mgtl"), "train": {"epochs": 1}}
MGTL_RESULTS = {"config": "mgtl_tiny_run", "dataset": "cvusa", "split": "val", "protocol": "index",
                "metrics": {"R@1": 12.5, "R@5": 40.0, "R@10": 55.0, "R@1%": None}}


@pytest.fixture(scope="module")
def geodtr_export(tmp_path_factory):
    """GeoDTR (polar, the real ResNet-34 towers, a tiny layout extractor) exported with write_export; its
    polar transform works on each aerial image as it is."""
    e2e = end_to_end(_geodtr())
    out = str(tmp_path_factory.mktemp("export_geodtr") / "export")
    meta = write_export(e2e, out, {"name": "tiny_geodtr", "dataset": "cvusa", "model": {"family": "geodtr"}})
    return e2e, out, meta


@pytest.fixture(scope="module")
def mgtl_export(tmp_path_factory):
    """MGTL (tiny widths) saved as a training run directory and exported with the command; aerial images
    are resized to S x S before the polar transform."""
    from experiments import export as cli

    root = tmp_path_factory.mktemp("export_mgtl")
    model = _mgtl()
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    model.save(run / "checkpoints" / "best.keras")
    (run / "config.yaml").write_text(yaml.safe_dump(MGTL_CFG))
    (run / "results.json").write_text(json.dumps(MGTL_RESULTS))
    out = root / "export"
    assert cli.main(["--run", str(run), "--out", str(out), "--aerial-size", str(S)]) == 0
    return end_to_end(model, aerial_source_size=S), str(out), load_export(str(out)).meta


FRESH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np
    import tensorflow as tf
    export_dir, images, out = sys.argv[1:4]
    m = tf.saved_model.load(os.path.join(export_dir, "saved_model"))
    res = {}
    with np.load(images) as z:
        for key in z.files:
            fn = m.embed_ground if key.startswith("ground") else m.embed_aerial
            res[key] = fn(tf.constant(z[key])).numpy()
    project = {"common", "geodtr_tf", "mgtl_tf", "experiments", "tests"}
    leaked = sorted(n for n in sys.modules if n.split(".")[0] in project)
    np.savez(out, leaked=np.asarray(leaked, dtype=str), **res)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["geodtr", "mgtl"])
def test_saved_model_in_fresh_process_matches_keras(family, request, tmp_path):
    e2e, out, meta = request.getfixturevalue(f"{family}_export")
    images = _images()
    np.savez(tmp_path / "images.npz", **images)
    (tmp_path / "fresh.py").write_text(FRESH_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    proc = subprocess.run([sys.executable, str(tmp_path / "fresh.py"), out, str(tmp_path / "images.npz"),
                           str(tmp_path / "out.npz")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(tmp_path / "out.npz") as z:
        assert list(z["leaked"]) == []  # no module of this project was imported
        for key, batch in images.items():
            ref = np.asarray(e2e.embed_ground(batch) if key.startswith("ground") else e2e.embed_aerial(batch))
            assert z[key].shape == (len(batch), meta["descriptor_dim"])
            assert np.max(np.abs(z[key] - ref)) <= 1e-5, (family, key)
            np.testing.assert_allclose(np.linalg.norm(z[key], axis=1), 1.0, atol=1e-5)


def test_tfsmlayer_and_keras_file_match(mgtl_export):
    import keras

    e2e, out, meta = mgtl_export
    images = _images(seed=5)
    layer = keras.layers.TFSMLayer(os.path.join(out, "saved_model"), call_endpoint="embed_aerial")
    ref = np.asarray(e2e.embed_aerial(images["aerial_big"]))
    assert np.max(np.abs(np.asarray(layer(images["aerial_big"])) - ref)) <= 1e-5
    reloaded = keras.saving.load_model(os.path.join(out, "model.keras"), compile=False)
    for key in ("ground_cvact", "aerial_s"):
        fn = "embed_ground" if key.startswith("ground") else "embed_aerial"
        np.testing.assert_allclose(np.asarray(getattr(reloaded, fn)(images[key])),
                                   np.asarray(getattr(e2e, fn)(images[key])), atol=1e-6)
    assert yaml.safe_load(open(os.path.join(out, "config.yaml")))["name"] == "mgtl_tiny_run"
    assert load_export(out).fingerprint == meta["fingerprint"]


# ----------------------------------------------------------------------------------------- bad exports
def _copy(src, tmp_path, name="copy"):
    src = src[1]
    dst = str(tmp_path / name)
    shutil.copytree(src, dst)
    return dst


def test_missing_and_incomplete_export_dirs_fail_clearly(mgtl_export, tmp_path):
    with pytest.raises(CVGLError, match="export directory not found"):
        load_export(str(tmp_path / "nope"))
    d = _copy(mgtl_export, tmp_path, "no_meta")
    os.remove(os.path.join(d, "export.json"))
    with pytest.raises(CVGLError, match="export.json is missing"):
        load_export(d)
    d = _copy(mgtl_export, tmp_path, "no_pb")
    os.remove(os.path.join(d, "saved_model", "saved_model.pb"))
    with pytest.raises(CVGLError, match="saved_model.pb is missing"):
        load_export(d)


def test_corrupt_saved_model_fails_clearly(mgtl_export, tmp_path):
    d = _copy(mgtl_export, tmp_path, "corrupt")
    pb = os.path.join(d, "saved_model", "saved_model.pb")
    data = open(pb, "rb").read()
    with open(pb, "wb") as fh:
        fh.write(data[: len(data) // 3])
    with pytest.raises(CVGLError, match="is corrupt"):
        load_export(d)


def test_mismatched_weights_fail_clearly(mgtl_export, tmp_path):
    d = _copy(mgtl_export, tmp_path, "mixed")
    meta_path = os.path.join(d, "export.json")
    meta = json.load(open(meta_path))
    meta["fingerprint"] = "0" * 64  # export.json of another model beside these weights
    json.dump(meta, open(meta_path, "w"))
    with pytest.raises(CVGLError, match="mismatched"):
        load_export(d)
    meta["format_version"] = 99
    json.dump(meta, open(meta_path, "w"))
    with pytest.raises(CVGLError, match="format_version"):
        load_export(d)


def test_export_refuses_to_overwrite(mgtl_export):
    e2e, out, _ = mgtl_export
    with pytest.raises(CVGLError, match="already exists"):
        write_export(e2e, out, {"name": "x", "model": {}})
    assert load_export(out).meta["name"] == "mgtl_tiny_run"  # untouched


# ---------------------------------------------------------------------------------------------- the CLI
def test_export_command_wrote_everything(mgtl_export):
    e2e, out, meta = mgtl_export
    assert sorted(os.listdir(out)) == ["MODEL_CARD.md", "config.yaml", "export.json", "model.keras", "saved_model"]
    card = open(os.path.join(out, "MODEL_CARD.md")).read()
    assert "| cvusa | val | index | 12.50 | 40.00 | 55.00 | - |" in card  # metrics of RUN/results.json
    assert not [p for p in os.listdir(os.path.dirname(out)) if ".tmp" in p]  # no temporary directory left
    assert meta["aerial_source_size"] == S and meta["family"] == "mgtl" and meta["descriptor_dim"] == (160 // 32) * 16  # 5 azimuth tokens x dim


def test_export_command_bad_input(tmp_path):
    from experiments import export as cli

    with pytest.raises(CVGLError, match="run directory not found"):
        cli.main(["--run", str(tmp_path / "missing"), "--out", str(tmp_path / "e")])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"name": "x", "model": {"family": "mgtl"},
                                                                  "input_spec": "safa_polar"}))
    with pytest.raises(CVGLError, match="no checkpoint"):
        cli.main(["--run", str(tmp_path / "run"), "--out", str(tmp_path / "e")])
    (tmp_path / "run" / "checkpoints").mkdir()
    (tmp_path / "run" / "checkpoints" / "best.keras").write_bytes(b"not a zip")
    with pytest.raises(CVGLError, match="cannot be loaded"):
        cli.main(["--run", str(tmp_path / "run"), "--out", str(tmp_path / "e")])
    with pytest.raises(CVGLError, match="exactly one"):
        cli.main(["--out", str(tmp_path / "e")])
