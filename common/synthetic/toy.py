"""Tiny toy datasets in the exact CVUSA / CVACT on-disk layouts, for tests and the data demo.

Not the synthetic world (:mod:`common.synthetic` renders real cross-view scenes); this only writes smooth
random aerial images and, as their "panorama", the polar transform of the aerial image (so a pair is
geometrically consistent: north at the centre column), in seconds. ``ACT_data.mat`` is written with
``scipy.io.savemat`` from dicts, which MATLAB/scipy store as 1x1 structs exactly like the real file
(``panoIds`` as a char matrix, ``utm`` N x 2, ``trainSet.trainInd`` etc. as 1-based N x 1 doubles).
"""

from __future__ import annotations

import os

import numpy as np


def _smooth_image(rng, size, channels=3):
    import cv2

    small = rng.integers(0, 256, (max(size // 8, 2), max(size // 8, 2), channels), dtype=np.uint8)
    img = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:size, 0:size]
    # a bright north marker and a dark east marker, so orientation is visible in pictures
    c = size // 2
    img[(yy - (c - size // 3)) ** 2 + (xx - c) ** 2 < (size // 16) ** 2] = (255, 255, 255)
    img[(yy - c) ** 2 + (xx - (c + size // 3)) ** 2 < (size // 16) ** 2] = (0, 0, 0)
    return img


def _write(path, rgb):
    import cv2

    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, np.ascontiguousarray(rgb[..., ::-1]))


def _pair(rng, aerial_size, pano_size):
    import cv2

    from common.data.polar import polar_transform_fast

    aerial = _smooth_image(rng, aerial_size)
    h, w = pano_size
    pano = polar_transform_fast(aerial, h * 2, w)[:h]  # the far half as the "horizon band"
    pano = cv2.resize(pano, (w, h), interpolation=cv2.INTER_AREA)
    return aerial, pano


def write_toy_cvusa(root, n_train=6, n_val=4, aerial_size=64, pano_size=(16, 88), seed=0,
                    coordinates=True) -> str:
    """Write a CVUSA-layout folder; ids 0000001...; returns ``root``."""
    rng = np.random.default_rng(seed)
    root = os.fspath(root)
    os.makedirs(os.path.join(root, "splits"), exist_ok=True)
    rows, k = [], 0
    for split, n in (("train", n_train), ("val", n_val)):
        lines = []
        for _ in range(n):
            k += 1
            pid = f"{k:07d}"
            aerial, pano = _pair(rng, aerial_size, pano_size)
            _write(os.path.join(root, "bingmap", "19", f"{pid}.jpg"), aerial)
            _write(os.path.join(root, "streetview", "panos", f"{pid}.jpg"), pano)
            lines.append(f"bingmap/19/{pid}.jpg,streetview/panos/{pid}.jpg,annotations/{pid}.png\n")
            rows.append((pid, 40.0 + k * 1e-4, -75.0, 500000.0 + 30.0 * k, 4400000.0 + 7.0 * k))
        with open(os.path.join(root, "splits", f"{split}-19zl.csv"), "w") as fh:
            fh.writelines(lines)
    if coordinates:
        with open(os.path.join(root, "coordinates.csv"), "w") as fh:
            fh.write("id,lat,lon,easting,northing\n")
            fh.writelines(f"{p},{la},{lo},{e},{n}\n" for p, la, lo, e, n in rows)
    return root


def write_act_mat(path, ids, utm, train_ind, val_ind, val_all_ind):
    """ACT_data.mat as MATLAB stores it (1-based index vectors inside 1x1 structs)."""
    import scipy.io

    col = lambda a: np.asarray(a, dtype=np.float64).reshape(-1, 1)  # noqa: E731
    scipy.io.savemat(path, {
        "panoIds": np.asarray(ids),
        "utm": np.asarray(utm, dtype=np.float64),
        "trainSet": {"trainInd": col(train_ind)},
        "valSet": {"valInd": col(val_ind)},
        "valSetAll": {"valInd": col(val_all_ind)},
    })


def write_toy_cvact(root, n_train=6, n_val=4, n_test_extra=2, aerial_size=64, pano_size=(32, 64), seed=0) -> str:
    """Write a CVACT-layout folder: train in ANU_data_small, val + extra test pairs in ANU_data_test."""
    rng = np.random.default_rng(seed)
    root = os.fspath(root)
    n = n_train + n_val + n_test_extra
    ids = [f"toyPano{i:04d}abcdefghij"[:22] for i in range(n)]  # fixed-length ids, like the real panoIds
    utm = np.stack([330000.0 + 10.0 * np.arange(n), 6250000.0 + 3.0 * np.arange(n)], axis=1)
    train = np.arange(n_train)
    val = np.arange(n_train, n_train + n_val)
    test = np.arange(n_train, n)
    for part, members in (("ANU_data_small", train), ("ANU_data_test", test)):
        for i in members:
            aerial, pano = _pair(rng, aerial_size, pano_size)
            _write(os.path.join(root, part, "satview_polish", f"{ids[i]}_satView_polish.jpg"), aerial)
            _write(os.path.join(root, part, "streetview", f"{ids[i]}_grdView.jpg"), pano)
    os.makedirs(root, exist_ok=True)
    write_act_mat(os.path.join(root, "ACT_data.mat"), ids, utm, train + 1, val + 1, test + 1)
    return root
