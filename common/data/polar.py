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
* :func:`polar_transform_fast` — offline preparation: float32 sampling maps cached per (S, H, W) and
  ``cv2.remap`` (bilinear, zero border). uint8 in, uint8 out, **rounded** to the nearest integer (measured:
  at most 0.5 grey levels from the reference on random images). GeoDTR's own preparation truncates with
  ``astype(uint8)`` instead, which biases every pixel by -0.5 grey levels; the reference returns floats.
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


def polar_transform(aerial, height: int, width: int) -> np.ndarray:
    """Reference SAFA polar transform. ``aerial``: S x S or S x S x C (any dtype). Returns float32 H x W[x C].

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
    out = out.astype(np.float32)
    return out[:, :, 0] if squeeze else out


@functools.lru_cache(maxsize=16)
def _remap_maps(size: int, height: int, width: int):
    rows, cols = sample_coordinates(size, height, width)
    # Float32 maps, computed once per (S, H, W). (Converting them to OpenCV's fixed-point CV_16SC2 form
    # would quantise the bilinear weights to 1/32 px: up to 6 grey levels off on noise images.)
    return cols.astype(np.float32), rows.astype(np.float32)


def polar_transform_fast(aerial, height: int, width: int) -> np.ndarray:
    """Fast polar transform for dataset preparation: uint8 S x S[x C] in, uint8 H x W[x C] out (rounded)."""
    import cv2

    img = np.asarray(aerial)
    _check_square(img.shape)
    if img.dtype != np.uint8:
        raise CVGLError(f"polar_transform_fast expects a uint8 image, got {img.dtype}; use polar_transform")
    map1, map2 = _remap_maps(int(img.shape[0]), int(height), int(width))
    return cv2.remap(img, map1, map2, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                     borderValue=0)


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
