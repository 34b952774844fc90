"""MGTL building blocks (Zhao et al., "Mutual Generative Transformer Learning for Cross-view
Geo-localization", arXiv 2203.09135; the reconstruction in mgtl.md "Architecture").

Read in the order of the paper's figure, one view:

* :class:`TokenNeck` -- the "FCN layer": mean over the feature map's rows (4x20x512 -> 20x512), then a
  per-token linear map 512 -> 384 (no activation).
* :class:`PositionalEmbedding` -- a learned 20x384 embedding (init N(0, 0.02)) added to the tokens, then
  LayerNorm (epsilon 1e-6).
* :class:`CrossModalGenerator` -- G2S (ground view) or S2G (aerial view): "the other view as imagined from
  this view". Encoder Dense 384->1536, GELU, Dense 1536->384, then a decoder of the same shape; per token
  (``kind="mlp"``) or, for the paper's "naive" generators, 1-D convolutions over the tokens with kernel 3 and
  circular padding, since the azimuth wraps (``kind="conv"``).
* :class:`GenerativeKnowledgeTransformer` -- the GKST block: F' = MHA(query=F̌, key=value=L) + F̌ (6 heads,
  384 wide), then F = F' + FFN(LN(F')) with FFN = Dense 384->1536, GELU, Dense 1536->384. With
  ``literal=True`` it is the form printed in the paper, F = F' + LN(F') (no FFN).

Every layer here is per-view; the two views never share weights. Only keras.ops / keras.layers are used.
"""

from __future__ import annotations

import keras
from keras import layers, ops



@keras.saving.register_keras_serializable(package="cvgl")
class TokenNeck(layers.Layer):
    """(B, H, W, C) map -> (B, W, dim) azimuth tokens: mean over the H rows, then a per-token Dense."""

    def __init__(self, dim=384, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.proj = layers.Dense(self.dim, name="fcn", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.proj.build((input_shape[0], input_shape[2], input_shape[3]))
        self.built = True

    def call(self, x):
        return self.proj(ops.mean(x, axis=1))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2], self.dim)

    def get_config(self):
        config = super().get_config()
        config.update(dim=self.dim)
        return config


@keras.saving.register_keras_serializable(package="cvgl")
class PositionalEmbedding(layers.Layer):
    """Adds a learned (tokens, dim) embedding (N(0, 0.02)), then LayerNorm (``epsilon``; None = no LN)."""

    def __init__(self, epsilon=1e-6, stddev=0.02, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.stddev = float(stddev)
        self.norm = (layers.LayerNormalization(epsilon=epsilon, name="norm", dtype=self.dtype_policy)
                     if epsilon is not None else None)

    def build(self, input_shape):
        _, n, d = input_shape
        if n is None:
            raise ValueError("PositionalEmbedding needs a fixed number of tokens (input width known at build)")
        self.embedding = self.add_weight(name="embedding", shape=(int(n), int(d)),
                                         initializer=keras.initializers.RandomNormal(stddev=self.stddev))
        if self.norm is not None:
            self.norm.build(input_shape)
        self.built = True

    def call(self, x):
        x = x + ops.cast(self.embedding, x.dtype)[None]
        return self.norm(x) if self.norm is not None else x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon, stddev=self.stddev)
        return config


def circular_pad(x, pad):
    """Pad (B, N, C) tokens by ``pad`` on both sides of the token axis, wrapping round (azimuth is a circle)."""
    if pad == 0:
        return x
    return ops.concatenate([x[:, -pad:], x, x[:, :pad]], axis=1)


