"""SAFA's published TensorFlow 1 checkpoints -> the Keras :class:`~mgtl_tf.safa.model.SAFA`.

The official code (``script/VGG.py``, ``script/spatial_net.py`` of YujiaoShi/cross_view_localization_SAFA)
names its variables per tower scope: ``VGG_grd`` / ``VGG_sat`` hold ``conv{b}_{i}/weights`` (3x3xCinxCout, HWIO:
Keras's own layout) and ``conv{b}_{i}/biases`` for the 13 convolutions of VGG16; ``spatial_grd`` /
``spatial_sat`` hold the spatial-aware weights

=============  =====================  ==========================  =========================
SAFA (TF1)     shape                  Keras ``SpatialAwareAggregation``   shape
=============  =====================  ==========================  =========================
``weights1``   ``[P, P/2, d]``        ``w1`` = transpose (2, 0, 1)       ``(d, P, P/2)``
``biases1``    ``[1, P/2, d]``        ``b1`` = ``biases1[0].T``          ``(d, P/2)``
``weights2``   ``[P/2, P, d]``        ``w2`` = transpose (2, 0, 1)       ``(d, P/2, P)``
``biases2``    ``[1, P, d]``          ``b2`` = ``biases2[0].T``          ``(d, P)``
=============  =====================  ==========================  =========================

with P = h·w of the trunk's last feature map (4x20 = 80 at 112x616) and d the number of embeddings (8). The
descriptor is ``einsum('bic,bid->bdc')`` flattened embedding-major, as ours. A training checkpoint also holds
Adam's slots (``.../Adam``, ``.../Adam_1``), ``beta1_power`` / ``beta2_power`` and the step counter
(``Variable``): they are set aside and counted. Anything else unexpected, anything missing, any shape that
does not fit: nothing is loaded and every offending name is listed.
"""

from __future__ import annotations

import re

import numpy as np

from common.errors import CVGLError

TOWERS = (("ground", "VGG_grd", "spatial_grd"), ("aerial", "VGG_sat", "spatial_sat"))
SAFA_INPUT_SIZE = (112, 616)  # the official code's placeholders: panorama and polar aerial
_OPTIMIZER = re.compile(r"(^|/)(Adam(_\d+)?|beta[12]_power|Variable(_\d+)?|global_step|Momentum)$")


def conv_names():
    """SAFA's 13 VGG16 convolution scopes, in order: conv1_1 ... conv5_3."""
    from common.backbones.vgg import VGG16_BLOCK_CONVS

    return [f"conv{b + 1}_{i + 1}" for b, n in enumerate(VGG16_BLOCK_CONVS) for i in range(n)]


def _parse_size(value):
    if value is None:
        return None
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", value)
        if not m:
            raise CVGLError(f"--input-size {value!r}: give HxW, e.g. 112x616")
        return int(m.group(1)), int(m.group(2))
    return tuple(int(v) for v in value)


