"""tf.data input pipeline: dataset records -> normalised batches for one model input spec.

``make_dataset(records, spec, batch_size, training, ...)`` gives batches ``{"ground", "aerial"[, "position"]}``
of float32 NHWC tensors for training/validation; ``make_view_dataset(records, spec, view, batch_size)``
gives batches of one view, in record order, for embedding (evaluation, indexing).

Per pair (see :mod:`common.data.readers` for where prepared files live):

* **ground**: the CVACT prepared centre crop if it exists, else the raw panorama (CVACT: cropped to rows
  208:624 of 832, i.e. the centre half, in the graph); then resized to ``spec.ground_size``.
* **aerial, polar spec**: the prepared polar map of the spec's size if it exists (size-suffixed folder, or
  the canonical ``record.polar`` if its PNG header has the right size), else the SAFA polar transform
  computed on the fly from the raw aerial image (:func:`common.data.polar.polar_grid`, float, so it differs from
  a prepared map — rounded to uint8 — by at most half a grey level).
* **aerial, raw spec**: the raw aerial resized to ``spec.aerial_size``.
* **resizing**: area (``tf.image.resize(..., method="area")``: pixel averaging, like OpenCV's INTER_AREA
  used by SAFA and the same method as the export's in-graph preprocessing; GeoDTR uses PIL's antialiased
  bilinear, which differs by a few grey levels); skipped when the image already has the target size.
* **augmentation** (training only, :mod:`common.data.augment`): semantic augmentation on each view on [0, 255]
  pixels, then the pixel normalisation (:func:`common.data.specs.normalise`, the one shared with the
  export), then layout simulation on the pair (a pixel permutation, so its place does not matter).
* **positions** (``with_positions=True``): float32 (easting, northing) in metres **relative to an origin**
  (the records' minimum rounded down to a kilometre), so float32 keeps centimetre precision; the triplet
  loss mask only uses differences.

Order and randomness: the record list is sharded first (``shard=(num_shards, index)``: every
``num_shards``-th record, as ``tf.data.Dataset.shard``); pass p over it is ordered by a stateless permutation
keyed on ``(seed, p)`` (:func:`pass_order`) and each pair's augmentation by a stateless key
``(p * pairs + position, seed)``, so the batches are a pure function of the seed and the global batch index:
the same in every process, on every rerun and after a resume in the middle of the data
(``skip_batches``). Parallel decoding keeps the order (``deterministic=True``, the default).

Batch size 1 must never reach the triplet loss (it divides by B(B-1)): with ``drop_remainder=False`` and a
final batch that would hold one pair, that pair is left out of the epoch (a different one each epoch when
shuffled) and the pipeline says so.
"""

from __future__ import annotations

import os
import struct
import sys

import numpy as np
import tensorflow as tf

from common.data.augment import layout_simulation, parse_augment, semantic_augment
from common.data.readers import prepared_polar_path
from common.data.specs import get_spec, normalise
from common.errors import CVGLError

AUTOTUNE = tf.data.AUTOTUNE
AERIAL_FILE, AERIAL_ON_THE_FLY, AERIAL_RAW = 0, 1, 2
# Area resampling (pixel averaging), as SAFA's cv2 INTER_AREA and as the export's in-graph preprocessing
# (common.serving.preprocess), so a model sees the same pixels in training and when serving raw images.
RESIZE_METHOD = "area"


