"""SAFA (Shi et al., NeurIPS 2019): VGG16 towers + spatial-aware feature aggregation on polar aerials.

* :mod:`mgtl_tf.safa.layers` -- :class:`SpatialAwareAggregation` (the paper's Sec. 3.2, Fig. 3).
* :mod:`mgtl_tf.safa.model` -- the :class:`SAFA` model and its ``build_model``.
* :mod:`mgtl_tf.safa.summary` -- parameter / FLOPs report.
* :mod:`mgtl_tf.safa.convert` -- the authors' TensorFlow 1 checkpoints (``model.ckpt``) -> Keras.
* ``configs/`` -- the paper rows (CVUSA, CVACT, with and without layout simulation).

SAFA is the parent of MGTL: MGTL's towers reuse its aggregation layer (``mgtl_tf.model``).
"""

from mgtl_tf.safa.layers import SpatialAwareAggregation  # noqa: E402,F401
from mgtl_tf.safa.model import SAFA, build_model  # noqa: E402,F401


def _summarize(args):
    """SAFA at full size (112x616 both views, random weights), reported per paper component."""
    from mgtl_tf.safa.specs import SAFA_POLAR
    from mgtl_tf.safa.summary import summarize

    model = SAFA(input_spec=SAFA_POLAR)
    model.build()
    return summarize(model)


def _convert_safa_tf1(sd, args):
    from mgtl_tf.safa.convert import convert_safa_tf1

    return convert_safa_tf1(sd, input_size=getattr(args, "input_size", None),
                            source=getattr(args, "checkpoint", "checkpoint"))


def _register():
    import os

    from common.models.registry import Family, register_family
    from mgtl_tf.safa.specs import SAFA_POLAR

    register_family(Family(
        name="safa",
        description="SAFA (NeurIPS 2019): VGG16 towers + spatial-aware feature aggregation, polar aerials",
        build_model=build_model,
        input_specs=(SAFA_POLAR,),
        config_dir=os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs"),
        model_classes=(SAFA,),
        summarize=_summarize,
        converters={"safa-tf1": _convert_safa_tf1},
        options={"convert": [(("--input-size",), dict(
            default=None, metavar="HxW",
            help="safa-tf1: the input size the checkpoint was trained at (default: the official 112x616; "
                 "checked against the spatial-aware weights)"))]},
        tiny={"model": {"vgg_widths": [4, 4, 8, 8, 8], "backbone_weights": None}, "input_size": (32, 160)},
    ))


_register()
