"""PyTorch -> Keras weight conversion for GeoDTR and its ResNet-34 backbone.

Readers (:func:`read_state_dict`): ``.npz`` and ``.safetensors`` are read without torch; ``.pth``/``.pt``
needs torch (an optional extra) and is always read with ``torch.load(..., weights_only=True)``, so nothing
in a weights file can run code. Training checkpoints of the official code (``{"epoch", "model_state_dict",
"optimizer_state_dict", ...}``) are unwrapped, and the ``module.`` prefix of ``nn.DataParallel`` is removed.

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

import os

import numpy as np

from common.errors import CVGLError, require_file

TORCH_HINT = ("reading .pth needs PyTorch, an optional extra: pip install torch; or convert the file to "
              ".safetensors/.npz with PyTorch elsewhere")
WRAPPER_KEYS = ("model_state_dict", "state_dict", "model")
# torchvision children kept by the official ResNet34 wrapper, in nn.Sequential order (index 2 is the ReLU)
OFFICIAL_BACKBONE_INDEX = {"conv1": 0, "bn1": 1, "layer1": 3, "layer2": 4, "layer3": 5, "layer4": 6}


# --- reading ------------------------------------------------------------------------------------------

def read_state_dict(path) -> dict:
    """{key: np.ndarray} from a .npz / .safetensors / .pth state dict (or an official training checkpoint)."""
    path = require_file(path, "checkpoint", "give the path of a PyTorch state dict (.pth/.safetensors/.npz)")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npz":
            with np.load(path, allow_pickle=False) as z:
                sd = {k: np.asarray(z[k]) for k in z.files}
        elif ext == ".safetensors":
            from safetensors.numpy import load_file

            sd = load_file(path)
        elif ext in (".pth", ".pt", ".bin", ".ckpt"):
            sd = _read_torch(path)
        else:
            raise CVGLError(f"checkpoint {path}: unknown extension {ext!r} (use .pth, .safetensors or .npz)")
    except CVGLError:
        raise
    except Exception as exc:  # corrupt / truncated file
        raise CVGLError(f"checkpoint {path} could not be read ({type(exc).__name__}: {exc}); "
                        f"is it a complete state-dict file?") from None
    return normalise_keys(sd, path)


def _read_torch(path) -> dict:
    try:
        import torch
    except ImportError:
        raise CVGLError(f"checkpoint {path}: {TORCH_HINT}") from None
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise CVGLError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    out = {}
    for k, v in obj.items():
        if not hasattr(v, "detach"):
            raise CVGLError(f"checkpoint {path}: entry {k!r} is a {type(v).__name__}, not a tensor "
                            f"(give the model's state_dict)")
        out[k] = v.detach().cpu().numpy()
    return out


def normalise_keys(sd: dict, path="checkpoint") -> dict:
    """Strip DataParallel ``module.`` prefixes (and a ``model_state_dict.`` level from flattened files)."""
    out = {}
    for k, v in sd.items():
        key = k
        for wrapper in WRAPPER_KEYS:
            if key.startswith(wrapper + "."):
                key = key[len(wrapper) + 1:]
        if key.startswith("module."):
            key = key[len("module."):]
        if key in out:
            raise CVGLError(f"{path}: key {k!r} collides with another after removing prefixes")
        out[key] = np.asarray(v)
    return out


# --- mapping ------------------------------------------------------------------------------------------

def _bn_weights(bn, prefix):
    return {f"{prefix}.weight": (bn.gamma, "copy"), f"{prefix}.bias": (bn.beta, "copy"),
            f"{prefix}.running_mean": (bn.moving_mean, "copy"),
            f"{prefix}.running_var": (bn.moving_variance, "copy")}


def resnet_weights(resnet, rename=None) -> tuple:
    """({torch key: (variable, kind)}, {optional torch keys}) for a :class:`ResNet34`.

    ``rename`` maps a torchvision prefix (``layer2.0.conv1``) to the checkpoint's (default: unchanged)."""
    mapping, optional = {}, set()
    for tv_prefix, layer in resnet.torch_layers().items():
        prefix = rename(tv_prefix) if rename else tv_prefix
        if hasattr(layer, "moving_mean"):
            mapping.update(_bn_weights(layer, prefix))
            optional.add(f"{prefix}.num_batches_tracked")
        else:
            mapping[f"{prefix}.weight"] = (layer.kernel, "conv")
    return mapping, optional


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


def _variables(target):
    return target if isinstance(target, tuple) else (target,)


def torch_shape(target, kind) -> tuple:
    """The shape the PyTorch tensor must have to fill ``target``."""
    shapes = [tuple(int(d) for d in v.shape) for v in _variables(target)]
    if kind == "conv":
        h, w, i, o = shapes[0]
        return (o, i, h, w)
    if kind == "linear_w":
        return (shapes[0][1], shapes[0][0])
    if kind == "in_proj_w":
        d_in, d_out = shapes[0]
        return (3 * d_out, d_in)
    if kind == "in_proj_b":
        return (3 * shapes[0][0],)
    return shapes[0]


