"""Parameter and FLOP report of GeoDTR (``python -m experiments.summary --model geodtr [--no-polar] [--json]``).

Parameters: trainable weights per paper component (the official ``count_parameters`` counts
``requires_grad`` tensors, so BatchNorm running statistics are not parameters; they are listed apart).
The official figures beside ours come from instantiating the official ``GeoDTR`` class
(tests/fixtures/geodtr/gle_paper_shapes.txt): 48,508,608 polar, 47,515,808 non-polar.

FLOPs per pair (one ground + one aerial image), counted analytically as 2 x multiply-accumulates of every
convolution, dense / einsum map and attention matmul, plus the r·P pooling; BatchNorm, activations,
softmax, LayerNorm and the L2 norm are not counted (they are O(activations), < 1% here).
"""

from __future__ import annotations

from common.backbones.resnet import conv_flops
from geodtr_tf.specs import GEODTR_POLAR, GEODTR_RAW

OFFICIAL_PARAMS = {True: 48_508_608, False: 47_515_808}
OFFICIAL_SOURCE = "official GeoDTR.py, instantiated"


def gle_flops(n, k=8, layers=2, ffn=2048, channels=512) -> int:
    """2 x MACs of one Geometric Layout Extractor + the feature pathway for N positions."""
    d = n // 2
    total = 2 * n * k * d  # embedding layer 1 (K maps N -> D)
    if layers:
        total += 2 * n * k * d  # IAPE u·Wp
        per_layer = 2 * k * d * 3 * d  # q, k, v projections
        per_layer += 2 * 2 * k * k * d  # scores and weights·V over all heads
        per_layer += 2 * k * d * d  # output projection
        per_layer += 2 * 2 * k * d * ffn  # FFN
        total += layers * per_layer
    total += 2 * d * k * n  # embedding layer 2 (K maps D -> N)
    total += 2 * n * channels * k  # f = rᵀ·P
    return total


def _count(layers, trainable=True) -> int:
    seen, total = set(), 0
    for layer in layers:
        for v in (layer.trainable_weights if trainable else layer.non_trainable_weights):
            if id(v) not in seen:
                seen.add(id(v))
                n = 1
                for s in v.shape:
                    n *= int(s)
                total += n
    return total


def summarize(args) -> dict:
    from geodtr_tf.model import build_model, feature_positions

    polar = getattr(args, "polar", None)
    polar = True if polar is None else bool(polar)  # the paper's polar model unless --no-polar
    spec = GEODTR_POLAR if polar else GEODTR_RAW
    model = build_model({"backbone_weights": "random"}, spec)  # full size, random weights, no data
    components = [{"name": name, "params": _count(layers)} for name, layers in model.components().items()]
    total = _count([model])
    bn_stats = _count([model], trainable=False)
    k, layers, ffn = model.num_descriptors, model.num_layers, model.ffn_dim
    flops = (conv_flops(spec.ground_size) + conv_flops(spec.aerial_size)
             + gle_flops(feature_positions(spec.ground_size), k, layers, ffn)
             + gle_flops(feature_positions(spec.aerial_size), k, layers, ffn))
    return {
        "model": f"geodtr ({'polar' if polar else 'non-polar'}: ground {spec.ground_size[0]}x{spec.ground_size[1]}, "
                 f"aerial {spec.aerial_size[0]}x{spec.aerial_size[1]}; K={k}, {layers} layers, "
                 f"{model.num_heads} heads, FFN {ffn})",
        "params": total,
        "paper_params": OFFICIAL_PARAMS[polar],
        "paper_source": OFFICIAL_SOURCE,
        "components": components,
        "extra": {
            "descriptor": model.descriptor_size,
            "BatchNorm running statistics (not parameters)": bn_stats,
            "GFLOPs per pair": round(flops / 1e9, 3),
            "FLOPs counted as": "2 x MACs of convs, dense/einsum maps, attention matmuls and r·P, analytically; "
                                "BN/activations/softmax/LN/L2 not counted",
        },
    }
