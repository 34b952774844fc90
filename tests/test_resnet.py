"""ResNet-34 trunk (torchvision layout, no max-pool, stride 16)."""

import keras
import numpy as np
import pytest

from common.backbones.resnet import ResNet34, TorchBatchNormalization, conv_flops
from common.errors import CVGLError
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
            assert isinstance(layer, TorchBatchNormalization)
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
    from common.backbones.torch_weights import assign_state_dict
    from common.backbones.resnet import resnet_weights

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


# --- TorchBatchNormalization: torch.nn.BatchNorm2d's running statistics --------------------------------

def _torch_bn_oracle(x, gamma, beta, mean0, var0, momentum=0.1, eps=1e-5):
    """torch.nn.BatchNorm2d.train() forward on NHWC x in float64: (output, running_mean, running_var)."""
    x = x.astype(np.float64)
    n = x.size // x.shape[-1]
    mu = x.mean(axis=(0, 1, 2))
    var_b = ((x - mu) ** 2).mean(axis=(0, 1, 2))
    y = (x - mu) / np.sqrt(var_b + eps) * gamma + beta  # normalised with the biased variance
    return y, (1 - momentum) * mean0 + momentum * mu, (1 - momentum) * var0 + momentum * var_b * n / (n - 1)


def _bn_pair(channels, rng):
    gamma = (1 + 0.2 * rng.standard_normal(channels)).astype(np.float32)
    beta = (0.1 * rng.standard_normal(channels)).astype(np.float32)
    mean0 = (0.1 * rng.standard_normal(channels)).astype(np.float32)
    var0 = rng.uniform(0.5, 1.5, channels).astype(np.float32)
    layers = []
    for cls in (TorchBatchNormalization, keras.layers.BatchNormalization):
        layer = cls(epsilon=1e-5, momentum=0.9)
        layer.build((None, None, None, channels))
        layer.set_weights([gamma, beta, mean0, var0])
        layers.append(layer)
    return layers, (gamma, beta, mean0, var0)


def test_torch_batchnorm_moving_variance_is_unbiased():
    """Two training calls on (2, 3, 5, C), n = 30: running_var gets var n/(n-1), the output the biased var."""
    rng = np.random.default_rng(3)
    c = 6
    (bn, plain), (gamma, beta, mean, var) = _bn_pair(c, rng)
    for step in range(2):
        x = rng.standard_normal((2, 3, 5, c)) * rng.uniform(0.5, 3, c) + rng.uniform(-2, 2, c)
        x = x.astype(np.float32)
        want_y, mean, var = _torch_bn_oracle(x, gamma, beta, mean, var)
        got_y = np.asarray(bn(x, training=True))
        plain(x, training=True)
        np.testing.assert_allclose(got_y, want_y, rtol=0, atol=2e-5)
        np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(bn.moving_variance.numpy(), var, rtol=1e-6, atol=1e-7)
    # plain Keras folds the biased variance in: its gap (about 0.1 var/(n-1)) is far above the tolerance
    gap = np.max(np.abs(plain.moving_variance.numpy() - var) / var)
    assert gap > 1e-3, gap
    np.testing.assert_allclose(plain.moving_mean.numpy(), mean, rtol=1e-6, atol=1e-7)
    # inference mode uses the moving statistics, as the parent
    x = rng.standard_normal((1, 4, 4, c)).astype(np.float32)
    want = (x - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + 1e-5) * gamma + beta
    np.testing.assert_allclose(np.asarray(bn(x, training=False)), want, rtol=0, atol=1e-5)


def test_torch_batchnorm_with_mask_counts_unmasked_elements():
    rng = np.random.default_rng(4)
    bn = TorchBatchNormalization(epsilon=1e-5, momentum=0.9)
    x = rng.standard_normal((2, 7, 3)).astype(np.float32) * 2 + 1
    mask = np.ones((2, 7), bool)
    mask[0, 5:] = False
    mask[1, 3:] = False
    bn(x, mask=mask, training=True)
    sel = x[mask].astype(np.float64)  # (10, 3)
    n = sel.shape[0]
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.1 * sel.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.9 + 0.1 * sel.var(0) * n / (n - 1), rtol=1e-5)


