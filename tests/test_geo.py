"""Geo-referencing (common.geo) and map tiles (common.geo.tiles), on small GeoTIFFs written here.

Oracles: published UTM zones; a WGS 84 <-> UTM round trip; the haversine length of one degree of latitude
(pi R / 180); an orthophoto whose pixels encode their own column and row, so every tile's content says exactly
where it was cut; a raster in degrees with a marker at a known lat/lon, warped to UTM, whose nearest tile
holds the marker at its centre; the synthetic orthophoto, whose tile at a query's true position matches the
aerial image the world renders there (and a tile 30 m off does not).
"""

import csv
import os

import numpy as np
import pytest

from common import geo
from common.errors import CVGLError
from common.geo import tiles as T

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import from_origin  # noqa: E402

UTM18 = "EPSG:32618"


def _write_tif(path, bands, crs, transform, nodata=None):
    bands = np.asarray(bands)
    with rasterio.open(path, "w", driver="GTiff", width=bands.shape[2], height=bands.shape[1], count=bands.shape[0],
                       dtype=bands.dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(bands)
    return str(path)


def _coded(h, w):
    """RGB uint8 whose red = column % 256, green = row % 256, blue = 7."""
    rr, cc = np.mgrid[0:h, 0:w]
    return np.stack([cc % 256, rr % 256, np.full((h, w), 7)]).astype(np.uint8)


def test_zones_round_trip_and_distances():
    assert geo.utm_crs(40.7128, -74.0060).to_epsg() == 32618  # New York
    assert geo.utm_crs(-33.8688, 151.2093).to_epsg() == 32756  # Sydney
    x, y = geo.from_latlon(UTM18, [40.7128], [-74.0060])
    lat, lon = geo.to_latlon(UTM18, x, y)
    assert abs(lat[0] - 40.7128) < 1e-9 and abs(lon[0] + 74.0060) < 1e-9
    assert abs(geo.haversine_m(10.0, 20.0, 11.0, 20.0) - np.pi * geo.EARTH_RADIUS_M / 180) < 1e-6
    assert geo.parse_latlon("40.5,-74.25", "--true-latlon") == (40.5, -74.25)
    for bad in ("40.5", "north,east", "95,0", "0,200"):
        with pytest.raises(CVGLError, match="--true-latlon"):
            geo.parse_latlon(bad, "--true-latlon")


def test_orthophoto_tiles_are_cut_where_they_say(tmp_path):
    res = 0.5  # metres per pixel
    left, top = 583000.0, 4507000.0
    tif = _write_tif(tmp_path / "ortho.tif", _coded(200, 240), UTM18, from_origin(left, top, res, res))
    recs, info = T.orthophoto_tiles(tif, 40.0, 20.0, say=lambda s: None)
    assert info["grid"] == [4, 5] and len(recs) == 20 and info["tile_px"] == 80 and info["crs"] == UTM18
    r = recs[7]  # row 1, column 2: left edge 40 m = 80 px in, top edge 20 m = 40 px down
    assert r.id == "r0001c0002"
    assert r.position == pytest.approx((left + 40 + 20, top - 20 - 20))
    lat, lon = geo.to_latlon(UTM18, [r.position[0]], [r.position[1]])
    assert r.latlon == pytest.approx((lat[0], lon[0]))
    tile = T.read_tile(r.aerial)
    assert tile.shape == (80, 80, 3)
    np.testing.assert_array_equal(tile[..., 0], np.broadcast_to(np.arange(80, 160) % 256, (80, 80)))
    np.testing.assert_array_equal(tile[..., 1], np.broadcast_to((np.arange(40, 120) % 256)[:, None], (80, 80)))
    small = T.read_tile(r.aerial.replace("@80", "@40"))  # resampled (average of 2x2 blocks)
    assert small.shape == (40, 40, 3) and abs(float(small[0, 0, 0]) - 80.5) <= 0.5


def test_orthophoto_in_degrees_is_warped_to_utm(tmp_path):
    """A raster in EPSG:4326 with a white 5x5 px marker at (40.70, -74.00): the tile nearest it holds it."""
    d = 1e-5  # degrees per pixel (about 0.84 x 1.1 m)
    w, h = 400, 300
    lat0, lon0 = 40.7015, -74.0020  # top-left corner
    img = np.full((3, h, w), 60, np.uint8)
    r, c = int(round((lat0 - 40.70) / d)), int(round((-74.00 - lon0) / d))
    img[:, r - 2:r + 3, c - 2:c + 3] = 255
    tif = _write_tif(tmp_path / "wgs.tif", img, "EPSG:4326", from_origin(lon0, lat0, d, d))
    said = []
    recs, info = T.orthophoto_tiles(tif, 40.0, 10.0, tile_px=80, say=said.append)
    assert info["crs"] == UTM18 and "warp to EPSG:32618" in said[0]
    x, y = geo.from_latlon(UTM18, [40.70], [-74.00])
    near = min(recs, key=lambda t: np.hypot(t.position[0] - x[0], t.position[1] - y[0]))
    assert np.hypot(near.position[0] - x[0], near.position[1] - y[0]) < 8
    tile = T.read_tile(near.aerial)
    yy, xx = np.nonzero(tile[..., 0] > 150)
    # the marker sits where its offset from the tile centre says (2 px per metre at 40 m / 80 px)
    ex, ey = 40 + (x[0] - near.position[0]) * 2, 40 - (y[0] - near.position[1]) * 2
    assert abs(xx.mean() - ex) < 2.5 and abs(yy.mean() - ey) < 2.5


def test_nodata_tiles_are_skipped(tmp_path):
    img = _coded(100, 200)
    img[:, :, 100:] = 0
    tif = _write_tif(tmp_path / "half.tif", img, UTM18, from_origin(500000, 4500000, 1, 1), nodata=0)
    said = []
    recs, info = T.orthophoto_tiles(tif, 50.0, 50.0, say=said.append)
    assert info["grid"] == [2, 4] and len(recs) == 4 and info["skipped_tiles"] == 4
    assert all(t.position[0] < 500100 for t in recs) and "skipped 4 of 8" in said[0]


def test_bad_orthophotos_are_refused(tmp_path):
    plain = _write_tif(tmp_path / "plain.tif", _coded(64, 64), None, from_origin(0, 64, 1, 1))
    with pytest.raises(CVGLError, match="not geo-referenced"):
        T.orthophoto_tiles(plain, 20, 10)
    deep = _write_tif(tmp_path / "u16.tif", _coded(64, 64).astype(np.uint16), UTM18, from_origin(5e5, 4e6, 1, 1))
    with pytest.raises(CVGLError, match="8-bit"):
        T.orthophoto_tiles(deep, 20, 10)
    ok = _write_tif(tmp_path / "ok.tif", _coded(64, 64), UTM18, from_origin(5e5, 4e6, 1, 1))
    with pytest.raises(CVGLError, match="less than one 100 m tile"):
        T.orthophoto_tiles(ok, 100, 10)
    with pytest.raises(CVGLError, match="--stride-m must be a positive"):
        T.orthophoto_tiles(ok, 20, 0)
    (tmp_path / "junk.tif").write_bytes(b"not a raster")
    with pytest.raises(CVGLError, match="not a readable raster"):
        T.orthophoto_tiles(str(tmp_path / "junk.tif"), 20, 10)
    with pytest.raises(CVGLError, match="orthophoto not found"):
        T.orthophoto_tiles(str(tmp_path / "none.tif"), 20, 10)


def _tiles(tmp_path, rows, header="path,lat,lon,m_per_px"):
    import cv2

    d = tmp_path / "tiles"
    d.mkdir(exist_ok=True)
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(d / name), np.full((100, 100, 3), 128, np.uint8))
    with open(tmp_path / "tiles.csv", "w", newline="") as fh:
        fh.write(header + "\n")
        csv.writer(fh).writerows(rows)
    return str(d), str(tmp_path / "tiles.csv")


