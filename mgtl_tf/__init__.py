"""MGTL (Zhao et al., arXiv 2203.09135) in Keras 3, built on its SAFA baseline (:mod:`mgtl_tf.safa`).

* :mod:`mgtl_tf.layers` -- the G2S / S2G generators and the cross-attention transformer block;
* :mod:`mgtl_tf.model` -- :class:`~mgtl_tf.model.MGTL` (VGG16 towers, L unrolled steps, loss);
* :func:`build_model` -- ``model:`` keys of a config -> an MGTL (common/models/config.py);
* :mod:`mgtl_tf.summary` -- parameter / FLOPs report; :mod:`mgtl_tf.visualize` -- attention pictures;
* :mod:`mgtl_tf.demo` -- its recipe in ``experiments.demo``; ``configs/`` -- the paper rows.

mgtl_tf/README.md lists every choice made where the paper is silent, each with its config key.
"""

from __future__ import annotations

from common.models.config import constructor_keys, split_model_cfg
from mgtl_tf.model import MGTL  # noqa: F401  (importing the package registers MGTL for .keras loading)

def build_model(model_cfg: dict, input_spec):
    """Build (and initialise) an MGTL model from the ``model:`` keys of a config.

    ``backbone_weights``: "imagenet" (Keras cache; loud warning + random init if absent), a file path of the
    Keras VGG16 notop weights (error if missing), or null (random, on purpose). Default "imagenet".
    """
    from common.backbones.vgg import init_vgg16_weights

    kwargs, extra = split_model_cfg(model_cfg, constructor_keys(MGTL), "mgtl")
    model = MGTL(input_spec=input_spec, **kwargs)
    model.build()
    weights = extra.get("backbone_weights", "imagenet")
    for tower in (model.ground_tower, model.aerial_tower):
        init_vgg16_weights(tower.trunk, weights)
    return model


# ------------------------------------------------------------------------------------------ registration
def _summarize(args):
    from mgtl_tf.summary import summarize

    return summarize(args)


def _visualize(model, ground_path, aerial_path, out_png, args) -> str:
    from mgtl_tf.visualize import show_attention, unwrap_model

    head = getattr(args, "head", "mean")
    head = int(head) if str(head).isdigit() else "mean"
    maps = show_attention(unwrap_model(model), ground_path, aerial_path, out_png, head=head,
                          title=getattr(args, "title", "") or "MGTL cross-attention")
    return f"{len(maps['ground'])} steps x 2 towers, {maps['ground'][0].shape[0]} tokens"


def _register():
    import os

    from common.models.registry import Family, register_family
    from mgtl_tf.demo import DEMO_RECIPE
    from mgtl_tf.safa.specs import SAFA_POLAR

    register_family(Family(
        name="mgtl",
        description="MGTL (arXiv 2203.09135): VGG16 towers, G2S / S2G generators, cross-attention, L steps",
        build_model=build_model,
        input_specs=(SAFA_POLAR,),
        config_dir=os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs"),
        model_classes=(MGTL,),
        summarize=_summarize,
        visualize=_visualize,
        visualize_what="cross-attention",
        options={
            "summary": [
                (("--variant",), dict(default="full", help="backbone_only | no_cmi | full | naive (default full)")),
                (("--steps",), dict(type=int, default=6, help="number of recurrent steps L (default 6)")),
                (("--literal-block",), dict(action="store_true",
                                            help="the block as printed in the paper, F = F' + LN(F') (no FFN)")),
            ],
            "visualize": [
                (("--head",), dict(default="mean", help="attention head to draw: 'mean' over heads (default) "
                                                        "or an index 0..num_heads-1")),
            ],
        },
        demo=DEMO_RECIPE,
        tiny={"model": {"vgg_widths": [4, 4, 8, 8, 8], "dim": 16, "num_heads": 2, "ffn_dim": 32, "generator_dim": 32,
                        "steps": 2, "backbone_weights": None}, "input_size": (32, 160)},
    ))


_register()
