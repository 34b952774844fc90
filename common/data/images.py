"""Is an image file whole? A cheap structural check, before any decoder sees the file.

Decoders are lenient: OpenCV and TensorFlow fill a truncated JPEG with grey and carry on, and a zero-byte file
only fails deep inside a pipeline. :func:`image_problem` reads the file's head and tail and says what is
wrong (empty, truncated JPEG without its end-of-image marker, PNG without its IEND chunk, not an image at
all), or None for a whole JPEG / PNG. :func:`decode_problem` also decodes it fully (``prepare --verify``).
"""

from __future__ import annotations

import os

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


def decode_problem(path: str) -> str | None:
    """:func:`image_problem`, then a full decode with OpenCV (None when both pass)."""
    problem = image_problem(path)
    if problem:
        return problem
    import cv2
    import numpy as np

    data = np.fromfile(path, dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None or img.size == 0:
        return f"undecodable image {path}"
    return None
