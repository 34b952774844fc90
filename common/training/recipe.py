"""The resolved recipe of a run: a paper-row config plus command-line overrides, printed with every override
marked, hashed, and written to ``RUN/config.yaml``.

Overrides are ``dotted.key=value`` with YAML values: ``input_spec.ground_size=[32,192]``, ``model.num_layers=1``,
``train.optimizer.learning_rate=1e-3``. Every key on the way to the leaf must already exist (a typo fails with
the list of keys that do exist); the leaf itself may be new (a family option the file leaves at its default).
``input_spec`` is a spec name in the files; an override of one of its fields first expands it to the full
mapping (``common.data.specs.InputSpec.to_config``).
"""

from __future__ import annotations

import copy
import hashlib
import json

import yaml

from common.data.specs import get_spec
from common.errors import CVGLError

TRAIN_DEFAULTS = {"epochs": 1, "batch_size": 32, "drop_remainder": False, "schedule": {"name": "constant"},
                  "deterministic": False}


def parse_value(text: str):
    """YAML scalar/list parsing, plus floats like ``1e-3`` that YAML 1.1 would leave as strings."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_overrides(items) -> list:
    """``["a.b=1", ...]`` -> ``[("a.b", 1), ...]``; a malformed item raises CVGLError."""
    out = []
    for item in items or ():
        if "=" not in item or item.startswith("="):
            raise CVGLError(f"override {item!r} is not key=value (e.g. train.optimizer.learning_rate=1e-3)")
        key, text = item.split("=", 1)
        out.append((key.strip(), parse_value(text.strip())))
    return out


def apply_override(cfg: dict, key: str, value):
    """Set ``cfg[dotted key] = value`` in place (see the module docstring for the rules)."""
    parts = key.split(".")
    if parts[0] == "input_spec" and len(parts) > 1 and not isinstance(cfg.get("input_spec"), dict):
        cfg["input_spec"] = get_spec(cfg["input_spec"]).to_config()
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(parts[:i]) or "the top level"
            known = sorted(node) if isinstance(node, dict) else []
            raise CVGLError(f"override {key}: no key '{part}' under {where} (keys there: {', '.join(map(str, known))})")
        if node[part] is None:
            node[part] = {}
        node = node[part]
    if not isinstance(node, dict):
        raise CVGLError(f"override {key}: '{'.'.join(parts[:-1])}' is not a mapping")
    node[parts[-1]] = value


def resolve(cfg: dict, overrides=(), cli: dict | None = None) -> tuple:
    """Apply overrides (``[(key, value)]``) and the CLI flags (``{dotted key: value}`` for those given).

    Returns ``(resolved config, {dotted key: source})`` where source says where an overridden value came from.
    """
    cfg = copy.deepcopy(cfg)
    cfg.pop("_path", None)
    train = cfg.setdefault("train", {})
    for k, v in TRAIN_DEFAULTS.items():
        train.setdefault(k, copy.deepcopy(v))
    marked = {}
    for key, value in overrides:
        apply_override(cfg, key, value)
        marked[key] = "override"
    for key, value in (cli or {}).items():
        if value is None:
            continue
        apply_override(cfg, key, value)
        marked[key] = "flag"
    return cfg, marked


def override_values(cfg: dict, marked: dict) -> dict:
    """``{dotted key: its value in the resolved cfg}`` for every overridden key of ``marked``."""
    out = {}
    for key in marked:
        node = cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[key] = node
    return out


def flatten(cfg, prefix="") -> list:
    """[(dotted key, leaf value)] in file order."""
    rows = []
    if isinstance(cfg, dict) and cfg:
        for k, v in cfg.items():
            rows.extend(flatten(v, f"{prefix}{k}."))
    else:
        rows.append((prefix[:-1], cfg))
    return rows


def format_recipe(cfg: dict, marked: dict) -> str:
    """The recipe table printed at the start of a run; overridden keys carry ``<- override`` / ``<- flag``."""
    rows = [(k, v) for k, v in flatten(cfg) if not k.startswith(("expected", "command", "source", "note"))]
    width = max(len(k) for k, _ in rows) + 2
    lines = [f"recipe: {cfg.get('name', '?')}"]
    for key, value in rows:
        tag = next((f"   <- {src}" for mk, src in marked.items() if key == mk or key.startswith(mk + ".")), "")
        lines.append(f"  {key:<{width}}{json.dumps(value) if not isinstance(value, str) else value}{tag}")
    return "\n".join(lines)


def config_hash(cfg: dict) -> str:
    """sha256 (first 12 hex digits) of the resolved config, key order independent."""
    text = json.dumps(cfg, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