def convert_safa_tf1(sd: dict, input_size=None, source: str = "checkpoint", vgg_dropout: float = 0.2):
    """``(SAFA model, note)`` from the ``{name: array}`` of a SAFA TF1 checkpoint (all-or-nothing)."""
    from common.backbones.vgg import vgg16_feature_hw
    from mgtl_tf.safa.model import SAFA
    from mgtl_tf.safa.specs import SAFA_POLAR

    ignored = sorted(k for k in sd if _OPTIMIZER.search(k))
    weights = {k: v for k, v in sd.items() if k not in ignored}
    w1 = weights.get("spatial_grd/weights1")
    if w1 is None or w1.ndim != 3:
        raise CVGLError(f"{source}: no SAFA spatial-aware weights 'spatial_grd/weights1' of shape [P, P/2, d] "
                        f"(found {len(sd)} variables, e.g. {', '.join(sorted(sd)[:4]) or 'none'}); is this a "
                        "checkpoint of SAFA's official code?")
    positions, dims = int(w1.shape[0]), int(w1.shape[2])
    size = _parse_size(input_size) or SAFA_INPUT_SIZE
    fh, fw = vgg16_feature_hw(size)
    if fh * fw != positions:
        hint = "" if input_size else f" (the official code's {SAFA_INPUT_SIZE[0]}x{SAFA_INPUT_SIZE[1]})"
        raise CVGLError(f"{source}: spatial_grd/weights1 is {list(w1.shape)}: P = {positions} feature positions, "
                        f"but input size {size[0]}x{size[1]}{hint} gives {fh}x{fw} = {fh * fw} after the VGG16 "
                        "trunk; pass --input-size HxW of the size the checkpoint was trained at")
    w1_sat = weights.get("spatial_sat/weights1")
    if w1_sat is not None and w1_sat.ndim == 3 and int(w1_sat.shape[0]) != positions:
        raise CVGLError(f"{source}: spatial_sat/weights1 is {list(w1_sat.shape)} (P = {int(w1_sat.shape[0])}) "
                        f"while the ground has P = {positions}: a non-polar SAFA (256x256 aerial); this project's "
                        "SAFA is the polar variant (aerial polar map of the panorama's size), as the published "
                        "SAFA rows")
    spec = SAFA_POLAR if tuple(size) == tuple(SAFA_POLAR.ground_size) else SAFA_POLAR.replace(
        name=f"safa_polar_{size[0]}x{size[1]}", ground_size=tuple(size), aerial_size=tuple(size))
    model = SAFA(num_embeddings=dims, vgg_dropout=vgg_dropout, input_spec=spec)
    model.build()

    targets = {}  # TF1 name -> (keras variable, function from the TF1 array to the Keras one)
    for view, vgg, spatial in TOWERS:
        trunk = model.ground_trunk if view == "ground" else model.aerial_trunk
        sa = model.ground_sa if view == "ground" else model.aerial_sa
        for name, conv in zip(conv_names(), trunk.convs):
            targets[f"{vgg}/{name}/weights"] = (conv.kernel, lambda a: a)
            targets[f"{vgg}/{name}/biases"] = (conv.bias, lambda a: a)
        targets[f"{spatial}/weights1"] = (sa.w1, lambda a: np.transpose(a, (2, 0, 1)))
        targets[f"{spatial}/biases1"] = (sa.b1, lambda a: a.reshape(a.shape[-2:]).T if a.ndim == 3 else a)
        targets[f"{spatial}/weights2"] = (sa.w2, lambda a: np.transpose(a, (2, 0, 1)))
        targets[f"{spatial}/biases2"] = (sa.b2, lambda a: a.reshape(a.shape[-2:]).T if a.ndim == 3 else a)

    missing = sorted(set(targets) - set(weights))
    unexpected = sorted(set(weights) - set(targets))
    misshaped, values = [], {}
    for name, (var, fn) in targets.items():
        if name not in weights:
            continue
        a = np.asarray(weights[name])
        try:
            v = fn(a)
        except ValueError:
            v = None
        if v is None or tuple(v.shape) != tuple(var.shape):
            misshaped.append(f"{name} {list(a.shape)} (expected the layout of {tuple(var.shape)})")
        else:
            values[name] = v.astype(np.float32)
    if missing or unexpected or misshaped:
        parts = []
        for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if names:
                parts.append(f"{len(names)} {label}: {', '.join(names)}")
        raise CVGLError(f"{source} does not fit SAFA (d = {dims}, {size[0]}x{size[1]}); nothing was loaded. "
                        + "; ".join(parts))
    for name, (var, _) in targets.items():
        var.assign(values[name])
    n = sum(int(np.prod(v.shape)) for v in values.values())
    note = (f"SAFA, d = {dims}, input {size[0]}x{size[1]} (polar aerial), {len(values)} variables "
            f"({n:,} weights)" + (f"; {len(ignored)} optimizer variables set aside" if ignored else ""))
    return model, note
