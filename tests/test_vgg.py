"""SAFA's VGG16 trunk: shapes, parameter count, MAC count, and loading the Keras ImageNet "notop" file.

No download: the weight files are written here from a randomly initialised keras.applications.VGG16, in the
published file's layout (legacy HDF5: root attribute layer_names, per-layer weight_names
"block1_conv1_W_1:0" / "block1_conv1_b_1:0") and in the Keras 3 ``.weights.h5`` layout.
"""

import os
import warnings

import h5py
import keras
import numpy as np
import pytest

from common.backbones.vgg import (VGG16_NOTOP_FILE, PretrainedWeightsMissing, VGG16Trunk, conv_names,
                                  init_vgg16_weights, load_vgg16_weights, vgg16_trunk_macs)
from common.errors import CVGLError


@pytest.fixture(scope="module")
def reference_vgg():
    keras.utils.set_random_seed(1)
    return keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 64, 3))


def write_legacy_notop(model, path):
    """The published notop file's layout: every layer listed, conv groups with *_W_1:0 / *_b_1:0."""
    with h5py.File(path, "w") as fh:
        fh.attrs["layer_names"] = [layer.name.encode() for layer in model.layers]
        fh.attrs["backend"] = b"tensorflow"
        for layer in model.layers:
            group = fh.create_group(layer.name)
            if not layer.weights:
                group.attrs["weight_names"] = np.array([], dtype="S1")
                continue
            names = [f"{layer.name}_W_1:0", f"{layer.name}_b_1:0"]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for n, w in zip(names, layer.get_weights()):
                group.create_dataset(n, data=w)


def test_trunk_shape_and_params_at_safa_size():
    trunk = VGG16Trunk()
    trunk.build((None, 112, 616, 3))
    assert trunk.compute_output_shape((None, 112, 616, 3)) == (None, 4, 20, 512)
    assert trunk.count_params() == 14_714_688  # keras.applications.VGG16 notop
    assert [c.name for c in trunk.convs] == conv_names()
    out = trunk(keras.KerasTensor((1, 112, 616, 3)))
    assert tuple(out.shape) == (1, 4, 20, 512)
    no_extra = VGG16Trunk(extra_pool=False)
    assert no_extra.compute_output_shape((None, 112, 616, 3)) == (None, 7, 39, 512)


def test_trunk_macs_match_hand_count():
    # conv1_1 at full resolution: 112*616*9*3*64; protocol.md §3 gives 21.13 GMACs per trunk at 112x616
    assert vgg16_trunk_macs(112, 616) == pytest.approx(21.13e9, rel=1e-3)
    assert vgg16_trunk_macs(32, 32, widths=(1, 1, 1, 1, 1)) == (32 * 32 * 9 * (3 + 1)
                                                                  + 16 * 16 * 9 * 2 + 8 * 8 * 9 * 3
                                                                  + 4 * 4 * 9 * 3 + 2 * 2 * 9 * 3)


def test_legacy_notop_file_loads_by_name_and_matches_keras_vgg16(tmp_path, reference_vgg):
    path = str(tmp_path / VGG16_NOTOP_FILE)
    write_legacy_notop(reference_vgg, path)
    trunk = VGG16Trunk()
    trunk.build((None, 32, 64, 3))
    load_vgg16_weights(trunk, path)
    x = np.random.default_rng(0).normal(0, 50, size=(2, 32, 64, 3)).astype("float32")
    # at sizes divisible by 32 SAME pooling equals the VALID pooling of keras.applications.VGG16
    np.testing.assert_allclose(np.asarray(trunk(x)), np.asarray(reference_vgg(x)), rtol=1e-4, atol=1e-4)


def test_keras3_weights_file_loads(tmp_path, reference_vgg):
    path = str(tmp_path / "vgg.weights.h5")
    reference_vgg.save_weights(path)
    trunk = VGG16Trunk()
    trunk.build((None, 32, 64, 3))
    load_vgg16_weights(trunk, path)
    ref = reference_vgg.get_layer("block5_conv3").get_weights()[0]
    np.testing.assert_array_equal(np.asarray(trunk.convs[-1].kernel), ref)


