"""Shared Keras layers.

:class:`SpatialAwareAggregation` -- SAFA's spatial-aware feature aggregation (Shi et al., NeurIPS 2019;
protocol.md §3 "SPE"). For a feature map f of P = H·W positions and C channels:

1. v = channel-reduce(f) ∈ R^P: the channel **mean** as SAFA's TensorFlow code does (``reduce="mean"``, the
   default), or the channel **max** as its paper describes (``reduce="max"``);
2. for each of the d = 8 embeddings k, independently and with **no activation**:
   u_k = v·W1_k + b1_k (P -> P/2), a_k = u_k·W2_k + b2_k (P/2 -> P);
   W ~ truncated normal (σ = 0.005), b = 0.1;
3. g[k, c] = Σ_p f[p, c]·a_k[p], flattened embedding-major (index k·C + c) -> d·C (4096 at 4x20x512), then
   L2-normalised (``normalize=True``).

At 4x20x512 (P = 80): 8·(80·40 + 40 + 40·80 + 80) = 52,160 weights. The L2/L1 regularizers declared in
SAFA's code are never added to its loss, so none are here.
"""

from __future__ import annotations

import keras
from keras import layers, ops



def l2_normalize(x, axis=-1, epsilon=1e-12):
    """x / max(‖x‖, ε), computed in float32."""
    x = ops.cast(x, "float32")
    norm = ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=True), epsilon * epsilon))
    return x / norm


@keras.saving.register_keras_serializable(package="cvgl")
class SpatialAwareAggregation(layers.Layer):
    """(B, H, W, C) feature map -> (B, num_embeddings·C) descriptor (SAFA's SPE + aggregation)."""

    def __init__(self, num_embeddings=8, reduce="mean", normalize=True, **kwargs):
        super().__init__(**kwargs)
        if reduce not in ("mean", "max"):
            raise ValueError(f"SpatialAwareAggregation: reduce must be 'mean' (SAFA code) or 'max' (SAFA paper), "
                            f"got {reduce!r}")
        self.num_embeddings = int(num_embeddings)
        self.reduce = reduce
        self.normalize = bool(normalize)

    def build(self, input_shape):
        _, h, w, c = input_shape
        if h is None or w is None:
            raise ValueError("SpatialAwareAggregation needs a fixed feature-map size (H, W known at build)")
        p = int(h) * int(w)
        hidden = p // 2
        k = self.num_embeddings
        w_init = keras.initializers.TruncatedNormal(stddev=0.005)
        b_init = keras.initializers.Constant(0.1)
        self.w1 = self.add_weight(name="w1", shape=(k, p, hidden), initializer=w_init)
        self.b1 = self.add_weight(name="b1", shape=(k, hidden), initializer=b_init)
        self.w2 = self.add_weight(name="w2", shape=(k, hidden, p), initializer=w_init)
        self.b2 = self.add_weight(name="b2", shape=(k, p), initializer=b_init)
        self.positions = p
        self.built = True

    def spatial_weights(self, features):
        """(B, H, W, C) -> (B, K, P): the K spatial importance maps a_k."""
        b = ops.shape(features)[0]
        f = ops.reshape(features, (b, self.positions, -1))
        v = ops.mean(f, axis=-1) if self.reduce == "mean" else ops.max(f, axis=-1)  # (B, P)
        u = ops.einsum("bp,kph->bkh", v, ops.cast(self.w1, v.dtype)) + ops.cast(self.b1, v.dtype)
        return ops.einsum("bkh,khp->bkp", u, ops.cast(self.w2, v.dtype)) + ops.cast(self.b2, v.dtype)

    def call(self, features):
        b = ops.shape(features)[0]
        f = ops.reshape(features, (b, self.positions, -1))  # (B, P, C)
        a = self.spatial_weights(features)  # (B, K, P)
        g = ops.einsum("bkp,bpc->bkc", a, f)  # embedding-major: index k*C + c after the reshape
        g = ops.reshape(g, (b, -1))
        return l2_normalize(g) if self.normalize else g

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_embeddings * input_shape[-1])

    def compute_output_spec(self, features):
        # the L2-normalised descriptor is float32 on purpose (l2_normalize), whatever the compute dtype
        dtype = "float32" if self.normalize else self.compute_dtype
        return keras.KerasTensor(self.compute_output_shape(features.shape), dtype=dtype)

    def get_config(self):
        config = super().get_config()
        config.update(num_embeddings=self.num_embeddings, reduce=self.reduce, normalize=self.normalize)
        return config
