"""PyTorch state dicts -> Keras variables, safely and all-or-nothing (shared by every backbone and family).

Readers (:func:`read_state_dict`): ``.npz`` and ``.safetensors`` are read without torch; ``.pth``/``.pt``
needs torch (an optional extra) and is always read with ``torch.load(..., weights_only=True)``, so nothing
in a weights file can run code. Training checkpoints (``{"epoch", "model_state_dict", ...}``) are unwrapped,
and the ``module.`` prefix of ``nn.DataParallel`` is removed.

Tensor transforms (:func:`to_keras`): conv OIHW -> HWIO; ``nn.Linear`` weight (out, in) -> kernel (in, out);
copies otherwise. A mapping is ``{torch key: (keras variable, kind)}``; :func:`assign_state_dict` first checks
the whole dict (:func:`check_state_dict` raises :class:`~common.errors.CVGLError` listing every missing,
unexpected and mis-shaped key); only then it assigns.
"""

from __future__ import annotations

import os

import numpy as np

from common.errors import CVGLError, require_file


TORCH_HINT = ("reading .pth needs PyTorch, an optional extra: pip install torch; or convert the file to "
              ".safetensors/.npz with PyTorch elsewhere")


WRAPPER_KEYS = ("model_state_dict", "state_dict", "model")


def read_state_dict(path) -> dict:
    """{key: np.ndarray} from a .npz / .safetensors / .pth state dict (or an official training checkpoint), or
    from a TensorFlow 1 checkpoint prefix (``model.ckpt``: :mod:`common.backbones.tf1_checkpoint`)."""
    from common.backbones.tf1_checkpoint import read_tf1_checkpoint, tf1_prefix

    if not os.path.isfile(os.fspath(path)) and tf1_prefix(path) is not None:
        return read_tf1_checkpoint(path)
    path = require_file(path, "checkpoint", "give the path of a PyTorch state dict (.pth/.safetensors/.npz) or "
                        "of a TensorFlow 1 checkpoint prefix (model.ckpt, beside model.ckpt.index)")
    if os.path.splitext(path)[1].lower() in (".index", ".meta") or ".data-" in os.path.basename(path):
        return read_tf1_checkpoint(path)
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
