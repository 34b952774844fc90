"""SAFA's VGG16 trunk (the backbone of SAFA and MGTL), with ImageNet weights from the Keras "notop" file.

References: Shi et al., "Spatial-Aware Feature Aggregation for Cross-View Image based Geo-Localization",
NeurIPS 2019 (SAFA; protocol.md §3); Zhao et al., "Mutual Generative Transformer Learning for Cross-view
Geo-localization", arXiv 2203.09135 (MGTL; mgtl.md "Architecture" 1).

The trunk is VGG16 conv1_1 ... conv5_3 (13 convolutions, 3x3, SAME, ReLU) with a 2x2/2 SAME max-pool after
blocks 1-4 and *one extra* 2x2/2 SAME max-pool at the end (SAFA's SAFA() adds it outside its VGG scope), so a
112x616 input gives a 4x20x512 map (112 -> 56 -> 28 -> 14 -> 7 -> 4; 616 -> ... -> 39 -> 20). SAFA puts a
dropout (keep 0.8) after each of conv4_1 ... conv5_3: ``dropout`` is that rate (0 = off).

Convolutions are named exactly like ``keras.applications.VGG16``'s (``block1_conv1`` ...), so the Keras
ImageNet file ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`` maps onto them by name
(:func:`load_vgg16_weights`). Inputs follow that file's convention: BGR minus (103.939, 116.779, 123.68),
no scaling (``common.data.specs`` "vgg_bgr").

``widths`` (default 64, 128, 256, 512, 512) exists so tests can run tiny trunks; the ImageNet file only
loads into the default widths.
"""

from __future__ import annotations

import math
import os
import sys
import warnings

import keras
import numpy as np
from keras import layers

from common.errors import CVGLError

VGG16_NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
VGG16_WIDTHS = (64, 128, 256, 512, 512)
VGG16_BLOCK_CONVS = (2, 2, 3, 3, 3)


class PretrainedWeightsMissing(UserWarning):
    """Warned (loudly) when ImageNet weights were asked for but no file was found: the trunk stays random."""


def conv_names():
    """The 13 Keras VGG16 convolution names, in order: block1_conv1 ... block5_conv3."""
    return [f"block{b + 1}_conv{i + 1}" for b, n in enumerate(VGG16_BLOCK_CONVS) for i in range(n)]


@keras.saving.register_keras_serializable(package="cvgl")
class VGG16Trunk(layers.Layer):
    """(B, H, W, 3) BGR-mean-subtracted image -> (B, ceil(H/32), ceil(W/32), widths[-1]) feature map.

    Args:
        widths: channels of the five blocks (VGG16: 64, 128, 256, 512, 512).
        dropout: rate of the dropout after conv4_1 ... conv5_3 (SAFA: 0.2, i.e. keep_prob 0.8); 0 = none.
        extra_pool: SAFA's extra 2x2/2 SAME max-pool after conv5_3 (default True; without it 7x39 at 112x616).
    """

    def __init__(self, widths=VGG16_WIDTHS, dropout=0.0, extra_pool=True, **kwargs):
        super().__init__(**kwargs)
        if len(widths) != 5:
            raise CVGLError(f"VGG16Trunk: widths must list 5 block widths, got {widths!r}")
        self.widths = tuple(int(w) for w in widths)
        self.dropout = float(dropout)
        self.extra_pool = bool(extra_pool)
        self.convs = []
        for b, n in enumerate(VGG16_BLOCK_CONVS):
            for i in range(n):
                self.convs.append(
                    layers.Conv2D(self.widths[b], 3, padding="same", activation="relu",
                                  name=f"block{b + 1}_conv{i + 1}", dtype=self.dtype_policy)
                )
        self.drop = layers.Dropout(self.dropout, dtype=self.dtype_policy) if self.dropout > 0 else None
        self.pool = layers.MaxPooling2D(2, 2, padding="same", dtype=self.dtype_policy)

    # block index of every conv, and whether a pool follows it
    def _plan(self):
        k = 0
        for b, n in enumerate(VGG16_BLOCK_CONVS):
            for i in range(n):
                last_in_block = i == n - 1
                pool_after = last_in_block and (b < 4 or self.extra_pool)
                yield self.convs[k], b, pool_after
                k += 1

    def build(self, input_shape):
        shape = tuple(input_shape)
        for conv, _, pool_after in self._plan():
            conv.build(shape)
            shape = shape[:-1] + (conv.filters,)
            if pool_after:
                shape = self._pooled(shape)
        self.built = True

    @staticmethod
    def _pooled(shape):
        h, w = shape[1], shape[2]
        h = None if h is None else math.ceil(h / 2)
        w = None if w is None else math.ceil(w / 2)
        return (shape[0], h, w, shape[3])

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        for conv, _, pool_after in self._plan():
            shape = shape[:-1] + (conv.filters,)
            if pool_after:
                shape = self._pooled(shape)
        return shape

    def call(self, x, training=None):
        for conv, block, pool_after in self._plan():
            x = conv(x)
            if self.drop is not None and block >= 3:
                x = self.drop(x, training=training)
            if pool_after:
                x = self.pool(x)
        return x

    def get_config(self):
        config = super().get_config()
        config.update(widths=list(self.widths), dropout=self.dropout, extra_pool=self.extra_pool)
        return config


# --- ImageNet weights ------------------------------------------------------------------------------------

