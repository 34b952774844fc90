"""Writing a synthetic world in the exact on-disk layouts of CVUSA and CVACT.

:func:`write_world` samples the locations of one city (the seed selects style and map), renders every pair
(:func:`render_pair`) in parallel worker processes, writes JPEGs atomically (temp name + rename; an
interrupted run resumes and skips finished pairs), then the index files and a contact sheet:

CVUSA (Zhai et al. CVPR 2017, the subset of Hu et al. CVPR 2018)::

    bingmap/19/<id>.jpg  streetview/panos/<id>.jpg
    splits/train-19zl.csv  splits/val-19zl.csv   no header: bingmap/19/<id>.jpg,streetview/panos/<id>.jpg,
                                                 streetview/annotations/<id>.png (annotations not written)
    coordinates.csv                              id,lat,lon,easting,northing

CVACT (Liu & Li, CVPR 2019)::

    ANU_data_small/{streetview/<id>_grdView.jpg, satview_polish/<id>_satView_polish.jpg}   train + val
    ANU_data_test/ (same layout)                                                              val + test
    ACT_data.mat   panoIds (N strings), utm (N x 2 metres), trainSet.trainInd, valSet.valInd,
                   valSetAll.valInd (1-based int32 column vectors; valSetAll = val + test, as the real file)

Every pair depends only on (seed, its index, sizes, options), so the files are byte-identical for any
number of workers. ``synth.json`` records the arguments; writing into a folder made with other arguments
is refused.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import math
import os

import cv2
import numpy as np

from common.errors import CVGLError
from common.synthetic import render as Rd
from common.synthetic.world import City
from common.synthetic.world import keyed_rng as _rng

LAYOUTS = {
    # aerial size (px), panorama (H, W), vertical field of view (None: square pixels, 360 H / W)
    "cvusa": {"aerial": 750, "pano": (224, 1232), "vfov": None},
    "cvact": {"aerial": 1200, "pano": (832, 1664), "vfov": 180.0},
}
AERIAL_EXTENT_M = 150.0  # ground width of one aerial image (CVUSA-like 0.2 m/px at 750 px)
MANIFEST = "synth.json"
FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------------- one pair
def render_pair(city: City, uv, pair_key: int, aerial_size: int, pano_size, vfov_deg: float,
                heading_noise_deg: float = 0.0, extent_m: float = AERIAL_EXTENT_M):
    """Render one location. Returns (aerial uint8 RGB, panorama uint8 RGB, aerial JPEG q, pano JPEG q)."""
    style = city.style
    rng = _rng(city.seed, 0x9A1F, pair_key)
    res = extent_m / aerial_size
    n = int(math.ceil(aerial_size * math.sqrt(2) / 2)) * 2 + 4
    u0, v0 = float(uv[0]), float(uv[1])
    scene = city.scene(u0, v0, n / 2 * res + 5)
    R = Rd.rasterize(scene, style, u0, v0, n, res, seed=city.seed)
    a_sun = Rd.sun_vector(style.theta, style.aerial_sun_azimuth + rng.normal(0, 8),
                          float(np.clip(style.aerial_sun_elevation + rng.normal(0, 4), 20, 80)))
    aerial = Rd.render_aerial(R, scene, style, aerial_size, a_sun, rng, cars=int(rng.integers(2, 9)))
    g_sun = Rd.sun_vector(style.theta, rng.uniform(0, 360), rng.uniform(20, 70))
    ph, pw = pano_size
    pano = Rd.render_panorama(R, scene, style, ph, pw, vfov_deg, g_sun, rng, cars=int(rng.integers(1, 7)))
    if heading_noise_deg:
        # own random stream: the heading error leaves everything else of the pair unchanged
        shift = int(round(_rng(city.seed, 0x4EAD, pair_key).normal(0, heading_noise_deg) * pw / 360.0))
        pano = np.roll(pano, shift, axis=1)
    aerial = Rd.nuisance(aerial, rng)
    pano = Rd.nuisance(pano, rng)
    return aerial, pano, int(rng.integers(75, 96)), int(rng.integers(70, 96))


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise CVGLError("JPEG encoding failed (OpenCV); check the opencv installation")
    return buf.tobytes()


def atomic_write(path: str, data: bytes) -> None:
    """``path`` written whole or not at all (``X.jpg.tmpPID`` meanwhile: the name synth's resume removes)."""
    from common.files import write_bytes

    write_bytes(path, data, tmp=f"{path}.tmp{os.getpid()}")


# ------------------------------------------------------------------------------------------- plan
def cvact_id(seed: int, index: int) -> str:
    """A 22-character panorama id like CVACT's (URL-safe base64), deterministic in (seed, index)."""
    digest = hashlib.blake2b(f"cvgl-synth:{seed}:{index}".encode(), digest_size=16).digest()
    return base64.urlsafe_b64encode(digest).decode()[:22]


def pair_files(layout: str, pid: str, split: str):
    """Relative (aerial path(s), ground path(s)) of one pair."""
    if layout == "cvusa":
        return [f"bingmap/19/{pid}.jpg"], [f"streetview/panos/{pid}.jpg"]
    parts = {"train": ["ANU_data_small"], "val": ["ANU_data_small", "ANU_data_test"],
             "test": ["ANU_data_test"]}
    parts = parts[split]
    return ([f"{p}/satview_polish/{pid}_satView_polish.jpg" for p in parts],
            [f"{p}/streetview/{pid}_grdView.jpg" for p in parts])


class Plan:
    """The deterministic list of pairs of one world: ids, splits, city-frame and world coordinates."""

    def __init__(self, layout, seed, n_train, n_val, n_test, near_fraction):
        self.layout, self.seed = layout, int(seed)
        self.n = n_train + n_val + n_test
        self.city = City(self.seed)
        self.uv = self.city.sample_locations(self.n, near_fraction=near_fraction)
        east, north = self.city.to_world(self.uv[:, 0], self.uv[:, 1])
        self.utm = np.stack([east, north], axis=1)
        perm = _rng(self.seed, 0x5B17, self.n).permutation(self.n)
        self.split = np.empty(self.n, dtype=object)
        self.split[perm[:n_train]] = "train"
        self.split[perm[n_train:n_train + n_val]] = "val"
        self.split[perm[n_train + n_val:]] = "test"
        if layout == "cvusa":
            self.ids = [f"{i + 1:07d}" for i in range(self.n)]
        else:
            self.ids = [cvact_id(self.seed, i) for i in range(self.n)]

    def files(self, i):
        return pair_files(self.layout, self.ids[i], self.split[i])


# ------------------------------------------------------------------------------------------- workers
_STATE = {}


def _init_worker(plan_args, opts):
    _STATE["plan"] = Plan(*plan_args)
    _STATE["opts"] = opts


def _do_pair(i: int) -> int:
    plan, o = _STATE["plan"], _STATE["opts"]
    aerial_paths, ground_paths = plan.files(i)
    if all(os.path.isfile(os.path.join(o["out"], p)) for p in aerial_paths + ground_paths):
        return i  # resumed
    aerial, pano, qa, qg = render_pair(plan.city, plan.uv[i], i, o["aerial_size"], o["pano_size"], o["vfov"],
                                       o["heading_noise_deg"])
    a_bytes, g_bytes = encode_jpeg(aerial, qa), encode_jpeg(pano, qg)
    for p in aerial_paths:
        atomic_write(os.path.join(o["out"], p), a_bytes)
    for p in ground_paths:
        atomic_write(os.path.join(o["out"], p), g_bytes)
    return i


def _chunks(n, size):
    return [list(range(s, min(n, s + size))) for s in range(0, n, size)]


def _do_chunk(idx):
    return [_do_pair(i) for i in idx]


# ------------------------------------------------------------------------------------------- index files
def _latlon(utm, seed):
    """A lat/lon for each location: local equirectangular projection around a per-area reference point."""
    r = _rng(seed, 0x1A7)
    lat0, lon0 = r.uniform(30, 47), r.uniform(-120, -75)
    e0, n0 = utm.mean(axis=0)
    lat = lat0 + (utm[:, 1] - n0) / 111320.0
    lon = lon0 + (utm[:, 0] - e0) / (111320.0 * math.cos(math.radians(lat0)))
    return lat, lon


def _write_cvusa_index(out, plan):
    for split, name in (("train", "train-19zl.csv"), ("val", "val-19zl.csv")):
        lines = []
        for i in range(plan.n):
            if plan.split[i] == split:
                pid = plan.ids[i]
                lines.append(f"bingmap/19/{pid}.jpg,streetview/panos/{pid}.jpg,"
                             f"streetview/annotations/{pid}.png\n")
        atomic_write(os.path.join(out, "splits", name), "".join(lines).encode())
    lat, lon = _latlon(plan.utm, plan.seed)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "lat", "lon", "easting", "northing"])
    for i in range(plan.n):
        w.writerow([plan.ids[i], f"{lat[i]:.8f}", f"{lon[i]:.8f}", f"{plan.utm[i, 0]:.3f}",
                    f"{plan.utm[i, 1]:.3f}"])
    atomic_write(os.path.join(out, "coordinates.csv"), buf.getvalue().encode())


