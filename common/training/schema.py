"""The run-config schema: every key a run reads, its type and range; unknown keys are refused with the
nearest valid one.

:func:`check_run_config` runs on every resolved config before anything is built or written (a run directory
is never created for a config that fails it). Model keys are the family's: its ``build_model`` refuses
unknown keys and its layers refuse bad values (``common.models.config.build_model`` turns those into one
line). Each problem is one CVGLError naming the dotted key, the value and what is allowed.
"""

from __future__ import annotations

import difflib
import math
import numbers

from common.errors import CVGLError

TOP_KEYS = ("name", "source", "command", "dataset", "expected", "input_spec", "model", "augment", "train", "note")
DATASETS = ("cvusa", "cvact")
AUGMENT_KEYS = ("layout_simulation", "semantic")
AUGMENT_MODES = ("none", "weak", "strong")
PRECISIONS = ("off", "float16", "bfloat16", "mixed_float16", "mixed_bfloat16")


def _int(lo=None):
    def check(v):
        return (isinstance(v, numbers.Integral) and not isinstance(v, bool) and (lo is None or v >= lo),
                f"an integer{f' >= {lo}' if lo is not None else ''}")
    return check


def _bool(v):
    return isinstance(v, bool), "true or false"


def _pos_float(v):
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v)) and float(v) > 0
    return ok, "a positive number"


def _nonneg_float(v):
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v)) and float(v) >= 0
    return ok, "a number >= 0"


def _unit_float(v):
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and 0.0 <= float(v) < 1.0
    return ok, "a number in [0, 1)"


def _choice(options):
    def check(v):
        return v in options, "one of " + ", ".join(map(str, options))
    return check


def _optional(check):
    def inner(v):
        if v is None:
            return True, ""
        ok, what = check(v)
        return ok, f"{what} or null"
    return inner


TRAIN_KEYS = {
    "epochs": _int(1),
    "batch_size": _int(1),
    "drop_remainder": _bool,
    "deterministic": _bool,
    "seed": _optional(_int(0)),
    "steps_per_epoch": _optional(_int(1)),
    "mixed_precision": _optional(_choice(PRECISIONS)),
    "augment_ramp_epochs": _int(0),
    "azimuth_roll": _bool,
    "colour_shuffle": _bool,
    "optimizer": None,  # a mapping, checked below
    "schedule": None,
}
OPTIMIZER_KEYS = {
    "name": _choice(("adamw_torch", "adamw", "adam", "sgd")),
    "learning_rate": _pos_float,
    "weight_decay": _nonneg_float,
    "epsilon": _pos_float,
    "beta_1": _unit_float,
    "beta_2": _unit_float,
    "global_clipnorm": _optional(_pos_float),
    "clipnorm": _optional(_pos_float),
    "momentum": _unit_float,
}
SCHEDULE_KEYS = {"name": _choice(("constant", "warmup_cosine")), "warmup_epochs": _int(0)}


def _unknown(where: str, key, known) -> CVGLError:
    near = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    return CVGLError(f"config: unknown key '{where}{key}'{hint} (keys there: {', '.join(known)})")


def _check_mapping(value, where: str, spec: dict, required=()) -> None:
    if not isinstance(value, dict):
        raise CVGLError(f"config: '{where.rstrip('.')}' must be a mapping, got {value!r}")
    for key, v in value.items():
        if key not in spec:
            raise _unknown(where, key, list(spec))
        check = spec[key]
        if check is None:
            continue
        ok, what = check(v)
        if not ok:
            raise CVGLError(f"config: {where}{key} must be {what}, got {v!r}")
    for key in required:
        if key not in value:
            raise CVGLError(f"config: '{where}{key}' is missing")


def check_run_config(cfg: dict) -> dict:
    """Refuse a run config with an unknown key, a wrong type or an out-of-range value; returns ``cfg``."""
    if not isinstance(cfg, dict):
        raise CVGLError(f"config must be a mapping, got {type(cfg).__name__}")
    for key in cfg:
        if key.startswith("_"):
            continue
        if key not in TOP_KEYS:
            raise _unknown("", key, TOP_KEYS)
    if not isinstance(cfg.get("name"), str) or not cfg["name"]:
        raise CVGLError(f"config: 'name' must be a non-empty string, got {cfg.get('name')!r}")
    if cfg.get("dataset") not in DATASETS:
        raise CVGLError(f"config: dataset must be one of {', '.join(DATASETS)}, got {cfg.get('dataset')!r}")
    if not isinstance(cfg.get("model"), dict):
        raise CVGLError(f"config: 'model' must be a mapping with a 'family' key, got {cfg.get('model')!r}")
    if not isinstance(cfg.get("input_spec"), (str, dict)):
        raise CVGLError(f"config: 'input_spec' must be a spec name or a mapping, got {cfg.get('input_spec')!r}")
    augment = cfg.get("augment")
    if isinstance(augment, str):
        if augment not in AUGMENT_MODES:
            raise CVGLError(f"config: augment must be one of {', '.join(AUGMENT_MODES)} or a mapping, got {augment!r}")
    elif augment is not None:
        _check_mapping(augment, "augment.", {k: _choice(AUGMENT_MODES) for k in AUGMENT_KEYS})
    train = cfg.get("train")
    _check_mapping(train, "train.", TRAIN_KEYS, required=("optimizer",))
    _check_mapping(train["optimizer"], "train.optimizer.", OPTIMIZER_KEYS, required=("learning_rate",))
    if train.get("schedule") is not None:
        _check_mapping(train["schedule"], "train.schedule.", SCHEDULE_KEYS)
    return cfg


__all__ = ["check_run_config", "TRAIN_KEYS", "OPTIMIZER_KEYS", "SCHEDULE_KEYS", "TOP_KEYS"]