@keras.saving.register_keras_serializable(package="cvgl")
class CrossModalGenerator(layers.Layer):
    """G2S / S2G: (B, N, dim) tokens of one view -> (B, N, dim) tokens of the other view as imagined.

    encoder: dim -> hidden (GELU) -> dim; decoder: dim -> hidden (GELU) -> dim. Nothing between encoder and
    decoder (no activation, no norm: the paper names none). ``kind="mlp"``: per-token Dense layers;
    ``kind="conv"``: Conv1D over the tokens, ``kernel_size`` wide, circular padding ("naive" generators).
    """

    def __init__(self, dim=384, hidden=1536, kind="mlp", kernel_size=3, **kwargs):
        super().__init__(**kwargs)
        if kind not in ("mlp", "conv"):
            raise ValueError(f"CrossModalGenerator: kind must be 'mlp' or 'conv' (naive), got {kind!r}")
        if kind == "conv" and kernel_size % 2 != 1:
            raise ValueError(f"CrossModalGenerator: kernel_size must be odd for circular padding, got {kernel_size}")
        self.dim, self.hidden, self.kind, self.kernel_size = int(dim), int(hidden), kind, int(kernel_size)
        names = ("encoder_in", "encoder_out", "decoder_in", "decoder_out")
        widths = (self.hidden, self.dim, self.hidden, self.dim)
        acts = ("gelu", None, "gelu", None)
        if kind == "mlp":
            self.maps = [layers.Dense(w, activation=a, name=n, dtype=self.dtype_policy)
                         for n, w, a in zip(names, widths, acts)]
        else:
            self.maps = [layers.Conv1D(w, self.kernel_size, padding="valid", activation=a, name=n,
                                       dtype=self.dtype_policy) for n, w, a in zip(names, widths, acts)]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for m in self.maps:
            if self.kind == "conv":
                n = None if shape[1] is None else shape[1] + self.kernel_size - 1
                m.build((shape[0], n, shape[2]))
            else:
                m.build(shape)
            shape = shape[:-1] + (m.filters if self.kind == "conv" else m.units,)
        self.built = True

    def call(self, x):
        for m in self.maps:
            if self.kind == "conv":
                x = circular_pad(x, self.kernel_size // 2)
            x = m(x)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.dim,)

    def get_config(self):
        config = super().get_config()
        config.update(dim=self.dim, hidden=self.hidden, kind=self.kind, kernel_size=self.kernel_size)
        return config


@keras.saving.register_keras_serializable(package="cvgl")
class GenerativeKnowledgeTransformer(layers.Layer):
    """GKST block: F' = MHA(q=F̌, k=v=L) + F̌; F = F' + FFN(LN(F'))  (``literal``: F = F' + LN(F')).

    ``call(tokens, memory)`` with memory = the generator output L (MGTL) or the tokens themselves (the
    "w/o CMI" ablation: self-attention). ``return_attention=True`` also returns the (B, heads, N, N) weights.
    """

    @classmethod
    def from_config(cls, config):
        from common.models.base import rename_legacy_keys

        return super().from_config(rename_legacy_keys(config, {"heads": "num_heads", "mlp_dim": "ffn_dim"}))

    def __init__(self, dim=384, num_heads=6, ffn_dim=1536, literal=False, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        if dim % num_heads:
            raise ValueError(f"GenerativeKnowledgeTransformer: dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.ffn_dim = int(dim), int(num_heads), int(ffn_dim)
        self.literal, self.epsilon = bool(literal), epsilon
        self.attention = layers.MultiHeadAttention(self.num_heads, self.dim // self.num_heads, name="cross_attention",
                                                   dtype=self.dtype_policy)
        self.norm = layers.LayerNormalization(epsilon=epsilon, name="norm", dtype=self.dtype_policy)
        if not self.literal:
            self.ffn_in = layers.Dense(self.ffn_dim, activation="gelu", name="ffn_in", dtype=self.dtype_policy)
            self.ffn_out = layers.Dense(self.dim, name="ffn_out", dtype=self.dtype_policy)

    def build(self, tokens_shape, memory_shape=None):
        memory_shape = tokens_shape if memory_shape is None else memory_shape
        self.attention.build(tuple(tokens_shape), tuple(memory_shape), tuple(memory_shape))
        self.norm.build(tokens_shape)
        if not self.literal:
            self.ffn_in.build(tokens_shape)
            self.ffn_out.build(tuple(tokens_shape[:-1]) + (self.ffn_dim,))
        self.built = True

    def call(self, tokens, memory, return_attention=False):
        attended, scores = self.attention(tokens, memory, memory, return_attention_scores=True)
        f_prime = attended + tokens
        if self.literal:
            out = f_prime + self.norm(f_prime)
        else:
            out = f_prime + self.ffn_out(self.ffn_in(self.norm(f_prime)))
        return (out, scores) if return_attention else out

    def compute_output_shape(self, tokens_shape, memory_shape=None):
        return tokens_shape

    def compute_output_spec(self, tokens, memory, return_attention=False):
        out = keras.KerasTensor(tokens.shape, dtype=self.compute_dtype)
        if not return_attention:
            return out
        scores = (tokens.shape[0], self.num_heads, tokens.shape[1], memory.shape[1])
        return out, keras.KerasTensor(scores, dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(dim=self.dim, num_heads=self.num_heads, ffn_dim=self.ffn_dim, literal=self.literal,
                      epsilon=self.epsilon)
        return config
