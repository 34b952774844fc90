"""Run configurations: one YAML file per paper row.

Schema (every key below is read by the training system; families read their own ``model`` keys)::

    name: geodtr_cvusa_polar_ls             # unique; the file stem
    source: {paper: "GeoDTR, AAAI 2023", table: "Table 1", row: "GeoDTR w/ LS (polar)"}
    command: python -m experiments.train --config geodtr_tf/configs/geodtr_cvusa_polar_ls.yaml --root DATA --out RUN
    dataset: cvusa                         # cvusa | cvact: what it trains on
    expected:                              # the paper's numbers (percent), one entry per evaluation it reports
      - {dataset: cvusa, split: val, protocol: index, "R@1": 95.43, "R@5": 98.86, "R@10": 99.34, "R@1%": 99.86}
    input_spec: geodtr_polar               # a registered input spec (common.data.specs.get_spec)
    model: {family: geodtr, ...}           # a registered family (common.models.registry); the rest goes to
                                           # the family's build_model
    augment: {layout_simulation: strong, semantic: strong}   # strong | weak | none
    train:
      optimizer: {name: adamw_torch, learning_rate: 1.0e-4, weight_decay: 0.03, epsilon: 1.0e-6, global_clipnorm: 1.0}
      schedule: {name: warmup_cosine, warmup_epochs: 5}      # or {name: constant}; stepped per epoch
      epochs: 200
      batch_size: 32
      drop_remainder: false

``model.family`` is looked up in the family registry (:mod:`common.models.registry`); each family's
``build_model(model_cfg: dict, input_spec: InputSpec) -> CrossViewModel`` builds it, and its ``config_dir``
holds its shipped configs.
"""

from __future__ import annotations

import copy
import glob
import os

import yaml

from common.errors import CVGLError
from common.models import registry

BUILD_ONLY_KEYS = ("backbone_weights",)


def read_yaml_mapping(path: str, fix: str) -> dict:
    """Read a YAML file that must hold a mapping; a CVGLError naming the file and ``fix`` otherwise."""
    try:
        with open(path) as fh:
            cfg = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise CVGLError(f"cannot read config {path} ({exc}); {fix}") from None
    if not isinstance(cfg, dict):
        raise CVGLError(f"config {path} is not a YAML mapping; {fix}")
    return cfg


def config_paths() -> list:
    """Every paper-row YAML shipped with the project."""
    out = []
    for d in registry.config_dirs():
        out.extend(sorted(glob.glob(os.path.join(d, "*.yaml"))))
    return out


def resolve_config_path(path_or_name: str) -> str:
    if os.path.isfile(path_or_name):
        return path_or_name
    for p in config_paths():
        if os.path.splitext(os.path.basename(p))[0] == path_or_name:
            return p
    names = ", ".join(os.path.splitext(os.path.basename(p))[0] for p in config_paths())
    raise CVGLError(f"config not found: {path_or_name} (give a YAML path or one of: {names})")


def load_config(path_or_name: str) -> dict:
    path = resolve_config_path(path_or_name)
    cfg = read_yaml_mapping(path, "fix the file (see common/models/config.py for the schema)")
    for key in ("name", "dataset", "input_spec", "model", "train"):
        if key not in cfg:
            raise CVGLError(f"config {path} lacks the key '{key}' (see common/models/config.py for the schema)")
    if not isinstance(cfg["model"], dict):
        raise CVGLError(f"config {path}: 'model' must be a mapping with a 'family' key, got {cfg['model']!r}")
    if cfg["model"].get("family") not in registry.families():
        family = cfg["model"].get("family")
        raise CVGLError(f"config {path}: model.family must be one of {registry.family_names()}, got {family!r}")
    cfg["_path"] = path
    return cfg


def split_model_cfg(model_cfg: dict, known: tuple, family: str):
    """(constructor kwargs, build-only options) of a ``model:`` mapping; a CVGLError names any unknown key.

    ``known``: the model constructor's keyword names. Build-only options (``backbone_weights``) are returned
    apart: they decide the initial weights, not the architecture.
    """
    cfg = dict(model_cfg or {})
    cfg.pop("family", None)
    extra = {k: cfg.pop(k) for k in BUILD_ONLY_KEYS if k in cfg}
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise CVGLError(f"{family} config: unknown model key(s) {', '.join(unknown)}; known: "
                        f"{', '.join(sorted(tuple(known) + BUILD_ONLY_KEYS))}")
    return cfg, extra


def constructor_keys(cls) -> tuple:
    """The keyword names of ``cls.__init__`` a config may set (all but ``self``, ``kwargs``, ``input_spec``)."""
    import inspect

    return tuple(p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs", "input_spec"))


def build_model(cfg: dict):
    """Build the model a config describes (the family's ``build_model``).

    This is the user boundary for model keys: layers and models raise ValueError / TypeError for a bad
    argument; here that becomes one CVGLError naming the config and the message.
    """
    from common.data.specs import get_spec

    model_cfg = copy.deepcopy(cfg["model"])
    family = model_cfg.pop("family")
    builder = registry.get_family(family).build_model
    spec = get_spec(cfg["input_spec"])
    try:
        return builder(model_cfg, spec)
    except (ValueError, TypeError) as exc:
        where = cfg.get("_path") or cfg.get("name") or "the config"
        raise CVGLError(f"{where}: the {family} model cannot be built from these keys ({exc}); fix the model: "
                        "or input_spec: values") from None
