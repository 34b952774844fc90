"""GeoDTR building blocks (Zhang et al., "Cross-view Geo-localization via Learning Disentangled Geometric
Layout Correspondence", AAAI 2023; geodtr.md §3-§5), written against the official PyTorch code's numerics.

Notation: r is the backbone map flattened to (B, N, C) with n = h·W + w (PyTorch's view of NCHW), K layout
descriptors, token width D = N/2.

* :class:`IndexAwarePositionEncoding` (IAPE): pe = hardtanh(u·Wp + bp), E ← Dropout(E + pe), where u is the
  channel-argmax index / C at each position ("index-aware": the signal is *which channel* is strongest).
* :class:`MultiHeadSelfAttention`: PyTorch ``nn.MultiheadAttention`` semantics with separate q/k/v kernels
  (the official packed ``in_proj`` split in three), scores scaled by 1/√head_dim, dropout on the weights.
* :class:`TransformerEncoderLayer`: post-LN, x = LN1(x + Drop(MHA(x))); x = LN2(x + Drop(FFN(x))), FFN =
  W_b·Drop(GELU_erf(W_a·x)); LayerNorm epsilon 1e-5.
* :class:`LayoutTransformer` (the official ``TRModule``): IAPE, L encoder layers, a final LayerNorm.
* :class:`GeometricLayoutExtractor` (GLE): saliency M = max_c r, u = argmax_c r / C; embedding layer 1
  (K maps N→D: E = einsum("bi,idj->bdj", M, W1) + b1); IAPE + transformer; embedding layer 2 (K maps D→N);
  returns Q (B, N, K), *unclipped* like the official module (P = hardtanh(Q) is taken by the model).
* :func:`layout_descriptor_pooling` (the "feature pathway"): f = L2norm(flatten_channel_major(rᵀ·P)).

Initialisation follows the official code: W1, W2, Wp ~ N(0, 0.005²); b1 = b2 = 0.1; bp = 0; in_proj
Xavier-uniform over the packed (3D×D) matrix, biases 0; out_proj and FFN as PyTorch ``nn.Linear``
(U(±1/√fan_in) for weights and FFN biases); LayerNorm 1/0; every encoder layer a copy of the first
(PyTorch's ``TransformerEncoder`` deep-copies one layer).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import initializers, layers, ops

LN_EPSILON = 1e-5


def hardtanh(x):
    """Clip to [-1, 1] (gradient 0 outside, as torch.nn.functional.hardtanh)."""
    return ops.clip(x, -1.0, 1.0)


def _linear_init(fan_in):
    """PyTorch nn.Linear default (kaiming_uniform a=√5 for W, U(±1/√fan_in) for b) = U(±1/√fan_in)."""
    bound = 1.0 / math.sqrt(fan_in)
    return initializers.RandomUniform(-bound, bound)


@keras.saving.register_keras_serializable(package="cvgl")
class IndexAwarePositionEncoding(layers.Layer):
    """IAPE: E + hardtanh(einsum("bi,idj->bdj", u, Wp) + bp), then dropout. Weights ``linear`` (N, K, D) and
    ``embedding_parameter`` (1, K, D) keep the official names."""

    def __init__(self, num_positions, num_descriptors, width, dropout=0.3, **kwargs):
        super().__init__(**kwargs)
        self.num_positions = int(num_positions)
        self.num_descriptors = int(num_descriptors)
        self.width = int(width)
        self.dropout_rate = float(dropout)
        self.dropout = layers.Dropout(self.dropout_rate, dtype=self.dtype_policy)

    def build(self, tokens_shape=None, u_shape=None):
        self.linear = self.add_weight(name="linear", shape=(self.num_positions, self.num_descriptors, self.width),
                                      initializer=initializers.RandomNormal(0.0, 0.005))
        self.embedding_parameter = self.add_weight(name="embedding_parameter",
                                                   shape=(1, self.num_descriptors, self.width), initializer="zeros")

    def call(self, tokens, u, training=None):
        pe = hardtanh(ops.einsum("bi,idj->bdj", ops.cast(u, self.compute_dtype), self.linear)
                      + self.embedding_parameter)
        return self.dropout(tokens + pe, training=training)

    def get_config(self):
        config = super().get_config()
        config.update(num_positions=self.num_positions, num_descriptors=self.num_descriptors, width=self.width,
                      dropout=self.dropout_rate)
        return config


@keras.saving.register_keras_serializable(package="cvgl")
class MultiHeadSelfAttention(layers.Layer):
    """Self-attention with PyTorch ``nn.MultiheadAttention`` numerics (batch_first, no mask).

    Weights: ``query_kernel``/``key_kernel``/``value_kernel`` (D, D) acting as x @ W (i.e. the transposed
    row blocks [0:D], [D:2D], [2D:3D] of torch ``in_proj_weight``), their biases (D,), ``output_kernel``
    (D, D) = out_proj.weight.T and ``output_bias``.
    """

    def __init__(self, num_heads, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.dropout_rate = float(dropout)
        self.attn_dropout = layers.Dropout(self.dropout_rate, dtype=self.dtype_policy)

    def build(self, input_shape):
        d = int(input_shape[-1])
        if d % self.num_heads:
            raise ValueError(f"token width {d} is not divisible by num_heads={self.num_heads}")
        self.width = d
        xavier = math.sqrt(6.0 / (d + 3 * d))  # xavier_uniform on the packed (3D, D) in_proj
        for name in ("query", "key", "value"):
            setattr(self, f"{name}_kernel", self.add_weight(
                name=f"{name}_kernel", shape=(d, d), initializer=initializers.RandomUniform(-xavier, xavier)))
            setattr(self, f"{name}_bias", self.add_weight(name=f"{name}_bias", shape=(d,), initializer="zeros"))
        self.output_kernel = self.add_weight(name="output_kernel", shape=(d, d), initializer=_linear_init(d))
        self.output_bias = self.add_weight(name="output_bias", shape=(d,), initializer="zeros")

    def _heads(self, x):
        b, t = ops.shape(x)[0], ops.shape(x)[1]
        x = ops.reshape(x, (b, t, self.num_heads, self.width // self.num_heads))
        return ops.transpose(x, (0, 2, 1, 3))  # (B, h, T, dh)

    def call(self, x, training=None):
        head_dim = self.width // self.num_heads
        q = self._heads(ops.matmul(x, self.query_kernel) + self.query_bias)
        k = self._heads(ops.matmul(x, self.key_kernel) + self.key_bias)
        v = self._heads(ops.matmul(x, self.value_kernel) + self.value_bias)
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / ops.cast(math.sqrt(head_dim), q.dtype)
        weights = ops.cast(ops.softmax(ops.cast(scores, "float32"), axis=-1), v.dtype)
        weights = self.attn_dropout(weights, training=training)
        out = ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3))
        out = ops.reshape(out, (ops.shape(x)[0], ops.shape(x)[1], self.width))
        return ops.matmul(out, self.output_kernel) + self.output_bias

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, dropout=self.dropout_rate)
        return config


@keras.saving.register_keras_serializable(package="cvgl")
class TransformerEncoderLayer(layers.Layer):
    """Post-LN encoder layer as torch ``TransformerEncoderLayer(activation="gelu", norm_first=False)``."""

    def __init__(self, num_heads, ffn_dim, dropout=0.3, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.ffn_dim = int(ffn_dim)
        self.dropout_rate = float(dropout)
        dt = self.dtype_policy
        self.self_attn = MultiHeadSelfAttention(self.num_heads, self.dropout_rate, name="self_attn", dtype=dt)
        self.dropout1 = layers.Dropout(self.dropout_rate, dtype=dt)
        self.dropout = layers.Dropout(self.dropout_rate, dtype=dt)  # inside the FFN
        self.dropout2 = layers.Dropout(self.dropout_rate, dtype=dt)
        self.norm1 = layers.LayerNormalization(epsilon=LN_EPSILON, name="norm1", dtype=dt)
        self.norm2 = layers.LayerNormalization(epsilon=LN_EPSILON, name="norm2", dtype=dt)

    def build(self, input_shape):
        d = int(input_shape[-1])
        dt = self.dtype_policy
        self.linear1 = layers.Dense(self.ffn_dim, kernel_initializer=_linear_init(d),
                                    bias_initializer=_linear_init(d), name="linear1", dtype=dt)
        self.linear2 = layers.Dense(d, kernel_initializer=_linear_init(self.ffn_dim),
                                    bias_initializer=_linear_init(self.ffn_dim), name="linear2", dtype=dt)
        self.self_attn.build(input_shape)
        self.linear1.build(input_shape)
        self.linear2.build(tuple(input_shape[:-1]) + (self.ffn_dim,))
        self.norm1.build(input_shape)
        self.norm2.build(input_shape)

    def call(self, x, training=None):
        x = self.norm1(x + self.dropout1(self.self_attn(x, training=training), training=training))
        h = self.dropout(ops.gelu(self.linear1(x), approximate=False), training=training)
        return self.norm2(x + self.dropout2(self.linear2(h), training=training))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def torch_weights(self, prefix) -> dict:
        """{torch state-dict key: (Keras variable, kind)} for this layer; kind says how to transform."""
        a = self.self_attn
        return {
            f"{prefix}.self_attn.in_proj_weight": ((a.query_kernel, a.key_kernel, a.value_kernel), "in_proj_w"),
            f"{prefix}.self_attn.in_proj_bias": ((a.query_bias, a.key_bias, a.value_bias), "in_proj_b"),
            f"{prefix}.self_attn.out_proj.weight": (a.output_kernel, "linear_w"),
            f"{prefix}.self_attn.out_proj.bias": (a.output_bias, "copy"),
            f"{prefix}.linear1.weight": (self.linear1.kernel, "linear_w"),
            f"{prefix}.linear1.bias": (self.linear1.bias, "copy"),
            f"{prefix}.linear2.weight": (self.linear2.kernel, "linear_w"),
            f"{prefix}.linear2.bias": (self.linear2.bias, "copy"),
            f"{prefix}.norm1.weight": (self.norm1.gamma, "copy"),
            f"{prefix}.norm1.bias": (self.norm1.beta, "copy"),
            f"{prefix}.norm2.weight": (self.norm2.gamma, "copy"),
            f"{prefix}.norm2.bias": (self.norm2.beta, "copy"),
        }

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, ffn_dim=self.ffn_dim, dropout=self.dropout_rate)
        return config


@keras.saving.register_keras_serializable(package="cvgl")
class LayoutTransformer(layers.Layer):
    """The official ``TRModule``: IAPE, ``num_layers`` post-LN encoder layers, final LayerNorm (K tokens of
    width D; no CLS token, no mask)."""

    def __init__(self, num_positions, num_descriptors, width, num_layers=2, num_heads=4, ffn_dim=2048,
                 dropout=0.3, **kwargs):
        super().__init__(**kwargs)
        self.num_positions = int(num_positions)
        self.num_descriptors = int(num_descriptors)
        self.width = int(width)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.ffn_dim = int(ffn_dim)
        self.dropout_rate = float(dropout)
        dt = self.dtype_policy
        self.pos_encoder = IndexAwarePositionEncoding(num_positions, num_descriptors, width, dropout,
                                                      name="pos_encoder", dtype=dt)
        self.encoder_layers = [TransformerEncoderLayer(num_heads, ffn_dim, dropout, name=f"layers_{i}",
                                                       dtype=dt) for i in range(self.num_layers)]
        self.norm = layers.LayerNormalization(epsilon=LN_EPSILON, name="norm", dtype=dt)

    def build(self, tokens_shape=None, u_shape=None):
        shape = (None, self.num_descriptors, self.width)
        self.pos_encoder.build(shape, (None, self.num_positions))
        for layer in self.encoder_layers:
            layer.build(shape)
        self.norm.build(shape)
        # torch.nn.TransformerEncoder deep-copies one layer: all layers start from identical weights. The
        # values are copied through NumPy so that no two variables share a buffer (under JAX an assign of one
        # variable to another aliases the array, and a jitted train step cannot donate it twice).
        for layer in self.encoder_layers[1:]:
            for dst, src in zip(layer.weights, self.encoder_layers[0].weights):
                dst.assign(np.array(ops.convert_to_numpy(src.value), copy=True))

    def call(self, tokens, u, training=None, return_intermediates=False):
        x = self.pos_encoder(tokens, u, training=training)
        inter = {"E_pe": x}
        for i, layer in enumerate(self.encoder_layers):
            x = layer(x, training=training)
            inter[f"layer{i}_out"] = x
        x = self.norm(x)
        if return_intermediates:
            return x, inter
        return x

    def get_config(self):
        config = super().get_config()
        config.update(num_positions=self.num_positions, num_descriptors=self.num_descriptors, width=self.width,
                      num_layers=self.num_layers, num_heads=self.num_heads, ffn_dim=self.ffn_dim,
                      dropout=self.dropout_rate)
        return config


@keras.saving.register_keras_serializable(package="cvgl")
class GeometricLayoutExtractor(layers.Layer):
    """GLE: backbone map r (B, N, C) -> Q (B, N, K), the unclipped layout descriptors (P = hardtanh(Q)).

    ``num_positions`` N must be even (D = N/2). ``num_layers=0`` is the official no-transformer branch
    (no IAPE, no transformer: Q = E·W2 + b2).
    """

    def __init__(self, num_positions, num_descriptors=8, num_layers=2, num_heads=4, ffn_dim=2048, dropout=0.3,
                 **kwargs):
        super().__init__(**kwargs)
        if int(num_positions) % 2:
            raise ValueError(f"GeometricLayoutExtractor needs an even number of positions N, got {num_positions}")
        self.num_positions = int(num_positions)
        self.num_descriptors = int(num_descriptors)
        self.width = self.num_positions // 2
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.ffn_dim = int(ffn_dim)
        self.dropout_rate = float(dropout)
        self.tr_module = None
        if self.num_layers:
            self.tr_module = LayoutTransformer(self.num_positions, self.num_descriptors, self.width,
                                               self.num_layers, self.num_heads, self.ffn_dim, self.dropout_rate,
                                               name="tr_module", dtype=self.dtype_policy)

    def build(self, input_shape=None):
        n, k, d = self.num_positions, self.num_descriptors, self.width
        normal = initializers.RandomNormal(0.0, 0.005)
        self.w1 = self.add_weight(name="w1", shape=(n, k, d), initializer=normal)
        self.b1 = self.add_weight(name="b1", shape=(1, k, d), initializer=initializers.Constant(0.1))
        self.w2 = self.add_weight(name="w2", shape=(d, k, n), initializer=normal)
        self.b2 = self.add_weight(name="b2", shape=(1, k, n), initializer=initializers.Constant(0.1))
        if self.tr_module is not None:
            self.tr_module.build()

    def saliency(self, r):
        """M = max over channels (B, N) and u = argmax / C (B, N) float; u carries no gradient."""
        channels = ops.shape(r)[-1]
        m = ops.max(r, axis=-1)
        idx = ops.argmax(r, axis=-1)
        u = ops.cast(idx, "float32") / ops.cast(channels, "float32")
        return m, ops.stop_gradient(u), idx

    def call(self, r, training=None, return_intermediates=False):
        r = ops.cast(r, self.compute_dtype)
        m, u, idx = self.saliency(r)
        e = ops.einsum("bi,idj->bdj", m, self.w1) + self.b1  # embedding layer 1: K maps N -> D
        inter = {"M": m, "idx": idx, "u": u, "E": e}
        t = e
        if self.tr_module is not None:
            t, more = self.tr_module(e, u, training=training, return_intermediates=True)
            inter.update(more)
        inter["T"] = t
        q = ops.einsum("bdj,jdi->bdi", t, self.w2) + self.b2  # embedding layer 2: K maps D -> N
        q = ops.transpose(q, (0, 2, 1))  # (B, N, K)
        if return_intermediates:
            inter["Q"] = q
            return q, inter
        return q

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_positions, self.num_descriptors)

    def torch_weights(self, prefix="") -> dict:
        """{official state-dict key (under ``prefix``): (Keras variable, kind)}."""
        p = f"{prefix}." if prefix else ""
        out = {f"{p}w1": (self.w1, "copy"), f"{p}b1": (self.b1, "copy"),
               f"{p}w2": (self.w2, "copy"), f"{p}b2": (self.b2, "copy")}
        if self.tr_module is not None:
            tr = self.tr_module
            out[f"{p}tr_module.pos_encoder.linear"] = (tr.pos_encoder.linear, "copy")
            out[f"{p}tr_module.pos_encoder.embedding_parameter"] = (tr.pos_encoder.embedding_parameter, "copy")
            for i, layer in enumerate(tr.encoder_layers):
                out.update(layer.torch_weights(f"{p}tr_module.transformer_encoder.layers.{i}"))
            out[f"{p}tr_module.transformer_encoder.norm.weight"] = (tr.norm.gamma, "copy")
            out[f"{p}tr_module.transformer_encoder.norm.bias"] = (tr.norm.beta, "copy")
        return out

    def get_config(self):
        config = super().get_config()
        config.update(num_positions=self.num_positions, num_descriptors=self.num_descriptors,
                      num_layers=self.num_layers, num_heads=self.num_heads, ffn_dim=self.ffn_dim,
                      dropout=self.dropout_rate)
        return config


def l2_normalize(x, epsilon=1e-12):
    """x / max(‖x‖₂, ε) over the last axis in float32 (torch.nn.functional.normalize)."""
    x = ops.cast(x, "float32")
    norm = ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True))
    return x / ops.maximum(norm, epsilon)


def layout_descriptor_pooling(r, p, normalize=True):
    """The feature pathway: f[c, k] = Σ_n r[n, c]·P[n, k], flattened channel-major (index c·K + k) to C·K,
    then one L2 norm over the whole vector. r (B, N, C), P (B, N, K); computed in float32."""
    r = ops.cast(r, "float32")
    p = ops.cast(p, "float32")
    f = ops.einsum("bnc,bnk->bck", r, p)
    c, k = f.shape[1], f.shape[2]  # static C·K when known, so symbolic shapes keep the descriptor length
    f = ops.reshape(f, (-1, c * k) if c is not None and k is not None else (ops.shape(f)[0], -1))
    return l2_normalize(f) if normalize else f
