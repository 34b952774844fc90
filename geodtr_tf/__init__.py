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
