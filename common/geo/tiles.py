"""Geo-referenced aerial tiles for an index: from a folder + CSV, or cut from a GeoTIFF orthophoto.

Both give :class:`TileRecord` s (id, aerial reference, position in metres in the index's CRS, lat/lon) that
:func:`common.serving.index.build_index` embeds like a dataset split; :func:`read_tile` reads any reference.

**Tiles CSV** (``index build --tiles DIR --tiles-csv CSV``): a header row with ``path,lat,lon`` and optionally
``m_per_px`` and ``id`` (any order; other columns are refused, so a typo is not ignored). ``path`` is relative to
DIR and must stay inside it. With ``m_per_px`` and a known model tile (``extent_m`` metres), each tile is
centre-cropped to the ground the model's tiles cover; a tile covering less is used whole, and counted.

**Orthophoto** (``index build --orthophoto FILE.tif --tile-m M --stride-m S``): a geo-referenced raster (any
GDAL format; uint8, 1 band grey or 3/4 bands RGB[A]) is cut into square north-up tiles of M metres every S
metres. A raster in a projected CRS with a north-up transform is read as it is; one in geographic
coordinates (degrees), rotated or south-up is warped on the fly (GDAL warped VRT, bilinear) to the UTM zone of
its centre. Each tile is resampled (average when shrinking, bilinear otherwise) to ``tile_px`` pixels. Tiles
with less than half their area valid (the raster's nodata / alpha mask) are skipped and counted.

A tile reference is ``<file>#cvgl:<EPSG or "native">:<x0>,<y0>,<x1>,<y1>@<px>`` (orthophoto window in the
working CRS) or ``<file>#cvgl:centre:<side px>@<px>`` (a CSV tile's centre crop), a plain path otherwise.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from typing import Optional

import numpy as np

from common.errors import CVGLError
from common.geo import check_latlon, crs, from_latlon, rasterio_or_fail, to_latlon, utm_crs

TAG = "#cvgl:"
CSV_COLUMNS = {"path", "lat", "lon", "m_per_px", "id"}
MIN_VALID = 0.5
MAX_TILES = 20_000_000
MAX_TILE_PX = 2048


@dataclasses.dataclass(frozen=True)
class TileRecord:
    id: str
    aerial: str  # a file, or a tile reference (see the module docstring)
    position: tuple  # (x, y) in the index CRS's units (metres for UTM)
    latlon: tuple  # (lat, lon) degrees, WGS 84


# ------------------------------------------------------------------------------------------------ reading
_OPEN = {}


def _dataset(path: str, working: str):
    """The open raster (or its warped view) of ``path`` in the ``working`` CRS ("native" = as stored)."""
    key = (path, working)
    if key not in _OPEN:
        rasterio = rasterio_or_fail()
        try:
            src = rasterio.open(path)
        except Exception as exc:  # noqa: BLE001 - rasterio raises RasterioIOError and GDAL errors
            raise CVGLError(f"orthophoto {path} is not a readable raster ({exc}); give a GeoTIFF") from None
        if working == "native":
            _OPEN[key] = src
        else:
            from rasterio.enums import Resampling
            from rasterio.vrt import WarpedVRT

            _OPEN[key] = WarpedVRT(src, crs=crs(working), resampling=Resampling.bilinear)
    return _OPEN[key]


def _rgb(data: np.ndarray) -> np.ndarray:
    """(bands, h, w) uint8 -> (h, w, 3) RGB: grey is repeated, an alpha band dropped."""
    if data.shape[0] == 1:
        data = np.repeat(data, 3, axis=0)
    return np.ascontiguousarray(np.transpose(data[:3], (1, 2, 0)))


def read_tile(ref: str) -> np.ndarray:
    """uint8 (H, W, 3) RGB of a tile reference or plain image path."""
    from common.data.images import read_rgb

    if TAG not in ref:
        return read_rgb(ref, "aerial image")
    path, spec = ref.rsplit(TAG, 1)
    body, px = spec.rsplit("@", 1)
    px = int(px)
    if body.startswith("centre:"):
        import cv2

        img = read_rgb(path, "aerial tile")
        side = min(int(body.split(":", 1)[1]), *img.shape[:2])
        top, left = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
        img = img[top:top + side, left:left + side]
        if px and px != side:
            img = cv2.resize(img, (px, px), interpolation=cv2.INTER_AREA if px < side else cv2.INTER_LINEAR)
        return np.ascontiguousarray(img)
    from rasterio.enums import Resampling
    from rasterio.windows import from_bounds

    working, box = body.rsplit(":", 1)
    x0, y0, x1, y1 = (float(v) for v in box.split(","))
    ds = _dataset(path, working)
    window = from_bounds(x0, y0, x1, y1, transform=ds.transform)
    shrink = window.width > px
    data = ds.read(indexes=list(range(1, min(ds.count, 3) + 1)), window=window, out_shape=(min(ds.count, 3), px, px),
                   resampling=Resampling.average if shrink else Resampling.bilinear)
    return _rgb(data)


# ------------------------------------------------------------------------------------------------ CSV
def read_tiles_csv(tiles_dir: str, csv_path: str, extent_m: Optional[float] = None, tile_px: Optional[int] = None,
                   allow_missing: bool = False, say=print):
    """(records, info) of a tiles folder and its CSV (module docstring)."""
    from common.data.readers import inside_root

    if not os.path.isdir(tiles_dir):
        raise CVGLError(f"tiles folder not found: {tiles_dir} (--tiles)")
    if not os.path.isfile(csv_path):
        raise CVGLError(f"tiles CSV not found: {csv_path} (--tiles-csv; columns path,lat,lon[,m_per_px])")
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        unknown = [c for c in cols if c not in CSV_COLUMNS]
        if not {"path", "lat", "lon"} <= set(cols) or unknown:
            raise CVGLError(f"{csv_path}: header must name path, lat, lon and optionally m_per_px, id; got "
                            f"{', '.join(cols) or 'nothing'}" + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
        rows = [{k.strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    if not rows:
        raise CVGLError(f"{csv_path} lists no tiles")
    paths, lats, lons, mpps, ids = [], [], [], [], []
    for n, r in enumerate(rows, start=2):
        where = f"{csv_path} line {n}"
        try:
            lat, lon = float(r["lat"]), float(r["lon"])
            mpp = float(r["m_per_px"]) if r.get("m_per_px") else None
        except ValueError:
            raise CVGLError(f"{where}: lat, lon and m_per_px must be numbers, got {r}") from None
        check_latlon(lat, lon, where)
        if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
            raise CVGLError(f"{where}: m_per_px must be a positive number of metres, got {r['m_per_px']}")
        paths.append(inside_root(tiles_dir, r["path"], where))
        lats.append(lat), lons.append(lon), mpps.append(mpp)
        ids.append(r.get("id") or os.path.splitext(r["path"])[0].replace(os.sep, "/"))
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise CVGLError(f"{csv_path}: tile ids repeat ({', '.join(dup)}); give an id column or unique paths")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        if not allow_missing:
            raise CVGLError(f"{len(missing)} of {len(paths)} tiles listed in {csv_path} are missing (first: "
                            f"{missing[0]}); fix the CSV or pass --allow-missing to drop them")
        say(f"dropped {len(missing)} missing tiles (first: {missing[0]})")
    index_crs = utm_crs(float(np.median(lats)), float(np.median(lons)))
    xs, ys = from_latlon(index_crs, lats, lons)
    records, short = [], 0
    for i, p in enumerate(paths):
        if p in missing:
            continue
        ref = p
        if extent_m and mpps[i]:
            side = int(round(extent_m / mpps[i]))
            from common.data.images import read_rgb

            h, w = read_rgb(p, "aerial tile").shape[:2]
            short += min(h, w) < 0.95 * side
            ref = f"{p}{TAG}centre:{side}@{int(tile_px or 0) or min(side, h, w)}"
        records.append(TileRecord(ids[i], ref, (float(xs[i]), float(ys[i])), (lats[i], lons[i])))
    if short:
        say(f"{short} tiles cover less ground than the model's {extent_m:g} m tiles; they are used whole (expect "
            "weaker matches there)")
    if extent_m and not any(mpps):
        say("the CSV has no m_per_px column: tiles are used as they are; they should cover the model's "
            f"{extent_m:g} m")
    return records, {"source": "tiles", "tiles": os.path.abspath(tiles_dir), "tiles_csv": os.path.abspath(csv_path),
                     "crs": index_crs.to_string()}


# ------------------------------------------------------------------------------------------------ orthophoto
def _north_up(transform) -> bool:
    return transform.b == 0 and transform.d == 0 and transform.a > 0 and transform.e < 0


def orthophoto_tiles(path: str, tile_m: float, stride_m: float, tile_px: Optional[int] = None, say=print):
    """(records, info): north-up tiles of ``tile_m`` metres every ``stride_m`` metres of a geo-referenced raster."""
    rasterio_or_fail()
    if not os.path.isfile(path):
        raise CVGLError(f"orthophoto not found: {path} (--orthophoto)")
    for flag, v in (("--tile-m", tile_m), ("--stride-m", stride_m)):
        if not (v is not None and math.isfinite(v) and v > 0):
            raise CVGLError(f"{flag} must be a positive number of metres, got {v}")
    path = os.path.abspath(path)
    src = _dataset(path, "native")
    if src.crs is None:
        raise CVGLError(f"orthophoto {path} has no coordinate reference system (it is not geo-referenced); add "
                        "one (e.g. gdal_edit.py -a_srs EPSG:... -a_ullr ...) or give tiles with --tiles-csv")
    if src.dtypes[0] != "uint8":
        raise CVGLError(f"orthophoto {path} holds {src.dtypes[0]} pixels; convert it to 8-bit RGB first (e.g. "
                        "gdal_translate -ot Byte -scale)")
    if src.count not in (1, 3, 4):
        raise CVGLError(f"orthophoto {path} has {src.count} bands; give a grey (1), RGB (3) or RGBA (4) raster")
    if src.crs.is_projected and _north_up(src.transform):
        working = "native"
        ds = src
    else:
        cx, cy = src.xy(src.height / 2, src.width / 2)
        lat, lon = to_latlon(src.crs, [cx], [cy])
        target = utm_crs(float(lat[0]), float(lon[0]))
        working = target.to_string()
        ds = _dataset(path, working)
        say(f"orthophoto {os.path.basename(path)} is in {src.crs.to_string()}"
            f"{'' if _north_up(src.transform) else ', not north-up'}: read through a warp to {working}")
    unit = ds.crs.linear_units_factor[1] if ds.crs.is_projected else 1.0  # metres per CRS unit
    left, bottom, right, top = ds.bounds
    tile_u, stride_u = tile_m / unit, stride_m / unit
    if right - left < tile_u or top - bottom < tile_u:
        raise CVGLError(f"orthophoto {path} covers {(right - left) * unit:.0f} x {(top - bottom) * unit:.0f} m, "
                        f"less than one {tile_m:g} m tile; lower --tile-m")
    nx = int((right - left - tile_u) // stride_u) + 1
    ny = int((top - bottom - tile_u) // stride_u) + 1
    if nx * ny > MAX_TILES:
        raise CVGLError(f"--stride-m {stride_m:g} gives {nx * ny:,} tiles (more than {MAX_TILES:,}); raise it")
    native_m = abs(ds.transform.a) * unit
    px = int(tile_px) if tile_px else int(min(MAX_TILE_PX, max(16, round(tile_m / native_m))))
    # valid area: the raster's mask at a quarter-stride grid
    cell = stride_u / 4
    mh, mw = max(1, math.ceil((top - bottom) / cell)), max(1, math.ceil((right - left) / cell))
    mask = ds.dataset_mask(out_shape=(min(mh, 8192), min(mw, 8192))) > 0
    my, mx = mask.shape[0] / (top - bottom), mask.shape[1] / (right - left)
    records, xs, ys, skipped = [], [], [], 0
    for r in range(ny):
        for c in range(nx):
            x0, y1 = left + c * stride_u, top - r * stride_u
            x1, y0 = x0 + tile_u, y1 - tile_u
            m = mask[int((top - y1) * my):max(int((top - y0) * my), int((top - y1) * my) + 1),
                     int((x0 - left) * mx):max(int((x1 - left) * mx), int((x0 - left) * mx) + 1)]
            if m.mean() < MIN_VALID:
                skipped += 1
                continue
            ref = f"{path}{TAG}{working}:{x0:.4f},{y0:.4f},{x1:.4f},{y1:.4f}@{px}"
            records.append((f"r{r:04d}c{c:04d}", ref))
            xs.append((x0 + x1) / 2), ys.append((y0 + y1) / 2)
    if not records:
        raise CVGLError(f"orthophoto {path}: every tile is mostly nodata; check the raster's mask")
    if skipped:
        say(f"skipped {skipped} of {nx * ny} tiles with less than {MIN_VALID:.0%} valid pixels")
    lat, lon = to_latlon(ds.crs, xs, ys)
    out = [TileRecord(i, ref, (float(x), float(y)), (float(a), float(b)))
           for (i, ref), x, y, a, b in zip(records, xs, ys, lat, lon)]
    info = {"source": "orthophoto", "orthophoto": path, "crs": ds.crs.to_string(), "tile_m": float(tile_m),
            "stride_m": float(stride_m), "tile_px": px, "grid": [ny, nx], "native_m_per_px": native_m,
            "skipped_tiles": skipped}
    return out, info