def png_size(path):
    """(height, width) from a PNG header, or None if the file is not a readable PNG."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return int(height), int(width)


def image_size(path):
    """(height, width) of an image file (decodes it with OpenCV); CVGLError if unreadable."""
    import cv2

    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise CVGLError(f"cannot read image {path}; re-download it or drop the pair (--allow-missing)")
    return img.shape[:2]


def shard_records(records, num_shards: int, index: int) -> list:
    """Every ``num_shards``-th record starting at ``index`` (the same split as ``Dataset.shard``)."""
    if num_shards < 1 or not 0 <= index < num_shards:
        raise CVGLError(f"shard=({num_shards}, {index}) is invalid; use 0 <= index < num_shards")
    return list(records)[index::num_shards]


def _prepared(path) -> bool:
    """Is there a prepared file at ``path``? A cut-short or empty one is an error naming it (a killed or
    disk-full ``prepare`` that never ran again), not a crash inside the pipeline."""
    if not path or not os.path.isfile(path):
        return False
    from common.data.images import image_problem

    problem = image_problem(path)
    if problem:
        raise CVGLError(f"prepared file: {problem}; rerun `python -m experiments.prepare` with --verify "
                        "(it rewrites bad prepared files), or delete the file")
    return True


def resolve_sources(records, spec) -> dict:
    """Which file to read and how, per record, for ``spec``: numpy arrays for the tf.data graph."""
    spec = get_spec(spec)
    ground_path, ground_crop, aerial_path, aerial_mode = [], [], [], []
    for r in records:
        if _prepared(r.ground_prepared):
            ground_path.append(r.ground_prepared), ground_crop.append(False)
        else:
            ground_path.append(r.ground), ground_crop.append(r.ground_prepared is not None)
        if not spec.polar:
            aerial_path.append(r.aerial), aerial_mode.append(AERIAL_RAW)
            continue
        sized = prepared_polar_path(r, spec.aerial_size)
        if _prepared(sized):
            aerial_path.append(sized), aerial_mode.append(AERIAL_FILE)
        elif png_size(r.polar) == tuple(spec.aerial_size):
            aerial_path.append(r.polar), aerial_mode.append(AERIAL_FILE)
        else:
            aerial_path.append(r.aerial), aerial_mode.append(AERIAL_ON_THE_FLY)
    return {
        "ground_path": np.asarray(ground_path, dtype=object).astype(str),
        "ground_crop": np.asarray(ground_crop, dtype=bool),
        "aerial_path": np.asarray(aerial_path, dtype=object).astype(str),
        "aerial_mode": np.asarray(aerial_mode, dtype=np.int32),
    }


def aerial_input_note(records, spec) -> str:
    """Which aerial pixels a model of ``spec`` reads from ``records``, in one line: raw images, prepared polar
    maps (and how ``prepare`` rounded them, from each size folder's polar.json), maps given with the dataset,
    or the polar transform on the fly."""
    from common.data.prepare import folder_rounding

    spec = get_spec(spec)
    if not spec.polar:
        return f"aerial: the raw images, resized to {spec.aerial_size[0]}x{spec.aerial_size[1]}"
    sources = resolve_sources(records, spec)
    parts, sized = [], {}
    given = 0
    for path, mode, rec in zip(sources["aerial_path"], sources["aerial_mode"], records):
        if mode != AERIAL_FILE:
            continue
        if path == rec.polar:
            given += 1
        else:
            folder = os.path.dirname(path)
            sized[folder] = sized.get(folder, 0) + 1
    for folder, n in sorted(sized.items()):
        parts.append(f"{n:,} prepared polar maps in {folder} (rounding: {folder_rounding(folder)})")
    if given:
        parts.append(f"{given:,} polar maps given with the dataset (rounding as their maker chose)")
    fly = int(np.sum(sources["aerial_mode"] == AERIAL_ON_THE_FLY))
    if fly:
        parts.append(f"{fly:,} polar maps computed on the fly (float, not rounded)")
    return "aerial: " + "; ".join(parts)


# ------------------------------------------------------------------------------------------------------
# an image that TensorFlow cannot decode, named (the pipeline itself cannot say which file failed)
# ------------------------------------------------------------------------------------------------------
_DECODE_WORDS = ("DecodeJpeg", "DecodeImage", "DecodePng", "DecodeBmp", "DecodeGif", "jpeg::", "Invalid PNG",
                 "Unknown image file format", "ReadFile")


def is_image_error(exc) -> bool:
    """Is ``exc`` TensorFlow failing to read or decode an image inside the pipeline?"""
    if not isinstance(exc, (tf.errors.InvalidArgumentError, tf.errors.DataLossError, tf.errors.NotFoundError)):
        return False
    text = str(exc)
    return any(w in text for w in _DECODE_WORDS) or "No such file or directory" in text


def undecodable(paths, limit: int = 5) -> list:
    """``[(path, reason)]`` for the first ``limit`` of ``paths`` that TensorFlow cannot read and decode with
    the pipeline's own decoder (eager, one file at a time, with a progress line on stderr)."""
    from common.data.images import tensorflow_refuses

    unique = list(dict.fromkeys(str(p) for p in paths))
    bad = []
    print(f"pipeline: an image could not be decoded; checking {len(unique)} image files to name it",
          file=sys.stderr)
    for path in unique:
        why = "no such file" if not os.path.isfile(path) else tensorflow_refuses(path)
        if why:
            bad.append((path, why))
            if len(bad) >= limit:
                break
    return bad


def image_error(exc, records, spec, what: str) -> CVGLError:
    """The one-line error for a decode failure ``exc`` while reading ``records`` for ``spec``: names the
    file(s) and the ways out (``prepare --verify`` lists them in bad_pairs.txt, so ``--allow-missing`` drops
    them)."""
    sources = resolve_sources(records, spec)
    bad = undecodable(np.concatenate([sources["ground_path"], sources["aerial_path"]]))
    if not bad:
        return CVGLError(f"{what}: TensorFlow could not read an image ({str(exc).strip().splitlines()[-1][:160]}), "
                         "but every file decodes on its own now; was a file changed while the job ran?")
    names = "; ".join(f"{p} ({why})" for p, why in bad)
    return CVGLError(f"{what}: {len(bad)}{'+' if len(bad) >= 5 else ''} image file(s) cannot be decoded: {names}. "
                     "Replace or delete them, or run `python -m experiments.prepare ... --verify`, which lists "
                     "them in bad_pairs.txt so that --allow-missing drops their pairs")


def relative_positions(records) -> np.ndarray:
    pos = [r.position for r in records]
    if any(p is None for p in pos):
        missing = next(r.id for r in records if r.position is None)
        raise CVGLError(f"positions were requested but pair {missing} has none (CVUSA needs coordinates.csv "
                        "in the dataset root); add it or train without the position mask")
    arr = np.asarray(pos, dtype=np.float64)
    origin = np.floor(arr.min(axis=0) / 1000.0) * 1000.0
    return (arr - origin).astype(np.float32)


class _Loader:
    """Builds the per-element decode/crop/resize/polar functions for one spec and record set."""

    def __init__(self, records, spec, sources):
        self.spec = spec
        self.polar_grid = None
        if spec.polar and np.any(sources["aerial_mode"] == AERIAL_ON_THE_FLY):
            from common.data.polar import polar_grid

            first = records[int(np.argmax(sources["aerial_mode"] == AERIAL_ON_THE_FLY))].aerial
            h, w = image_size(first)
            if h != w:
                raise CVGLError(f"aerial image {first} is {h}x{w}, not square; the polar transform needs "
                                "square aerial images (check the dataset)")
            self.polar_size = int(h)
            idx, wts = polar_grid(self.polar_size, *spec.aerial_size)
            self.polar_grid = (tf.constant(idx), tf.constant(wts))

    @staticmethod
    def decode(path):
        """RGB float32 [0, 255]. JPEG with the accurate integer DCT (as OpenCV/libjpeg decode it, so prepared
        files and on-the-fly paths agree), anything else with ``decode_image``."""
        data = tf.io.read_file(path)
        img = tf.cond(tf.io.is_jpeg(data),
                      lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
                      lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
        return tf.cast(img, tf.float32)

    @staticmethod
    def resize(img, size):
        size = tuple(int(s) for s in size)
        same = tf.reduce_all(tf.equal(tf.shape(img)[:2], size))
        out = tf.cond(same, lambda: img, lambda: tf.image.resize(img, size, method=RESIZE_METHOD))
        out = tf.ensure_shape(out, (size[0], size[1], 3))
        return out

    def ground(self, path, crop):
        img = self.decode(path)

        def cropped():  # the centre half, as common.data.readers.crop_rows
            height = tf.shape(img)[0]
            top = height // 4
            return img[top:top + height // 2]

        img = tf.cond(crop, cropped, lambda: img)
        return self.resize(img, self.spec.ground_size)

    def polar_on_the_fly(self, img):
        s = self.polar_size
        img = self.resize(img, (s, s))
        flat = tf.reshape(img, (s * s, 3))
        idx, wts = self.polar_grid
        out = tf.zeros((idx.shape[1], 3), tf.float32)
        for k in range(4):
            out = out + tf.gather(flat, idx[k]) * wts[k][:, None]
        h, w = self.spec.aerial_size
        return tf.reshape(out, (h, w, 3))

    def aerial(self, path, mode):
        img = self.decode(path)
        if self.polar_grid is None:
            return self.resize(img, self.spec.aerial_size)
        return tf.cond(tf.equal(mode, AERIAL_ON_THE_FLY), lambda: self.polar_on_the_fly(img),
                       lambda: self.resize(img, self.spec.aerial_size))


def batches_per_pass(n_pairs: int, batch_size: int, drop_remainder: bool) -> int:
    """Batches in one pass over ``n_pairs`` pairs (after the batch-of-one rule of :func:`make_dataset`)."""
    take = n_pairs - 1 if (not drop_remainder and n_pairs % batch_size == 1) else n_pairs
    return take // batch_size if drop_remainder else -(-take // batch_size)


def pass_order(n: int, seed: int, pass_index, shuffle: bool):
    """The record order of pass ``pass_index`` (int64 (n,)): a stateless permutation keyed on (seed, pass), so
    pass p has the same order in every process and after every resume (``tf.random.experimental
    .stateless_shuffle``); ``range(n)`` when not shuffling."""
    order = tf.range(n, dtype=tf.int64)
    if shuffle:
        key = tf.stack([tf.constant(int(seed), tf.int64), tf.cast(pass_index, tf.int64)])
        order = tf.random.experimental.stateless_shuffle(order, seed=key)
    return order


def make_dataset(records, spec, batch_size: int, training: bool, augment=None, seed: int = 0,
                 drop_remainder=None, with_positions: bool = False, shard=None, deterministic: bool = True,
                 shuffle=None, num_parallel_calls=AUTOTUNE, prefetch=AUTOTUNE, verbose: bool = True,
                 epoch: int = 0, repeat: bool = False, skip_batches: int = 0):
    """Batches of pairs ``{"ground": (B,Hg,Wg,3), "aerial": (B,Ha,Wa,3)[, "position": (B,2)]}``, float32.

    records: list of PairRecord; spec: InputSpec or its name; training: shuffles (unless ``shuffle=False``)
    and enables ``augment`` (None/"none", "weak", "strong" or {"layout": ..., "semantic": ...}; ignored when
    not training); drop_remainder: default ``training``; shard: (num_shards, index) or None.

    Passes: the dataset is pass ``epoch`` over the records (its order and augmentation are a pure function
    of ``(seed, pass, position)``: iterating it twice gives the same batches); ``repeat=True`` gives the
    endless stream of passes ``epoch, epoch + 1, ...`` (each pass batched on its own, so no batch straddles
    two passes); ``skip_batches`` starts that stream that many batches later without loading the skipped
    pairs (exact resume: the batches from global step g on are the batches an uninterrupted run sees).
    """
    spec = get_spec(spec)
    records = list(records)
    if shard is not None:
        records = shard_records(records, *shard)
    batch_size = int(batch_size)
    if batch_size < 2:
        raise CVGLError(f"batch_size={batch_size}: the triplet loss needs at least 2 pairs per batch")
    if drop_remainder is None:
        drop_remainder = bool(training)
    n = len(records)
    if n < 2 or (drop_remainder and n < batch_size):
        raise CVGLError(f"{n} pair(s) cannot make a batch of {batch_size}"
                        f"{' with drop_remainder' if drop_remainder else ''}; use more data or a smaller batch")
    take = n
    if not drop_remainder and n % batch_size == 1:
        take = n - 1
        if verbose:
            print(f"pipeline: {n} pairs leave a final batch of 1, which the triplet loss cannot use; "
                  f"1 pair is left out of each epoch", file=sys.stderr)
    modes = parse_augment(augment if training else None)
    sources = resolve_sources(records, spec)
    loader = _Loader(records, spec, sources)
    tensors = {k: tf.constant(v) for k, v in sources.items()}
    if with_positions:
        tensors["position"] = tf.constant(relative_positions(records))
    shuffling = bool(shuffle if shuffle is not None else training)
    augmenting = modes["layout"] != "none" or modes["semantic"] != "none"
    per_pass = batches_per_pass(n, batch_size, bool(drop_remainder))
    first_pass = int(epoch) + int(skip_batches) // per_pass
    first_skip = (int(skip_batches) % per_pass) * batch_size

    def load(slot, index, pass_index):
        e = {k: tf.gather(v, index) for k, v in tensors.items()}
        ground = loader.ground(e["ground_path"], e["ground_crop"])
        aerial = loader.aerial(e["aerial_path"], e["aerial_mode"])
        if augmenting:
            key = tf.stack([pass_index * take + slot, tf.constant(int(seed), tf.int64)])
            s_ls, s_g, s_a = tf.unstack(tf.random.experimental.stateless_split(key, 3))
            ground = semantic_augment(ground, s_g, modes["semantic"])
            aerial = semantic_augment(aerial, s_a, modes["semantic"])
        ground = normalise(ground, spec)
        aerial = normalise(aerial, spec)
        if augmenting:
            ground, aerial = layout_simulation(ground, aerial, s_ls, spec.polar, modes["layout"])
        out = {"ground": ground, "aerial": aerial}
        if with_positions:
            out["position"] = e["position"]
        return out

    def one_pass(pass_index):
        order = pass_order(n, seed, pass_index, shuffling)[:take]
        start = tf.where(tf.equal(pass_index, first_pass), tf.constant(first_skip, tf.int64),
                         tf.constant(0, tf.int64))
        slots = tf.range(start, take, dtype=tf.int64)
        ds = tf.data.Dataset.from_tensor_slices((slots, tf.gather(order, slots)))
        ds = ds.map(lambda slot, index: load(slot, index, pass_index), num_parallel_calls=num_parallel_calls,
                    deterministic=deterministic)
        return ds.batch(batch_size, drop_remainder=bool(drop_remainder))

    passes = tf.data.Dataset.range(first_pass, (2 ** 62) if repeat else first_pass + 1)
    ds = passes.flat_map(one_pass)
    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    ds = ds.with_options(options)
    return ds.prefetch(prefetch) if prefetch else ds


def make_view_dataset(records, spec, view: str, batch_size: int, num_parallel_calls=AUTOTUNE):
    """Batches of one view (``"ground"`` or ``"aerial"``) as float32 NHWC tensors, in record order, the final
    partial batch kept, no augmentation — for computing descriptors."""
    spec = get_spec(spec)
    if view not in ("ground", "aerial"):
        raise CVGLError(f"view must be 'ground' or 'aerial', got {view!r}")
    records = list(records)
    if not records:
        raise CVGLError("no records to embed; check the split")
    sources = resolve_sources(records, spec)
    loader = _Loader(records, spec, sources) if view == "aerial" else _Loader([], spec.replace(polar=False),
                                                                               sources)
    if view == "ground":
        ds = tf.data.Dataset.from_tensor_slices((sources["ground_path"], sources["ground_crop"]))
        fn = lambda p, c: normalise(loader.ground(p, c), spec)  # noqa: E731
    else:
        ds = tf.data.Dataset.from_tensor_slices((sources["aerial_path"], sources["aerial_mode"]))
        fn = lambda p, m: normalise(loader.aerial(p, m), spec)  # noqa: E731
    ds = ds.map(fn, num_parallel_calls=num_parallel_calls, deterministic=True)
    return ds.batch(int(batch_size), drop_remainder=False).prefetch(AUTOTUNE)
