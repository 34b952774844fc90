"""PyTorch -> Keras weight conversion of official GeoDTR checkpoints.

The state-dict machinery (safe readers, tensor transforms, all-or-nothing assignment) is
:mod:`common.backbones.torch_weights`; the torchvision ResNet-34 mapping is
:func:`common.backbones.resnet.resnet_weights`. Training checkpoints of the official code (``{"epoch",
"model_state_dict", "optimizer_state_dict", ...}``) are unwrapped there.

Key names (facts read from the official ``GeoDTR.py``): the backbone is ``nn.Sequential(conv1, bn1, relu,
layer1..layer4)``, so torchvision ``conv1`` / ``bn1`` / ``layerX`` become ``backbone_grd.layers.0`` /
``.layers.1`` / ``.layers.{X+2}`` (likewise ``backbone_sat``); the extractors are ``ge_grd.*`` / ``ge_sat.*``
with ``w1, b1, w2, b2, tr_module.pos_encoder.{linear, embedding_parameter},
tr_module.transformer_encoder.layers.L.*`` and ``tr_module.transformer_encoder.norm.*``.

Tensor transforms: conv OIHW -> HWIO; ``nn.Linear`` weight (out, in) -> kernel (in, out); the packed
``in_proj_weight`` (3D, D) -> query/key/value kernels (rows [0:D], [D:2D], [2D:3D], transposed) and the
packed bias likewise; BatchNorm weight/bias/running_mean/running_var -> gamma/beta/moving_mean/
moving_variance (``num_batches_tracked`` is a counter with no Keras counterpart and is accepted).

Every load is all-or-nothing: :func:`assign_state_dict` first checks the whole dict and raises
:class:`~common.errors.CVGLError` listing every missing, unexpected and mis-shaped key; only then it assigns.
"""

from __future__ import annotations

from common.backbones.resnet import resnet_weights
from common.backbones.torch_weights import assign_state_dict
from common.errors import CVGLError

# torchvision children kept by the official ResNet34 wrapper, in nn.Sequential order (index 2 is the ReLU)
OFFICIAL_BACKBONE_INDEX = {"conv1": 0, "bn1": 1, "layer1": 3, "layer2": 4, "layer3": 5, "layer4": 6}


# --- reading ------------------------------------------------------------------------------------------


# --- mapping ------------------------------------------------------------------------------------------


def official_backbone_rename(view_prefix):
    def rename(tv_prefix):
        head, _, rest = tv_prefix.partition(".")
        idx = OFFICIAL_BACKBONE_INDEX[head]
        return f"{view_prefix}.layers.{idx}" + (f".{rest}" if rest else "")
    return rename


def geodtr_weights(model) -> tuple:
    """({official key: (variable, kind)}, {optional keys}) for a :class:`~geodtr_tf.model.GeoDTR`."""
    mapping, optional = {}, set()
    for view, backbone in (("backbone_grd", model.backbone_ground), ("backbone_sat", model.backbone_aerial)):
        m, o = resnet_weights(backbone, official_backbone_rename(view))
        mapping.update(m)
        optional |= o
    mapping.update(model.gle_ground.torch_weights("ge_grd"))
    mapping.update(model.gle_aerial.torch_weights("ge_sat"))
    return mapping, optional


# --- whole conversions --------------------------------------------------------------------------------

def infer_geodtr_config(sd: dict, source="checkpoint") -> dict:
    """K, transformer depth and FFN width from official tensor shapes (heads and dropout are not stored)."""
    if "ge_grd.w1" not in sd or "ge_sat.w1" not in sd:
        raise CVGLError(f"{source} is not an official GeoDTR state dict (no ge_grd.w1 / ge_sat.w1); "
                        f"for torchvision ImageNet weights use --model resnet34")
    k = int(sd["ge_grd.w1"].shape[1])
    layers = 0
    while f"ge_grd.tr_module.transformer_encoder.layers.{layers}.linear1.weight" in sd:
        layers += 1
    cfg = {"num_descriptors": k, "num_layers": layers}
    if layers:
        cfg["ffn_dim"] = int(sd["ge_grd.tr_module.transformer_encoder.layers.0.linear1.weight"].shape[0])
    cfg["polar"] = int(sd["ge_sat.w1"].shape[0]) == int(sd["ge_grd.w1"].shape[0])
    return cfg


def convert_geodtr(sd: dict, polar=None, num_heads=4, dropout=0.3, source="checkpoint", input_spec=None):
    """An official GeoDTR state dict -> a built :class:`GeoDTR` holding its weights.

    ``polar=None`` infers the variant from ``ge_sat.w1``; an explicit value that disagrees with the file
    fails with the mis-shaped keys. ``input_spec`` overrides the input sizes (for non-standard inputs)."""
    from geodtr_tf.model import GeoDTR

    cfg = infer_geodtr_config(sd, source)
    inferred_polar = cfg.pop("polar")
    polar = inferred_polar if polar is None else bool(polar)
    width = int(sd["ge_grd.w1"].shape[2])
    if cfg["num_layers"] and width % num_heads:
        raise CVGLError(f"{source}: token width {width} is not divisible by --heads {num_heads}")
    spec = input_spec if input_spec is not None else ("geodtr_polar" if polar else "geodtr_raw")
    model = GeoDTR(input_spec=spec, num_heads=num_heads, dropout=dropout, **cfg)
    model.build()
    mapping, optional = geodtr_weights(model)
    assign_state_dict(mapping, sd, optional, source=source)
    return model


