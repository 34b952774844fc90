"""A model family that lives outside the project's packages: the proof that adding a family is one folder
plus its registration (docs/architecture.md).

This folder holds everything of the family: its model (``model.py``, a tiny CrossViewModel), its input spec,
its configs (``configs/``), its picture, and the ``register_family`` call below. Nothing in ``common/`` or
``experiments/`` names it; the commands find it through the registry, loaded with
``CVGL_FAMILIES=tests.standin_family`` or by importing this package.
"""

from __future__ import annotations

import os

from common.data.specs import InputSpec
from common.models.config import constructor_keys, split_model_cfg
from common.models.registry import Family, register_family
from tests.standin_family.model import StandInModel

STANDIN_SPEC = InputSpec("standin_polar", (16, 88), (16, 88), True, "tanh")


def build_model(model_cfg: dict, input_spec):
    kwargs, _ = split_model_cfg(model_cfg, constructor_keys(StandInModel), "standin")
    model = StandInModel(input_spec=input_spec, **kwargs)
    model.build()
    return model


def summarize(args) -> dict:
    from common.models.summary import count_weights

    model = build_model({}, STANDIN_SPEC)
    return {"model": "stand-in (two 3-layer conv towers)", "params": int(model.count_params()), "paper_params": None,
            "paper_source": "-", "components": [{"name": n, "params": count_weights(ls)}
                                                for n, ls in model.components().items()], "extra": {}}


def visualize(model, ground_path, aerial_path, out_png, args) -> str:
    """The ground tower's mean feature map, as a grey picture."""
    import cv2
    import numpy as np

    from common.data.specs import normalise
    from common.data.images import read_rgb

    spec = model.input_spec_
    g = cv2.resize(read_rgb(ground_path), spec.ground_size[::-1], interpolation=cv2.INTER_AREA)
    feat = np.asarray(model.ground_tower(normalise(g[None].astype("float32"), spec)))[0].mean(-1)
    pic = (255 * (feat - feat.min()) / (np.ptp(feat) + 1e-9)).astype("uint8")
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    cv2.imwrite(out_png, cv2.resize(pic, (pic.shape[1] * 8, pic.shape[0] * 8), interpolation=cv2.INTER_NEAREST))
    return f"ground feature map {feat.shape[0]}x{feat.shape[1]}"


FAMILY = register_family(Family(
    name="standin",
    description="stand-in family of the tests: two small conv towers, azimuth-profile descriptors",
    build_model=build_model,
    input_specs=(STANDIN_SPEC,),
    config_dir=os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs"),
    model_classes=(StandInModel,),
    summarize=summarize,
    visualize=visualize,
    visualize_what="ground feature map",
))
