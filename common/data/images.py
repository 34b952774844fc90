"""Is an image file whole? A cheap structural check, before any decoder sees the file.

Decoders are lenient: OpenCV and TensorFlow fill a truncated JPEG with grey and carry on, and a zero-byte file
only fails deep inside a pipeline. :func:`image_problem` reads the file's head and tail and says what is
wrong (empty, truncated JPEG without its end-of-image marker, PNG without its IEND chunk, not an image at
all), or None for a whole JPEG / PNG. :func:`decode_problem` also decodes it fully (``prepare --verify``).

A JPEG whose entropy-coded data is damaged is decoded by OpenCV with a libjpeg warning ("Corrupt JPEG data:
bad Huffman code") and the damage filled in, while TensorFlow's decoder (the training pipeline's) refuses some
of those files outright. :func:`decode_checked` notes libjpeg's warnings and, for a warned file only, asks
TensorFlow's decoder: a file it refuses is a problem (it would stop a training run), one it accepts is decoded
with a warning naming the file. :func:`read_rgb` is the one image reader of the serving and picture code.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading

JPEG_SOI, JPEG_EOI = b"\xff\xd8", b"\xff\xd9"
PNG_SIG, PNG_IEND = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


def image_problem(path: str) -> str | None:
    """None for a structurally whole JPEG or PNG; else one phrase naming the file and what is wrong."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return f"empty file {path} (0 bytes)"
        with open(path, "rb") as fh:
            head = fh.read(8)
            fh.seek(max(0, size - 64))
            tail = fh.read()
    except OSError as exc:
        return f"unreadable file {path} ({exc.strerror or exc})"
    if head.startswith(JPEG_SOI):
        if JPEG_EOI not in tail.rstrip(b"\x00\r\n "):
            return f"truncated JPEG {path} (no end-of-image marker: the file was cut short)"
        return None
    if head.startswith(PNG_SIG):
        if not tail.endswith(PNG_IEND):
            return f"truncated PNG {path} (no IEND chunk: the file was cut short)"
        return None
    return f"{path} is not a JPEG or PNG image"


_STDERR_LOCK = threading.Lock()


class _CaughtStderr:
    """Catches what C libraries print on the process's file descriptor 2 (libjpeg's warnings): ``.text``
    after the block. One block at a time (the descriptor is process-wide)."""

    def __enter__(self):
        _STDERR_LOCK.acquire()
        self._file = tempfile.TemporaryFile()
        sys.stderr.flush()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        try:
            os.dup2(self._saved, 2)
            os.close(self._saved)
            self._file.seek(0)
            text = self._file.read().decode("utf-8", "replace")
            self._file.close()
            self.text = " ".join(dict.fromkeys(ln.strip() for ln in text.splitlines() if ln.strip()))
        finally:
            _STDERR_LOCK.release()
        return False


def _imdecode_noting_warnings(data):
    """``(BGR image or None, what libjpeg / libpng printed)``: cv2.imdecode with the C library's output caught."""
    import cv2

    with _CaughtStderr() as caught:
        img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    return img, caught.text


def tensorflow_refuses(path: str) -> str | None:
    """Why TensorFlow's decoder (the one the training pipeline uses) refuses ``path``, or None."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        with _CaughtStderr():
            data = tf.io.read_file(path)
            if tf.io.is_jpeg(data):
                tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")
            else:
                tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as exc:
        return str(exc).strip().splitlines()[-1].split("}}")[-1].strip()[:120] or type(exc).__name__
    return None


def decode_checked(path: str):
    """``(BGR uint8 image or None, problem or None, warning or None)`` for one image file.

    problem: missing, empty, cut short, not an image, undecodable, or damaged data that TensorFlow's decoder
    refuses; warning: damaged data that the decoders fill in (the image is returned)."""
    import numpy as np

    if not os.path.isfile(path):
        return None, f"no file {path}", None
    problem = image_problem(path)
    if problem:
        return None, problem, None
    img, warned = _imdecode_noting_warnings(np.fromfile(path, dtype=np.uint8))
    if img is None or img.size == 0:
        return None, f"undecodable image {path}{f' ({warned})' if warned else ''}", None
    if warned:
        refused = tensorflow_refuses(path)
        if refused:
            return None, f"damaged image data in {path} ({warned}; TensorFlow's decoder refuses it: {refused})", None
        return img, None, f"damaged image data in {path} ({warned}); the decoder filled in the damaged part"
    return img, None, None


def decode_problem(path: str) -> str | None:
    """:func:`image_problem`, then a full decode (:func:`decode_checked`): None when the image is usable."""
    return decode_checked(path)[1]


def read_rgb(path: str, what: str = "image"):
    """uint8 (H, W, 3) RGB of an image file; CVGLError naming the file when it is missing, empty, cut short or
    undecodable; a warning line on stderr when its data is damaged but decodable."""
    from common.errors import CVGLError

    if not os.path.isfile(path):
        raise CVGLError(f"{what} not found: {path} (check the path)")
    img, problem, warning = decode_checked(path)
    if problem:
        raise CVGLError(f"{what}: {problem}; replace the file")
    if warning:
        print(f"warning: {what}: {warning}", file=sys.stderr)
    return img[..., ::-1].copy()
