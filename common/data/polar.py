"""The SAFA polar transform of an aerial image, in three implementations pinned to one formula.

Reference: Shi et al., "Spatial-Aware Feature Aggregation for Cross-View Image Based Geo-Localization"
(NeurIPS 2019), script ``data_preparation.py``; GeoDTR (Zhang et al., AAAI 2023) uses the same formula at
122x671. For an S x S aerial image and an H x W output, output pixel (i, j) samples the aerial image at

    rho_i   = (S/2) * (H - 1 - i) / H              (top row far, bottom row = the centre pixel)
    theta_j = 2 pi j / W
    row     = S/2 + rho_i * cos(theta_j)
    col     = S/2 - rho_i * sin(theta_j)

with bilinear interpolation (r0 = floor(row), r1 = r0 + 1, likewise for columns; a neighbour outside the
image contributes 0). Column j therefore looks at compass bearing 180 + 360 j / W degrees (north up in the
aerial image): south at both edges, west at W/4, **north at the centre column W/2**, east at 3W/4 — the
convention of the north-aligned panoramas.

Three paths, tested against each other (tests/test_polar.py):

* :func:`polar_transform` — the reference: float64 arithmetic, float32 result, no rounding.
* :func:`polar_transform_fast` — offline preparation: the reference's float64 sampling cached per (S, H, W),
  four gathers of the uint8 image. uint8 in, uint8 out, converted by one of :data:`ROUNDINGS`:
  "round" (nearest integer, at most 0.5 grey levels from the reference), "floor" (GeoDTR's own preparation:
  ``astype(uint8)``, a -0.5 grey-level bias on average) or "bytescale" (SAFA's: ``scipy.misc.imsave`` of the
  float64 map, which stretches the map's min..max to 0..255 before rounding). The reference returns floats.
* :class:`PolarTransform` (in :mod:`common.data.polar_layer`, importable from here too) — a Keras layer
  (keras.ops only, so it runs in a SavedModel and under JAX):
  the sampling grid is built once in ``build()`` for the input size, the interpolation is four gathers.

:func:`polar_grid` returns the flat gather indices and bilinear weights that both the layer and the tf.data
pipeline (on-the-fly polar for unprepared folders) use.
"""

from __future__ import annotations

import functools

import numpy as np

from common.errors import CVGLError


def _check_square(shape, what="aerial image"):
    if len(shape) < 2 or shape[0] != shape[1]:
        raise CVGLError(
            f"{what} must be square (S x S) for the polar transform, got {tuple(shape[:2])}; "
            "crop or resize it to a square first"
        )


def sample_coordinates(size: int, height: int, width: int):
    """(row, col) float64 arrays of shape (height, width): where each polar pixel samples the aerial image."""
    s = float(size)
    i = np.arange(height, dtype=np.float64)[:, None]
    j = np.arange(width, dtype=np.float64)[None, :]
    rho = (s / 2.0) * (height - 1 - i) / height
    theta = 2.0 * np.pi * j / width
    rows = s / 2.0 + rho * np.cos(theta)
    cols = s / 2.0 - rho * np.sin(theta)
    return rows, cols


def polar_transform(aerial, height: int, width: int, dtype=np.float32) -> np.ndarray:
    """Reference SAFA polar transform. ``aerial``: S x S or S x S x C (any dtype). Returns H x W[x C] of
    ``dtype`` (float32; float64 gives the float64 map the original preparation scripts convert to uint8).

    Computed in float64 exactly as the formula in the module docstring (truncation = floor, zero outside).
    """
    img = np.asarray(aerial)
    _check_square(img.shape)
    size = img.shape[0]
    squeeze = img.ndim == 2
    if squeeze:
        img = img[:, :, None]
    img = img.astype(np.float64)
    rows, cols = sample_coordinates(size, height, width)
    r0 = np.floor(rows).astype(np.int64)
    c0 = np.floor(cols).astype(np.int64)
    r1, c1 = r0 + 1, c0 + 1

    def pixel(r, c):
        inside = (r >= 0) & (r < size) & (c >= 0) & (c < size)
        vals = img[np.clip(r, 0, size - 1), np.clip(c, 0, size - 1)]
        return vals * inside[..., None]

    wr1 = (r1 - rows)[..., None]
    wr0 = (rows - r0)[..., None]
    wc1 = (c1 - cols)[..., None]
    wc0 = (cols - c0)[..., None]
    out = wc1 * (wr1 * pixel(r0, c0) + wr0 * pixel(r1, c0)) + wc0 * (wr1 * pixel(r0, c1) + wr0 * pixel(r1, c1))
    out = out.astype(dtype)
    return out[:, :, 0] if squeeze else out


