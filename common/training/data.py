"""What a training run reads: :class:`TrainData` (the training stream, a sample batch and the validation
embedder), and :func:`records_data`, which builds it from a dataset folder in the CVUSA / CVACT layout with
the project's readers and tf.data pipeline. Any other source can hand :func:`common.training.runner
.run_training` its own TrainData.
"""

from __future__ import annotations

import os

import dataclasses
from typing import Callable, Optional

import numpy as np

from common.data.augment import augment_argument


@dataclasses.dataclass
class TrainData:
    """What a run trains and validates on.

    ``train_dataset(batch_size, seed, start_step)`` returns the endless ``tf.data.Dataset`` of global batches
    (dicts of normalised float32 images ``ground`` / ``aerial`` [+ ``position``]) from global batch
    ``start_step`` on: pass p over the data after pass p - 1, each a pure function of ``(seed, p)``
    (``make_dataset(..., repeat=True, skip_batches=start_step)``);
    ``n_train`` its number of pairs; ``example`` a dict of arrays with batch 1 to build the model;
    ``embed_val(model) -> (ground, aerial)`` the validation embeddings (None: no validation);
    ``val_note`` what the validation split is (printed, and kept in results.json);
    ``image_error(exc)`` turns a failure of the training stream into the error that names the image file
    TensorFlow could not decode (None: not such a failure, or not known).
    """

    train_dataset: Callable
    n_train: int
    example: dict
    embed_val: Optional[Callable] = None
    val_note: str = "val"
    n_val: int = 0
    image_error: Optional[Callable] = None
    root: Optional[str] = None  # the training data folder (results.json records it: parity's synthetic note)


def records_data(cfg: dict, root: str, spec, seed: int = 0, val_split: str = "val",
                 embed_batch_size: int = 32, val_root: str | None = None,
                 allow_missing: bool = False) -> TrainData:
    """:class:`TrainData` from a dataset folder in the CVUSA / CVACT layout (the project readers/pipeline).

    ``val_root``: validate on that folder's ``val_split`` instead (e.g. another synthetic city);
    ``allow_missing``: drop (and list) the pairs with missing or bad images instead of refusing them."""
    from common.data.pipeline import make_dataset
    from common.data.readers import read_split
    from common.data.records import positions_array

    dataset = cfg["dataset"]
    train_records = read_split(dataset, root, "train", allow_missing=allow_missing)
    val_records = read_split(dataset, val_root or root, val_split, allow_missing=allow_missing) if val_split else []
    with_positions = dataset == "cvact" and positions_array(train_records) is not None
    train_cfg = cfg["train"]
    from common.data.pipeline import aerial_input_note

    print(f"training input: {aerial_input_note(train_records, spec)}")

    augment = augment_argument(cfg.get("augment"))

    def train_dataset(batch_size, seed_, start_step=0):
        return make_dataset(train_records, spec, batch_size, training=True, augment=augment,
                            seed=seed_, drop_remainder=bool(train_cfg.get("drop_remainder", False)),
                            with_positions=with_positions, repeat=True, skip_batches=start_step)

    example = {"ground": np.zeros((1, *spec.ground_size, 3), "float32"),
               "aerial": np.zeros((1, *spec.aerial_size, 3), "float32")}
    if with_positions:
        example["position"] = np.zeros((1, 2), "float32")

    embed_val = None
    if val_records:
        def embed_val(model):
            from common.evaluation.embedding import embed_records

            return embed_records(model, val_records, spec, embed_batch_size, progress=False)

    note = f"{dataset} {val_split} ({len(val_records)} pairs){f' of {val_root}' if val_root else ''}"
    if dataset == "cvusa" and val_split == "val" and not val_root:
        note += "; CVUSA has no separate val split: this is the test split, as in the papers"
    def image_error(exc):
        from common.data.pipeline import image_error as named, is_image_error

        return named(exc, train_records, spec, "training") if is_image_error(exc) else None

    return TrainData(train_dataset, len(train_records), example, embed_val, note, len(val_records), image_error,
                     root=os.path.abspath(root))
