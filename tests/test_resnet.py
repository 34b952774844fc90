"""ResNet-34 trunk (torchvision layout, no max-pool, stride 16)."""

import keras
import numpy as np
import pytest

from common.backbones.resnet import ResNet34, conv_flops
from tests import geodtr_numpy_ref as ref


@pytest.fixture(scope="module")
def trunk():
    t = ResNet34()
    t.build((None, None, None, 3))
    return t


def _count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def test_parameter_count(trunk):
    assert _count(trunk.trainable_weights) == 21_284_672  # the official per-view count
    assert _count(trunk.non_trainable_weights) == 17_024  # BN running mean + var


@pytest.mark.parametrize("size,out", [((122, 671), (8, 42)), ((256, 256), (16, 16)), ((35, 50), (3, 4))])
def test_output_shapes(trunk, size, out):
    assert trunk.compute_output_shape((2,) + size + (3,)) == (2,) + out + (512,)
    if size == (122, 671):
        y = trunk(np.zeros((1,) + size + (3,), np.float32))
        assert tuple(y.shape) == (1,) + out + (512,)
        assert float(np.min(y)) >= 0.0  # taken after the final ReLU


def test_torchvision_names_one_to_one(trunk):
    layers = trunk.torch_layers()
    expected_prefixes = {k.rsplit(".", 1)[0] for k in ref.torchvision_resnet34_shapes()}
    assert set(layers) == expected_prefixes
    for name, layer in layers.items():
        if name.split(".")[-1].startswith("bn") or name.endswith("downsample.1"):
            assert isinstance(layer, keras.layers.BatchNormalization)
            assert layer.epsilon == 1e-5 and layer.momentum == 0.9
        else:
            assert isinstance(layer, keras.layers.Conv2D)
            assert layer.padding == "valid" and not layer.use_bias
    assert layers["conv1"].strides == (2, 2) and layers["layer2.0.conv1"].strides == (2, 2)
    assert layers["layer1.0.conv1"].strides == (1, 1)


def test_symmetric_padding_matches_pytorch_on_odd_and_even_sizes():
    """Stem only (conv1 + bn1 + relu) against a NumPy PyTorch-convention conv: Keras 'same' would shift."""
    rng = np.random.default_rng(0)
    sd = ref.random_resnet34(rng)
    t = ResNet34()
    t.build((None, None, None, 3))
    from geodtr_tf.convert import assign_state_dict, resnet_weights

    mapping, optional = resnet_weights(t)
    assign_state_dict(mapping, sd, optional, ignore_prefixes=("fc.",))
    sd64 = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    for h, w in ((10, 13), (12, 16)):
        x = rng.standard_normal((1, h, w, 3)).astype(np.float32)
        got = np.asarray(keras.ops.relu(t.bn1(t.conv1(t.stem_pad(x)), training=False))).transpose(0, 3, 1, 2)
        want = np.maximum(ref.batchnorm(ref.conv2d(x.astype(np.float64).transpose(0, 3, 1, 2),
                                                   sd64["conv1.weight"], 2, 3), sd64, "bn1"), 0)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_batchnorm_trains_with_batch_statistics():
    t = ResNet34()
    x = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
    t(x, training=False)
    before = t.bn1.moving_mean.numpy().copy()
    t(x, training=True)
    after = t.bn1.moving_mean.numpy()
    assert not np.allclose(before, after)  # running statistics update in training (momentum 0.1 torch)
    assert np.all(t.bn1.trainable_weights[0].trainable)


def test_config_round_trip(trunk):
    clone = ResNet34.from_config(trunk.get_config())
    clone.build((None, None, None, 3))
    assert [v.shape for v in clone.weights] == [v.shape for v in trunk.weights]
    assert len(clone.torch_layers()) == len(trunk.torch_layers()) == 72


def test_flop_count_equals_count_from_layer_shapes(trunk):
    """Analytic count (2 x MACs) against the same count read off the built Keras Conv2D layers."""
    for h, w in ((122, 671), (256, 256)):
        shape, total = (1, h, w, 3), 0
        x = trunk.stem_pad.compute_output_shape(shape)
        out = trunk.conv1.compute_output_shape(x)
        total += 2 * int(np.prod(trunk.conv1.kernel.shape)) * out[1] * out[2]
        shape = out
        for block in trunk.blocks:
            mid = block.conv1.compute_output_shape(block.pad1.compute_output_shape(shape))
            total += 2 * int(np.prod(block.conv1.kernel.shape)) * mid[1] * mid[2]
            total += 2 * int(np.prod(block.conv2.kernel.shape)) * mid[1] * mid[2]
            if block.downsample:
                total += 2 * int(np.prod(block.down_conv.kernel.shape)) * mid[1] * mid[2]
            shape = mid
        assert conv_flops((h, w)) == total
