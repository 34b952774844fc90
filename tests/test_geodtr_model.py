"""GeoDTR model: exact parameter counts, shapes, counterfactual noise, a fit step with the real class, config
building and its failure modes (.keras round trip and mixed precision: tests/test_harness_layers.py)."""

import os
import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from common.data.specs import InputSpec
from geodtr_tf.specs import GEODTR_POLAR
from common.errors import CVGLError
from geodtr_tf import GeoDTR, build_model

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "geodtr")
TINY = InputSpec("tiny_polar", (48, 96), (48, 96), True, "tanh")  # 3x6 = 18 positions
TINY_CFG = dict(num_descriptors=2, num_layers=1, num_heads=3, ffn_dim=16, dropout=0.3)


def _official_counts():
    text = open(os.path.join(FIXTURES, "gle_paper_shapes.txt")).read()
    polar, raw = re.findall(r"total parameters\s+(\d+)", text)
    gle336 = int(re.search(r"GeoLayoutExtractor\(in_dim=336\): (\d+)", text).group(1))
    gle256 = int(re.search(r"GeoLayoutExtractor\(in_dim=256\): (\d+)", text).group(1))
    trunk = int(re.search(r"backbone_sat \(ResNet34 trunk\)\s+(\d+)", text).group(1))
    return int(polar), int(raw), gle336, gle256, trunk


def _count(layers, trainable=True):
    seen, n = set(), 0
    for layer in layers:
        for v in (layer.trainable_weights if trainable else layer.weights):
            if id(v) not in seen:
                seen.add(id(v))
                n += int(np.prod(v.shape))
    return n


@pytest.mark.parametrize("spec", [GEODTR_POLAR])  # non-polar: test_summary_report
def test_paper_parameter_counts_exact(spec):
    polar, raw, gle336, gle256, trunk = _official_counts()
    assert (polar, raw) == (48_508_608, 47_515_808)
    model = build_model({"backbone_weights": "random"}, spec)
    assert _count([model]) == (polar if spec.polar else raw)
    comps = {k: _count(v) for k, v in model.components().items()}
    assert comps["ResNet-34 (ground)"] == comps["ResNet-34 (aerial)"] == trunk
    assert comps["Geometric Layout Extractor (ground)"] == gle336
    assert comps["Geometric Layout Extractor (aerial)"] == (gle336 if spec.polar else gle256)
    assert sum(comps.values()) == _count([model])
    assert all(v.trainable for v in model.trainable_weights) and model.descriptor_size == 4096
    # full-size output shapes without running the backbones
    assert model.gle_aerial.compute_output_shape((2, 336 if spec.polar else 256, 512)) == \
        (2, 336 if spec.polar else 256, 8)


@pytest.fixture(scope="module")
def tiny():
    model = GeoDTR(input_spec=TINY, seed=3, **TINY_CFG)
    model.build()
    return model


def _batch(b=4, seed=0):
    rng = np.random.default_rng(seed)
    return {"ground": rng.uniform(-1, 1, (b, 48, 96, 3)).astype(np.float32),
            "aerial": rng.uniform(-1, 1, (b, 48, 96, 3)).astype(np.float32)}


