"""Geo-referencing: latitude/longitude and metric map coordinates, for localisation on a real map.

* :func:`utm_crs` (the UTM zone of a point), :func:`to_latlon` / :func:`from_latlon` (any CRS <-> WGS 84
  through PROJ, as bundled with rasterio), :func:`haversine_m` (great-circle metres).
* :mod:`common.geo.tiles`: geo-referenced aerial tiles from a CSV (``path, lat, lon[, m_per_px]``) and north-up
  tiles cut from a GeoTIFF orthophoto, as records an index can be built from.

rasterio (and with it GDAL/PROJ) is imported only here, when a map is used.
"""

from __future__ import annotations

import math

import numpy as np

from common.errors import CVGLError

EARTH_RADIUS_M = 6371008.8  # mean Earth radius (IUGG)
WGS84 = "EPSG:4326"


def rasterio_or_fail():
    try:
        import rasterio  # noqa: F401
    except ImportError:
        raise CVGLError("map localisation needs rasterio (it reads GeoTIFFs and converts coordinates): "
                        "pip install rasterio (pinned in requirements.txt)") from None
    return rasterio


def crs(value):
    """A rasterio CRS from ``"EPSG:32614"``, a WKT string or a CRS; CVGLError when it is not one."""
    rasterio_or_fail()
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    if isinstance(value, CRS):
        return value
    try:
        return CRS.from_user_input(value)
    except CRSError as exc:
        raise CVGLError(f"not a coordinate reference system: {value!r} ({exc})") from None


def check_latlon(lat, lon, where: str) -> None:
    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    bad = ~(np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180))
    if bad.any():
        i = int(np.nonzero(bad.ravel())[0][0])
        raise CVGLError(f"{where}: latitude/longitude out of range ({lat.ravel()[i]}, {lon.ravel()[i]}); "
                        "latitude must be in [-90, 90] and longitude in [-180, 180] degrees (WGS 84)")


def utm_crs(lat: float, lon: float):
    """The WGS 84 UTM zone CRS (EPSG 326zz north, 327zz south) containing (lat, lon)."""
    check_latlon(lat, lon, "UTM zone")
    zone = min(60, int((float(lon) + 180.0) // 6.0) + 1)
    return crs(f"EPSG:{(32600 if lat >= 0 else 32700) + zone}")


def to_latlon(src_crs, x, y):
    """(lat, lon) arrays in degrees of points (x, y) in ``src_crs``."""
    from rasterio.warp import transform

    x, y = np.atleast_1d(np.asarray(x, np.float64)), np.atleast_1d(np.asarray(y, np.float64))
    lon, lat = transform(crs(src_crs), crs(WGS84), x.tolist(), y.tolist())
    return np.asarray(lat), np.asarray(lon)


def from_latlon(dst_crs, lat, lon):
    """(x, y) arrays of points (lat, lon) in degrees, in ``dst_crs``."""
    from rasterio.warp import transform

    lat, lon = np.atleast_1d(np.asarray(lat, np.float64)), np.atleast_1d(np.asarray(lon, np.float64))
    x, y = transform(crs(WGS84), crs(dst_crs), lon.tolist(), lat.tolist())
    return np.asarray(x), np.asarray(y)


def haversine_m(lat1, lon1, lat2, lon2):
    """Great-circle distance in metres between points given in degrees (broadcasting)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def parse_latlon(text: str, flag: str):
    """(lat, lon) from ``"LAT,LON"``; CVGLError naming ``flag`` otherwise."""
    try:
        lat, lon = (float(v) for v in str(text).split(","))
    except ValueError:
        raise CVGLError(f"{flag} must be LAT,LON in degrees (e.g. 40.7128,-74.0060), got {text!r}") from None
    check_latlon(lat, lon, flag)
    if not (math.isfinite(lat) and math.isfinite(lon)):
        raise CVGLError(f"{flag} must be finite, got {text!r}")
    return lat, lon
