"""Descriptors of every image of a split: ground queries and aerial references, as float32 NumPy arrays.

Two kinds of model are supported:

* a trained :class:`~common.models.base.CrossViewModel` (a ``.keras`` file or a run's checkpoint): the tf.data
  pipeline (:func:`common.data.pipeline.make_view_dataset`) reads and normalises each view per the model's
  :class:`~common.data.specs.InputSpec`, and the towers run alone (``embed_ground`` / ``embed_aerial``) with
  ``training=False`` -- dropout off, batch statistics frozen, the final partial batch kept (the evaluators of
  SAFA / GeoDTR do the same);
* an export (``experiments.export``): its SavedModel endpoints take the *raw* uint8 images straight from disk
  (the panorama and the aerial tile, any size) and do their own cropping, resizing, polar transform and
  normalisation, so here the raw files of the records are read and batched as they are.

Either way the result is ``(ground_emb (N, d), aerial_emb (N, d))`` in record order, with a progress bar.
"""

from __future__ import annotations

import math
import weakref
from typing import Callable, Optional, Sequence

import numpy as np

from common.data.images import read_rgb
from common.errors import CVGLError


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", disable=not enabled, leave=False)


def _view_batch(element, view: str):
    """The image tensor of one dataset element (a dict keyed by view, a tuple, or a tensor)."""
    if isinstance(element, dict):
        if view in element:
            return element[view]
        if len(element) == 1:
            return next(iter(element.values()))
        raise CVGLError(f"the {view} dataset yields dicts without a {view!r} key (keys: {sorted(element)})")
    if isinstance(element, (tuple, list)):
        return element[0]
    return element


def _default_view_dataset():
    try:
        from common.data.pipeline import make_view_dataset
    except ImportError as exc:
        raise CVGLError(
            f"the data pipeline (common/data/pipeline.py: make_view_dataset) is not available ({exc}); "
            "evaluate an export with --export instead, or update the checkout"
        ) from None
    return make_view_dataset


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "numpy"):
        return np.asarray(x.numpy())
    import keras

    return np.asarray(keras.ops.convert_to_numpy(x))


_COMPILED = weakref.WeakKeyDictionary()  # model -> {view: tf.function}, reused across calls (per-epoch validation)


def _tower_fn(model, view: str):
    """The tower as a graph function under the TensorFlow backend (no per-layer eager dispatch), else eager."""
    fn = model.embed_ground if view == "ground" else model.embed_aerial

    def eager(x):
        return fn(x, training=False)

    import keras

    if keras.backend.backend() != "tensorflow":
        return eager, eager
    import tensorflow as tf

    try:
        cache = _COMPILED.setdefault(model, {})
    except TypeError:  # not weak-referenceable
        cache = {}
    if view not in cache:
        cache[view] = tf.function(eager, reduce_retracing=True)
    return cache[view], eager


def _check_output(emb: np.ndarray, n: int, view: str) -> np.ndarray:
    if emb.shape[0] != n:
        raise CVGLError(
            f"embedding the {view} view gave {emb.shape[0]} descriptors for {n} records: the pipeline dropped "
            "or repeated images -- check the split's files"
        )
    if not np.isfinite(emb).all():
        bad = int(np.nonzero(~np.isfinite(emb).all(axis=1))[0][0])
        raise CVGLError(
            f"the model produced NaN/inf {view} descriptors (first for record {bad}); the checkpoint is "
            "corrupt or diverged -- evaluate another checkpoint"
        )
    return emb


