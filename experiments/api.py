"""The Python API in one import: ``from experiments import api``.

Importing it registers every custom object of the project with Keras (the shipped families' layers and
models, the export's preprocessing and ``EndToEndModel``), so ``keras.models.load_model`` reads any
``.keras`` file the project writes, an export's ``model.keras`` included. Then:

    model = api.build_model("geodtr_cvusa_polar_ls")                 # a paper row, from its config
    model = api.load_model("RUN")                                    # a run dir, a .keras file or an export
    export = api.load_export("EXPORT"); d = export.embed_ground(images)  # raw uint8 images in
    metrics = api.recall_at_k(ground, aerial)                        # the published protocol

docs/api.md walks through each with a runnable example.
"""

from __future__ import annotations

import common.serving.preprocess  # noqa: F401  (EndToEndModel and the in-graph preprocessing layers)
from common.data.images import read_rgb
from common.data.readers import read_split
from common.evaluation.embedding import embed_records
from common.evaluation.retrieval import recall_at_k
from common.models import registry
from common.serving.export import load_export
from common.serving.loading import load_model as _load

registry.families()  # imports every shipped family (and those of CVGL_FAMILIES): their classes register


def build_model(config, **overrides):
    """A model of a config (a name like ``geodtr_cvusa_polar_ls``, a path or a dict), with ``key=value``
    overrides of its ``model`` section (e.g. ``backbone_weights="random"``). Returns the built model."""
    from common.models.config import build_model as build, load_config

    cfg = load_config(config) if not isinstance(config, dict) else dict(config)
    if overrides:
        cfg = dict(cfg, model={**cfg["model"], **overrides})
    return build(cfg)


def load_model(source: str):
    """The Keras model of a run directory, a ``.keras`` file or an export directory (no code is run)."""
    return _load(source).model


__all__ = ["build_model", "load_model", "load_export", "read_rgb", "read_split", "embed_records", "recall_at_k"]