def test_outputs_shapes_and_unit_norm(tiny):
    x = _batch()
    out = tiny(x, training=False)
    assert set(out) == {"ground", "aerial"}
    for v in out.values():
        assert tuple(v.shape) == (4, 512 * 2)
        np.testing.assert_allclose(np.linalg.norm(np.asarray(v), axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(tiny.embed_ground(x["ground"])), np.asarray(out["ground"]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(tiny.embed_aerial(x["aerial"])), np.asarray(out["aerial"]), atol=1e-6)
    r, p, hw = tiny.layout(x["ground"], "ground")
    assert hw == (3, 6) and tuple(p.shape) == (4, 18, 2) and float(np.abs(p).max()) <= 1.0


def test_counterfactual_noise_fresh_every_step_inside_one_graph(tiny):
    x = _batch(2)
    a = tiny(x, training=True)
    assert set(a) == {"ground", "aerial", "ground_cf", "aerial_cf"}
    assert all(tuple(v.shape) == (2, 1024) for v in a.values())
    r, p, _ = tiny.layout(x["aerial"], "aerial")
    traces = []

    @tf.function
    def cf_step(r, p):  # the CF branch of a compiled train step
        traces.append(1)
        return tiny.counterfactual_descriptor(r, p)

    n1, n2 = cf_step(r, p), cf_step(r, p)
    assert len(traces) == 1  # one graph; the noise is drawn inside it and differs per execution
    assert not np.allclose(np.asarray(n1), np.asarray(n2))
    # the model's own draw: P̂ ~ U(-1, 1) of P's shape, independent of P
    import geodtr_tf.model as geodtr_model

    drawn = []
    real_pool = geodtr_model.layout_descriptor_pooling
    geodtr_model.layout_descriptor_pooling = lambda r_, p_: drawn.append(np.asarray(p_)) or real_pool(r_, p_)
    try:
        for _ in range(50):
            tiny.counterfactual_descriptor(r, p)
    finally:
        geodtr_model.layout_descriptor_pooling = real_pool
    p_hat = np.stack(drawn)
    assert p_hat.shape[1:] == tuple(np.asarray(p).shape)
    assert -1.0 <= p_hat.min() < -0.95 and 0.95 < p_hat.max() <= 1.0
    assert abs(p_hat.mean()) < 0.05 and abs(p_hat.var() - 1.0 / 3.0) < 0.03  # U(-1, 1): mean 0, variance 1/3
    assert abs(np.corrcoef(p_hat[0].ravel(), np.asarray(p).ravel())[0, 1]) < 0.5
    # seeded: two models with the same seed draw the same sequence
    m1 = GeoDTR(input_spec=TINY, seed=7, **TINY_CFG)
    m2 = GeoDTR(input_spec=TINY, seed=7, **TINY_CFG)
    n1 = m1.counterfactual_descriptor(r, p)
    n2 = m2.counterfactual_descriptor(r, p)
    np.testing.assert_array_equal(np.asarray(n1), np.asarray(n2))


@pytest.mark.slow  # over 10 s: out of the fast lane
def test_fit_step_with_the_real_class():
    model = GeoDTR(input_spec=TINY, seed=0, **TINY_CFG)
    # eager: tracing the two ResNet-34 gradient graphs costs minutes of CPU; the step is the same code
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.03, epsilon=1e-6, global_clipnorm=1.0),
                  run_eagerly=True)
    model.build()
    x = _batch(4, seed=3)
    gle_before = model.gle_ground.w1.numpy().copy()
    conv_before = model.backbone_aerial.conv1.kernel.numpy().copy()
    hist = model.fit(x, batch_size=4, epochs=1, verbose=0, shuffle=False)
    loss = hist.history["loss"][0]
    # triplet + CF: both terms positive, finite
    assert np.isfinite(loss) and loss > 0
    assert not np.array_equal(gle_before, model.gle_ground.w1.numpy())
    assert not np.array_equal(conv_before, model.backbone_aerial.conv1.kernel.numpy())


