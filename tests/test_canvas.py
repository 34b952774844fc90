"""A limited field-of-view photo in the 360-degree canvas (common.serving.canvas).

Oracles: the panorama convention (column j looks at bearing 180 + 360 j / W, north at the centre column) makes
a whole panorama placed at heading 0 equal to itself, at heading 90 a roll by W/4 to the right, and an
equirect slice cut from a panorama and placed back equal to the panorama wherever the canvas sees it, pixel
for pixel (headings on whole columns). A pinhole photo cut from a panorama and placed back at its own heading
matches the panorama on the seen pixels far better than at a heading 20 degrees off, its seen columns span its
field of view, and its centre column lands at its heading.
"""

import numpy as np
import pytest

from common.errors import CVGLError
from common.serving import canvas as cv


def _panorama(h=32, w=176, seed=0):
    """A smooth random panorama (bilinear interpolation is near-exact on it) with a north marker."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


H, W = 32, 176
VFOV = 360.0 * H / W


def test_whole_panorama_is_itself_and_a_heading_rolls_it():
    pano = _panorama()
    same, seen = cv.place_in_canvas(pano, 360, 0, (H, W), VFOV, "equirect")
    assert seen.all()
    np.testing.assert_array_equal(same, pano)
    east, _ = cv.place_in_canvas(pano, 360, 90, (H, W), VFOV, "equirect")
    np.testing.assert_array_equal(east, np.roll(pano, W // 4, axis=1))  # its north now looks east
    np.testing.assert_array_equal(cv.crop_from_panorama(pano, VFOV, 360, 0, (H, W), "equirect"), pano)


@pytest.mark.parametrize("fov,heading", [(90, 45), (180, 270), (90, 0)])
def test_equirect_slice_goes_back_where_it_was_cut(fov, heading):
    pano = _panorama()
    photo = cv.crop_from_panorama(pano, VFOV, fov, heading, (H, W * fov // 360), "equirect")
    canvas, seen = cv.place_in_canvas(photo, fov, heading, (H, W), VFOV, "equirect")
    assert abs(seen[0].mean() - fov / 360) <= 1.5 / W
    np.testing.assert_array_equal(canvas[seen], pano[seen])
    assert (canvas[~seen] == 0).all()


def test_pinhole_photo_lands_at_its_heading_and_spans_its_field_of_view():
    pano = _panorama(seed=1)
    photo = cv.crop_from_panorama(pano, VFOV, 70, 100, (24, 44), "pinhole")
    canvas, seen = cv.place_in_canvas(photo, 70, 100, (H, W), VFOV, "pinhole")
    wrong, seen_w = cv.place_in_canvas(photo, 70, 120, (H, W), VFOV, "pinhole")
    err = np.abs(canvas.astype(int) - pano)[seen].mean()
    err_wrong = np.abs(wrong.astype(int) - pano)[seen_w].mean()
    assert err < 12 and err_wrong > 3 * err, (err, err_wrong)
    cols = np.nonzero(seen[H // 2])[0]
    bearing = 180 + 360 * cols / W
    assert abs((bearing.max() - bearing.min()) - 70) <= 2 * 360 / W
    assert abs((bearing.max() + bearing.min()) / 2 % 360 - 100) <= 360 / W
    # vertical: a 24x44 photo of 70 degrees sees 2 atan(12 / f) of elevation, f = 22 / tan 35
    f = 22 / np.tan(np.radians(35))
    vseen = seen[:, int(round((100 - 180) % 360 / 360 * W))].mean() * VFOV
    assert abs(vseen - np.degrees(2 * np.arctan(12 / f))) <= 2 * VFOV / H


def test_a_sharp_photo_is_shrunk_before_the_remap():
    """A 12 MP-like photo (far more pixels per degree than the canvas) gives the same canvas as a small copy."""
    import cv2

    pano = _panorama(seed=2)
    small = cv.crop_from_panorama(pano, VFOV, 60, 0, (30, 40), "pinhole")
    big = cv2.resize(small, (800, 600), interpolation=cv2.INTER_CUBIC)
    a, _ = cv.place_in_canvas(small, 60, 0, (H, W), VFOV)
    b, _ = cv.place_in_canvas(big, 60, 0, (H, W), VFOV)
    assert np.abs(a.astype(int) - b).mean() < 4


def test_canvas_geometry_follows_the_training_layout():
    spec = {"ground_size": [32, 176]}
    assert cv.canvas_geometry(spec, "cvusa") == (64, 352, 360 * 32 / 176)
    assert cv.canvas_geometry({"ground_size": [122, 671]}, "cvact")[2] == 90.0  # middle half of 180 degrees


def test_bad_fields_of_view_and_photos_are_refused():
    photo = np.zeros((30, 40, 3), np.uint8)
    with pytest.raises(CVGLError, match="--fov"):
        cv.check_panorama(photo)
    cv.check_panorama(np.zeros((832, 1664, 3), np.uint8))  # 2:1 is a panorama
    for fov in (0, -5, 400, float("nan")):
        with pytest.raises(CVGLError, match="--fov must be"):
            cv.place_in_canvas(photo, fov, 0, (H, W), VFOV)
    with pytest.raises(CVGLError, match="--projection equirect"):
        cv.place_in_canvas(photo, 180, 0, (H, W), VFOV, "pinhole")
    with pytest.raises(CVGLError, match="--headings"):
        cv.headings(0)
    assert cv.headings(4) == [0.0, 90.0, 180.0, 270.0]
