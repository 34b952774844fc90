"""One way to get a trained model back: :func:`load_model` of a run directory, a ``.keras`` file or an export.

    model = load_model("runs/geodtr")              # RUN/checkpoints/best.keras (else last.keras)
    model = load_model("model.keras")              # a training checkpoint or a converted file
    model = load_model("exports/geodtr")           # the export's model.keras, unwrapped to the model

Every registered family is imported first (:mod:`common.models.registry`) so that its layers are known to
Keras; ``.keras`` files are loaded with Keras's safe mode (no Python code in a file ever runs). The result is
the :class:`~common.models.base.CrossViewModel` itself; an export's end-to-end wrapper is unwrapped
(``loaded.wrapper`` keeps it).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

from common.errors import CVGLError, require_file

CHECKPOINT_NAMES = ("best.keras", "last.keras")


@dataclasses.dataclass
class Loaded:
    """A loaded model and where it came from."""

    model: Any  # the CrossViewModel
    kind: str  # "run" | "keras" | "export"
    path: str
    config: Optional[dict] = None  # the run's / export's resolved config when there is one
    checkpoint: Optional[str] = None
    results: Optional[dict] = None  # the run's results.json when there is one
    wrapper: Any = None  # the export's end-to-end model (raw pixels in), when loaded from an export


def read_run_config(path: str) -> dict:
    from common.models.config import read_yaml_mapping

    cfg = read_yaml_mapping(path, "it should be the resolved config of the run")
    if "model" not in cfg or "input_spec" not in cfg:
        raise CVGLError(f"config {path} lacks 'model' / 'input_spec' (see common/models/config.py for the schema)")
    return cfg


def resolve_run(run_dir: str):
    """(config dict, checkpoint path, results dict or None) of a training run directory."""
    import json

    fix = "pass the directory experiments.train wrote (it holds config.yaml and checkpoints/)"
    if not os.path.isdir(run_dir):
        raise CVGLError(f"run directory not found: {run_dir} ({fix})")
    cfg = read_run_config(require_file(os.path.join(run_dir, "config.yaml"), "run config", fix))
    ckpt = None
    for name in CHECKPOINT_NAMES:
        path = os.path.join(run_dir, "checkpoints", name)
        if os.path.isfile(path):
            ckpt = path
            break
    if ckpt is None:
        raise CVGLError(
            f"no checkpoint in {os.path.join(run_dir, 'checkpoints')} (expected {' or '.join(CHECKPOINT_NAMES)}); "
            "train first, or pass --weights FILE.keras --config CFG"
        )
    results = None
    results_path = os.path.join(run_dir, "results.json")
    if os.path.isfile(results_path):
        try:
            with open(results_path) as fh:
                results = json.load(fh)
        except (OSError, ValueError) as exc:
            raise CVGLError(f"{results_path} is not valid JSON ({exc}); re-run the evaluation or delete it") from None
    return cfg, ckpt, results


def _import_failures() -> str:
    from common.models import registry

    registry.families()
    problems = [f"{m}: {why}" for m, why in registry._FAILED.items()]
    return f" (model families failed to import: {'; '.join(problems)})" if problems else ""


def load_keras_model(path: str, what: str = "model file"):
    """The Keras model in a ``.keras`` file, with every family's classes registered first."""
    import keras

    import common.serving.preprocess  # noqa: F401  (an export's model.keras wraps the model in EndToEndModel)

    require_file(path, what, "pass a .keras file written by training (RUN/checkpoints/best.keras) or export")
    if not path.endswith(".keras"):
        raise CVGLError(f"{path}: expects a .keras model file (load_model also reads run directories and export "
                        "directories)")
    hint = _import_failures()
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise CVGLError(f"cannot load model {path}: the {what} cannot be loaded ({first}){hint}; is it a complete "
                        ".keras file?") from None


def unwrap(model):
    """The cross-view model inside ``model`` (itself, or the model an end-to-end export wraps)."""
    inner = getattr(model, "model", None)
    if not _is_cross_view(model) and _is_cross_view(inner):
        return inner
    return model


def _is_cross_view(model) -> bool:
    from common.models.base import CrossViewModel

    return isinstance(model, CrossViewModel)


def load_trained_model(checkpoint: str, cfg: dict):
    """The trained CrossViewModel from a ``.keras`` file (full model) or ``.weights.h5`` (weights of cfg)."""
    from common.models.base import CrossViewModel

    family = (cfg.get("model") or {}).get("family")
    require_file(checkpoint, "checkpoint", "pass an existing .keras file")
    if checkpoint.endswith(".weights.h5"):
        from common.models.config import build_model

        model = build_model(cfg)
        try:
            model.load_weights(checkpoint)
        except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CVGLError(f"checkpoint {checkpoint} cannot be loaded as a {family or 'cvgl'} model "
                            f"({first[:300]}); check that it belongs to this config and is not truncated") from None
    else:
        model = load_keras_model(checkpoint, "checkpoint")
    if not isinstance(model, CrossViewModel):
        raise CVGLError(f"checkpoint {checkpoint} holds a {type(model).__name__}, not a cross-view model")
    return model


def load_model(source: str) -> Loaded:
    """Load a run directory, a ``.keras`` file or an export directory; see the module docstring."""
    if not isinstance(source, (str, os.PathLike)):
        raise CVGLError(f"load_model expects a path, got {type(source).__name__}")
    source = os.fspath(source)
    if os.path.isdir(source):
        if os.path.isfile(os.path.join(source, "config.yaml")) and os.path.isdir(os.path.join(source, "checkpoints")):
            cfg, ckpt, results = resolve_run(source)
            return Loaded(load_trained_model(ckpt, cfg), "run", os.path.abspath(source), cfg, ckpt, results)
        keras_file = os.path.join(source, "model.keras")
        if os.path.isfile(keras_file):
            wrapper = load_keras_model(keras_file, "export model")
            cfg_path = os.path.join(source, "config.yaml")
            cfg = read_run_config(cfg_path) if os.path.isfile(cfg_path) else None
            model = unwrap(wrapper)
            if not _is_cross_view(model):
                raise CVGLError(f"{keras_file} holds a {type(wrapper).__name__}, not a cross-view model")
            return Loaded(model, "export", os.path.abspath(source), cfg, keras_file, wrapper=wrapper)
        raise CVGLError(f"{source} is neither a run directory (config.yaml + checkpoints/) nor an export "
                        "(model.keras); pass the --out directory of experiments.train or experiments.export")
    if not os.path.exists(source):
        raise CVGLError(f"model not found: {source} (give a run directory, a .keras file or an export directory)")
    wrapper = load_keras_model(source)
    model = unwrap(wrapper)
    if not _is_cross_view(model):
        raise CVGLError(f"{source} holds a {type(wrapper).__name__}, not a cross-view model with embed_ground/"
                        "embed_aerial")
    return Loaded(model, "keras", os.path.abspath(source), None, source, wrapper=wrapper if wrapper is not model else None)


__all__ = ["CHECKPOINT_NAMES", "Loaded", "load_model", "load_keras_model", "load_trained_model", "resolve_run",
           "read_run_config", "unwrap"]