def test_torch_batchnorm_mixed_precision_keeps_float32_statistics():
    rng = np.random.default_rng(5)
    c = 4
    x = rng.standard_normal((2, 4, 6, c)).astype(np.float32) * 3
    bn = TorchBatchNormalization(epsilon=1e-5, momentum=0.9, dtype="mixed_float16")
    y = bn(x.astype(np.float16), training=True)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    assert bn.moving_variance.dtype == "float32" and bn.gamma.dtype == "float32"
    want_y, _, want_var = _torch_bn_oracle(x.astype(np.float16).astype(np.float32), np.ones(c), np.zeros(c),
                                           np.zeros(c), np.ones(c))
    np.testing.assert_allclose(np.asarray(y, np.float32), want_y, rtol=0, atol=1e-2)
    np.testing.assert_allclose(bn.moving_variance.numpy(), want_var, rtol=1e-5)


def test_torch_batchnorm_config_and_keras_file_round_trip(tmp_path):
    bn = TorchBatchNormalization(epsilon=1e-5, momentum=0.9, dtype="float32", name="bn_x")
    clone = TorchBatchNormalization.from_config(bn.get_config())
    assert type(clone) is TorchBatchNormalization
    got = (clone.epsilon, clone.momentum, clone.name, clone.dtype_policy.name)
    assert got == (1e-5, 0.9, "bn_x", "float32")
    inputs = keras.Input((3, 4, 2))
    model = keras.Model(inputs, TorchBatchNormalization(epsilon=1e-5, momentum=0.9, name="bn")(inputs))
    rng = np.random.default_rng(6)
    model.get_layer("bn").set_weights([rng.standard_normal(2).astype(np.float32) for _ in range(3)]
                                      + [rng.uniform(0.5, 1, 2).astype(np.float32)])
    model.save(tmp_path / "bn.keras")
    loaded = keras.saving.load_model(tmp_path / "bn.keras")
    assert type(loaded.get_layer("bn")) is TorchBatchNormalization
    x = rng.standard_normal((2, 3, 4, 2)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    # a training call on the loaded layer still uses n/(n-1) (n = 24)
    loaded.get_layer("bn").moving_variance.assign(np.zeros(2, np.float32))
    loaded(x, training=True)
    var = x.reshape(-1, 2).astype(np.float64).var(0)
    np.testing.assert_allclose(loaded.get_layer("bn").moving_variance.numpy(), 0.1 * var * 24 / 23, rtol=1e-5)


def test_torch_batchnorm_refuses_what_torch_has_not():
    with pytest.raises(CVGLError, match="renorm"):
        TorchBatchNormalization(renorm=True)
    with pytest.raises(CVGLError, match="synchronized"):
        TorchBatchNormalization(synchronized=True)


def test_resnet_weight_names_and_order_are_unchanged(monkeypatch):
    """TorchBatchNormalization keeps every variable path, shape and the order plain Keras BN gives."""
    from common.backbones import resnet

    def paths():
        t = ResNet34(name="trunk")
        t.build((None, None, None, 3))
        return [(v.path, tuple(v.shape)) for v in t.weights]

    ours = paths()
    monkeypatch.setattr(resnet, "_bn", lambda name, dtype=None: keras.layers.BatchNormalization(
        epsilon=resnet.BN_EPSILON, momentum=resnet.BN_MOMENTUM, name=name, dtype=dtype))
    assert ours == paths()
    assert ours[1:5] == [("trunk/bn1/gamma", (64,)), ("trunk/bn1/beta", (64,)),
                         ("trunk/bn1/moving_mean", (64,)), ("trunk/bn1/moving_variance", (64,))]


def test_tiny_depths_variant_and_its_config():
    """``depths`` (blocks per stage) makes the tiny test variants: (1, 1, 1, 1) has one block per stage, named
    as torchvision names the first block of each stage, the same output shape, and round-trips through its
    config; the default (ResNet-34's 3, 4, 6, 3) is left out of the config, so older files read the same."""
    from common.backbones.resnet import ResNet34

    tiny = ResNet34(widths=(4, 4, 8, 8), depths=(1, 1, 1, 1))
    tiny.build((None, 32, 64, 3))
    assert tiny.block_names == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    assert tiny.compute_output_shape((2, 32, 64, 3)) == (2, 2, 4, 8)
    again = ResNet34.from_config(tiny.get_config())
    assert again.depths == (1, 1, 1, 1) and again.widths == (4, 4, 8, 8)
    assert "depths" not in ResNet34(widths=(4, 4, 8, 8)).get_config()
    with pytest.raises(ValueError, match="depths"):
        ResNet34(depths=(1, 1, 0, 1))
