"""MGTL (arXiv 2203.09135) and its SAFA baseline (NeurIPS 2019) in Keras 3.

* :func:`build_model` -- ``model:`` keys of a config -> an :class:`~mgtl_tf.model.MGTL` (common/config.py).
* :mod:`mgtl_tf.safa` -- the SAFA model and its own ``build_model``.
* :mod:`mgtl_tf.summary` -- parameter / FLOPs report; :mod:`mgtl_tf.visualize` -- attention pictures.

mgtl_tf/README.md lists every choice made where the paper is silent, each with its config key.
"""

from __future__ import annotations

from common.errors import CVGLError
from mgtl_tf.model import MGTL  # noqa: F401  (importing the package registers MGTL for .keras loading)

BUILD_ONLY_KEYS = ("backbone_weights",)


def split_model_cfg(model_cfg: dict, known: tuple, family: str):
    """(constructor kwargs, build-only options); a CVGLError names any unknown key."""
    cfg = dict(model_cfg or {})
    cfg.pop("family", None)
    extra = {k: cfg.pop(k) for k in BUILD_ONLY_KEYS if k in cfg}
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise CVGLError(f"{family} config: unknown model key(s) {', '.join(unknown)}; known: "
                        f"{', '.join(sorted(known + BUILD_ONLY_KEYS))}")
    return cfg, extra


def build_model(model_cfg: dict, input_spec):
    """Build (and initialise) an MGTL model from the ``model:`` keys of a config.

    ``backbone_weights``: "imagenet" (Keras cache; loud warning + random init if absent), a file path of the
    Keras VGG16 notop weights (error if missing), or null (random, on purpose). Default "imagenet".
    """
    import inspect

    from common.backbones.vgg import init_vgg16_weights

    known = tuple(p for p in inspect.signature(MGTL.__init__).parameters if p not in ("self", "kwargs",
                                                                                       "input_spec"))
    kwargs, extra = split_model_cfg(model_cfg, known, "mgtl")
    model = MGTL(input_spec=input_spec, **kwargs)
    model.build()
    weights = extra.get("backbone_weights", "imagenet")
    for tower in (model.ground_tower, model.aerial_tower):
        init_vgg16_weights(tower.trunk, weights)
    return model
