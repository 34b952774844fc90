"""TensorFlow 1 checkpoints (``model.ckpt.index`` + ``model.ckpt.data-*``) read as data, no TF1 graph built.

SAFA's authors publish their trained models as ``tf.compat.v1.train.Saver`` checkpoints. A checkpoint prefix
``DIR/model.ckpt`` names the files ``DIR/model.ckpt.index`` and ``DIR/model.ckpt.data-00000-of-00001`` (the
``.meta`` graph, the one part that could hold code, is never read). :func:`read_tf1_checkpoint` reads every
variable with ``tf.train.load_checkpoint``, a reader of the tensor bundle, into ``{name: np.ndarray}``.
"""

from __future__ import annotations

import glob
import os

import numpy as np

from common.errors import CVGLError


def tf1_prefix(path) -> str | None:
    """The checkpoint prefix ``path`` stands for (``model.ckpt``, ``model.ckpt.index``, ``model.ckpt.meta``,
    ``model.ckpt.data-00000-of-00001``, or a folder holding one ``checkpoint`` file), or None if it is none."""
    path = os.fspath(path)
    for suffix in (".index", ".meta"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    if ".data-" in os.path.basename(path):
        path = path[: path.rindex(".data-")]
    if os.path.isdir(path):
        import tensorflow as tf

        latest = tf.train.latest_checkpoint(path)
        return latest if latest and os.path.isfile(latest + ".index") else None
    return path if os.path.isfile(path + ".index") else None


def read_tf1_checkpoint(path) -> dict:
    """``{variable name: np.ndarray}`` of a TF1 checkpoint; CVGLError naming the files when it is incomplete."""
    prefix = tf1_prefix(path)
    if prefix is None:
        raise CVGLError(f"no TensorFlow checkpoint at {path}: expected PREFIX.index and PREFIX.data-* files "
                        "(give the prefix, e.g. .../model.ckpt)")
    if not glob.glob(glob.escape(prefix) + ".data-*"):
        raise CVGLError(f"checkpoint {prefix}: {prefix}.index is there but no {os.path.basename(prefix)}.data-* "
                        "file; copy the whole checkpoint (index and data files)")
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(prefix)
        shapes = reader.get_variable_to_shape_map()
        return {name: np.asarray(reader.get_tensor(name)) for name in sorted(shapes)}
    except (tf.errors.OpError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CVGLError(f"checkpoint {prefix} could not be read ({first}); is it complete?") from None
