"""Run configurations: one YAML file per paper row.

Schema (every key below is read by the training system; families read their own ``model`` keys)::

    name: geodtr_cvusa_polar_ls             # unique; the file stem
    source: {paper: "GeoDTR, AAAI 2023", table: "Table 1", row: "GeoDTR w/ LS (polar)"}
    command: python -m experiments.train --config geodtr_tf/configs/geodtr_cvusa_polar_ls.yaml --root DATA --out RUN
    dataset: cvusa                         # cvusa | cvact: what it trains on
    expected:                              # the paper's numbers (percent), one entry per evaluation it reports
      - {dataset: cvusa, split: val, protocol: index, "R@1": 95.43, "R@5": 98.86, "R@10": 99.34, "R@1%": 99.86}
    input_spec: geodtr_polar               # a name in common.data.specs.SPECS
    model: {family: geodtr, ...}           # family: geodtr | mgtl | safa; the rest goes to the family builder
    augment: {layout_simulation: strong, semantic: strong}   # strong | weak | none
    train:
      optimizer: {name: adamw_torch, learning_rate: 1.0e-4, weight_decay: 0.03, epsilon: 1.0e-6, global_clipnorm: 1.0}
      schedule: {name: warmup_cosine, warmup_epochs: 5}      # or {name: constant}; stepped per epoch
      epochs: 200
      batch_size: 32
      drop_remainder: false

Families: ``geodtr`` -> :mod:`geodtr_tf`, ``mgtl`` -> :mod:`mgtl_tf`, ``safa`` -> :mod:`mgtl_tf.safa`. Each of
those modules exposes ``build_model(model_cfg: dict, input_spec: InputSpec) -> CrossViewModel``.
"""

from __future__ import annotations

import copy
import glob
import importlib
import os

import yaml

from common.errors import CVGLError

FAMILY_MODULES = {"geodtr": "geodtr_tf", "mgtl": "mgtl_tf", "safa": "mgtl_tf.safa"}
CONFIG_DIRS = ("geodtr_tf/configs", "mgtl_tf/configs")
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    for d in CONFIG_DIRS:
        out.extend(sorted(glob.glob(os.path.join(PROJECT_ROOT, d, "*.yaml"))))
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
    cfg = read_yaml_mapping(path, "fix the file (see common/config.py for the schema)")
    for key in ("name", "dataset", "input_spec", "model", "train"):
        if key not in cfg:
            raise CVGLError(f"config {path} lacks the key '{key}' (see common/config.py for the schema)")
    if cfg["model"].get("family") not in FAMILY_MODULES:
        raise CVGLError(
            f"config {path}: model.family must be one of {sorted(FAMILY_MODULES)}, got {cfg['model'].get('family')!r}"
        )
    cfg["_path"] = path
    return cfg


def family_module(family: str):
    try:
        return importlib.import_module(FAMILY_MODULES[family])
    except KeyError:
        raise CVGLError(f"unknown model family {family!r}; known: {sorted(FAMILY_MODULES)}") from None


def build_model(cfg: dict):
    """Build the (unbuilt) Keras model a config describes."""
    from common.data.specs import get_spec

    model_cfg = copy.deepcopy(cfg["model"])
    family = model_cfg.pop("family")
    return family_module(family).build_model(model_cfg, get_spec(cfg["input_spec"]))
