"""SAFA: Spatial-Aware Feature Aggregation (Shi, Liu, Zhang, Li; NeurIPS 2019) -- MGTL's Table 2 baseline and
the parent of both MGTL and GeoDTR (protocol.md §3, §5).

    ground panorama 112x616 ─ VGG16 trunk (+ extra pool) ─ 4x20x512 ─ SpatialAwareAggregation ─ 4096-d
    polar aerial    112x616 ─ VGG16 trunk (+ extra pool) ─ 4x20x512 ─ SpatialAwareAggregation ─ 4096-d

Two independent trunks and two independent aggregation layers (29,533,696 weights). Loss: soft-margin
triplet, γ = 10, both directions, every in-batch negative; on CVACT the 25 m UTM mask (``utm_mask``).
Recipe (the configs): Adam(0.9, 0.999), constant lr 1e-5, batch 32, 100 epochs, no augmentation; dropout
0.2 after conv4_1 ... conv5_3 (keep_prob 0.8 in SAFA's code).
"""

from __future__ import annotations


import keras

from common.backbones.vgg import VGG16_WIDTHS, VGG16Trunk, init_vgg16_weights, vgg16_trunk_macs
from common.errors import CVGLError
from mgtl_tf.safa.layers import SpatialAwareAggregation
from common.training.losses import soft_margin_triplet, utm_far_mask
from common.models.base import CrossViewModel

SAFA_RECIPE = {"optimizer": {"name": "adam", "learning_rate": 1.0e-5, "beta_1": 0.9, "beta_2": 0.999},
               "schedule": {"name": "constant"}, "epochs": 100, "batch_size": 32}


@keras.saving.register_keras_serializable(package="cvgl")
class SAFA(CrossViewModel):
    """Two VGG16 trunks + SpatialAwareAggregation per view.

    Args: ``num_embeddings`` (8), ``reduce`` ("mean" as SAFA's code, "max" as its paper), ``vgg_dropout``
    (0.2), ``vgg_widths`` (tests only), ``alpha`` (10), ``utm_mask`` / ``utm_mask_radius_m``.
    """

    LEGACY_KEYS = {"triplet_alpha": "alpha"}  # the name before 2026-12

    def __init__(self, num_embeddings=8, reduce="mean", vgg_dropout=0.2, vgg_widths=VGG16_WIDTHS,
                 alpha=10.0, utm_mask=False, utm_mask_radius_m=25.0, input_spec="safa_polar", **kwargs):
        super().__init__(input_spec=input_spec, **kwargs)
        dt = self.dtype_policy
        self.num_embeddings, self.reduce = int(num_embeddings), reduce
        self.vgg_dropout, self.vgg_widths = float(vgg_dropout), tuple(int(w) for w in vgg_widths)
        self.alpha = float(alpha)
        self.utm_mask, self.utm_mask_radius_m = bool(utm_mask), float(utm_mask_radius_m)
        self.ground_trunk = VGG16Trunk(self.vgg_widths, dropout=self.vgg_dropout, name="vgg16_ground", dtype=dt)
        self.aerial_trunk = VGG16Trunk(self.vgg_widths, dropout=self.vgg_dropout, name="vgg16_aerial", dtype=dt)
        self.ground_sa = SpatialAwareAggregation(self.num_embeddings, reduce, name="safa_ground", dtype=dt)
        self.aerial_sa = SpatialAwareAggregation(self.num_embeddings, reduce, name="safa_aerial", dtype=dt)

    @property
    def needs_positions(self) -> bool:
        return self.utm_mask

    def build(self, input_shape=None):
        input_shape = input_shape or {}
        g = tuple(input_shape.get("ground") or (None,) + tuple(self.input_spec_.ground_size) + (3,))
        a = tuple(input_shape.get("aerial") or (None,) + tuple(self.input_spec_.aerial_size) + (3,))
        for trunk, sa, shape in ((self.ground_trunk, self.ground_sa, g), (self.aerial_trunk, self.aerial_sa, a)):
            trunk.build(shape)
            sa.build(trunk.compute_output_shape(shape))
        self.built = True

    def embed_ground(self, ground, training=False):
        return self.ground_sa(self.ground_trunk(ground, training=training))

    def embed_aerial(self, aerial, training=False):
        return self.aerial_sa(self.aerial_trunk(aerial, training=training))

    def family_loss(self, outputs, positions=None):
        mask = None
        if self.utm_mask:
            if positions is None:
                raise CVGLError("SAFA: model.utm_mask is on (CVACT's 25 m rule) but the inputs carry no "
                                "'position'; build the dataset with positions or set model.utm_mask: false")
            mask = utm_far_mask(positions, self.utm_mask_radius_m)
        return soft_margin_triplet(outputs["aerial"], outputs["ground"], alpha=self.alpha, mask=mask)

    def components(self) -> dict:
        return {"VGG16 trunk (ground)": [self.ground_trunk], "VGG16 trunk (aerial)": [self.aerial_trunk],
                "spatial-aware aggregation (ground)": [self.ground_sa],
                "spatial-aware aggregation (aerial)": [self.aerial_sa]}

    def macs(self) -> int:
        """Multiply-accumulates of one pair (both towers), counted analytically (mgtl_tf/summary.py)."""
        from mgtl_tf.safa.summary import safa_macs

        return safa_macs(self)

    def get_config(self):
        config = super().get_config()
        config.update(num_embeddings=self.num_embeddings, reduce=self.reduce, vgg_dropout=self.vgg_dropout,
                      vgg_widths=list(self.vgg_widths), alpha=self.alpha,
                      utm_mask=self.utm_mask, utm_mask_radius_m=self.utm_mask_radius_m)
        return config


def build_model(model_cfg: dict, input_spec):
    """Build (and initialise) a SAFA model from the ``model:`` keys of a config (``backbone_weights`` as in
    :func:`mgtl_tf.build_model`: "imagenet" by default, a path, or null)."""
    from common.models.config import constructor_keys, split_model_cfg

    kwargs, extra = split_model_cfg(model_cfg, constructor_keys(SAFA), "safa")
    model = SAFA(input_spec=input_spec, **kwargs)
    model.build()
    weights = extra.get("backbone_weights", "imagenet")
    for trunk in (model.ground_trunk, model.aerial_trunk):
        init_vgg16_weights(trunk, weights)
    return model


__all__ = ["SAFA", "SAFA_RECIPE", "build_model", "vgg16_trunk_macs"]
