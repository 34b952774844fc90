"""PyTorch -> Keras conversion: whole-model round trip against a NumPy reference forward of the same
official-layout weights, the torchvision ResNet-34 path, readers, and loud failures."""

import os

import numpy as np
import pytest

from common.data.specs import InputSpec
from common.errors import CVGLError
from geodtr_tf.convert import convert_geodtr, geodtr_weights
from common.backbones.resnet import convert_resnet34, load_resnet34_weights
from common.backbones.torch_weights import export_state_dict, read_state_dict
from tests import geodtr_numpy_ref as ref

TINY_POLAR = InputSpec("tiny_polar", (32, 96), (32, 96), True, "tanh")  # N = 2x6 = 12 both views
TINY_RAW = InputSpec("tiny_raw", (32, 96), (32, 32), False, "tanh")  # aerial N = 2x2 = 4 (D = 2, 2 heads of 1)


def _images(rng, spec, b=2):
    g = rng.uniform(-1, 1, (b,) + tuple(spec.ground_size) + (3,)).astype(np.float32)
    a = rng.uniform(-1, 1, (b,) + tuple(spec.aerial_size) + (3,)).astype(np.float32)
    return g, a


@pytest.fixture(scope="module")
def tiny_sd():
    return ref.random_official_geodtr(np.random.default_rng(11), n_sat=12, n_grd=12, k=2, layers=2, ffn=16)


@pytest.fixture(scope="module")
def converted_polar(tiny_sd):
    return convert_geodtr(tiny_sd, num_heads=2, input_spec=TINY_POLAR)


def _check_against_reference(model, sd, spec, rng):
    g, a = _images(rng, spec)
    out = model({"ground": g, "aerial": a}, training=False)
    sat_ref, grd_ref = ref.geodtr_forward(sd, a, g, heads=2)
    np.testing.assert_allclose(np.asarray(out["aerial"]), sat_ref, atol=2e-5)
    np.testing.assert_allclose(np.asarray(out["ground"]), grd_ref, atol=2e-5)
    # and back: Keras -> official layout reproduces the file bit for bit
    back = export_state_dict(geodtr_weights(model)[0])
    assert set(back) == {k for k in sd if not k.endswith("num_batches_tracked")}
    for k, v in back.items():
        np.testing.assert_array_equal(v, sd[k], err_msg=k)


def test_whole_model_matches_numpy_reference_polar(converted_polar, tiny_sd):
    _check_against_reference(converted_polar, tiny_sd, TINY_POLAR, np.random.default_rng(3))


def test_whole_model_matches_numpy_reference_raw_from_dataparallel_keys():
    rng = np.random.default_rng(4)
    sd = ref.random_official_geodtr(rng, n_sat=4, n_grd=12, k=2, layers=2, ffn=16)
    wrapped = {f"module.{k}": v for k, v in sd.items()}  # as saved from nn.DataParallel
    model = convert_geodtr(ref_keys_stripped(wrapped), num_heads=2, input_spec=TINY_RAW)
    assert not model.input_spec_.polar and model.gle_aerial.num_positions == 4
    _check_against_reference(model, sd, TINY_RAW, rng)
    # an explicit polar flag that contradicts the file fails on the aerial extractor's shapes
    from common.backbones.torch_weights import assign_state_dict

    mapping, optional = geodtr_weights(model)
    with pytest.raises(CVGLError, match=r"ge_sat.w1 has shape \(12, 2, 6\), the model needs \(4, 2, 2\)"):
        polar_sd = dict(sd)
        polar_sd.update({f"ge_sat.{k}": ref.random_tensor(rng, k, shape)
                         for k, shape in ref.gle_shapes(12, 2, 2, 16).items()})
        assign_state_dict(mapping, polar_sd, optional)


def ref_keys_stripped(sd):
    from common.backbones.torch_weights import normalise_keys

    return normalise_keys(sd)


def test_official_training_checkpoint_layout_and_readers(tmp_path, tiny_sd):
    # flattened "model_state_dict.module.*" keys (a training checkpoint saved to npz) are unwrapped
    path = tmp_path / "ckpt.npz"
    np.savez(path, **{f"model_state_dict.module.{k}": v for k, v in tiny_sd.items()})
    sd = read_state_dict(path)
    assert set(sd) == set(tiny_sd)
    from safetensors.numpy import save_file

    st = tmp_path / "ckpt.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in tiny_sd.items()}, str(st))
    sd2 = read_state_dict(st)
    for k in tiny_sd:
        np.testing.assert_array_equal(sd2[k], tiny_sd[k])


