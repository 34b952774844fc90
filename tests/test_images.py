"""common.data.images: which image files are usable, decided before any pipeline sees them.

Made here from one smooth 64x64 JPEG: cut short (no end-of-image marker), empty, not an image, and 200 bytes of
its entropy-coded data overwritten at 40 % of the file (OpenCV decodes it with a libjpeg warning, "bad Huffman
code", and fills the damage in; TensorFlow's decoder refuses it) or at 70 % (both decoders fill it in: a
warning only).
"""

import cv2
import numpy as np
import pytest

from common.data.images import decode_checked, image_problem, read_rgb
from common.errors import CVGLError


@pytest.fixture(scope="module")
def jpeg(tmp_path_factory):
    y, x = np.mgrid[0:64, 0:64]
    img = np.stack([x * 4, y * 4, (x + y) * 2], -1).astype(np.uint8)
    img = cv2.GaussianBlur(img + (np.random.default_rng(0).random((64, 64, 3)) * 60).astype(np.uint8), (3, 3), 0)
    data = cv2.imencode(".jpg", img)[1].tobytes()
    folder = tmp_path_factory.mktemp("images")

    def write(name, content):
        path = str(folder / name)
        open(path, "wb").write(content)
        return path

    def scramble(at):
        out = bytearray(data)
        start = int(len(out) * at)
        for i in range(start, start + 200):
            out[i] = 0xFF if i % 2 else 0x00
        return bytes(out)

    return {"whole": write("whole.jpg", data), "cut": write("cut.jpg", data[: len(data) // 2]),
            "empty": write("empty.jpg", b""), "text": write("text.jpg", b"hello, not an image"),
            "scrambled": write("scrambled.jpg", scramble(0.4)), "gap": write("gap.jpg", scramble(0.7)),
            "img": img}


def test_structural_check(jpeg):
    assert image_problem(jpeg["whole"]) is None
    assert "truncated JPEG" in image_problem(jpeg["cut"])
    assert "0 bytes" in image_problem(jpeg["empty"])
    assert "not a JPEG or PNG" in image_problem(jpeg["text"])
    assert image_problem(jpeg["scrambled"]) is None and image_problem(jpeg["gap"]) is None  # only decoding tells


def test_full_decode_names_what_the_pipeline_would_refuse(jpeg):
    img, problem, warning = decode_checked(jpeg["whole"])
    assert problem is None and warning is None and img.shape == (64, 64, 3)
    assert np.abs(img.astype(int) - jpeg["img"]).mean() < 10  # it is the image (JPEG-lossy)
    for name in ("cut", "empty", "text"):
        assert decode_checked(jpeg[name])[0] is None and decode_checked(jpeg[name])[1]
    img, problem, warning = decode_checked(jpeg["scrambled"])
    assert img is None and "damaged image data" in problem and "TensorFlow's decoder refuses it" in problem
    img, problem, warning = decode_checked(jpeg["gap"])
    assert problem is None and img is not None and "Corrupt JPEG data" in warning


def test_read_rgb(jpeg, capfd):
    rgb = read_rgb(jpeg["whole"])
    np.testing.assert_array_equal(rgb, cv2.imread(jpeg["whole"])[..., ::-1])
    with pytest.raises(CVGLError, match="query image.*damaged image data"):
        read_rgb(jpeg["scrambled"], "query image")
    with pytest.raises(CVGLError, match="not found"):
        read_rgb(jpeg["whole"] + ".missing")
    read_rgb(jpeg["gap"])
    assert "warning: image: damaged image data" in capfd.readouterr().err
