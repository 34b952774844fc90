"""Limited field of view: a photo placed in the 360-degree canvas that panorama-trained models read.

Cross-view models are trained on north-aligned panoramas (north at the centre column, compass bearing rising
to the right: column ``j`` of a ``W``-column panorama looks at bearing ``180 + 360 j / W`` degrees; rows are
linear in elevation, the horizon in the middle). A phone photo sees 60-80 degrees of that circle. Embedding it
as if it were a panorama (the export stretches whatever it gets to 360 degrees) mis-serves it silently, so
``experiments.localize`` refuses an image whose aspect ratio is not a panorama's unless ``--fov`` is given,
and then places it here:

* :func:`place_in_canvas` projects the photo into an empty canvas of the model's geometry
  (:func:`canvas_geometry`) at its heading; everything the photo does not see is black (masked). Two photo
  projections: ``pinhole`` (a normal camera: ``x = f tan a``, ``y = f tan e / cos a``, square pixels, the
  focal length from the horizontal field of view) and ``equirect`` (a slice of a panorama: pixels linear in
  azimuth and elevation, as the limited-FoV experiments of the field crop their panoramas).
* :func:`crop_from_panorama` is the inverse: the photo a camera at a panorama's position would take. It makes
  the synthetic photos of the FoV measurement (docs/serving.md) and of the tests.
* :func:`headings` lists the candidate headings tried when the heading is unknown (the best match wins).
"""

from __future__ import annotations

import math

import numpy as np

from common.errors import CVGLError

#: Narrower than this (width / height) is not a panorama: a full-sphere panorama is 2:1, a horizon band wider.
PANORAMA_MIN_ASPECT = 1.9
PROJECTIONS = ("pinhole", "equirect")
CANVAS_SCALE = 2  # canvas pixels per model input pixel (the export area-resizes it to the model's input)


def check_panorama(image: np.ndarray, what: str = "query image") -> None:
    """CVGLError naming ``--fov`` unless ``image`` has a panorama's aspect ratio."""
    h, w = image.shape[:2]
    if w / h < PANORAMA_MIN_ASPECT:
        raise CVGLError(
            f"{what} is {h}x{w} pixels (aspect {w / h:.2f}): not a panorama (a full-sphere panorama is 2:1, a "
            f"horizon band such as CVUSA's wider); if it is a photo with a limited field of view, pass --fov DEG "
            f"(its horizontal field of view; a phone's main camera sees about 65-75) and --heading DEG if known")


def canvas_geometry(input_spec: dict, dataset: str | None) -> tuple:
    """(height, width, vertical field of view in degrees) of the canvas for a model's ground input.

    The model reads a horizon band of ``ground_size`` (H, W): for CVUSA-style training the band has square
    pixels (vertical FoV 360 H / W); for CVACT the band is the middle half of a 180-degree panorama (90)."""
    gh, gw = (int(x) for x in input_spec["ground_size"])
    vfov = 90.0 if str(dataset).lower() == "cvact" else 360.0 * gh / gw
    return gh * CANVAS_SCALE, gw * CANVAS_SCALE, vfov


def _check(fov_deg, projection):
    if projection not in PROJECTIONS:
        raise CVGLError(f"--projection must be one of {', '.join(PROJECTIONS)}, got {projection!r}")
    if not (math.isfinite(fov_deg) and 0 < fov_deg <= 360):
        raise CVGLError(f"--fov must be a horizontal field of view in (0, 360] degrees, got {fov_deg}")
    if projection == "pinhole" and fov_deg >= 170:
        raise CVGLError(f"--fov {fov_deg:g} is too wide for a pinhole camera (< 170 degrees); a wider image is a "
                        "panorama slice: pass --projection equirect")


def _canvas_rays(height: int, width: int, vfov_deg: float, heading_deg: float):
    """Azimuth relative to ``heading`` (degrees, -180..180) and elevation (degrees) of every canvas pixel."""
    bearing = 180.0 + 360.0 * np.arange(width, dtype=np.float64) / width
    rel = (bearing - heading_deg + 180.0) % 360.0 - 180.0
    elev = vfov_deg / 2 - (np.arange(height, dtype=np.float64) + 0.5) * vfov_deg / height
    return np.broadcast_to(rel[None, :], (height, width)), np.broadcast_to(elev[:, None], (height, width))


