"""The model-family registry: the one place shared code learns which model families exist.

A family is a package (``geodtr_tf/``, ``mgtl_tf/``, ``mgtl_tf/safa/``, or one of yours) that registers
itself once, when imported, with :func:`register_family`::

    register_family(Family(
        name="geodtr",                          # the value of ``model.family`` in a config
        build_model=build_model,                # (model_cfg: dict, input_spec: InputSpec) -> CrossViewModel
        input_specs=(GEODTR_POLAR, GEODTR_RAW), # the pixel contracts its configs name (common.data.specs)
        config_dir=".../geodtr_tf/configs",     # its paper-row YAMLs (common.models.config)
        model_classes=(GeoDTR,),                # what load_model may return for this family
        summarize=summary.summarize,            # (args) -> report dict, for experiments.summary
        visualize=visualize.picture,            # (model, ground, aerial, out_png, args) -> one line, optional
        converters={"geodtr": convert},         # name -> (state_dict, args) -> (keras model, one line)
        options={"summary": [(("--polar",), {...})]},   # extra command-line flags, per command
        demo={"config": ..., "overrides": ...}, # its recipe in experiments.demo, optional
        tiny={"model": {...}, "input_size": (32, 176)},  # a tiny variant for tests and benchmarks
    ))

Nothing in ``common/`` names a family. The commands in ``experiments/`` tell the registry which packages
hold the shipped families (:func:`add_family_modules`, called by ``experiments/__init__.py``); those are
imported only when a command first asks the registry, so commands that never build a model (``prepare``)
never import TensorFlow. A family of your own is one folder plus its ``register_family`` call; load it with
``CVGL_FAMILIES=my_package python -m experiments.train ...`` (comma-separated module names) or by importing
it before calling the library.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from typing import Callable, Mapping, Optional

from common.errors import CVGLError


@dataclasses.dataclass(frozen=True)
class Family:
    """What a model family tells the rest of the project about itself."""

    name: str
    build_model: Callable
    input_specs: tuple = ()
    config_dir: Optional[str] = None
    model_classes: tuple = ()
    summarize: Optional[Callable] = None
    visualize: Optional[Callable] = None
    visualize_what: str = ""
    converters: Mapping = dataclasses.field(default_factory=dict)
    options: Mapping = dataclasses.field(default_factory=dict)
    demo: Optional[Mapping] = None
    tiny: Mapping = dataclasses.field(default_factory=dict)  # {"model": {...}, "input_size": (H, W)}
    description: str = ""

    def build_tiny(self, **model_overrides):
        """A tiny variant (random weights) for tests and benchmarks: ``tiny["model"]`` keys at
        ``tiny["input_size"]`` for both views, on the family's first input spec."""
        if not self.tiny:
            raise ValueError(f"model family {self.name!r} declares no tiny variant (Family.tiny)")
        h, w = self.tiny["input_size"]
        spec = self.input_specs[0]
        spec = spec.replace(name=f"{spec.name}_tiny", ground_size=(h, w), aerial_size=(h, w) if spec.polar
                            else (h, h))
        return self.build_model({**dict(self.tiny["model"]), **model_overrides}, spec)

    def build_full(self, **model_overrides):
        """The paper-size model (its first input spec, random weights), e.g. for parameter and speed reports."""
        return self.build_model({"backbone_weights": "random", **model_overrides}, self.input_specs[0])


_FAMILIES: dict = {}
_PENDING: list = []  # module names registered lazily, imported on the first query
_FAILED: dict = {}  # module -> reason, for the error message of a lookup that misses
_EVER: dict = {}  # name -> every family registered in this process (an unregistered one may be named again)


def _install_spec_loader() -> None:
    from common.data import specs

    if families not in specs.SPEC_LOADERS:
        specs.SPEC_LOADERS.append(families)


def register_family(family: Family) -> Family:
    """Register ``family`` (its input specs too). Registering the same name twice from another object raises."""
    from common.data.specs import register_spec

    if not isinstance(family, Family):
        raise TypeError(f"register_family expects a Family, got {type(family).__name__}")
    if not family.name or not family.name.isidentifier():
        raise ValueError(f"family name must be an identifier, got {family.name!r}")
    old = _FAMILIES.get(family.name)
    if old is not None and old.build_model is not family.build_model:
        raise ValueError(f"model family {family.name!r} is already registered (by "
                         f"{getattr(old.build_model, '__module__', '?')})")
    for spec in family.input_specs:
        register_spec(spec)
    _FAMILIES[family.name] = family
    _EVER[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Remove a family (tests of stand-in families clean up with it)."""
    _FAMILIES.pop(name, None)


def add_family_modules(modules) -> None:
    """Name packages that register families when imported; they are imported at the first registry query."""
    _install_spec_loader()
    for m in modules:
        m = m.strip()
        if m and m not in _PENDING and m not in _FAILED:
            _PENDING.append(m)


def add_env_family_modules(var: str = "CVGL_FAMILIES") -> None:
    """Add the comma-separated module names of the environment variable ``var`` (extra, user families)."""
    add_family_modules(os.environ.get(var, "").split(","))


def _load_pending() -> None:
    while _PENDING:
        module = _PENDING.pop(0)
        if module in sys.modules:  # imported before: a second import runs nothing, so register its families again
            for family in _EVER.values():
                home = getattr(family.build_model, "__module__", "") or ""
                if family.name not in _FAMILIES and (home == module or home.startswith(module + ".")):
                    register_family(family)
            continue
        try:
            importlib.import_module(module)
        except ImportError as exc:
            _FAILED[module] = f"{type(exc).__name__}: {exc}"


def families() -> dict:
    """name -> :class:`Family` of every registered family (importing the pending family packages first)."""
    _load_pending()
    return dict(_FAMILIES)


def family_names() -> list:
    return sorted(families())


def get_family(name: str) -> Family:
    """The registered family ``name``; a CVGLError naming the known ones (and import failures) otherwise."""
    fams = families()
    if name in fams:
        return fams[name]
    known = ", ".join(sorted(fams)) or "none registered"
    failed = "".join(f"; {m} failed to import ({why})" for m, why in _FAILED.items())
    raise CVGLError(f"unknown model family {name!r}; known: {known}{failed}. A family registers itself when its "
                    "package is imported (common/models/registry.py); load your own with CVGL_FAMILIES=package")


def family_of(model) -> Family:
    """The family whose ``model_classes`` ``model`` is an instance of; a CVGLError otherwise."""
    for fam in families().values():
        if fam.model_classes and isinstance(model, tuple(fam.model_classes)):
            return fam
    raise CVGLError(f"a {type(model).__name__} belongs to no registered model family; known: "
                    f"{', '.join(family_names()) or 'none'}")


def add_options(parser, command: str) -> None:
    """Add every family's extra flags for ``command`` to an argparse parser (a flag two families share is
    added once; its help says which families read it)."""
    seen = {}
    for name, fam in sorted(families().items()):
        for flags, kwargs in fam.options.get(command, ()):
            key = tuple(flags)
            if key in seen:
                seen[key].append(name)
                continue
            seen[key] = [name]
            kw = dict(kwargs)
            kw["help"] = f"{name}: {kw.get('help', '')}"
            parser.add_argument(*flags, **kw)


def config_dirs() -> list:
    """The configs folders of every registered family, in family-name order."""
    return [f.config_dir for _, f in sorted(families().items()) if f.config_dir]


__all__ = ["Family", "register_family", "unregister_family", "add_family_modules", "add_env_family_modules",
           "families", "family_names", "get_family", "family_of", "add_options", "config_dirs"]