def to_keras(array, kind) -> list:
    """PyTorch tensor -> list of arrays, one per Keras variable of the target."""
    a = np.asarray(array)
    if kind == "conv":
        return [a.transpose(2, 3, 1, 0)]
    if kind == "linear_w":
        return [a.T]
    if kind == "in_proj_w":
        return [part.T for part in np.split(a, 3, axis=0)]
    if kind == "in_proj_b":
        return np.split(a, 3, axis=0)
    return [a]


def _listing(title, keys, limit=40):
    keys = sorted(keys)
    shown = "; ".join(keys[:limit])
    more = f"; ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{title} ({len(keys)}): {shown}{more}"


def check_state_dict(mapping: dict, sd: dict, optional=(), ignore_prefixes=(), source="checkpoint"):
    """Raise CVGLError listing every missing / unexpected / mis-shaped key; return nothing when all match."""
    optional = set(optional)
    missing = [k for k in mapping if k not in sd]
    unexpected = [k for k in sd if k not in mapping and k not in optional
                  and not any(k.startswith(p) for p in ignore_prefixes)]
    misshaped = []
    for k, (target, kind) in mapping.items():
        if k in sd:
            want = torch_shape(target, kind)
            got = tuple(np.shape(sd[k]))
            if got != want:
                misshaped.append(f"{k} has shape {got}, the model needs {want}")
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(_listing("missing", missing))
        if unexpected:
            parts.append(_listing("unexpected", unexpected))
        if misshaped:
            parts.append(_listing("mis-shaped", misshaped))
        raise CVGLError(f"{source} does not match the model; nothing was loaded. " + " | ".join(parts)
                        + " (check --model / --polar and that the file is the right state dict)")


def assign_state_dict(mapping: dict, sd: dict, optional=(), ignore_prefixes=(), source="checkpoint") -> int:
    """Check everything, then assign every mapped tensor; returns the number of tensors loaded."""
    check_state_dict(mapping, sd, optional, ignore_prefixes, source)
    for k, (target, kind) in mapping.items():
        for var, value in zip(_variables(target), to_keras(sd[k], kind)):
            var.assign(value.astype(var.dtype))
    return len(mapping)


def export_state_dict(mapping: dict) -> dict:
    """The inverse: Keras variables -> {torch key: np.ndarray} in PyTorch layout (for tests and round trips)."""
    out = {}
    for k, (target, kind) in mapping.items():
        vals = [np.asarray(v.numpy() if hasattr(v, "numpy") else v) for v in _variables(target)]
        if kind == "conv":
            out[k] = vals[0].transpose(3, 2, 0, 1)
        elif kind == "linear_w":
            out[k] = vals[0].T
        elif kind == "in_proj_w":
            out[k] = np.concatenate([v.T for v in vals], axis=0)
        elif kind == "in_proj_b":
            out[k] = np.concatenate(vals, axis=0)
        else:
            out[k] = vals[0]
    return out


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


def convert_resnet34(sd: dict, source="checkpoint"):
    """A torchvision resnet34 state dict -> a Keras model (any-size image -> stride-16 map). ``fc.*`` is the
    ImageNet classifier, which GeoDTR drops, and is ignored."""
    import keras

    from common.backbones.resnet import ResNet34

    backbone = ResNet34(name="resnet34")
    backbone.build((None, None, None, 3))
    mapping, optional = resnet_weights(backbone)
    assign_state_dict(mapping, sd, optional, ignore_prefixes=("fc.",), source=source)
    inputs = keras.Input((None, None, 3), name="image")
    return keras.Model(inputs, backbone(inputs), name="resnet34_trunk")


def load_resnet34_weights(backbone, path) -> None:
    """Fill a :class:`ResNet34` from a converted ``.keras`` (from ``convert_weights --model resnet34``) or
    directly from a torchvision state dict file."""
    path = require_file(path, "ResNet-34 weights", "convert them with python -m experiments.convert_weights "
                                                    "--model resnet34")
    if path.endswith(".keras"):
        import keras

        from common.backbones.resnet import ResNet34

        try:
            loaded = keras.saving.load_model(path)
        except Exception as exc:
            raise CVGLError(f"ResNet-34 weights {path} could not be loaded ({exc})") from None
        source = [layer for layer in loaded.layers if isinstance(layer, ResNet34)]
        if len(source) != 1:
            raise CVGLError(f"{path} holds no ResNet-34 trunk (make it with convert_weights --model resnet34)")
        sd = export_state_dict(resnet_weights(source[0])[0])
    else:
        sd = read_state_dict(path)
    mapping, optional = resnet_weights(backbone)
    assign_state_dict(mapping, sd, optional, ignore_prefixes=("fc.",), source=path)
