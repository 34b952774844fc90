"""GeoDTR in Keras (Zhang et al., "Cross-view Geo-localization via Learning Disentangled Geometric Layout
Correspondence", AAAI 2023), numerically identical to the official PyTorch model.

* :mod:`geodtr_tf.layers` -- Geometric Layout Extractor (IAPE, post-LN transformer, embedding maps) and the
  feature pathway;
* :mod:`geodtr_tf.model` -- :class:`GeoDTR` (two ResNet-34 towers + GLEs, counterfactual descriptors, loss);
* :mod:`geodtr_tf.convert` -- PyTorch state dicts (official GeoDTR checkpoints, torchvision ResNet-34) -> Keras;
* :mod:`geodtr_tf.summary` -- parameter / FLOP report; :mod:`geodtr_tf.visualize` -- layout descriptor picture;
* ``geodtr_tf/configs/*.yaml`` -- one run configuration per row of the paper's tables.
"""

from geodtr_tf.layers import (  # noqa: F401
    GeometricLayoutExtractor,
    IndexAwarePositionEncoding,
    LayoutTransformer,
    MultiHeadSelfAttention,
    TransformerEncoderLayer,
    layout_descriptor_pooling,
)
from geodtr_tf.model import PAPER_CONFIG, GeoDTR, build_model  # noqa: F401


# ------------------------------------------------------------------------------------------ registration
def _summarize(args):
    from geodtr_tf.summary import summarize

    return summarize(args)


def _visualize(model, ground_path, aerial_path, out_png, args) -> str:
    from geodtr_tf.visualize import show_descriptors

    title = getattr(args, "title", "") or "GeoDTR layout descriptors"
    maps = show_descriptors(model, ground_path, aerial_path, out_png, title=title)
    k, h, w = maps["ground"].shape
    return (f"{k} layout descriptors over the {h}x{w} ground grid and the "
            f"{maps['aerial'].shape[1]}x{maps['aerial'].shape[2]} aerial grid")


def _convert_geodtr(sd, args):
    from geodtr_tf.convert import convert_geodtr

    model = convert_geodtr(sd, polar=getattr(args, "polar", None), num_heads=getattr(args, "heads", 4),
                           dropout=getattr(args, "dropout", 0.3), source=getattr(args, "checkpoint", "checkpoint"))
    n = sum(int(v.numpy().size) for v in model.trainable_weights)
    variant = "polar" if model.input_spec_.polar else "non-polar"
    return model, (f"GeoDTR ({variant}, K={model.num_descriptors}, {model.num_layers} layers, "
                   f"{model.num_heads} heads, FFN {model.ffn_dim}), {n:,} parameters")


def _convert_resnet34(sd, args):
    from common.backbones.resnet import convert_resnet34

    model = convert_resnet34(sd, source=getattr(args, "checkpoint", "checkpoint"))
    return model, f"ResNet-34 trunk, {model.count_params():,} numbers"


def _register():
    import os

    from common.models.registry import Family, register_family
    from geodtr_tf.specs import GEODTR_POLAR, GEODTR_RAW

    polar_flags = [
        (("--polar",), dict(dest="polar", action="store_true", default=None,
                            help="the polar variant (122x671 aerial); default: the paper's polar model, or read "
                                 "from an official checkpoint")),
        (("--no-polar",), dict(dest="polar", action="store_false", help="the non-polar variant (256x256 raw aerial)")),
    ]
    heads = (("--heads",), dict(type=int, default=4,
                                help="attention heads of an official checkpoint (not stored in the weights; default "
                                     "4, the paper's)"))
    register_family(Family(
        name="geodtr",
        description="GeoDTR (AAAI 2023): ResNet-34 towers + geometric layout extractor, counterfactual learning",
        build_model=build_model,
        input_specs=(GEODTR_POLAR, GEODTR_RAW),
        config_dir=os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs"),
        model_classes=(GeoDTR,),
        summarize=_summarize,
        visualize=_visualize,
        visualize_what="layout descriptors",
        converters={"geodtr": _convert_geodtr, "resnet34": _convert_resnet34},
        options={
            "summary": polar_flags,
            "convert": polar_flags + [heads, (("--dropout",), dict(type=float, default=0.3,
                                                                   help="dropout for further training (default 0.3, the paper's)"))],
        },
        demo=DEMO_RECIPE,
        tiny={"model": {"num_descriptors": 2, "num_layers": 1, "num_heads": 1, "ffn_dim": 32,
                        "backbone_widths": [8, 8, 16, 16], "backbone_depths": [1, 1, 1, 1],
                        "backbone_weights": "random"}, "input_size": (32, 176)},
    ))


from geodtr_tf.demo import DEMO_RECIPE  # noqa: E402

_register()