def embed_view(model, records: Sequence, spec, view: str, batch_size: int = 32, progress: bool = True,
               view_dataset: Optional[Callable] = None) -> np.ndarray:
    """(N, d) float32 descriptors of one view (``"ground"`` or ``"aerial"``) of ``records`` with a Keras model."""
    if view not in ("ground", "aerial"):
        raise CVGLError(f"view must be 'ground' or 'aerial', got {view!r}")
    if not records:
        raise CVGLError("no records to embed: the split is empty -- check --root and --split")
    make = view_dataset or _default_view_dataset()
    ds = make(records, spec, view, batch_size)
    embed, eager = _tower_fn(model, view)
    out = []
    with _progress(math.ceil(len(records) / batch_size), f"embedding {view}", progress) as bar:
        batches = iter(ds)
        while True:
            try:
                element = next(batches)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001  (a file the pipeline cannot decode: name it)
                if view_dataset is None:
                    from common.data.pipeline import image_error, is_image_error

                    if is_image_error(exc):
                        raise image_error(exc, records, spec, f"embedding the {view} view") from None
                raise
            x = _view_batch(element, view)
            if not out and embed is not eager:
                try:  # a tower that cannot be traced still works eagerly
                    y = embed(x)
                except Exception:  # noqa: BLE001
                    embed = eager
                    y = eager(x)
            else:
                y = embed(x)
            out.append(_to_numpy(y).astype(np.float32))
            bar.update(1)
    if not out:
        raise CVGLError(f"the {view} dataset of {len(records)} records yielded no batches")
    return _check_output(np.concatenate(out, axis=0), len(records), view)


def raw_path(record, view: str) -> str:
    """The raw file an export's endpoint takes: the panorama, or the aerial tile (not the polar map)."""
    return record.ground if view == "ground" else record.aerial


def embed_view_raw(export, records: Sequence, view: str, batch_size: int = 32, progress: bool = True,
                   reader: Callable[[str], np.ndarray] = read_rgb) -> np.ndarray:
    """(N, d) float32 descriptors of one view with an export's raw-uint8 endpoint.

    Images are batched in record order; a batch is cut early where the image size changes, since one call
    takes one (B, H, W, 3) array.
    """
    if view not in ("ground", "aerial"):
        raise CVGLError(f"view must be 'ground' or 'aerial', got {view!r}")
    if not records:
        raise CVGLError("no records to embed: the split is empty -- check --root and --split")
    endpoint = getattr(export, "embed_ground" if view == "ground" else "embed_aerial", None)
    if endpoint is None:
        raise CVGLError(f"the export has no embed_{view} endpoint; re-run python -m experiments.export")
    out, batch = [], []

    def flush():
        if batch:
            import tensorflow as tf

            res = endpoint(tf.constant(np.stack(batch)))
            out.append(_to_numpy(res).astype(np.float32))
            batch.clear()

    with _progress(len(records), f"embedding {view} (raw)", progress) as bar:
        for rec in records:
            img = np.ascontiguousarray(reader(raw_path(rec, view)), dtype=np.uint8)
            if batch and img.shape != batch[0].shape:
                flush()
            batch.append(img)
            if len(batch) == batch_size:
                flush()
            bar.update(1)
        flush()
    return _check_output(np.concatenate(out, axis=0), len(records), view)


def embed_records(model, records: Sequence, spec=None, batch_size: int = 32, progress: bool = True,
                  raw: bool = False, view_dataset: Optional[Callable] = None):
    """``(ground_emb, aerial_emb)``, float32 (N, d) each, of every pair in ``records`` (record order).

    ``model`` is a CrossViewModel (``spec`` defaults to its ``input_spec_``) or, with ``raw=True``, an export
    object whose ``embed_ground`` / ``embed_aerial`` take raw uint8 images. ``view_dataset`` overrides the
    pipeline's ``make_view_dataset(records, spec, view, batch_size)`` (tests, custom readers).
    """
    try:
        batch_size = int(batch_size)
    except (TypeError, ValueError):
        raise CVGLError(f"batch size must be a positive integer, got {batch_size!r}") from None
    if batch_size < 1:
        raise CVGLError(f"batch size must be a positive integer, got {batch_size}")
    if raw:
        return (embed_view_raw(model, records, "ground", batch_size, progress),
                embed_view_raw(model, records, "aerial", batch_size, progress))
    if spec is None:
        spec = getattr(model, "input_spec_", None)
        if spec is None:
            raise CVGLError("the model has no input spec; pass spec= (a name in common.data.specs.SPECS)")
    from common.data.specs import get_spec

    spec = get_spec(spec)
    return (embed_view(model, records, spec, "ground", batch_size, progress, view_dataset),
            embed_view(model, records, spec, "aerial", batch_size, progress, view_dataset))