def test_tiles_csv_gives_positions_and_centre_crops(tmp_path):
    d, c = _tiles(tmp_path, [["a.png", "40.70", "-74.00", "0.5"], ["b.png", "40.7005", "-74.00", "0.5"]])
    recs, info = T.read_tiles_csv(d, c, extent_m=30.0, tile_px=64, say=lambda s: None)
    assert [r.id for r in recs] == ["a", "b"] and info["crs"] == UTM18
    assert np.hypot(*(np.subtract(recs[1].position, recs[0].position))) == pytest.approx(55.5, abs=0.5)
    assert recs[0].aerial.endswith("#cvgl:centre:60@64")  # 30 m at 0.5 m/px = 60 px, resampled to 64
    assert T.read_tile(recs[0].aerial).shape == (64, 64, 3)
    plain, _ = T.read_tiles_csv(d, c, say=lambda s: None)  # no model tile size: the files as they are
    assert plain[0].aerial == os.path.join(d, "a.png")


@pytest.mark.parametrize("rows,header,match", [
    ([["a.png", "40.7", "-74"]], "path,latitude,lon", "header must name path, lat, lon"),
    ([["a.png", "40.7", "-74", "x"]], "path,lat,lon,m_per_px", "must be numbers"),
    ([["a.png", "140.7", "-74", "1"]], "path,lat,lon,m_per_px", "out of range"),
    ([["a.png", "40.7", "-74", "-1"]], "path,lat,lon,m_per_px", "m_per_px must be a positive"),
    ([["../a.png", "40.7", "-74", "1"]], "path,lat,lon,m_per_px", "leaves the dataset root"),
    ([["c.png", "40.7", "-74", "1"]], "path,lat,lon,m_per_px", "missing.*--allow-missing"),
    ([["a.png", "40.7", "-74", "1"], ["a.png", "40.8", "-74", "1"]], "path,lat,lon,m_per_px", "ids repeat"),
    ([], "path,lat,lon", "lists no tiles"),
])
def test_bad_tiles_csv_is_refused(tmp_path, rows, header, match):
    d, c = _tiles(tmp_path, rows, header)
    with pytest.raises(CVGLError, match=match):
        T.read_tiles_csv(d, c, say=lambda s: None)