def test_imagenet_from_keras_cache(tmp_path, monkeypatch, reference_vgg):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    os.makedirs(tmp_path / "models")
    write_legacy_notop(reference_vgg, str(tmp_path / "models" / VGG16_NOTOP_FILE))
    trunk = VGG16Trunk()
    trunk.build((None, 32, 64, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        done = init_vgg16_weights(trunk, "imagenet")
    assert done.startswith("imagenet")
    np.testing.assert_array_equal(np.asarray(trunk.convs[0].bias),
                                  reference_vgg.get_layer("block1_conv1").get_weights()[1])


def test_missing_imagenet_file_warns_loudly_and_keeps_random(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    trunk = VGG16Trunk()
    trunk.build((None, 32, 64, 3))
    before = np.asarray(trunk.convs[0].kernel).copy()
    with pytest.warns(PretrainedWeightsMissing, match="NOT FOUND"):
        done = init_vgg16_weights(trunk, "imagenet")
    assert "random" in done
    assert "WARNING" in capsys.readouterr().err
    np.testing.assert_array_equal(np.asarray(trunk.convs[0].kernel), before)


def test_random_on_purpose_is_silent():
    trunk = VGG16Trunk(widths=(2, 2, 2, 2, 2))
    trunk.build((None, 32, 32, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert init_vgg16_weights(trunk, None) == "random"


def test_given_path_missing_is_an_error_naming_it(tmp_path):
    trunk = VGG16Trunk(widths=(2, 2, 2, 2, 2))
    trunk.build((None, 32, 32, 3))
    missing = str(tmp_path / "nope.h5")
    with pytest.raises(CVGLError, match="nope.h5"):
        init_vgg16_weights(trunk, missing)


def test_mismatched_file_is_an_error_naming_file_and_layer(tmp_path, reference_vgg):
    path = str(tmp_path / "vgg.h5")
    write_legacy_notop(reference_vgg, path)
    small = VGG16Trunk(widths=(2, 2, 2, 2, 2))
    small.build((None, 32, 32, 3))
    with pytest.raises(CVGLError, match=r"vgg\.h5.*block1_conv1"):
        load_vgg16_weights(small, path)
    not_h5 = tmp_path / "junk.h5"
    not_h5.write_bytes(b"not an hdf5 file")
    with pytest.raises(CVGLError, match="junk.h5"):
        load_vgg16_weights(small, str(not_h5))
    with h5py.File(tmp_path / "other.h5", "w") as fh:
        fh.attrs["layer_names"] = [b"dense"]
        fh.create_group("dense").attrs["weight_names"] = [b"dense/kernel:0"]
        fh["dense"].create_dataset("dense/kernel:0", data=np.zeros((2, 2)))
    with pytest.raises(CVGLError, match="no layer 'block1_conv1'"):
        load_vgg16_weights(small, str(tmp_path / "other.h5"))


def test_dropout_only_in_training_and_round_trip():
    trunk = VGG16Trunk(widths=(2, 2, 4, 4, 4), dropout=0.5)
    x = np.random.default_rng(1).normal(0, 50, size=(1, 32, 32, 3)).astype("float32")
    a, b = np.asarray(trunk(x)), np.asarray(trunk(x))
    np.testing.assert_array_equal(a, b)
    clone = VGG16Trunk.from_config(trunk.get_config())
    assert clone.dropout == 0.5 and clone.widths == (2, 2, 4, 4, 4)


def test_model_builders_load_the_file_into_both_trunks(tmp_path, reference_vgg):
    from mgtl_tf.safa.specs import SAFA_POLAR
    from mgtl_tf.safa import model as safa

    path = str(tmp_path / VGG16_NOTOP_FILE)
    write_legacy_notop(reference_vgg, path)
    model = safa.build_model({"backbone_weights": path}, SAFA_POLAR)
    want = reference_vgg.get_layer("block5_conv3").get_weights()[0]
    for trunk in (model.ground_trunk, model.aerial_trunk):
        np.testing.assert_array_equal(np.asarray(trunk.convs[-1].kernel), want)
    with pytest.raises(CVGLError, match="gone.h5"):
        safa.build_model({"backbone_weights": str(tmp_path / "gone.h5"), "vgg_widths": [2, 2, 2, 2, 2]},
                         SAFA_POLAR.replace(ground_size=(32, 32), aerial_size=(32, 32)))