def _photo_coords(rel, elev, photo_hw, fov_deg, projection):
    """Photo pixel coordinates (x, y; pixel centres at integers) of rays, and where the photo sees them."""
    h, w = photo_hw
    if projection == "equirect":
        k = w / fov_deg  # photo pixels per degree, both axes; the panorama convention (column x looks at
        x = w / 2 + rel * k  # heading + (x - w/2) / k, row y at elevation (h/2 - y - 0.5) / k)
        y = h / 2 - elev * k - 0.5
        front = np.ones_like(rel, dtype=bool)
    else:
        f = (w / 2) / math.tan(math.radians(fov_deg) / 2)
        a, e = np.radians(rel), np.radians(elev)
        front = np.cos(a) > 1e-6
        cos_a = np.where(front, np.cos(a), 1.0)
        x = w / 2 + f * np.tan(np.where(front, a, 0.0)) - 0.5
        y = h / 2 - f * np.tan(e) / cos_a - 0.5
    inside = front & (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)
    if projection == "equirect" and fov_deg >= 360:
        inside = np.ones_like(inside)  # a whole panorama: its last column wraps to the first
    return x.astype(np.float32), y.astype(np.float32), inside


def place_in_canvas(photo: np.ndarray, fov_deg: float, heading_deg: float, canvas_hw, canvas_vfov_deg: float,
                    projection: str = "pinhole"):
    """(canvas uint8 (H, W, 3), seen mask (H, W) bool): ``photo`` (uint8 RGB) with horizontal field of view
    ``fov_deg`` looking at compass bearing ``heading_deg``, in a north-centred canvas; unseen pixels are 0."""
    import cv2

    _check(float(fov_deg), projection)
    H, W = (int(x) for x in canvas_hw)
    h, w = photo.shape[:2]
    # Area-downscale a photo far sharper than the canvas first, so the bilinear remap does not alias.
    canvas_px_per_deg, photo_px_per_deg = W / 360.0, w / float(fov_deg)
    if photo_px_per_deg > 1.5 * canvas_px_per_deg:
        s = canvas_px_per_deg / photo_px_per_deg
        photo = cv2.resize(photo, (max(2, round(w * s)), max(2, round(h * s))), interpolation=cv2.INTER_AREA)
        h, w = photo.shape[:2]
    rel, elev = _canvas_rays(H, W, canvas_vfov_deg, float(heading_deg))
    x, y, inside = _photo_coords(rel, elev, (h, w), float(fov_deg), projection)
    if projection == "equirect" and fov_deg >= 360:
        photo = np.concatenate([photo, photo[:, :1]], axis=1)  # wrap the last column to the first
    canvas = cv2.remap(np.ascontiguousarray(photo), x, y, interpolation=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    canvas[~inside] = 0
    return canvas, inside


def crop_from_panorama(pano: np.ndarray, pano_vfov_deg: float, fov_deg: float, heading_deg: float,
                       photo_hw, projection: str = "pinhole") -> np.ndarray:
    """The photo (uint8, ``photo_hw``) that a camera with horizontal field of view ``fov_deg`` looking at
    ``heading_deg`` takes at the position of north-centred panorama ``pano`` (vertical FoV ``pano_vfov_deg``).
    Where the photo sees beyond the panorama's rows, the nearest row is repeated."""
    import cv2

    _check(float(fov_deg), projection)
    h, w = (int(v) for v in photo_hw)
    ph, pw = pano.shape[:2]
    xs = np.arange(w, dtype=np.float64) + 0.5 - w / 2
    ys = h / 2 - (np.arange(h, dtype=np.float64) + 0.5)
    if projection == "equirect":
        k = w / float(fov_deg)  # the panorama convention (see _photo_coords)
        rel = np.broadcast_to(((xs - 0.5) / k)[None, :], (h, w))
        elev = np.broadcast_to((ys / k)[:, None], (h, w))
    else:
        f = (w / 2) / math.tan(math.radians(fov_deg) / 2)
        X, Y = np.meshgrid(xs, ys)
        rel = np.degrees(np.arctan2(X, f))
        elev = np.degrees(np.arctan2(Y, np.hypot(X, f)))
    bearing = (heading_deg + rel) % 360.0
    col = ((bearing - 180.0) % 360.0) / 360.0 * pw  # column index (samples at integer columns)
    row = (pano_vfov_deg / 2 - elev) / pano_vfov_deg * ph - 0.5
    wide = np.concatenate([pano, pano[:, :1]], axis=1)  # wrap the last column to the first
    return cv2.remap(np.ascontiguousarray(wide), col.astype(np.float32), row.astype(np.float32),
                     interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def headings(n: int) -> list:
    """``n`` candidate compass headings, evenly spaced from north (0, 360/n, ...)."""
    if not 1 <= int(n) <= 360:
        raise CVGLError(f"--headings must be a number of candidate headings in 1..360, got {n}")
    return [360.0 * i / int(n) for i in range(int(n))]