def test_synthetic_orthophoto_is_geo_referenced(tmp_path):
    import cv2

    from common.synthetic.layouts import render_pair
    from common.synthetic.orthophoto import QUERY_KEY, _frames, read_queries, write_orthophoto
    from common.synthetic.world import City

    m = write_orthophoto(tmp_path / "map", 11, extent_m=320, aerial_size=128, n_queries=3, pano_size=(16, 88),
                         progress=False)
    root = str(tmp_path / "map")
    with rasterio.open(os.path.join(root, "orthophoto.tif")) as src:
        assert src.crs.to_epsg() == 32600 + m["utm_zone"] and src.count == 3 and src.res == (150 / 128, 150 / 128)
        left, bottom, right, top = src.bounds
    queries = read_queries(root)
    assert len(queries) == 3
    city, tif = City(11), os.path.join(root, "orthophoto.tif")
    to_uv = _frames(city)

    def corr(a, b):
        a, b = (cv2.GaussianBlur(x.astype(np.float32).mean(2), (0, 0), 2) for x in (a, b))
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))

    for i, q in enumerate(queries):
        lat, lon = geo.to_latlon(m["crs"], [q["easting"]], [q["northing"]])
        assert (q["lat"], q["lon"]) == pytest.approx((lat[0], lon[0]), abs=1e-7)
        assert left + 75 <= q["easting"] <= right - 75 and bottom + 75 <= q["northing"] <= top - 75
        u, v = to_uv(q["easting"], q["northing"])
        aerial = render_pair(city, (float(u), float(v)), QUERY_KEY + i, 128, (16, 88), 65.45)[0]
        e, n = q["easting"], q["northing"]
        at = T.read_tile(f"{tif}{T.TAG}native:{e - 75},{n - 75},{e + 75},{n + 75}@128")
        off = T.read_tile(f"{tif}{T.TAG}native:{e - 45},{n - 75},{e + 105},{n + 75}@128")
        assert corr(aerial, at) > 0.8 and corr(aerial, off) < 0.5, (corr(aerial, at), corr(aerial, off))
    again = write_orthophoto(tmp_path / "map", 11, extent_m=320, aerial_size=128, n_queries=3, pano_size=(16, 88),
                             progress=False)
    assert again == m  # the same arguments: reused
    with pytest.raises(CVGLError, match="other arguments"):
        write_orthophoto(tmp_path / "map", 12, extent_m=320, aerial_size=128, n_queries=3, pano_size=(16, 88))
