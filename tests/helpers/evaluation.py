"""Stand-ins for the evaluation tests: a colour-matching model, a tiny CVUSA-layout world, a raw export.

* :class:`MeanColourModel` -- a registered, serializable :class:`CrossViewModel` whose descriptor is the
  unit-normalised mean colour of the image passed through a Dense layer initialised to the identity. Pair k's
  ground and aerial images are flat patches of the same colour, so the retrieval result is known in advance
  (an oracle for the whole evaluate command), and the model still has weights to save and load.
* :func:`write_tiny_cvusa` -- N pairs in the CVUSA layout (``splits/val-19zl.csv``, ``bingmap/19``,
  ``streetview/panos``, optional ``coordinates.csv``); colours are well-separated directions (a Fibonacci
  sphere), and ``swap`` exchanges the aerial colours of chosen pairs to plant known misses.
* :func:`write_raw_export` -- a SavedModel with ``embed_ground`` / ``embed_aerial`` on raw uint8 images (the
  export contract), computing the same descriptor as the model.
* :func:`view_dataset` -- a minimal ``make_view_dataset(records, spec, view, batch_size)`` used only when the
  project's pipeline is not importable.
"""

from __future__ import annotations

import os

import keras
import numpy as np
from keras import layers, ops

from common.models.base import CrossViewModel


@keras.saving.register_keras_serializable(package="cvgl_test_helpers")
class MeanColourModel(CrossViewModel):
    def __init__(self, input_spec="geodtr_raw", **kwargs):
        super().__init__(input_spec=input_spec, **kwargs)
        self.ground_dense = layers.Dense(3, kernel_initializer="identity", bias_initializer="zeros", name="gd")
        self.aerial_dense = layers.Dense(3, kernel_initializer="identity", bias_initializer="zeros", name="ad")

    def build(self, input_shape=None):
        self.ground_dense.build((None, 3))
        self.aerial_dense.build((None, 3))
        self.built = True

    def embed_ground(self, ground, training=False):
        return ops.normalize(self.ground_dense(ops.mean(ground, axis=(1, 2))), axis=-1)

    def embed_aerial(self, aerial, training=False):
        return ops.normalize(self.aerial_dense(ops.mean(aerial, axis=(1, 2))), axis=-1)

    def family_loss(self, outputs, positions=None):
        from common.training.losses import soft_margin_triplet

        return soft_margin_triplet(outputs["aerial"], outputs["ground"])

    def components(self):
        return {"ground": [self.ground_dense], "aerial": [self.aerial_dense]}


def colours(n: int) -> np.ndarray:
    """n uint8 RGB colours whose [-1, 1] normalisations point in well-separated directions."""
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5**0.5) * i
    v = np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], 1)
    return np.round((v * 0.9 + 1) * 127.5).astype(np.uint8)


def write_tiny_cvusa(root, n=12, swap=(), positions=None, ground_size=(16, 88), aerial_size=32) -> np.ndarray:
    """Write the world; returns the (n, 3) uint8 colours (ground colour of pair k is colours[k])."""
    import cv2

    cols = colours(n)
    aerial_cols = cols.copy()
    for a, b in swap:
        aerial_cols[[a, b]] = aerial_cols[[b, a]]
    for sub in ("splits", "bingmap/19", "streetview/panos"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    lines = []
    for k in range(n):
        pid = f"{k:07d}"
        g = np.broadcast_to(cols[k][::-1], (*ground_size, 3))  # cv2 writes BGR
        a = np.broadcast_to(aerial_cols[k][::-1], (aerial_size, aerial_size, 3))
        cv2.imwrite(os.path.join(root, "streetview/panos", pid + ".png"), np.ascontiguousarray(g))
        cv2.imwrite(os.path.join(root, "bingmap/19", pid + ".png"), np.ascontiguousarray(a))
        lines.append(f"bingmap/19/{pid}.png,streetview/panos/{pid}.png,annotations/{pid}.png")
    with open(os.path.join(root, "splits/val-19zl.csv"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    if positions is not None:
        with open(os.path.join(root, "coordinates.csv"), "w") as fh:
            fh.write("id,lat,lon,easting,northing\n")
            for k, (e, nn) in enumerate(positions):
                fh.write(f"{k:07d},0,0,{e},{nn}\n")
    return cols


def view_dataset(records, spec, view, batch_size):
    """Minimal stand-in of common.data.pipeline.make_view_dataset (tanh-normalised, resized to the spec)."""
    import cv2
    import tensorflow as tf

    size = spec.ground_size if view == "ground" else spec.aerial_size
    imgs = []
    for r in records:
        img = cv2.imread(r.ground if view == "ground" else r.aerial)[..., ::-1]
        imgs.append(cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA).astype(np.float32))
    x = np.stack(imgs) / 127.5 - 1.0
    return tf.data.Dataset.from_tensor_slices(x).batch(batch_size)


def write_raw_export(path: str) -> None:
    """A SavedModel in ``path/saved_model`` with raw-uint8 endpoints computing MeanColourModel's descriptor."""
    import tensorflow as tf

    class RawExport(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
        def embed_ground(self, images):
            x = tf.reduce_mean(tf.cast(images, tf.float32) / 127.5 - 1.0, axis=(1, 2))
            return tf.math.l2_normalize(x, axis=-1)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
        def embed_aerial(self, images):
            x = tf.reduce_mean(tf.cast(images, tf.float32) / 127.5 - 1.0, axis=(1, 2))
            return tf.math.l2_normalize(x, axis=-1)

    module = RawExport()
    tf.saved_model.save(module, os.path.join(path, "saved_model"),
                        signatures={"embed_ground": module.embed_ground, "embed_aerial": module.embed_aerial})
    # the metadata every export carries (a SavedModel without it is refused): its weights' fingerprint
    import json

    from common.data.specs import get_spec
    from common.serving.export import FORMAT_VERSION, saved_model_variables, variables_fingerprint

    loaded = tf.saved_model.load(os.path.join(path, "saved_model"))
    meta = {"format_version": FORMAT_VERSION, "fingerprint": variables_fingerprint(saved_model_variables(loaded)),
            "name": "raw_mean_colour", "input_spec": get_spec("geodtr_raw").to_config()}
    with open(os.path.join(path, "export.json"), "w") as fh:
        json.dump(meta, fh)