def test_missing_extra_misshaped_fail_listing_keys(converted_polar, tiny_sd):
    from common.backbones.torch_weights import assign_state_dict

    bad = dict(tiny_sd)
    del bad["ge_sat.b2"]
    del bad["backbone_grd.layers.4.0.downsample.1.running_var"]
    bad["ge_grd.extra_tensor"] = np.zeros(3, np.float32)
    bad["ge_grd.w2"] = bad["ge_grd.w2"][:, :, :5]
    mapping, optional = geodtr_weights(converted_polar)
    with pytest.raises(CVGLError) as err:
        assign_state_dict(mapping, bad, optional)
    msg = str(err.value)
    for key in ("ge_sat.b2", "backbone_grd.layers.4.0.downsample.1.running_var", "ge_grd.extra_tensor",
                "ge_grd.w2 has shape (6, 2, 5)", "missing (2)", "unexpected (1)", "mis-shaped (1)",
                "nothing was loaded"):
        assert key in msg, (key, msg)


def test_failed_load_changes_nothing(tiny_sd):
    from common.backbones.torch_weights import assign_state_dict
    from geodtr_tf.layers import GeometricLayoutExtractor

    gle = GeometricLayoutExtractor(12, num_descriptors=2, num_layers=2, num_heads=2, ffn_dim=16)
    gle.build()
    before = [v.numpy().copy() for v in gle.weights]
    sd = {k: v for k, v in tiny_sd.items() if k.startswith("ge_grd.")}
    sd.pop("ge_grd.w1")
    with pytest.raises(CVGLError, match="ge_grd.w1"):
        assign_state_dict(gle.torch_weights("ge_grd"), sd)
    for a, v in zip(before, gle.weights):
        np.testing.assert_array_equal(a, v.numpy())


def test_not_a_geodtr_file_and_unknown_extension(tmp_path):
    with pytest.raises(CVGLError, match="resnet34"):
        convert_geodtr({"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)})
    p = tmp_path / "w.h5"
    p.write_bytes(b"x")
    with pytest.raises(CVGLError, match="unknown extension"):
        read_state_dict(p)
    with pytest.raises(CVGLError, match="not found"):
        read_state_dict(tmp_path / "absent.npz")
    corrupt = tmp_path / "c.npz"
    corrupt.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(CVGLError, match="could not be read"):
        read_state_dict(corrupt)


def test_resnet34_conversion_cli_matches_numpy(tmp_path, capsys):
    from experiments.convert_weights import main

    rng = np.random.default_rng(5)
    sd = ref.random_resnet34(rng)
    r_src = tmp_path / "r34.npz"
    np.savez(r_src, **sd)
    out = tmp_path / "r34.keras"
    assert main(["--model", "resnet34", "--checkpoint", str(r_src), "--out", str(out)]) == 0
    assert "converted" in capsys.readouterr().out
    # the converted file, loaded into a GeoDTR-style backbone, computes the PyTorch trunk
    from common.backbones.resnet import ResNet34

    trunk = ResNet34()
    trunk.build((None, None, None, 3))
    load_resnet34_weights(trunk, str(out))
    x = rng.uniform(-1, 1, (1, 35, 50, 3)).astype(np.float32)  # odd sizes: padding alignment matters
    want = ref.resnet34(x.astype(np.float64).transpose(0, 3, 1, 2), {k: np.asarray(v, np.float64)
                                                                      for k, v in sd.items()}, lambda n: n)
    got = np.asarray(trunk(x, training=False)).transpose(0, 3, 1, 2)
    assert got.shape == want.shape == (1, 512, 3, 4)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # a missing tensor in a torchvision dict names it; nothing is written
    bad = dict(sd)
    bad.pop("layer3.2.bn2.running_mean")
    with pytest.raises(CVGLError, match=r"layer3\.2\.bn2\.running_mean"):
        convert_resnet34(bad)
    with pytest.raises(CVGLError, match=".keras"):
        main(["--model", "resnet34", "--checkpoint", str(r_src), "--out", str(tmp_path / "x.h5")])
    # a GeoDTR checkpoint that is not one fails before anything is built or written
    with pytest.raises(CVGLError, match="not an official GeoDTR state dict"):
        main(["--model", "geodtr", "--checkpoint", str(r_src), "--out", str(tmp_path / "g.keras")])
    assert not os.path.exists(tmp_path / "g.keras")
    with pytest.raises(CVGLError, match="checkpoint not found"):
        main(["--model", "geodtr", "--checkpoint", str(tmp_path / "none.pth"), "--out", str(tmp_path / "g.keras")])


def test_pth_reading_with_torch(tmp_path, tiny_sd):
    torch = pytest.importorskip("torch")
    p = tmp_path / "epoch_1.pth"
    torch.save({"epoch": 1, "model_state_dict": {f"module.{k}": torch.from_numpy(np.asarray(v))
                                                 for k, v in tiny_sd.items()}}, p)
    sd = read_state_dict(p)
    assert set(sd) == set(tiny_sd)
    model = convert_geodtr(sd, num_heads=2, input_spec=TINY_POLAR)
    assert model.num_layers == 2


def test_pth_without_torch_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *a, **kw):
        if name == "torch":
            raise ImportError("no torch")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    p = tmp_path / "w.pth"
    p.write_bytes(b"\x80\x02")
    with pytest.raises(CVGLError, match="pip install torch"):
        read_state_dict(p)
