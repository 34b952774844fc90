"""One synthetic city as a geo-referenced orthophoto plus street-level panoramas at known lat/lon: the map
path of localisation (orthophoto -> index -> panorama -> lat/lon) end to end, with the truth known.

    write_orthophoto(out, seed, extent_m=600, aerial_size=128, n_queries=50, pano_size=(32, 176)) -> dict

writes into ``out``::

    orthophoto.tif    GeoTIFF, 8-bit RGB, north-up, WGS 84 / UTM (zone chosen by the seed), deflate; the city's
                      world coordinates (:meth:`common.synthetic.world.City.to_world`) are its UTM metres
    queries/<id>.jpg  north-aligned panoramas (the CVUSA layout's rendering) at locations on the roads inside
                      the orthophoto, at least half a tile from its edge
    queries.csv       id,path,lat,lon,easting,northing of every query
    orthophoto.json   the arguments, CRS, bounds, metres per pixel

The orthophoto has the resolution of the world's aerial tiles (``AERIAL_EXTENT_M / aerial_size`` m/px) and is
rendered once, as one large aerial image: the same scene, but its own sun, cars and sensor nuisances, as a real
orthophoto differs from the tiles a model was trained on. Query locations are new draws (their own random
stream), so none is a location of the world's training pairs, though they lie in the same city.

The lat/lon here come from the UTM projection (PROJ); the ``coordinates.csv`` of the CVUSA layout uses a local
equirectangular approximation of its own, so the two are not comparable.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os

import numpy as np

from common.errors import CVGLError
from common.synthetic import render as Rd
from common.synthetic.layouts import AERIAL_EXTENT_M, atomic_write, encode_jpeg, render_pair
from common.synthetic.world import City
from common.synthetic.world import keyed_rng as _rng

MANIFEST = "orthophoto.json"
FORMAT_VERSION = 1
QUERY_KEY = 0x0E7A0000  # pair keys of the queries: far from any split's pair index


def utm_zone(seed: int) -> int:
    """The UTM zone (northern hemisphere) of a synthetic city: 10..18, the contiguous United States."""
    return 10 + int(seed) % 9


def _frames(city: City):
    c, s = math.cos(city.theta), math.sin(city.theta)
    e0, n0 = city.origin()

    def to_uv(e, n):
        de, dn = np.asarray(e) - e0, np.asarray(n) - n0
        return c * de + s * dn, -s * de + c * dn

    return to_uv


def query_locations(city: City, centre_en, half_m: float, n: int, rng) -> np.ndarray:
    """``n`` (easting, northing) on the city's road lanes within ``half_m`` of ``centre_en`` (a square)."""
    to_uv = _frames(city)
    lanes = city.style.road_width / 4
    uc, vc = to_uv(*centre_en)
    reach = half_m * math.sqrt(2)
    ru = city.road_u[np.abs(city.road_u - uc) < reach]
    rv = city.road_v[np.abs(city.road_v - vc) < reach]
    out = []
    for _ in range(200 * n):
        if len(out) == n:
            break
        if rng.random() < len(ru) / max(1, len(ru) + len(rv)):
            u, v = ru[int(rng.integers(len(ru)))] + rng.choice([-lanes, lanes]), vc + rng.uniform(-reach, reach)
        else:
            u, v = uc + rng.uniform(-reach, reach), rv[int(rng.integers(len(rv)))] + rng.choice([-lanes, lanes])
        e, nn = city.to_world(u, v)
        if abs(float(e) - centre_en[0]) <= half_m and abs(float(nn) - centre_en[1]) <= half_m:
            out.append((float(e), float(nn)))
    if len(out) < n:
        raise CVGLError(f"found only {len(out)} road locations for {n} queries; enlarge --extent-m")
    return np.asarray(out)


