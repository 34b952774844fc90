"""A NumPy reference forward of GeoDTR (eval mode) computed straight from an *official-layout* PyTorch state
dict, written independently of the Keras code: NCHW tensors, OIHW kernels, symmetric zero padding, packed
in_proj, (out, in) linear weights. Used as the oracle of the conversion tests."""

from __future__ import annotations

import math

import numpy as np

BLOCKS = (3, 4, 6, 3)


def conv2d(x, w, stride, pad):
    """x (B, C, H, W), w (O, C, kh, kw): PyTorch Conv2d (no bias) via im2col, float64."""
    b, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho = (h + 2 * pad - kh) // stride + 1
    wo = (wd + 2 * pad - kw) // stride + 1
    cols = np.empty((b, c, kh, kw, ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = x[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
    return np.tensordot(cols, w, axes=([1, 2, 3], [1, 2, 3])).transpose(0, 3, 1, 2)  # BLAS


def batchnorm(x, sd, p, eps=1e-5):
    g, b = sd[f"{p}.weight"], sd[f"{p}.bias"]
    m, v = sd[f"{p}.running_mean"], sd[f"{p}.running_var"]
    return (x - m[None, :, None, None]) / np.sqrt(v[None, :, None, None] + eps) * g[None, :, None, None] \
        + b[None, :, None, None]


def resnet34(x, sd, names):
    """names(torchvision_prefix) -> key prefix in sd. x NCHW."""
    relu = lambda t: np.maximum(t, 0)  # noqa: E731
    x = relu(batchnorm(conv2d(x, sd[names("conv1") + ".weight"], 2, 3), sd, names("bn1")))
    for s, n in enumerate(BLOCKS):
        for i in range(n):
            p = names(f"layer{s + 1}.{i}")
            stride = 2 if (i == 0 and s > 0) else 1
            y = relu(batchnorm(conv2d(x, sd[f"{p}.conv1.weight"], stride, 1), sd, f"{p}.bn1"))
            y = batchnorm(conv2d(y, sd[f"{p}.conv2.weight"], 1, 1), sd, f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                x = batchnorm(conv2d(x, sd[f"{p}.downsample.0.weight"], stride, 0), sd, f"{p}.downsample.1")
            x = relu(y + x)
    return x


def layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def encoder_layer(x, sd, p, heads):
    b, t, d = x.shape
    qkv = x @ sd[f"{p}.self_attn.in_proj_weight"].T + sd[f"{p}.self_attn.in_proj_bias"]
    q, k, v = np.split(qkv, 3, axis=-1)
    dh = d // heads
    split = lambda a: a.reshape(b, t, heads, dh).transpose(0, 2, 1, 3)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh)
    s = np.exp(s - s.max(-1, keepdims=True))
    a = s / s.sum(-1, keepdims=True)
    o = (a @ v).transpose(0, 2, 1, 3).reshape(b, t, d)
    o = o @ sd[f"{p}.self_attn.out_proj.weight"].T + sd[f"{p}.self_attn.out_proj.bias"]
    x = layer_norm(x + o, sd[f"{p}.norm1.weight"], sd[f"{p}.norm1.bias"])
    h = gelu(x @ sd[f"{p}.linear1.weight"].T + sd[f"{p}.linear1.bias"])
    h = h @ sd[f"{p}.linear2.weight"].T + sd[f"{p}.linear2.bias"]
    return layer_norm(x + h, sd[f"{p}.norm2.weight"], sd[f"{p}.norm2.bias"])


def gle(x, sd, p, heads):
    """x (B, C, N) -> Q (B, N, K), the official GeoLayoutExtractor.forward in eval mode."""
    c = x.shape[1]
    m, idx = x.max(1), x.argmax(1)
    u = idx / c
    e = np.einsum("bi,idj->bdj", m, sd[f"{p}.w1"]) + sd[f"{p}.b1"]
    n_layers = 0
    while f"{p}.tr_module.transformer_encoder.layers.{n_layers}.linear1.weight" in sd:
        n_layers += 1
    if n_layers:
        pe = np.einsum("bi,idj->bdj", u, sd[f"{p}.tr_module.pos_encoder.linear"])
        pe = np.clip(pe + sd[f"{p}.tr_module.pos_encoder.embedding_parameter"], -1, 1)
        e = e + pe
        for i in range(n_layers):
            e = encoder_layer(e, sd, f"{p}.tr_module.transformer_encoder.layers.{i}", heads)
        e = layer_norm(e, sd[f"{p}.tr_module.transformer_encoder.norm.weight"],
                       sd[f"{p}.tr_module.transformer_encoder.norm.bias"])
    q = np.einsum("bdj,jdi->bdi", e, sd[f"{p}.w2"]) + sd[f"{p}.b2"]
    return q.transpose(0, 2, 1)


def official_names(view):
    index = {"conv1": 0, "bn1": 1, "layer1": 3, "layer2": 4, "layer3": 5, "layer4": 6}

    def names(tv):
        head, _, rest = tv.partition(".")
        return f"{view}.layers.{index[head]}" + (f".{rest}" if rest else "")
    return names


def geodtr_forward(sd, sat_nhwc, grd_nhwc, heads):
    """Official GeoDTR.forward(is_cf=False) in float64 on NHWC inputs -> (sat_global, grd_global)."""
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    out = []
    for view, ge, img in (("backbone_sat", "ge_sat", sat_nhwc), ("backbone_grd", "ge_grd", grd_nhwc)):
        x = resnet34(np.asarray(img, np.float64).transpose(0, 3, 1, 2), sd, official_names(view))
        b, c = x.shape[:2]
        x = x.reshape(b, c, -1)
        p = np.clip(gle(x, sd, ge, heads), -1, 1)
        f = (x @ p).reshape(b, -1)
        out.append(f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12))
    return out


# --- random official-layout state dicts (keys written out here, independently of the Keras mapping) -----

def torchvision_resnet34_shapes() -> dict:
    """{torchvision key: shape} of resnet34 without fc (BN num_batches_tracked included)."""
    shapes = {"conv1.weight": (64, 3, 7, 7)}

    def bn(p, c):
        for s in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{p}.{s}"] = (c,)
        shapes[f"{p}.num_batches_tracked"] = ()

    bn("bn1", 64)
    cin = 64
    for s, (n, c) in enumerate(zip(BLOCKS, (64, 128, 256, 512))):
        for i in range(n):
            p = f"layer{s + 1}.{i}"
            shapes[f"{p}.conv1.weight"] = (c, cin if i == 0 else c, 3, 3)
            bn(f"{p}.bn1", c)
            shapes[f"{p}.conv2.weight"] = (c, c, 3, 3)
            bn(f"{p}.bn2", c)
            if i == 0 and s > 0:
                shapes[f"{p}.downsample.0.weight"] = (c, cin, 1, 1)
                bn(f"{p}.downsample.1", c)
        cin = c
    return shapes


def gle_shapes(n, k, layers, ffn) -> dict:
    d = n // 2
    shapes = {"w1": (n, k, d), "b1": (1, k, d), "w2": (d, k, n), "b2": (1, k, n)}
    if layers:
        shapes["tr_module.pos_encoder.linear"] = (n, k, d)
        shapes["tr_module.pos_encoder.embedding_parameter"] = (1, k, d)
        for i in range(layers):
            p = f"tr_module.transformer_encoder.layers.{i}"
            shapes.update({f"{p}.self_attn.in_proj_weight": (3 * d, d), f"{p}.self_attn.in_proj_bias": (3 * d,),
                           f"{p}.self_attn.out_proj.weight": (d, d), f"{p}.self_attn.out_proj.bias": (d,),
                           f"{p}.linear1.weight": (ffn, d), f"{p}.linear1.bias": (ffn,),
                           f"{p}.linear2.weight": (d, ffn), f"{p}.linear2.bias": (d,)})
            for s in ("norm1", "norm2"):
                shapes[f"{p}.{s}.weight"] = (d,)
                shapes[f"{p}.{s}.bias"] = (d,)
        shapes["tr_module.transformer_encoder.norm.weight"] = (d,)
        shapes["tr_module.transformer_encoder.norm.bias"] = (d,)
    return shapes


def random_tensor(rng, key, shape):
    if key.endswith("num_batches_tracked"):
        return np.asarray(7, np.int64)
    if key.endswith("running_var"):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if key.endswith("running_mean"):
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    if len(shape) == 4:  # conv: He-normal so activations neither vanish nor explode
        fan_in = shape[1] * shape[2] * shape[3]
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(math.sqrt(2.0 / fan_in))
    if key.endswith("norm1.weight") or key.endswith("norm2.weight") or key.endswith("norm.weight") \
            or (key.endswith(".weight") and len(shape) == 1):
        return (1.0 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
    if key.endswith("w1") or key.endswith("w2") or key.endswith("pos_encoder.linear"):
        return (0.3 * rng.standard_normal(shape)).astype(np.float32)
    if len(shape) == 2:
        return (rng.standard_normal(shape) / math.sqrt(shape[1])).astype(np.float32)
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)


def random_resnet34(rng) -> dict:
    sd = {k: random_tensor(rng, k, s) for k, s in torchvision_resnet34_shapes().items()}
    sd["fc.weight"] = rng.standard_normal((1000, 512)).astype(np.float32)
    sd["fc.bias"] = np.zeros(1000, np.float32)
    return sd


def random_official_geodtr(rng, n_sat, n_grd, k, layers, ffn) -> dict:
    """A random state dict with the official GeoDTR key names (as model.state_dict() of GeoDTR.py)."""
    sd = {}
    for view in ("backbone_grd", "backbone_sat"):
        names = official_names(view)
        for key, shape in torchvision_resnet34_shapes().items():
            head, rest = key.split(".", 1)
            if head.startswith("layer"):
                block, rest = rest.split(".", 1)
                new = f"{names(head + '.' + block)}.{rest}"
            else:
                new = f"{names(head)}.{rest}"
            sd[new] = random_tensor(rng, new, shape)
    for ge, n in (("ge_grd", n_grd), ("ge_sat", n_sat)):
        for key, shape in gle_shapes(n, k, layers, ffn).items():
            sd[f"{ge}.{key}"] = random_tensor(rng, key, shape)
    return sd
