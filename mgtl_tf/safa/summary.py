"""Parameter and compute report of SAFA (NeurIPS 2019): ``python -m experiments.summary --model safa``.

Built at full size (112x616 both views, random weights); parameters counted per paper component and compared
with 29.53M (docs/spec/protocol.md §3). Compute is counted analytically per pair as multiply-accumulates of
every convolution and dense map (FLOPs = 2 x MACs); :func:`macs_report` is shared with MGTL's report.
"""

from __future__ import annotations

from common.backbones.vgg import vgg16_feature_hw, vgg16_trunk_macs
from common.models.summary import count_weights
from mgtl_tf.safa.specs import SAFA_POLAR


SAFA_PAPER_PARAMS = 29_530_000


def safa_macs(model, ground_hw=None, aerial_hw=None) -> int:
    total = 0
    for hw, sa in ((ground_hw or model.input_spec_.ground_size, model.ground_sa),
                   (aerial_hw or model.input_spec_.aerial_size, model.aerial_sa)):
        total += vgg16_trunk_macs(*hw, widths=model.vgg_widths)
        h, w = vgg16_feature_hw(hw)
        p, c, k = h * w, model.vgg_widths[-1], sa.num_embeddings
        total += k * (p * (p // 2) * 2) + k * p * c  # two linear maps per embedding, then aggregation
    return total


MACS_NOTE = ("analytical: MACs of convolutions, dense layers and attention matmuls (QK^T, AV) of both towers "
             "for one pair; FLOPs = 2 x MACs; element-wise ops, norms, softmax and pooling not counted")


def macs_report(model, title, paper, source, macs, descriptor, trunk_macs):
    components = [{"name": name, "params": count_weights(layers)} for name, layers in model.components().items()]
    return {
        "model": title,
        "params": int(model.count_params()),
        "paper_params": paper,
        "paper_source": source,
        "components": components,
        "extra": {"descriptor": descriptor, "GMACs per pair": round(macs / 1e9, 3),
                  "GFLOPs per pair": round(2 * macs / 1e9, 3),
                  "GFLOPs per pair without the two VGG16 trunks": round(2 * (macs - trunk_macs) / 1e9, 3),
                  "FLOPs counted as": MACS_NOTE},
    }


def summarize(model) -> dict:
    """Report dict (common/models/summary.py format) of a SAFA ``model`` built at full size."""
    return macs_report(model, "SAFA (VGG16 x2 + spatial-aware aggregation, 112x616)", SAFA_PAPER_PARAMS,
                       "protocol.md §3 (SAFA, NeurIPS 2019)", safa_macs(model), 8 * 512,
                       2 * vgg16_trunk_macs(*SAFA_POLAR.ground_size))
