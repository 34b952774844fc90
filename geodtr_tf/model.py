"""GeoDTR, the model (Zhang et al., AAAI 2023, Fig. 2; geodtr.md §2-§6), read top-down like the figure:

    ground panorama  ─ ResNet-34 (ground) ─ r_g ─ Geometric Layout Extractor (ground) ─ P_g ─┐
                                             └──────────── feature pathway  f_g = L2(r_g·P_g) ┘
    aerial (polar)   ─ ResNet-34 (aerial) ─ r_a ─ Geometric Layout Extractor (aerial) ─ P_a ─┐
                                             └──────────── feature pathway  f_a = L2(r_a·P_a) ┘
    training only:   counterfactual descriptors f̂ = L2(r·P̂), P̂ ~ U(−1, 1) drawn fresh every step

Two towers with no weight sharing. Descriptors are 512·K = 4096-d and unit-norm. Loss
(:meth:`GeoDTR.family_loss`): soft-margin triplet (α = 10) + (CF_aerial + CF_ground)/2 (β = 5).

Polar variant: aerial 122x671 (N = 336 positions); non-polar: raw aerial 256x256 (N = 256). The paper
configuration is K = 8, 2 layers, 4 heads, FFN 2048, dropout 0.3: 48,508,608 parameters (polar) and
47,515,808 (non-polar), the official counts exactly.
"""

from __future__ import annotations

import logging
import os
import warnings

import keras
from keras import ops

from common.backbones.resnet import ResNet34
from common.errors import CVGLError
from geodtr_tf.losses import counterfactual_loss
from common.training.losses import soft_margin_triplet
from common.models.base import CrossViewModel
from geodtr_tf.layers import GeometricLayoutExtractor, hardtanh, layout_descriptor_pooling

log = logging.getLogger(__name__)

PAPER_CONFIG = dict(num_descriptors=8, num_layers=2, num_heads=4, ffn_dim=2048, dropout=0.3)
RESNET34_URL = "https://download.pytorch.org/models/resnet34-b627a593.pth"


def feature_positions(size) -> int:
    """N = ⌈H/16⌉·⌈W/16⌉, the number of backbone positions for an (H, W) input."""
    h, w = size
    for _ in range(4):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    return h * w


