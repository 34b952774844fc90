"""ResNet-34 trunk as GeoDTR uses it (torchvision layout, max-pool removed, stride 16).

GeoDTR (Zhang et al., AAAI 2023; geodtr.md §2) keeps ``conv1`` (7x7/2) + ``bn1`` + ReLU and ``layer1`` to
``layer4`` of torchvision's ``resnet34`` (BasicBlocks [3, 4, 6, 3]; He et al., CVPR 2016) and drops the
max-pool, the average pool and the classifier, so a 122x671 input gives an 8x42x512 map and a 256x256 input
a 16x16x512 map. Output is taken after the last ReLU (r ≥ 0).

To make the pixels line up with PyTorch every padded convolution is an explicit symmetric
``ZeroPadding2D(p)`` followed by a ``valid`` convolution (conv1 p=3, every 3x3 p=1; the 1x1 downsample has
no padding): Keras ``padding="same"`` pads bottom/right only at stride 2 (geodtr.md §13.2). BatchNorm uses
epsilon 1e-5 and momentum 0.9 (= PyTorch momentum 0.1) and is :class:`TorchBatchNormalization`: in training
it normalises with the biased batch variance, as both frameworks do, but folds the *unbiased* one
(x n/(n-1), n = B*H*W) into the moving variance, as ``torch.nn.BatchNorm2d`` does; plain Keras folds the
biased one, so after a training step every running variance would be off by up to 1/(n-1) of its update
(layer4 at 122x671 with B=2: n = 672, 0.15%; tests/test_geodtr_train_step.py).

Weight names: :meth:`ResNet34.torch_layers` maps every torchvision state-dict prefix (``conv1``, ``bn1``,
``layer2.0.downsample.0`` ...) to the Keras layer holding that tensor, so a converter can move weights 1:1
(conv OIHW -> HWIO; BN weight/bias/running_mean/running_var -> gamma/beta/moving_mean/moving_variance).
21,284,672 trainable parameters (+ 17,024 BN moving statistics).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from common.backbones.torch_weights import assign_state_dict, export_state_dict, read_state_dict
from common.errors import CVGLError, require_file

STAGES = (("layer1", 64, 3, 1), ("layer2", 128, 4, 2), ("layer3", 256, 6, 2), ("layer4", 512, 3, 2))
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # Keras convention; equals PyTorch momentum 0.1

# torchvision initialises convs with kaiming_normal_(mode="fan_out", nonlinearity="relu")
_CONV_INIT = {"class_name": "VarianceScaling",
              "config": {"scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal"}}


def _conv(filters, kernel, stride, name, dtype=None):
    return layers.Conv2D(filters, kernel, strides=stride, padding="valid", use_bias=False,
                         kernel_initializer=keras.initializers.get(_CONV_INIT), name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package="cvgl")
class TorchBatchNormalization(layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` whose moving variance follows ``torch.nn.BatchNorm*d``.

    Training mode: the output is normalised with the batch mean and the *biased* batch variance (as Keras
    and PyTorch both do), and the moving statistics are updated with

        moving_mean     <- momentum * moving_mean     + (1 - momentum) * mean
        moving_variance <- momentum * moving_variance + (1 - momentum) * variance * n / (n - 1)

    where n is the number of reduced elements per channel (B*H*W for an NHWC map; with a mask, the number
    of unmasked ones). PyTorch raises for n = 1; here the factor is then 1. Everything else (inference,
    weights, their names and order, mixed precision with float32 statistics) is the parent's. Batch
    renormalisation and ``synchronized`` statistics are not part of PyTorch's BatchNorm and are refused.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.renorm:
            raise CVGLError(f"{self.name}: TorchBatchNormalization does not support renorm=True "
                            f"(PyTorch's BatchNorm has no batch renormalisation)")
        if self.synchronized:
            raise CVGLError(f"{self.name}: TorchBatchNormalization does not support synchronized=True "
                            f"(use keras.layers.BatchNormalization for cross-replica statistics)")

    def _count(self, inputs, mask):
        """n: elements reduced per channel, as a float32 scalar."""
        if mask is not None:
            return ops.sum(ops.cast(mask, "float32"))
        shape = ops.shape(inputs)
        n = 1
        for axis in self._reduction_axes:
            n = n * shape[axis]
        return ops.cast(n, "float32")

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable):
            return super().call(inputs, training=training, mask=mask)
        if mask is not None and len(mask.shape) != len(inputs.shape) - 1:
            raise ValueError(f"The mask provided should be one dimension less than the inputs. Received: "
                             f"mask.shape={mask.shape}, inputs.shape={inputs.shape}")
        # as the parent: statistics in (at least) float32, also under mixed precision
        compute_dtype = keras.backend.result_type(inputs.dtype, "float32")
        inputs = ops.cast(inputs, compute_dtype)
        mean, variance = self._moments(inputs, mask)
        n = ops.cast(self._count(inputs, mask), compute_dtype)
        unbiased = variance * (n / ops.maximum(n - 1.0, 1.0))
        moving_mean = ops.cast(self.moving_mean, compute_dtype)
        moving_variance = ops.cast(self.moving_variance, compute_dtype)
        self.moving_mean.assign(moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(moving_variance * self.momentum + unbiased * (1.0 - self.momentum))
        gamma = ops.cast(self.gamma, compute_dtype) if self.scale else None
        beta = ops.cast(self.beta, compute_dtype) if self.center else None
        outputs = ops.batch_normalization(x=inputs, mean=mean, variance=variance, axis=self.axis, offset=beta,
                                          scale=gamma, epsilon=self.epsilon)
        return ops.cast(outputs, self.compute_dtype)


def _bn(name, dtype=None):
    return TorchBatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package="cvgl")
class BasicBlock(layers.Layer):
    """torchvision BasicBlock: pad-conv3x3(stride)-BN-ReLU-pad-conv3x3-BN, + identity or 1x1 conv-BN, ReLU."""

    def __init__(self, filters, stride=1, downsample=False, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.stride = int(stride)
        self.downsample = bool(downsample)
        dt = self.dtype_policy
        self.pad1 = layers.ZeroPadding2D(1, name="pad1", dtype=dt)
        self.conv1 = _conv(self.filters, 3, self.stride, "conv1", dt)
        self.bn1 = _bn("bn1", dt)
        self.pad2 = layers.ZeroPadding2D(1, name="pad2", dtype=dt)
        self.conv2 = _conv(self.filters, 3, 1, "conv2", dt)
        self.bn2 = _bn("bn2", dt)
        if self.downsample:
            self.down_conv = _conv(self.filters, 1, self.stride, "downsample_0", dt)
            self.down_bn = _bn("downsample_1", dt)

    def build(self, input_shape):
        shape = tuple(input_shape)
        self.conv1.build(self.pad1.compute_output_shape(shape))
        mid = self.conv1.compute_output_shape(self.pad1.compute_output_shape(shape))
        self.bn1.build(mid)
        self.conv2.build(self.pad2.compute_output_shape(mid))
        self.bn2.build(mid)
        if self.downsample:
            self.down_conv.build(shape)
            self.down_bn.build(self.down_conv.compute_output_shape(shape))

    def call(self, x, training=None):
        y = ops.relu(self.bn1(self.conv1(self.pad1(x)), training=training))
        y = self.bn2(self.conv2(self.pad2(y)), training=training)
        shortcut = self.down_bn(self.down_conv(x), training=training) if self.downsample else x
        return ops.relu(y + shortcut)

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        s = self.stride
        h = None if h is None else (h - 1) // s + 1
        w = None if w is None else (w - 1) // s + 1
        return (b, h, w, self.filters)

    def torch_layers(self, prefix):
        out = {f"{prefix}.conv1": self.conv1, f"{prefix}.bn1": self.bn1,
               f"{prefix}.conv2": self.conv2, f"{prefix}.bn2": self.bn2}
        if self.downsample:
            out[f"{prefix}.downsample.0"] = self.down_conv
            out[f"{prefix}.downsample.1"] = self.down_bn
        return out

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, stride=self.stride, downsample=self.downsample)
        return config


@keras.saving.register_keras_serializable(package="cvgl")
class ResNet34(layers.Layer):
    """(B, H, W, 3) image -> (B, ⌈H/16⌉, ⌈W/16⌉, 512) feature map (GeoDTR's backbone, no max-pool)."""

    def __init__(self, widths=None, depths=None, **kwargs):
        super().__init__(**kwargs)
        # widths: channels of conv1/layer1 ... layer4; default torchvision's (64, 128, 256, 512). depths: blocks
        # per stage, default ResNet-34's (3, 4, 6, 3). Smaller ones exist for CPU demos and tests only (the tiny
        # variants: (1, 1, 1, 1) traces in a third of the time); ImageNet weights load into the defaults alone.
        self.widths = tuple(int(w) for w in (widths or [s[1] for s in STAGES]))
        if len(self.widths) != len(STAGES):
            raise ValueError(f"ResNet34 widths must have {len(STAGES)} entries, got {self.widths}")
        self.depths = tuple(int(d) for d in (depths or [s[2] for s in STAGES]))
        if len(self.depths) != len(STAGES) or min(self.depths) < 1:
            raise ValueError(f"ResNet34 depths must be {len(STAGES)} block counts >= 1, got {self.depths}")
        dt = self.dtype_policy
        self.stem_pad = layers.ZeroPadding2D(3, name="pad_conv1", dtype=dt)
        self.conv1 = _conv(self.widths[0], 7, 2, "conv1", dt)
        self.bn1 = _bn("bn1", dt)
        self.blocks = []  # flat list, torchvision order: layer1.0 ... layer4.2
        self.block_names = []
        in_ch = self.widths[0]
        for (stage, _, _, stride), filters, blocks in zip(STAGES, self.widths, self.depths):
            for i in range(blocks):
                s = stride if i == 0 else 1
                self.blocks.append(BasicBlock(filters, s, downsample=(s != 1 or in_ch != filters),
                                              name=f"{stage}_{i}", dtype=dt))
                self.block_names.append(f"{stage}.{i}")
                in_ch = filters

    def build(self, input_shape):
        shape = tuple(input_shape)
        padded = self.stem_pad.compute_output_shape(shape)
        self.conv1.build(padded)
        shape = self.conv1.compute_output_shape(padded)
        self.bn1.build(shape)
        for block in self.blocks:
            block.build(shape)
            shape = block.compute_output_shape(shape)

    def call(self, x, training=None):
        x = ops.relu(self.bn1(self.conv1(self.stem_pad(x)), training=training))
        for block in self.blocks:
            x = block(x, training=training)
        return x

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        for _ in range(4):  # conv1 + three stride-2 stages
            h = None if h is None else (h - 1) // 2 + 1
            w = None if w is None else (w - 1) // 2 + 1
        return (b, h, w, self.widths[-1])

    def get_config(self):
        config = super().get_config()
        config.update(widths=list(self.widths))
        if self.depths != tuple(s[2] for s in STAGES):  # the default is left out: older files stay as they were
            config.update(depths=list(self.depths))
        return config

    def torch_layers(self, prefix="") -> dict:
        """{torchvision state-dict prefix: Keras Conv2D / TorchBatchNormalization}, e.g.
        ``layer2.0.downsample.0``."""
        p = f"{prefix}." if prefix else ""
        out = {f"{p}conv1": self.conv1, f"{p}bn1": self.bn1}
        for name, block in zip(self.block_names, self.blocks):
            out.update(block.torch_layers(f"{p}{name}"))
        return out


def conv_flops(input_hw, include_bn=False) -> int:
    """2 x multiply-accumulates of every convolution of the trunk for one (H, W) image (analytic count)."""
    h, w = input_hw
    total = 0

    def out(n, k, s, p):
        return (n + 2 * p - k) // s + 1

    h, w = out(h, 7, 2, 3), out(w, 7, 2, 3)
    total += 2 * 7 * 7 * 3 * 64 * h * w
    in_ch = 64
    for _, filters, blocks, stride in STAGES:
        for i in range(blocks):
            s = stride if i == 0 else 1
            ho, wo = out(h, 3, s, 1), out(w, 3, s, 1)
            total += 2 * 9 * in_ch * filters * ho * wo + 2 * 9 * filters * filters * ho * wo
            if s != 1 or in_ch != filters:
                total += 2 * in_ch * filters * ho * wo
            h, w, in_ch = ho, wo, filters
    return total


def _bn_weights(bn, prefix):
    return {f"{prefix}.weight": (bn.gamma, "copy"), f"{prefix}.bias": (bn.beta, "copy"),
            f"{prefix}.running_mean": (bn.moving_mean, "copy"),
            f"{prefix}.running_var": (bn.moving_variance, "copy")}


def resnet_weights(resnet, rename=None) -> tuple:
    """({torch key: (variable, kind)}, {optional torch keys}) for a :class:`ResNet34`.

    ``rename`` maps a torchvision prefix (``layer2.0.conv1``) to the checkpoint's (default: unchanged)."""
    mapping, optional = {}, set()
    for tv_prefix, layer in resnet.torch_layers().items():
        prefix = rename(tv_prefix) if rename else tv_prefix
        if hasattr(layer, "moving_mean"):
            mapping.update(_bn_weights(layer, prefix))
            optional.add(f"{prefix}.num_batches_tracked")
        else:
            mapping[f"{prefix}.weight"] = (layer.kernel, "conv")
    return mapping, optional


def convert_resnet34(sd: dict, source="checkpoint"):
    """A torchvision resnet34 state dict -> a Keras model (any-size image -> stride-16 map). ``fc.*`` is the
    ImageNet classifier, which GeoDTR drops, and is ignored."""
    import keras

    from common.backbones.resnet import ResNet34

    backbone = ResNet34(name="resnet34")
    backbone.build((None, None, None, 3))
    mapping, optional = resnet_weights(backbone)
    assign_state_dict(mapping, sd, optional, ignore_prefixes=("fc.",), source=source)
    inputs = keras.Input((None, None, 3), name="image")
    return keras.Model(inputs, backbone(inputs), name="resnet34_trunk")


def load_resnet34_weights(backbone, path) -> None:
    """Fill a :class:`ResNet34` from a converted ``.keras`` (from ``convert_weights --model resnet34``) or
    directly from a torchvision state dict file."""
    path = require_file(path, "ResNet-34 weights", "convert them with python -m experiments.convert_weights "
                                                    "--model resnet34")
    if path.endswith(".keras"):
        import keras


        try:
            loaded = keras.saving.load_model(path)
        except Exception as exc:
            raise CVGLError(f"ResNet-34 weights {path} could not be loaded ({exc})") from None
        source = [layer for layer in loaded.layers if isinstance(layer, ResNet34)]
        if len(source) != 1:
            raise CVGLError(f"{path} holds no ResNet-34 trunk (make it with convert_weights --model resnet34)")
        sd = export_state_dict(resnet_weights(source[0])[0])
    else:
        sd = read_state_dict(path)
    mapping, optional = resnet_weights(backbone)
    assign_state_dict(mapping, sd, optional, ignore_prefixes=("fc.",), source=path)
