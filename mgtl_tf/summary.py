"""Parameter and compute report of MGTL (arXiv 2203.09135, Table 2); SAFA's is in mgtl_tf/safa/summary.py.

    python -m experiments.summary --model mgtl [--variant full] [--steps 6] [--literal-block] [--json]

The model is built at full size (112x616 both views) with random weights; parameters are counted per paper
component from the built weights and compared with the paper's figure (Table 2: VGG16 only 29.42M, w/o CMI
50.92M, MGTL 79.27M; SAFA 29.53M as protocol.md §3 computes it). The paper's figure is shown only for the
settings it describes (L = 6, the full block).

Compute is counted analytically, per pair (ground + aerial tower), as multiply-accumulates (MACs) of every
convolution, dense layer and attention matrix product; FLOPs = 2 x MACs. Element-wise work (ReLU, GELU,
LayerNorm, softmax, pooling, means, adds) is not counted. The paper's "4.43 GFLOPs" cannot include two
VGG16s at 112x616 (about 42 GMACs) and is not used as a check (mgtl.md). Cross-check: TensorFlow's graph
profiler (tf.compat.v1.profiler, float_operation) counts 1.2% more on a small tower, the bias adds, softmax
and norms this count leaves out (tests/test_mgtl_tools.py).
"""

from __future__ import annotations


from common.backbones.vgg import vgg16_feature_hw, vgg16_trunk_macs
from mgtl_tf.safa.specs import SAFA_POLAR
from mgtl_tf.safa.summary import macs_report

PAPER_PARAMS = {"backbone_only": 29_420_000, "no_cmi": 50_920_000, "full": 79_270_000}
PAPER_SOURCE = {"backbone_only": "MGTL Table 2, VGG16 only", "no_cmi": "MGTL Table 2, w/o CMI",
                "full": "MGTL Table 2 / Table 1, MGTL"}


def tower_macs(tower, image_hw) -> int:
    """MACs of one MGTL tower at an (H, W) input."""
    macs = vgg16_trunk_macs(*image_hw, widths=tower.vgg_widths)
    if tower.variant == "backbone_only":
        return macs
    _, n = vgg16_feature_hw(image_hw)
    d, c = tower.dim, tower.vgg_widths[-1]
    macs += n * c * d  # FCN neck
    for step in range(tower.steps):
        if tower.generators:
            g = tower.generators[step]
            k = g.kernel_size if g.kind == "conv" else 1
            macs += 2 * n * k * (d * g.hidden + g.hidden * d)  # encoder + decoder
        macs += 4 * n * d * d + 2 * n * n * d  # q, k, v, output projections; QK^T and AV
        if not tower.literal_block:
            macs += 2 * n * d * tower.ffn_dim  # FFN
    return macs


def mgtl_macs(model, ground_hw=None, aerial_hw=None) -> int:
    ground_hw = ground_hw or tuple(model.input_spec_.ground_size)
    aerial_hw = aerial_hw or tuple(model.input_spec_.aerial_size)
    return tower_macs(model.ground_tower, ground_hw) + tower_macs(model.aerial_tower, aerial_hw)


def summarize(args) -> dict:
    """Report dict (common/models/summary.py format) of MGTL (``args``: variant, steps, literal_block)."""
    from mgtl_tf.model import MGTL

    variant = getattr(args, "variant", "full") or "full"
    steps = int(getattr(args, "steps", 6) or 6)
    literal = bool(getattr(args, "literal_block", False))
    model = MGTL(variant=variant, steps=steps, literal_block=literal, input_spec=SAFA_POLAR)
    model.build()
    paper_setting = variant == "backbone_only" or (steps == 6 and not literal)
    paper = PAPER_PARAMS.get(variant) if paper_setting else None
    title = f"MGTL variant={variant}" + ("" if variant == "backbone_only" else f" L={steps}")
    title += " literal block" if literal and variant != "backbone_only" else ""
    desc = model.descriptor_dim()
    return macs_report(model, title + " (112x616)", paper, PAPER_SOURCE.get(variant, "-"), mgtl_macs(model), desc,
                   2 * vgg16_trunk_macs(*SAFA_POLAR.ground_size))
