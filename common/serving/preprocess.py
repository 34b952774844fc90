"""In-graph preprocessing: raw uint8 images of any size -> the model's input, as Keras layers.

The exported model (``experiments.export``) must take the images a user has — a street-view panorama and an
aerial image straight from disk, any size, uint8 — and do everything the offline preparation and the tf.data
pipeline did at training time, inside the graph, so a SavedModel consumer needs nothing of this project.

Ground view (:class:`GroundPreprocess`)
    1. **Crop rule.** An equirectangular panorama covering the full sphere has aspect W/H = 2 (CVACT:
       832 x 1664); the cross-view models are trained on its middle half, rows H/4 .. 3H/4 (rows 208:624 of
       832; SAFA ``data_preparation.py``, GeoDTR ``data_preparation.py``). A CVUSA panorama (224 x 1232,
       aspect 5.5) already is the horizon band and is used whole. Rule: **aspect W/H < 3 => crop the middle
       half of the rows**, else keep every row. (The threshold 3 sits between the two layouts; a
       prepared CVACT ground, already 122 x 671 or 112 x 616, has aspect > 3 and is left alone.)
    2. **Area resize** to the spec's ground size (:func:`resize`: ``tf.image.resize(method="area")`` on the
       TensorFlow backend, :func:`area_resize` in plain keras.ops elsewhere, the same pixels to float32
       rounding; within 0.01 grey levels of OpenCV ``INTER_AREA``, which the offline preparation uses).
    3. **Normalisation** with :func:`common.data.specs.normalise`, the same function the tf.data pipeline
       calls, so train-time and export-time pixels cannot differ.

Aerial view (:class:`AerialPreprocess`)
    1. Centre-crop to a square (aerial tiles are square already; this only guards odd inputs).
    2. Polar models (``spec.polar``): the SAFA polar transform of the square **as it is** (default): the
       sampling grid of :mod:`common.data.polar` (same formula: rho_i = S/2 (H-1-i)/H, centre S/2, bilinear, zero
       outside) is computed in the graph, in float64, for the input's own side S, so a 750 px CVUSA tile, a
       1200 px CVACT tile or a 128 px synthetic tile each gives exactly the polar map the offline preparation
       (:func:`common.data.polar.polar_transform_fast`) makes from that file. With ``source_size=S`` instead, the
       square is first area-resized to S and :class:`common.data.polar_layer.PolarTransform` (grid fixed for S) is
       applied: for users whose aerial images have another resolution than the training data.
       The result is **not rounded** to integers: the prepared PNGs are (within 0.5 grey levels, below the
       images' own quantisation, and the pipeline's on-the-fly polar maps are not), but a rounding step
       would make the output jump with floating-point noise: measured, a SavedModel and the same Keras
       graph then differed by 0.06 in GeoDTR descriptors of 750 px tiles (a few pixels rounding the other
       way), against < 1e-6 without it.
       Raw-aerial models: area-resize the square to the spec's aerial size.
    3. Normalisation as for the ground.

:class:`EndToEndModel` wraps a trained :class:`~common.models.base.CrossViewModel` with the two preprocessing
layers. Its ``embed_ground`` / ``embed_aerial`` take raw uint8 NHWC batches; it round-trips through ``.keras``
(the inner model and its weights inside), and it is what the SavedModel endpoints trace.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from common.data.specs import get_spec, normalise
from common.errors import CVGLError

#: A ground image whose width/height is below this is a full-sphere panorama: keep the middle half of rows.
FULL_PANORAMA_MAX_ASPECT = 3.0

RESIZE_METHOD = "area"


def _spec_config(spec):
    return get_spec(spec).to_config()


def area_weights(size_in, size_out: int, dtype="float32"):
    """The (size_out, size_in) matrix of an "area" resize along one axis (TensorFlow's ResizeArea,
    align_corners=False): output pixel o covers [o·s, (o+1)·s) of the input, s = size_in / size_out, and
    input pixel i weighs |[i, i+1) ∩ [o·s, (o+1)·s)| / s. Rows sum to 1; downscaling and upscaling alike.
    ``size_in`` may be a dynamic scalar (built in the graph). The coordinates are computed in float32 by
    default, as TensorFlow's kernel does, so the weights carry the same rounding (up to 3e-5 relative at
    ~200 px, more than float32 pixel noise)."""
    scale = ops.cast(size_in, dtype) / ops.cast(size_out, dtype)
    o = ops.cast(ops.arange(size_out), dtype)[:, None]
    i = ops.cast(ops.arange(size_in), dtype)[None, :]
    overlap = ops.minimum((o + 1.0) * scale, i + 1.0) - ops.maximum(o * scale, i)
    return ops.maximum(overlap, 0.0) / scale


def _area_axis(x, axis: int, size_out: int):
    """Area-resize (B, H, W, C) ``x`` along ``axis`` (1 or 2) to ``size_out``."""
    size_in = x.shape[axis]
    if size_in is not None and size_in == size_out:
        return x
    if size_in is not None and size_in % size_out == 0:  # integer downscale: mean of blocks of f pixels
        f = size_in // size_out
        shape = [-1, x.shape[1], x.shape[2], x.shape[3]]
        if any(d is None for d in shape[1:]):
            dyn = ops.shape(x)
            shape = [dyn[0], dyn[1], dyn[2], dyn[3]]
        shape[axis:axis + 1] = [size_out, f]
        return ops.mean(ops.reshape(x, shape), axis=axis + 1)
    weights = ops.cast(area_weights(ops.shape(x)[axis] if size_in is None else size_in, size_out), x.dtype)
    if axis == 1:
        return ops.einsum("oh,bhwc->bowc", weights, x)
    return ops.einsum("ow,bhwc->bhoc", weights, x)


def area_resize(images, size):
    """"area" resize of (B, H, W, C) float images to ``size`` = (h, w) with keras.ops only (any backend; JAX
    has no "area" interpolation): an average over blocks for integer downscale factors, else the exact
    area-weights matrix (:func:`area_weights`) applied along H, then W. Equals
    ``tf.image.resize(images, size, "area")`` to float32 rounding (tests/test_area_resize.py)."""
    x = _area_axis(images, 1, int(size[0]))
    return _area_axis(x, 2, int(size[1]))


def resize(images, size):
    """The preprocessing's resize: TensorFlow's own "area" resize on the TensorFlow backend (what the
    exported SavedModels run), :func:`area_resize` (the same pixels to float32 rounding) elsewhere."""
    if keras.backend.backend() == "tensorflow":
        return ops.image.resize(images, tuple(size), interpolation=RESIZE_METHOD)
    return area_resize(images, size)


@keras.saving.register_keras_serializable(package="cvgl")
class GroundPreprocess(keras.layers.Layer):
    """uint8 (B, H, W, 3) ground panoramas of any size -> (B, Hg, Wg, 3) normalised float32 model input."""

    def __init__(self, input_spec, **kwargs):
        super().__init__(**kwargs)
        self.spec = get_spec(input_spec)

    def call(self, images):
        x = ops.cast(images, "float32")
        shape = ops.shape(x)
        height, width = shape[1], shape[2]
        if isinstance(height, int) and isinstance(width, int):  # static shapes (eager, JAX)
            if width / height < FULL_PANORAMA_MAX_ASPECT:
                x = x[:, height // 4 : height // 4 + height // 2]
        else:  # dynamic shapes (SavedModel signature with None sizes)
            full = ops.cast(width, "float32") < FULL_PANORAMA_MAX_ASPECT * ops.cast(height, "float32")
            top = ops.where(full, height // 4, 0)
            rows = ops.where(full, height // 2, height)
            x = x[:, top : top + rows]
        x = resize(x, self.spec.ground_size)
        return normalise(x, self.spec)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.spec.ground_size, 3)

    def compute_output_spec(self, images):
        # float32 by design (the model input), whatever the dtype policy
        return keras.KerasTensor(self.compute_output_shape(images.shape), dtype="float32")

    def get_config(self):
        cfg = super().get_config()
        cfg["input_spec"] = _spec_config(self.spec)
        return cfg


def _centre_square(x):
    shape = ops.shape(x)
    height, width = shape[1], shape[2]
    if isinstance(height, int) and isinstance(width, int):
        side = min(height, width)
    else:
        side = ops.minimum(height, width)
    top = (height - side) // 2
    left = (width - side) // 2
    return x[:, top : top + side, left : left + side]


def polar_any_size(square, height: int, width: int):
    """SAFA polar transform of (B, S, S, C) float images, S static or dynamic, to (B, height, width, C).

    The formula of :mod:`common.data.polar` (its docstring), with the sampling grid built in the graph in
    float64 from the actual S; the four bilinear neighbours are gathered from the flattened image.
    """
    side = ops.shape(square)[1]
    batch, channels = ops.shape(square)[0], square.shape[-1]
    s = ops.cast(side, "float64")
    i = ops.cast(ops.arange(height), "float64")[:, None]
    j = ops.cast(ops.arange(width), "float64")[None, :]
    rho = (s / 2.0) * (height - 1 - i) / height
    theta = 2.0 * np.pi * j / width
    rows = s / 2.0 + rho * ops.cos(theta)
    cols = s / 2.0 - rho * ops.sin(theta)
    r0, c0 = ops.floor(rows), ops.floor(cols)
    flat = ops.reshape(square, (batch, side * side, channels))
    out = None
    for dr, dc in ((0, 0), (1, 0), (0, 1), (1, 1)):
        r, c = r0 + dr, c0 + dc
        wr = (r0 + 1.0 - rows) if dr == 0 else (rows - r0)
        wc = (c0 + 1.0 - cols) if dc == 0 else (cols - c0)
        inside = ops.logical_and(ops.logical_and(r >= 0, r < s), ops.logical_and(c >= 0, c < s))
        weight = ops.cast(ops.where(inside, wr * wc, 0.0), square.dtype)
        index = ops.cast(ops.clip(r, 0, s - 1.0) * s + ops.clip(c, 0, s - 1.0), "int32")
        term = ops.take(flat, ops.reshape(index, (-1,)), axis=1) * ops.reshape(weight, (1, -1, 1))
        out = term if out is None else out + term
    return ops.reshape(out, (batch, height, width, channels))


@keras.saving.register_keras_serializable(package="cvgl")
class AerialPreprocess(keras.layers.Layer):
    """uint8 (B, H, W, 3) aerial images of any size -> (B, Ha, Wa, 3) normalised float32 model input.

    ``source_size``: polar specs only; None (default) = polar transform of the image as it is, S = resize
    to S x S first (see the module docstring).
    """

    def __init__(self, input_spec, source_size=None, **kwargs):
        super().__init__(**kwargs)
        self.spec = get_spec(input_spec)
        self.source_size = None if source_size is None else int(source_size)
        if self.source_size is not None and self.source_size < 2:
            raise CVGLError(f"aerial source size must be at least 2 pixels, got {self.source_size}")
        self.polar = None
        if self.spec.polar and self.source_size:
            from common.data.polar_layer import PolarTransform

            # float32 by design, like the rest of the preprocessing (pixels, not activations)
            self.polar = PolarTransform(*self.spec.aerial_size, name="polar_transform", dtype="float32")

    def build(self, input_shape):
        if self.polar is not None:
            self.polar.build((None, self.source_size, self.source_size, 3))
        super().build(input_shape)

    def call(self, images):
        x = _centre_square(ops.cast(images, "float32"))
        if self.spec.polar:
            if self.polar is not None:
                x = resize(x, (self.source_size, self.source_size))
                x = self.polar(x)
            else:
                x = polar_any_size(x, *self.spec.aerial_size)
        else:
            x = resize(x, self.spec.aerial_size)
        return normalise(x, self.spec)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.spec.aerial_size, 3)

    def compute_output_spec(self, images):
        # float32 by design (the model input), whatever the dtype policy
        return keras.KerasTensor(self.compute_output_shape(images.shape), dtype="float32")

    def get_config(self):
        cfg = super().get_config()
        cfg.update(input_spec=_spec_config(self.spec), source_size=self.source_size)
        return cfg


@keras.saving.register_keras_serializable(package="cvgl")
class EndToEndModel(keras.Model):
    """A trained CrossViewModel behind in-graph preprocessing: raw uint8 images in, unit-norm descriptors out.

    ``embed_ground(uint8 (B, H, W, 3))`` and ``embed_aerial(uint8 (B, H, W, 3))`` -> (B, d) float32;
    ``call({"ground": ..., "aerial": ...})`` returns both. Sizes may differ from call to call.
    """

    def __init__(self, model, aerial_source_size=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(model, dict):
            model = keras.saving.deserialize_keras_object(model)
        self.model = model
        self.input_spec_ = get_spec(model.input_spec_)
        self.aerial_source_size = None if aerial_source_size is None else int(aerial_source_size)
        self.ground_preprocess = GroundPreprocess(self.input_spec_, name="ground_preprocess",
                                                  dtype=self.dtype_policy)
        self.aerial_preprocess = AerialPreprocess(
            self.input_spec_, source_size=self.aerial_source_size, name="aerial_preprocess",
            dtype=self.dtype_policy,
        )

    def embed_ground(self, images, training=False):
        return self.model.embed_ground(self.ground_preprocess(images), training=training)

    def embed_aerial(self, images, training=False):
        return self.model.embed_aerial(self.aerial_preprocess(images), training=training)

    def call(self, inputs, training=False):
        return {
            "ground": self.embed_ground(inputs["ground"], training=training),
            "aerial": self.embed_aerial(inputs["aerial"], training=training),
        }

    def build(self, input_shape=None):
        """Build every weight by one pass on small dummy images (also used when loading from ``.keras``)."""
        if not self.model.built:
            self.model.build()
        if not self.model.weights:  # a lazily built model: one pass creates its weights
            spec = self.input_spec_
            self.model(
                {
                    "ground": ops.zeros((1, *spec.ground_size, 3), "float32"),
                    "aerial": ops.zeros((1, *spec.aerial_size, 3), "float32"),
                },
                training=False,
            )
        self.ground_preprocess.build((None, None, None, 3))
        self.aerial_preprocess.build((None, None, None, 3))
        self.built = True

    def get_build_config(self):
        # built by one call of build() (no shapes needed); an unbuilt model has nothing to rebuild
        return {"input_shape": None} if self.built else None

    def build_from_config(self, config):
        self.build()

    def get_config(self):
        cfg = super().get_config()
        cfg.update(
            model=keras.saving.serialize_keras_object(self.model),
            aerial_source_size=self.aerial_source_size,
        )
        return cfg

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"))
        return cls(model, **config)


def end_to_end(model, aerial_source_size: int | None = None) -> EndToEndModel:
    """Wrap a trained model (built) with the preprocessing; ``aerial_source_size`` as in AerialPreprocess."""
    spec = get_spec(model.input_spec_)
    e2e = EndToEndModel(model, aerial_source_size=aerial_source_size if spec.polar else None)
    e2e.build()
    return e2e
