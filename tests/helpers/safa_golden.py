"""The seeded weights and inputs of the SAFA golden fixture (tests/fixtures/safa/), shared by its generator
(``tests/fixtures/safa/make_golden.py``, run once with SAFA's official code) and by the test that checks the
converter (tests/test_safa_convert.py). A NumPy recipe, so nothing but the descriptors needs storing."""

from __future__ import annotations

import zlib

import numpy as np

SEED = 2019
SIZE = (112, 616)  # SAFA's placeholders: panorama and polar aerial
BATCH = 2
SAFA_BGR_MEANS = (103.939, 116.779, 123.6)  # SAFA's input code (its red mean is 123.6, Keras VGG16's 123.68)


def weight(name: str, shape) -> np.ndarray:
    """The value of SAFA variable ``name``: normal, scaled to keep 13 ReLU convolutions of VGG16 in range."""
    shape = tuple(int(s) for s in shape)
    rng = np.random.default_rng([SEED, zlib.crc32(name.encode())])
    z = rng.standard_normal(shape)
    leaf = name.rsplit("/", 1)[-1]
    if leaf == "weights":  # 3x3xCinxCout
        scale = np.sqrt(2.0 / (shape[0] * shape[1] * shape[2]))
    elif leaf in ("weights1", "weights2"):  # [P, P/2, d] / [P/2, P, d]
        scale = 1.0 / np.sqrt(shape[0])
    else:  # biases
        scale = 0.05
    return (z * scale).astype(np.float32)


def inputs() -> dict:
    """{"ground", "aerial"}: (2, 112, 616, 3) float32 images as SAFA feeds them (BGR minus SAFA's means)."""
    rng = np.random.default_rng([SEED, 1])
    out = {}
    for view in ("ground", "aerial"):
        img = rng.uniform(0.0, 255.0, (BATCH, *SIZE, 3))
        out[view] = (img - np.asarray(SAFA_BGR_MEANS)).astype(np.float32)
    return out