def test_build_model_config_keys_and_backbone_weights(tmp_path, monkeypatch):
    from tests import geodtr_numpy_ref as ref

    with pytest.raises(CVGLError, match="unknown key"):
        build_model({"num_descriptor": 8}, TINY)
    with pytest.raises(CVGLError, match="resnet34-b627a593.pth"):
        build_model({"backbone_weights": str(tmp_path / "absent.keras")}, TINY)
    monkeypatch.setenv("CVGL_RESNET34_WEIGHTS", str(tmp_path / "nope.keras"))
    with pytest.raises(CVGLError, match="nope.keras"):
        build_model({"backbone_weights": "imagenet"}, TINY)
    monkeypatch.setattr(GeoDTR, "build", lambda self, *a, **k: None)  # the warning needs no weights
    with pytest.warns(UserWarning, match="RANDOMLY"):  # never a silent random start
        m = build_model(dict(TINY_CFG), TINY)
    assert isinstance(m, GeoDTR)
    monkeypatch.undo()
    # torchvision weights given: they land in both backbones, and no warning
    sd = ref.random_resnet34(np.random.default_rng(9))
    path = tmp_path / "r34.npz"
    np.savez(path, **sd)
    monkeypatch.setenv("CVGL_RESNET34_WEIGHTS", str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = build_model(dict(TINY_CFG, backbone_weights="imagenet"), TINY)
    want = sd["layer4.2.conv2.weight"].transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(m.backbone_ground.blocks[-1].conv2.kernel.numpy(), want)
    np.testing.assert_array_equal(m.backbone_aerial.blocks[-1].conv2.kernel.numpy(), want)


@pytest.mark.slow  # over 10 s: out of the fast lane
def test_descriptor_picture(tiny, tmp_path):
    import cv2

    from experiments.visualize import main as show_main
    from geodtr_tf.visualize import layout_maps, prepare_pair, show_descriptors

    rng = np.random.default_rng(4)
    ground, aerial = tmp_path / "pano.png", tmp_path / "sat.png"
    cv2.imwrite(str(ground), rng.integers(0, 255, (60, 330, 3), dtype=np.uint8))
    cv2.imwrite(str(aerial), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))  # square: polar-transformed
    out = tmp_path / "pic" / "descriptors.png"
    maps = show_descriptors(tiny, str(ground), str(aerial), str(out))
    assert maps["ground"].shape == maps["aerial"].shape == (2, 3, 6)
    assert np.abs(maps["ground"]).max() <= 1.0
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 100 and img.shape[1] > 200
    # the maps are the model's P, reshaped row-major over the feature grid
    g_in, a_in, g_img, a_img = prepare_pair(tiny.input_spec_, rng.integers(0, 255, (60, 330, 3), dtype=np.uint8),
                                            rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert g_img.shape == (48, 96, 3) and a_img.shape == (48, 96, 3) and g_in.shape == (1, 48, 96, 3)
    _, p, _ = tiny.layout(g_in, "ground")
    np.testing.assert_array_equal(layout_maps(tiny, g_in, a_in)["ground"][1], np.asarray(p)[0, :, 1].reshape(3, 6))
    with pytest.raises(CVGLError, match="ground image not found"):
        show_main(["--weights", "w.keras", "--ground", str(tmp_path / "none.png"), "--aerial", str(aerial),
                   "--out", str(out)])
    with pytest.raises(CVGLError, match="model not found"):
        show_main(["--weights", str(tmp_path / "w.keras"), "--ground", str(ground), "--aerial", str(aerial),
                   "--out", str(out)])
    # through the command: a saved model, the family found from the file
    weights = str(tmp_path / "tiny.keras")
    tiny.save(weights)
    out2 = tmp_path / "pic" / "cli.png"
    assert show_main(["--weights", weights, "--ground", str(ground), "--aerial", str(aerial), "--out", str(out2)]) == 0
    assert cv2.imread(str(out2)).shape == img.shape


def test_summary_report(capsys):
    import json

    from experiments.summary import main as summary_main
    from geodtr_tf.summary import gle_flops

    summary_main(["--model", "geodtr", "--no-polar", "--json"])
    report = json.loads(capsys.readouterr().out)
    polar, raw, gle336, gle256, trunk = _official_counts()
    assert report["params"] == report["paper_params"] == raw == 47_515_808
    assert [c["params"] for c in report["components"]] == [trunk, trunk, gle336, gle256]
    assert [c["params"] for c in report["components"]] == [21_284_672, 21_284_672, 2_969_632, 1_976_832]
    assert report["extra"]["descriptor"] == 4096
    # FLOPs of a tiny extractor by hand: N=4, D=2, K=1, one layer, FFN 3, C=512
    # E 2·4·1·2=16, IAPE 16, qkv 2·1·2·6=24, scores+AV 2·2·1·1·2=8, out 2·1·2·2=8, FFN 2·2·1·2·3=24,
    # Q 2·2·1·4=16, r·P 2·4·512·1=4096
    assert gle_flops(4, k=1, layers=1, ffn=3) == 16 + 16 + 24 + 8 + 8 + 24 + 16 + 4096


def test_odd_feature_grid_is_a_clear_error():
    with pytest.raises(ValueError, match=r"odd: the ground size 48x264 gives N=51 .* even N"):
        GeoDTR(input_spec=InputSpec("odd", (48, 264), (48, 256), True, "tanh"))
