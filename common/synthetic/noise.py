"""World-anchored value noise: lattice values from an integer hash, resampled bilinearly with OpenCV.

Textures are a function of city-frame metres, so the aerial and the ground view of one place (and two
overlapping pairs) see the same texture. Only the lattice (a few thousand points) is hashed; cv2.warpAffine
resamples it onto a raster in one vectorised call.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

_M1, _M2, _M3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def hash01(*keys) -> np.ndarray:
    """Deterministic uniform [0, 1) float32 from integer arrays (broadcast), splitmix64-style mixing."""
    h = np.uint64(0x1234567)
    with np.errstate(over="ignore"):
        for k in keys:
            h = (h ^ np.asarray(k).astype(np.int64).astype(np.uint64)) * _M1
            h = (h ^ (h >> np.uint64(30))) * _M2
            h = (h ^ (h >> np.uint64(27))) * _M3
            h = h ^ (h >> np.uint64(31))
    return ((h >> np.uint64(40)).astype(np.float64) / float(1 << 24)).astype(np.float32)


def raster_noise(u0: float, v0: float, n: int, res: float, scale: float, seed: int) -> np.ndarray:
    """n x n value noise in [-1, 1] for the raster whose cell (i, j) is at u = u0 + (j - n/2) res,
    v = v0 + (n/2 - i) res, with lattice spacing ``scale`` metres."""
    half = n / 2 * res
    kx0 = math.floor((u0 - half) / scale) - 1
    ky0 = math.floor((v0 - half) / scale) - 1
    kx1 = math.ceil((u0 + half) / scale) + 2
    ky1 = math.ceil((v0 + half) / scale) + 2
    kx = np.arange(kx0, kx1)[None, :]
    ky = np.arange(ky0, ky1)[:, None]
    lattice = hash01(kx, ky, seed) * 2.0 - 1.0
    # raster (j, i) -> lattice (col, row): col = u/scale - kx0, row = v/scale - ky0
    a = res / scale
    m = np.array([[a, 0.0, (u0 - half) / scale - kx0], [0.0, -a, (v0 + half) / scale - ky0]],
                 dtype=np.float64)
    return cv2.warpAffine(lattice, m, (n, n), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT)


def grid_noise(h: int, w: int, cells_y: int, cells_x: int, seed: int) -> np.ndarray:
    """h x w smooth noise in [-1, 1] from a (cells_y+1) x (cells_x+1) lattice (skies; not world-anchored)."""
    lattice = hash01(np.arange(cells_x + 1)[None, :], np.arange(cells_y + 1)[:, None], seed) * 2.0 - 1.0
    return cv2.resize(lattice, (w, h), interpolation=cv2.INTER_CUBIC)
