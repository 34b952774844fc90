"""Our SAFA / MGTL input pixels against SAFA's own input code, on the same files at CVUSA's real sizes.

SAFA's ``script/input_data_cvusa.py`` (read, not copied) feeds, per pair: the polar map PNG written by its
``data_preparation.py`` (float64 map through ``scipy.misc.imsave``: byte-scaled) read with ``cv2.imread`` (BGR);
the 224x1232 panorama read with ``cv2.imread`` and ``cv2.resize(..., (616, 112), INTER_AREA)`` (uint8 out,
so rounded); both as float32 minus the BGR means (103.939, 116.779, 123.6). Restated here as the oracle.

Ours (``make_view_dataset`` with the SAFA spec, after ``prepare`` with its default rounding at 112x616):
* aerial: the same PNG pixels (prepare's "bytescale" maps equal SAFA's definition: tests/test_polar.py); the
  only difference is the red mean, 123.68 (Keras VGG16's ImageNet convention, "vgg_bgr") for SAFA's 123.6:
  every red value is 0.08 lower;
* ground: the same area average but not rounded to uint8 (at most 0.5 grey levels, 0.25 on average), and the
  same 0.08 on red.
"""

import cv2
import numpy as np

SAFA_MEANS = np.array([103.939, 116.779, 123.6], np.float32)  # B, G, R as SAFA subtracts them


def test_our_safa_inputs_against_safas_input_code(tmp_path):
    from common.data.pipeline import make_view_dataset
    from common.data.readers import prepared_polar_path, read_split
    from experiments import prepare
    from mgtl_tf.safa.specs import SAFA_POLAR
    from tests.helpers.world import tiny_world

    root = tiny_world(tmp_path, "cvusa", n_train=1, n_val=2, aerial_size=750, pano_size=(224, 1232))
    assert prepare.main(["--dataset", "cvusa", "--root", root, "--workers", "1", "--sizes", "112x616"]) == 0
    records = read_split("cvusa", root, "val")
    ours = {view: np.concatenate([np.asarray(b) for b in make_view_dataset(records, SAFA_POLAR, view, 2)])
            for view in ("ground", "aerial")}
    safa = {
        "aerial": np.stack([cv2.imread(prepared_polar_path(r, (112, 616))).astype(np.float32) - SAFA_MEANS
                            for r in records]),
        "ground": np.stack([cv2.resize(cv2.imread(r.ground), (616, 112), interpolation=cv2.INTER_AREA)
                            .astype(np.float32) - SAFA_MEANS for r in records]),
    }
    red = np.array([0.0, 0.0, -0.08], np.float32)
    np.testing.assert_allclose(ours["aerial"] - safa["aerial"], np.broadcast_to(red, ours["aerial"].shape),
                               atol=2e-5)
    rest = ours["ground"] - safa["ground"] - red
    assert np.abs(rest).max() <= 0.5 + 2e-5  # SAFA's resize rounds to uint8, ours keeps the float average
    assert 0.2 < np.abs(rest).mean() < 0.3