@keras.saving.register_keras_serializable(package="cvgl")
class GeoDTR(CrossViewModel):
    """GeoDTR two-tower model. ``call`` returns {"ground", "aerial"} unit (B, 512·K) descriptors and, in
    training with ``counterfactual=True``, also {"ground_cf", "aerial_cf"} (the f̂ of §5)."""

    def __init__(self, input_spec="geodtr_polar", num_descriptors=8, num_layers=2, num_heads=4, ffn_dim=2048,
                 dropout=0.3, counterfactual=True, alpha=10.0, beta=5.0, seed=None, backbone_widths=None,
                 backbone_depths=None, **kwargs):
        super().__init__(input_spec=input_spec, **kwargs)
        spec = self.input_spec_
        self.num_descriptors = int(num_descriptors)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.ffn_dim = int(ffn_dim)
        self.dropout_rate = float(dropout)
        self.counterfactual = bool(counterfactual)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.seed = seed
        for view, size in (("ground", spec.ground_size), ("aerial", spec.aerial_size)):
            n = feature_positions(size)
            if n % 2:
                raise ValueError(f"input spec {spec.name}: the {view} size {size[0]}x{size[1]} gives N={n} backbone "
                                f"positions; GeoDTR's layout extractor needs an even N (D = N/2): change the size "
                                f"so that ceil(H/16)*ceil(W/16) is even (122x671 -> 8x42, 256x256 -> 16x16)")
        gle = dict(num_descriptors=self.num_descriptors, num_layers=self.num_layers, num_heads=self.num_heads,
                   ffn_dim=self.ffn_dim, dropout=self.dropout_rate)
        # official attribute names: backbone_grd / backbone_sat / ge_grd / ge_sat
        # backbone_widths: None = ResNet-34's (64, 128, 256, 512); smaller only for CPU demos / tests
        # backbone_depths: None = ResNet-34's blocks per stage (3, 4, 6, 3); (1, 1, 1, 1) for tiny test variants
        self.backbone_widths = None if backbone_widths is None else [int(w) for w in backbone_widths]
        self.backbone_depths = None if backbone_depths is None else [int(d) for d in backbone_depths]
        dt = self.dtype_policy  # every sublayer computes in the model's policy (mixed_float16, float64, ...)
        self.backbone_ground = ResNet34(widths=self.backbone_widths, depths=self.backbone_depths,
                                        name="backbone_grd", dtype=dt)
        self.backbone_aerial = ResNet34(widths=self.backbone_widths, depths=self.backbone_depths,
                                        name="backbone_sat", dtype=dt)
        self.gle_ground = GeometricLayoutExtractor(feature_positions(spec.ground_size), name="ge_grd",
                                                   dtype=dt, **gle)
        self.gle_aerial = GeometricLayoutExtractor(feature_positions(spec.aerial_size), name="ge_sat",
                                                   dtype=dt, **gle)
        # P̂ ~ U(-1, 1): a SeedGenerator's state advances inside the graph, so every step draws fresh noise
        self.cf_seed = keras.random.SeedGenerator(seed)

    def build(self, input_shape=None):
        spec = self.input_spec_
        self.backbone_ground.build((None,) + tuple(spec.ground_size) + (3,))
        self.backbone_aerial.build((None,) + tuple(spec.aerial_size) + (3,))
        self.gle_ground.build()
        self.gle_aerial.build()
        self.built = True

    # --- one tower ------------------------------------------------------------------------------------
    def _views(self, view):
        if view == "ground":
            return self.backbone_ground, self.gle_ground
        if view == "aerial":
            return self.backbone_aerial, self.gle_aerial
        raise ValueError(f"view must be 'ground' or 'aerial', got {view!r}")

    def layout(self, image, view, training=False):
        """One tower up to the descriptors: (r (B, N, C), P (B, N, K), feature-map (h, w)).

        r is the backbone map flattened row-major (n = row·w + col, PyTorch's view of NCHW); P = hardtanh(Q)
        are the K geometric layout descriptors over the N positions."""
        backbone, gle = self._views(view)
        feat = backbone(image, training=training)
        shape = ops.shape(feat)
        r = ops.reshape(feat, (shape[0], shape[1] * shape[2], shape[3]))
        p = hardtanh(gle(r, training=training))
        return r, p, (int(feat.shape[1]), int(feat.shape[2]))

    def embed_ground(self, ground, training=False):
        r, p, _ = self.layout(ground, "ground", training)
        return layout_descriptor_pooling(r, p)

    def embed_aerial(self, aerial, training=False):
        r, p, _ = self.layout(aerial, "aerial", training)
        return layout_descriptor_pooling(r, p)

    def counterfactual_descriptor(self, r, p):
        """f̂ = L2(r·P̂) with P̂ ~ U(−1, 1) of P's shape, fresh on every call (same r, no stop-gradient)."""
        p_hat = keras.random.uniform(ops.shape(p), minval=-1.0, maxval=1.0, dtype="float32", seed=self.cf_seed)
        return layout_descriptor_pooling(r, p_hat)

    def call(self, inputs, training=None):
        r_g, p_g, _ = self.layout(inputs["ground"], "ground", training)
        r_a, p_a, _ = self.layout(inputs["aerial"], "aerial", training)
        out = {"ground": layout_descriptor_pooling(r_g, p_g), "aerial": layout_descriptor_pooling(r_a, p_a)}
        if training and self.counterfactual:
            out["ground_cf"] = self.counterfactual_descriptor(r_g, p_g)
            out["aerial_cf"] = self.counterfactual_descriptor(r_a, p_a)
        return out

    # --- loss -----------------------------------------------------------------------------------------
    def family_loss(self, outputs, positions=None):
        """L = soft-margin triplet(α) + (CF_aerial + CF_ground)/2 (β), the official train.py with --cf."""
        loss = soft_margin_triplet(outputs["aerial"], outputs["ground"], alpha=self.alpha)
        if "aerial_cf" in outputs and "ground_cf" in outputs:
            cf = 0.5 * (counterfactual_loss(outputs["aerial"], outputs["aerial_cf"], beta=self.beta)
                        + counterfactual_loss(outputs["ground"], outputs["ground_cf"], beta=self.beta))
            loss = loss + cf
        return loss

    # --- reporting ------------------------------------------------------------------------------------
    def components(self) -> dict:
        return {
            "ResNet-34 (ground)": [self.backbone_ground],
            "ResNet-34 (aerial)": [self.backbone_aerial],
            "Geometric Layout Extractor (ground)": [self.gle_ground],
            "Geometric Layout Extractor (aerial)": [self.gle_aerial],
        }

    @property
    def descriptor_size(self) -> int:
        return self.backbone_ground.widths[-1] * self.num_descriptors

    def get_config(self):
        config = super().get_config()
        config.update(num_descriptors=self.num_descriptors, num_layers=self.num_layers, num_heads=self.num_heads,
                      ffn_dim=self.ffn_dim, dropout=self.dropout_rate, counterfactual=self.counterfactual,
                      alpha=self.alpha, beta=self.beta, seed=self.seed, backbone_widths=self.backbone_widths)
        if self.backbone_depths is not None:
            config.update(backbone_depths=self.backbone_depths)
        return config

    @classmethod
    def from_config(cls, config):
        model = cls(**config)  # dtype (a policy config) and trainable go to keras.Model as they are
        model.build()
        return model