def write_orthophoto(out, seed: int, extent_m: float = 600.0, aerial_size: int = 128, n_queries: int = 50,
                     pano_size=(32, 176), vfov_deg=None, margin_m: float = AERIAL_EXTENT_M / 2,
                     progress: bool = True) -> dict:
    """Write the orthophoto, its queries and their truth (module docstring); returns the manifest dict."""
    from tqdm import tqdm

    from common.files import atomic_path, write_text
    from common.geo import crs, rasterio_or_fail, to_latlon

    rasterio = rasterio_or_fail()
    from rasterio.transform import from_origin

    extent_m, aerial_size, n_queries = float(extent_m), int(aerial_size), int(n_queries)
    if not (math.isfinite(extent_m) and 2 * margin_m + 10 <= extent_m <= 20000):
        raise CVGLError(f"--extent-m must be in {2 * margin_m + 10:g}..20000 metres (a tile of {2 * margin_m:g} m "
                        f"must fit inside with room for queries), got {extent_m:g}")
    if not 16 <= aerial_size <= 4096 or n_queries < 1 or n_queries > 100_000:
        raise CVGLError(f"aerial size must be 16..4096 px and queries 1..100000 (got {aerial_size}, {n_queries})")
    pano_size = tuple(int(x) for x in pano_size)
    vfov = float(vfov_deg if vfov_deg is not None else 360.0 * pano_size[0] / pano_size[1])
    out = os.path.abspath(os.fspath(out))
    args = {"format": FORMAT_VERSION, "seed": int(seed), "extent_m": extent_m, "aerial_size": aerial_size,
            "n_queries": n_queries, "pano_size": list(pano_size), "vfov_deg": vfov, "margin_m": float(margin_m)}
    manifest_path = os.path.join(out, MANIFEST)
    if os.path.isfile(manifest_path):
        with open(manifest_path) as fh:
            manifest = json.load(fh)
        if manifest.get("arguments") == args:
            return manifest
        raise CVGLError(f"{out} holds an orthophoto made with other arguments ({manifest_path}); use a new --out")
    if os.path.isdir(out) and any(not n.startswith(".") for n in os.listdir(out)):
        raise CVGLError(f"{out} exists and is not empty; use a new --out folder")
    os.makedirs(os.path.join(out, "queries"), exist_ok=True)

    city = City(int(seed))
    res = AERIAL_EXTENT_M / aerial_size
    size = int(round(extent_m / res))
    e_c, n_c = city.origin()  # the orthophoto is centred on the city's origin (u, v) = (0, 0)
    zone = utm_zone(seed)
    utm = crs(f"EPSG:{32600 + zone}")

    # the orthophoto: one large north-up aerial image of the scene
    n = int(math.ceil(size * math.sqrt(2) / 2)) * 2 + 4
    rng = _rng(city.seed, 0x0A7F)
    scene = city.scene(0.0, 0.0, n / 2 * res + 5)
    R = Rd.rasterize(scene, city.style, 0.0, 0.0, n, res, seed=city.seed)
    sun = Rd.sun_vector(city.style.theta, city.style.aerial_sun_azimuth, city.style.aerial_sun_elevation)
    cars = int(round(6 * (extent_m / AERIAL_EXTENT_M) ** 2))
    image = Rd.nuisance(Rd.render_aerial(R, scene, city.style, size, sun, rng, cars=cars), rng)  # -> uint8
    left, top = e_c - size / 2 * res, n_c + size / 2 * res
    transform = from_origin(left, top, res, res)
    tif = os.path.join(out, "orthophoto.tif")
    with atomic_path(tif, tmp=f"{tif}.tmp{os.getpid()}.tif") as tmp:
        with rasterio.open(tmp, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs=utm,
                           transform=transform, compress="deflate", tiled=True, blockxsize=256,
                           blockysize=256) as dst:
            dst.write(np.transpose(image, (2, 0, 1)))

    # the queries: panoramas at new road locations, at least margin_m inside the edges
    where = query_locations(city, (e_c, n_c), extent_m / 2 - margin_m, n_queries, _rng(city.seed, 0x0A80))
    lat, lon = to_latlon(utm, where[:, 0], where[:, 1])
    to_uv = _frames(city)
    rows = []
    for i in tqdm(range(n_queries), desc="rendering query panoramas", unit="pano", disable=not progress):
        qid = f"q{i + 1:05d}"
        u, v = to_uv(where[i, 0], where[i, 1])
        _, pano, _, qg = render_pair(city, (float(u), float(v)), QUERY_KEY + i, aerial_size, pano_size, vfov)
        rel = f"queries/{qid}.jpg"
        atomic_write(os.path.join(out, rel), encode_jpeg(pano, qg))
        rows.append([qid, rel, f"{lat[i]:.8f}", f"{lon[i]:.8f}", f"{where[i, 0]:.3f}", f"{where[i, 1]:.3f}"])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "path", "lat", "lon", "easting", "northing"])
    w.writerows(rows)
    write_text(os.path.join(out, "queries.csv"), buf.getvalue())
    clat, clon = to_latlon(utm, [e_c], [n_c])
    manifest = {"arguments": args, "crs": utm.to_string(), "utm_zone": zone, "metres_per_pixel": res,
                "size_px": size, "bounds": [left, top - size * res, left + size * res, top],
                "centre_latlon": [float(clat[0]), float(clon[0])], "queries": n_queries,
                "orthophoto": "orthophoto.tif", "queries_csv": "queries.csv",
                "street_grid_deg": math.degrees(city.theta)}
    from common.files import to_json

    write_text(manifest_path, to_json(manifest, indent=2) + "\n")
    return manifest


def read_queries(root: str) -> list:
    """The queries of an orthophoto folder: dicts id, path (absolute), lat, lon, easting, northing."""
    path = os.path.join(root, "queries.csv")
    if not os.path.isfile(path):
        raise CVGLError(f"{root} has no queries.csv (write one with python -m experiments.synth --orthophoto)")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [{"id": r["id"], "path": os.path.join(root, r["path"]), "lat": float(r["lat"]), "lon": float(r["lon"]),
             "easting": float(r["easting"]), "northing": float(r["northing"])} for r in rows]