def keras_cache_path() -> str:
    """Where Keras caches the notop file: $KERAS_HOME/models/ or ~/.keras/models/."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models", VGG16_NOTOP_FILE)


def _read_weight_file(path: str) -> dict:
    """{layer name: [kernel, bias]} from a Keras VGG16 weights file (legacy .h5 or Keras 3 .weights.h5)."""
    import h5py

    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise CVGLError(f"VGG16 weights file {path} is not a readable HDF5 file ({exc}); "
                        f"give the Keras '{VGG16_NOTOP_FILE}'") from None
    out = {}
    with fh:
        root = fh["model_weights"] if "model_weights" in fh else fh
        if "layer_names" in root.attrs:  # Keras 2 / legacy layout (the published notop file)
            for raw in root.attrs["layer_names"]:
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
                group = root[name]
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("weight_names", [])]
                if names:
                    out[name] = [np.asarray(group[n]) for n in names]
        elif "layers" in root:  # Keras 3 .weights.h5 written by save_weights
            found = {}
            for name, group in root["layers"].items():
                if "vars" in group and len(group["vars"]):
                    found[name] = [np.asarray(group["vars"][str(i)]) for i in range(len(group["vars"]))]
            out.update(found)
            # Keras 3 names the groups of a functional VGG16 by class (conv2d, conv2d_1, ...), in layer order:
            # map its 13 convolutions onto block1_conv1 ... block5_conv3 in that order
            convs = sorted((n for n, arrs in found.items() if n.startswith("conv2d") and arrs[0].ndim == 4),
                           key=lambda n: int(n.rsplit("_", 1)[1]) if "_" in n else 0)
            if len(convs) == len(conv_names()) and not set(conv_names()) & set(found):
                out.update({vgg: found[n] for vgg, n in zip(conv_names(), convs)})
        else:
            raise CVGLError(f"VGG16 weights file {path} has neither 'layer_names' nor 'layers': not a Keras "
                            f"weights file; give the Keras '{VGG16_NOTOP_FILE}'")
    return out


def load_vgg16_weights(trunk: VGG16Trunk, path: str) -> None:
    """Copy the 13 conv kernels/biases of a Keras VGG16 weights file into a built trunk, by layer name.

    Raises CVGLError naming the file when it is missing, unreadable, lacks a layer, or a shape differs.
    """
    if not os.path.isfile(path):
        raise CVGLError(f"VGG16 weights file not found: {path} (give the path of '{VGG16_NOTOP_FILE}', "
                        f"or set backbone_weights: null for a random start)")
    if not trunk.built:
        raise CVGLError("load_vgg16_weights: build the trunk (or the model) before loading weights")
    stored = _read_weight_file(path)
    for conv in trunk.convs:
        if conv.name not in stored:
            raise CVGLError(f"VGG16 weights file {path} has no layer '{conv.name}' "
                            f"(expected the Keras VGG16 'notop' file {VGG16_NOTOP_FILE})")
        arrays = stored[conv.name]
        kernel = next((a for a in arrays if a.ndim == 4), None)
        bias = next((a for a in arrays if a.ndim == 1), None)
        want = tuple(conv.kernel.shape)
        if kernel is None or bias is None or tuple(kernel.shape) != want or bias.shape[0] != want[-1]:
            got = [tuple(a.shape) for a in arrays]
            raise CVGLError(f"VGG16 weights file {path}: layer '{conv.name}' holds shapes {got}, the trunk "
                            f"needs kernel {want}; the file does not match this trunk (widths {trunk.widths})")
        conv.kernel.assign(kernel.astype("float32"))
        conv.bias.assign(bias.astype("float32"))


def init_vgg16_weights(trunk: VGG16Trunk, weights) -> str:
    """Initialise a built trunk per a config value; returns what was done (for logs).

    * ``None`` / ``"none"`` / ``"random"``: keep the random init (on purpose, no warning).
    * ``"imagenet"``: the Keras cache file (:func:`keras_cache_path`) if present; otherwise a LOUD warning
      (:class:`PretrainedWeightsMissing`, also printed on stderr) and random init. Nothing is downloaded.
    * a path: that file; a CVGLError naming it if missing or not matching.
    """
    if weights is None or str(weights).lower() in ("none", "random", "null", ""):
        return "random"
    if str(weights).lower() == "imagenet":
        path = keras_cache_path()
        if not os.path.isfile(path):
            msg = (f"VGG16 ImageNet weights NOT FOUND at {path}: the trunk '{trunk.name}' starts from RANDOM "
                   f"weights and will not reach the paper's numbers. Put '{VGG16_NOTOP_FILE}' there (or give "
                   f"its path as model.backbone_weights), or set backbone_weights: null to silence this.")
            bar = "!" * 100
            print(f"\n{bar}\nWARNING: {msg}\n{bar}\n", file=sys.stderr)
            warnings.warn(msg, PretrainedWeightsMissing, stacklevel=2)
            return "random (imagenet file missing)"
        load_vgg16_weights(trunk, path)
        return f"imagenet ({path})"
    load_vgg16_weights(trunk, os.fspath(weights))
    return f"file ({weights})"


def vgg16_trunk_macs(height: int, width: int, widths=VGG16_WIDTHS) -> int:
    """Multiply-accumulates of the trunk's convolutions at an HxW input (3x3 kernels, SAME, pools ceil)."""
    macs = 0
    h, w, c_in = height, width, 3
    for b, n in enumerate(VGG16_BLOCK_CONVS):
        for _ in range(n):
            macs += h * w * 9 * c_in * widths[b]
            c_in = widths[b]
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return macs


def vgg16_feature_hw(hw):
    """(h, w) of the VGG16 trunk's last feature map for an (H, W) input (five ceil-halvings)."""
    h, w = hw
    for _ in range(5):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return h, w