@functools.lru_cache(maxsize=8)
def _grid64(size: int, height: int, width: int):
    """The reference's float64 sampling, once per (S, H, W): four flat indices, their inside masks, and the
    row / column weights (the same numbers, combined in the same order, as :func:`polar_transform`)."""
    rows, cols = sample_coordinates(size, height, width)
    r0 = np.floor(rows).astype(np.int64)
    c0 = np.floor(cols).astype(np.int64)
    taps = []
    for r, c in ((r0, c0), (r0 + 1, c0), (r0, c0 + 1), (r0 + 1, c0 + 1)):
        inside = ((r >= 0) & (r < size) & (c >= 0) & (c < size)).astype(np.float64)
        taps.append(((np.clip(r, 0, size - 1) * size + np.clip(c, 0, size - 1)).reshape(-1), inside.reshape(-1)))
    weights = [w.reshape(-1)[:, None] for w in (r0 + 1 - rows, rows - r0, c0 + 1 - cols, cols - c0)]
    return taps, weights


# How a polar map's float samples become uint8, as each original preparation script writes its maps.
ROUNDINGS = {
    "round": "to the nearest integer (this project's own choice: at most 0.5 grey levels from the float map)",
    "floor": "truncated, as GeoDTR's data_preparation.py (numpy astype(uint8) of the float map)",
    "bytescale": "stretched from the map's own min..max to 0..255, then +0.5 and truncated, as SAFA's "
                 "data_preparation.py (scipy.misc.imsave of a float64 array: toimage -> bytescale)",
}


def to_uint8(samples, rounding: str = "round") -> np.ndarray:
    """uint8 of float polar samples in [0, 255], by one of :data:`ROUNDINGS`."""
    x = np.asarray(samples, dtype=np.float64)
    if rounding == "round":
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)
    if rounding == "floor":
        return np.clip(np.floor(x), 0, 255).astype(np.uint8)
    if rounding == "bytescale":
        lo, hi = float(x.min()), float(x.max())
        scale = 255.0 / ((hi - lo) or 1.0)
        return (np.clip((x - lo) * scale, 0, 255) + 0.5).astype(np.uint8)
    raise CVGLError(f"polar rounding {rounding!r}: use one of {', '.join(ROUNDINGS)}")


def polar_transform_fast(aerial, height: int, width: int, rounding: str = "round") -> np.ndarray:
    """Fast polar transform for dataset preparation: uint8 S x S[x C] in, uint8 H x W[x C] out.

    ``rounding`` (:data:`ROUNDINGS`): the float64 map of the reference (its sampling cached per size, four
    gathers; OpenCV's remap would quantise positions to 1/32 px) converted as the original scripts convert
    theirs, so every mode equals its definition applied to the float64 map."""
    img = np.asarray(aerial)
    _check_square(img.shape)
    if img.dtype != np.uint8:
        raise CVGLError(f"polar_transform_fast expects a uint8 image, got {img.dtype}; use polar_transform")
    if rounding not in ROUNDINGS:
        raise CVGLError(f"polar rounding {rounding!r}: use one of {', '.join(ROUNDINGS)}")
    size = int(img.shape[0])
    flat = img.reshape(size * size, -1)
    (t00, t10, t01, t11), (wr1, wr0, wc1, wc0) = _grid64(size, int(height), int(width))

    def tap(t):
        return flat[t[0]].astype(np.float64) * t[1][:, None]

    samples = wc1 * (wr1 * tap(t00) + wr0 * tap(t10)) + wc0 * (wr1 * tap(t01) + wr0 * tap(t11))
    out = to_uint8(samples, rounding).reshape(int(height), int(width), -1)
    return out[:, :, 0] if img.ndim == 2 else out


def polar_grid(size: int, height: int, width: int):
    """Flat gather indices and bilinear weights of the polar transform.

    Returns ``(indices, weights)``, both of shape (4, height*width): ``indices`` int32 into the row-major
    flattened S x S image (clipped into range), ``weights`` float32 (0 for neighbours outside the image).
    ``out.flat = sum_k weights[k] * image.flat[indices[k]]`` equals :func:`polar_transform`.
    """
    rows, cols = sample_coordinates(size, height, width)
    r0 = np.floor(rows).astype(np.int64)
    c0 = np.floor(cols).astype(np.int64)
    idx, wts = [], []
    for dr, dc in ((0, 0), (1, 0), (0, 1), (1, 1)):
        r, c = r0 + dr, c0 + dc
        wr = (r0 + 1 - rows) if dr == 0 else (rows - r0)
        wc = (c0 + 1 - cols) if dc == 0 else (cols - c0)
        inside = (r >= 0) & (r < size) & (c >= 0) & (c < size)
        idx.append((np.clip(r, 0, size - 1) * size + np.clip(c, 0, size - 1)).reshape(-1))
        wts.append((wr * wc * inside).reshape(-1))
    return np.stack(idx).astype(np.int32), np.stack(wts).astype(np.float32)