# --- building from a config ---------------------------------------------------------------------------

MODEL_KEYS = ("num_descriptors", "num_layers", "num_heads", "ffn_dim", "dropout", "counterfactual", "alpha",
              "beta", "seed", "backbone_widths", "backbone_depths")


def resolve_backbone_weights(value):
    """Where the ImageNet ResNet-34 comes from: None (random, loud warning), "random" (random, chosen),
    "imagenet" ($CVGL_RESNET34_WEIGHTS or weights/resnet34_imagenet.keras under the project), or a path to a
    converted ResNet-34 ``.keras`` or a torchvision state dict (.pth/.safetensors/.npz)."""
    if value is None or value == "random":
        return value
    if value == "imagenet":
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        value = os.environ.get("CVGL_RESNET34_WEIGHTS") or os.path.join(root, "weights", "resnet34_imagenet.keras")
    if not os.path.isfile(value):
        raise CVGLError(
            f"ResNet-34 ImageNet weights not found: {value} (download the torchvision IMAGENET1K_V1 checkpoint "
            f"{RESNET34_URL} and run: python -m experiments.convert_weights --model resnet34 --checkpoint "
            f"resnet34-b627a593.pth --out {value}; or set model.backbone_weights: random to train from scratch)")
    return value


def build_model(model_cfg: dict, input_spec) -> GeoDTR:
    """GeoDTR from the ``model`` section of a config (see common/models/config.py).

    Keys (all optional; the paper values are the defaults): num_descriptors 8, num_layers 2, num_heads 4,
    ffn_dim 2048, dropout 0.3, counterfactual true, alpha 10, beta 5, seed null, backbone_weights (see
    :func:`resolve_backbone_weights`; both towers start from the same ImageNet weights, as the official
    code builds two pretrained ResNet-34s).
    """
    cfg = dict(model_cfg or {})
    cfg.pop("family", None)
    weights = resolve_backbone_weights(cfg.pop("backbone_weights", None))
    unknown = sorted(set(cfg) - set(MODEL_KEYS))
    if unknown:
        raise CVGLError(f"GeoDTR model config: unknown key(s) {unknown}; known: {list(MODEL_KEYS) + ['backbone_weights']}")
    model = GeoDTR(input_spec=input_spec, **cfg)
    model.build()
    if weights is None:
        msg = ("GeoDTR: no ResNet-34 ImageNet weights given (model.backbone_weights); both backbones are RANDOMLY "
               "initialised. The paper starts from torchvision IMAGENET1K_V1 - convert it with "
               "python -m experiments.convert_weights --model resnet34.")
        warnings.warn(msg, stacklevel=2)
        log.warning(msg)
    elif weights != "random":
        from common.backbones.resnet import load_resnet34_weights

        load_resnet34_weights(model.backbone_ground, weights)
        load_resnet34_weights(model.backbone_aerial, weights)
    return model
