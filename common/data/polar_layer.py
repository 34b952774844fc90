"""Keras layer of the SAFA polar transform (see :mod:`common.data.polar` for the formula and the other paths).

The NumPy / OpenCV paths stay in :mod:`common.data.polar`, so offline tools never import TensorFlow.
"""

from __future__ import annotations

import keras

from common.errors import CVGLError
from common.data.polar import polar_grid



@keras.saving.register_keras_serializable(package="cvgl")
class PolarTransform(keras.layers.Layer):
    """Keras layer: a batch of square aerial images (B, S, S, C), any float/int dtype, to (B, H, W, C) float.

    The sampling grid depends only on (S, H, W); it is computed in float64 in ``build`` for the input size
    (which must be static and square) and baked in as constants, so the layer has no weights.
    """

    def __init__(self, height: int, width: int, **kwargs):
        super().__init__(**kwargs)
        self.height = int(height)
        self.width = int(width)
        self._indices = None
        self._weights_np = None

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[1] is None or input_shape[1] != input_shape[2]:
            raise CVGLError(
                f"PolarTransform needs a static square NHWC input (B, S, S, C), got {tuple(input_shape)}; "
                "resize aerial images to a fixed square size first"
            )
        self._size = int(input_shape[1])
        self._indices, self._weights_np = polar_grid(self._size, self.height, self.width)
        super().build(input_shape)

    def call(self, inputs):
        ops = keras.ops
        x = ops.cast(inputs, self.compute_dtype)
        batch = ops.shape(x)[0]
        channels = x.shape[-1]
        flat = ops.reshape(x, (batch, self._size * self._size, channels))
        out = None
        for k in range(4):
            idx = ops.convert_to_tensor(self._indices[k], dtype="int32")
            w = ops.convert_to_tensor(self._weights_np[k], dtype=self.compute_dtype)[None, :, None]
            term = ops.take(flat, idx, axis=1) * w
            out = term if out is None else out + term
        return ops.reshape(out, (batch, self.height, self.width, channels))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, input_shape[-1])

    def get_config(self):
        cfg = super().get_config()
        cfg.update(height=self.height, width=self.width)
        return cfg