def _write_cvact_index(out, plan):
    import scipy.io

    idx = lambda s: (np.nonzero(plan.split == s)[0] + 1).astype(np.int32).reshape(-1, 1)  # noqa: E731
    val_all = np.sort(np.concatenate([idx("val"), idx("test")]), axis=0)
    mdict = {
        "panoIds": np.asarray(plan.ids),
        "utm": np.round(plan.utm, 3),
        "trainSet": {"trainInd": idx("train")},
        "valSet": {"valInd": idx("val")},
        "valSetAll": {"valInd": val_all},
    }
    buf = io.BytesIO()
    scipy.io.savemat(buf, mdict, do_compression=False, oned_as="column")
    data = buf.getvalue()
    # savemat stamps the creation time into the 116-byte text header; blank it for byte-identical files
    header = b"MATLAB 5.0 MAT-file, synthetic CVACT layout (cvgl-keras)".ljust(116, b" ")
    atomic_write(os.path.join(out, "ACT_data.mat"), header + data[116:])


# ------------------------------------------------------------------------------------------- entry point
def write_world(layout: str, out, seed: int, n_train: int, n_val: int, n_test: int = 0, aerial_size=None,
                pano_size=None, workers: int = 1, heading_noise_deg: float = 0.0, near_fraction: float = 0.1,
                vfov_deg=None, progress: bool = True, contact_sheet: bool = True) -> dict:
    """Write one synthetic area in the ``layout`` ("cvusa" | "cvact") to ``out``; returns a summary dict.

    ``seed`` selects the city (style + map). ``aerial_size`` (px, square) and ``pano_size`` ((H, W)) default
    to the real sizes (CVUSA 750 / 224x1232, CVACT 1200 / 832x1664). The aerial always covers
    ``AERIAL_EXTENT_M`` metres; the panorama's vertical field of view defaults to 360 H / W for CVUSA (square
    pixels, about +-33 degrees) and 180 degrees for CVACT. ``heading_noise_deg``: standard deviation of a
    random panorama heading error (0 = aligned, as the real data). ``near_fraction``: share of locations
    placed within 5 m of another.
    """
    layout = str(layout).lower()
    if layout not in LAYOUTS:
        raise CVGLError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    n_train, n_val, n_test, workers = int(n_train), int(n_val), int(n_test), int(workers)
    if min(n_train, n_val, n_test) < 0 or n_train + n_val + n_test == 0:
        raise CVGLError(f"pair counts must be >= 0 and not all 0 (train={n_train}, val={n_val}, "
                        f"test={n_test})")
    if layout == "cvusa" and n_test:
        raise CVGLError("CVUSA has no test split (only train-19zl / val-19zl); use --test 0 or "
                        "--layout cvact")
    if workers < 1:
        raise CVGLError(f"--workers must be >= 1, got {workers}")
    spec = LAYOUTS[layout]
    aerial_size = int(aerial_size or spec["aerial"])
    pano_size = tuple(int(x) for x in (pano_size or spec["pano"]))
    if aerial_size < 16 or len(pano_size) != 2 or min(pano_size) < 8:
        raise CVGLError(f"sizes too small: aerial {aerial_size}, panorama {pano_size} (use aerial >= 16, "
                        "panorama >= 8x8)")
    vfov = float(vfov_deg if vfov_deg is not None else (spec["vfov"] or 360.0 * pano_size[0] / pano_size[1]))
    if not 0 < vfov <= 180:
        raise CVGLError(f"vertical field of view must be in (0, 180] degrees, got {vfov}")
    out = os.path.abspath(os.fspath(out))
    args = {"format": FORMAT_VERSION, "layout": layout, "seed": int(seed), "n_train": n_train, "n_val": n_val,
            "n_test": n_test, "aerial_size": aerial_size, "pano_size": list(pano_size), "vfov_deg": vfov,
            "heading_noise_deg": float(heading_noise_deg), "near_fraction": float(near_fraction),
            "aerial_extent_m": AERIAL_EXTENT_M}
    manifest = os.path.join(out, MANIFEST)
    if os.path.isfile(manifest):
        try:
            with open(manifest) as fh:
                old = json.load(fh).get("arguments")
        except (OSError, ValueError):
            old = None
        if old != args:
            raise CVGLError(f"{out} already holds a synthetic world made with other arguments ({manifest}); "
                            "use a new --out folder or delete that one")
    elif os.path.isdir(out) and any(n for n in os.listdir(out) if not n.startswith(".")):
        started = os.path.join(out, ".synth-args.json")
        if not (os.path.isfile(started) and json.load(open(started)) == args):
            raise CVGLError(f"{out} exists and is not empty; use a new --out folder (or the arguments of the "
                            "interrupted run it holds, to resume it)")
    os.makedirs(out, exist_ok=True)
    atomic_write(os.path.join(out, ".synth-args.json"), json.dumps(args, sort_keys=True).encode())

    plan_args = (layout, int(seed), n_train, n_val, n_test, float(near_fraction))
    opts = {"out": out, "aerial_size": aerial_size, "pano_size": pano_size, "vfov": vfov,
            "heading_noise_deg": float(heading_noise_deg)}
    _init_worker(plan_args, opts)
    plan = _STATE["plan"]
    bar = _bar(plan.n, f"synth {layout} seed {seed}", progress)
    chunk = max(1, min(16, plan.n // (workers * 8) or 1))
    if workers == 1:
        for c in _chunks(plan.n, chunk):
            _do_chunk(c)
            bar.update(len(c))
    else:
        import multiprocessing as mp

        ctx = mp.get_context("fork")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(plan_args, opts)) as pool:
            for done in pool.imap_unordered(_do_chunk, _chunks(plan.n, chunk)):
                bar.update(len(done))
    bar.close()
    if layout == "cvusa":
        _write_cvusa_index(out, plan)
    else:
        _write_cvact_index(out, plan)
    d = None
    if plan.n <= 6000:
        d = np.hypot(*(plan.utm[:, None, :] - plan.utm[None, :, :]).transpose(2, 0, 1))
    near = None
    if d is not None:
        np.fill_diagonal(d, np.inf)
        near = int(np.count_nonzero(d.min(axis=1) <= 5.0))
    summary = {"root": out, "layout": layout, "seed": int(seed), "pairs": plan.n,
               "splits": {"train": n_train, "val": n_val, **({"test": n_test} if layout == "cvact" else {})},
               "aerial_size": aerial_size, "pano_size": list(pano_size), "vfov_deg": vfov,
               "metres_per_aerial_pixel": AERIAL_EXTENT_M / aerial_size,
               "locations_within_5m_of_another": near, "city_rotation_deg": math.degrees(plan.city.theta)}
    if contact_sheet:
        from common.synthetic.sheet import write_contact_sheet

        write_contact_sheet(out, layout, plan, os.path.join(out, "contact_sheet.png"))
        summary["contact_sheet"] = "contact_sheet.png"
    stored = {k: v for k, v in summary.items() if k != "root"}  # no absolute path: folders stay identical
    from common.files import to_json

    text = to_json({"arguments": args, "summary": stored}, indent=2, sort_keys=True)
    atomic_write(manifest, text.encode())
    os.remove(os.path.join(out, ".synth-args.json"))
    return summary


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _bar(total, desc, enabled):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="pair")
