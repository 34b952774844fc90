"""Rendering one location of the synthetic city: raster, aerial image, ground panorama, nuisances.

1. :func:`rasterize` paints the :class:`~common.synthetic.world.Scene` around the location into city-frame
   layers (height, building part id, wall facing, ground material, albedo with world-anchored texture, tree
   canopy), one cell per aerial pixel, covering the aerial footprint's rotated square.
2. :func:`render_aerial`: orthographic top-down view, north up; roofs (pitched roofs shaded per side),
   canopies, **sun shading and cast shadows** (height-field shadow marching), cars parked on the road (this
   view only), then an affine warp from the city frame into the north-up image.
3. :func:`render_panorama`: equirectangular 360-degree view from eye height (2.5 m) by ray casting through
   the height field. For every azimuth the ray samples the height map at increasing distances; the angle
   to the top of each sample ``(h - eye) / t``, cumulatively maximised along the ray, is monotone, so the
   first sample each pixel row sees is one ``searchsorted`` over all columns at once (occlusion-correct).
   Hits are ground (textured, perspective, shadows under the view's own sun), walls (wall colour, shaded by
   facing, window grid by floor) or low roofs; then trees (trunk + canopy) and cars (this view only) as
   depth-tested sprites, a sky (gradient, sun glow, clouds) and distance haze.
   Conventions as the real data and the SAFA polar transform: column ``c`` looks at compass bearing
   ``180 + 360 c / W`` degrees, i.e. **north at the centre column, bearing increasing to the right
   (clockwise), south at both edges**; rows span ``+vfov/2`` (top) to ``-vfov/2`` (bottom).
4. :func:`nuisance`: per-view brightness, white balance, gamma, saturation, sensor noise (JPEG is applied
   when writing).

Everything is vectorised numpy/OpenCV; the per-object Python loops touch only bounding-box slices.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from common.synthetic import world as W
from common.synthetic.noise import grid_noise, raster_noise

EYE_HEIGHT = 2.5
FACE_NORMALS = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])  # -u, +u, -v, +v


class Raster:
    """City-frame layers of one window: cell (i, j) is at u = u0 + (j - n/2) res, v = v0 + (n/2 - i) res."""

    def __init__(self, u0, v0, n, res):
        self.u0, self.v0, self.n, self.res = float(u0), float(v0), int(n), float(res)
        self.u = self.u0 + (np.arange(n) - n / 2) * res  # per column
        self.v = self.v0 + (n / 2 - np.arange(n)) * res  # per row

    def cols(self, a, b):
        j0 = max(0, math.ceil((a - self.u0) / self.res + self.n / 2))
        j1 = min(self.n - 1, math.floor((b - self.u0) / self.res + self.n / 2))
        return j0, j1 + 1

    def rows(self, a, b):
        i0 = max(0, math.ceil(self.n / 2 - (b - self.v0) / self.res))
        i1 = min(self.n - 1, math.floor(self.n / 2 - (a - self.v0) / self.res))
        return i0, i1 + 1

    def boxes(self, rects):
        """Index boxes [j0, j1, i0, i1) (clipped; empty when j1 <= j0 or i1 <= i0) of (G, 4) rectangles."""
        r = np.asarray(rects, np.float64).reshape(-1, 4)
        n, res = self.n, self.res
        j0 = np.clip(np.ceil((r[:, 0] - self.u0) / res + n / 2), 0, n)
        j1 = np.clip(np.floor((r[:, 1] - self.u0) / res + n / 2) + 1, 0, n)
        i0 = np.clip(np.ceil(n / 2 - (r[:, 3] - self.v0) / res), 0, n)
        i1 = np.clip(np.floor(n / 2 - (r[:, 2] - self.v0) / res) + 1, 0, n)
        return np.stack([j0, j1, i0, i1], 1).astype(np.int64).tolist()

    def index(self, u, v):
        """Nearest cell (i, j) of city points, clipped into the raster."""
        j = np.rint((u - self.u0) / self.res + self.n / 2).astype(np.int64)
        i = np.rint(self.n / 2 - (v - self.v0) / self.res).astype(np.int64)
        return np.clip(i, 0, self.n - 1), np.clip(j, 0, self.n - 1)


def _dist_to_lines(x, lines):
    """For each x, distance to the nearest value in sorted ``lines`` (inf when there are none)."""
    if len(lines) == 0:
        return np.full(x.shape, np.inf), np.zeros(x.shape)
    k = np.clip(np.searchsorted(lines, x), 1, max(1, len(lines) - 1))
    lo = lines[np.clip(k - 1, 0, len(lines) - 1)]
    hi = lines[np.clip(k, 0, len(lines) - 1)]
    near = np.where(np.abs(x - lo) <= np.abs(x - hi), lo, hi)
    return np.abs(x - near), near


def rasterize(scene: W.Scene, style: W.Style, u0: float, v0: float, n: int, res: float, seed: int):
    """Paint the scene into layers. Returns (Raster with .height .bid .face .mat .albedo .canopy .tree)."""
    R = Raster(u0, v0, n, res)
    mat = np.full((n, n), W.GRASS, np.uint8)
    for (j0, j1, i0, i1), m, (a, _b, c, _d) in zip(R.boxes(scene.rects), scene.rect_mat, scene.rects):
        if j1 > j0 and i1 > i0:
            mat[i0:i1, j0:j1] = m
            if m == W.PARKING:  # stall lines: 2.6 m bays in rows of 2 x 5 m every 16 m
                uu = np.mod(R.u[j0:j1] - a, 2.6) < max(0.15, 0.5 * res)
                vv = np.mod(R.v[i0:i1] - c - 1.0, 16.0)
                vv = (vv < 10.0) & (np.abs(vv - 5.0) > 0.3)
                mat[i0:i1, j0:j1][vv[:, None] & uu[None, :]] = W.STALL
    # roads are straight lines of the city grid: separable distances per column / per row
    du, _ = _dist_to_lines(R.u, scene.road_u)
    dv, _ = _dist_to_lines(R.v, scene.road_v)
    hw, sw = scene.road_width / 2, scene.sidewalk
    side = (du < hw + sw)[None, :] | (dv < hw + sw)[:, None]
    road_c, road_r = (du < hw)[None, :], (dv < hw)[:, None]
    mat[side] = W.SIDEWALK
    mat[road_c | road_r] = W.ROAD
    lw = max(0.12, 0.55 * res)
    dash_v = (np.mod(R.v, 9.0) < 3.5)[:, None]
    dash_u = (np.mod(R.u, 9.0) < 3.5)[None, :]
    mat[(du < lw)[None, :] & dash_v & ~road_r] = W.LANE
    mat[(dv < lw)[:, None] & dash_u & ~road_c] = W.LANE

    base = np.asarray(style.material_rgb, np.float32)
    tex = np.asarray(style.material_tex, np.float32)
    # fine grain below the cell size would only alias: its lattice never gets finer than 1.5 cells
    noise = 0.65 * raster_noise(u0, v0, n, res, max(1.3, 3 * res), seed) + \
        0.35 * raster_noise(u0, v0, n, res, max(0.45, 1.5 * res), seed + 1)
    coarse = raster_noise(u0, v0, n, res, 9.0, seed + 2)
    albedo = base[mat] * (1.0 + (tex[mat] * (noise + 0.6 * coarse))[..., None])

    height = np.zeros((n, n), np.float32)
    bid = np.full((n, n), -1, np.int32)
    face = np.zeros((n, n), np.int8)
    roof_tilt = np.zeros((n, n, 2), np.float32)  # horizontal component of the roof normal (pitched roofs)
    order = np.argsort(scene.buildings[:, 4], kind="stable") if len(scene.buildings) else []
    bboxes = R.boxes(scene.buildings[:, :4])
    for k in order:
        a, b, c, d, h = scene.buildings[k]
        j0, j1, i0, i1 = bboxes[k]
        if j1 <= j0 or i1 <= i0:
            continue
        uu, vv = R.u[None, j0:j1], R.v[i0:i1, None]
        dist = np.stack(np.broadcast_arrays(uu - a, b - uu, vv - c, d - vv))
        height[i0:i1, j0:j1] = h
        bid[i0:i1, j0:j1] = k
        face[i0:i1, j0:j1] = np.argmin(dist, axis=0)
        albedo[i0:i1, j0:j1] = scene.roof_rgb[k] * (1.0 + 0.07 * noise[i0:i1, j0:j1, None])
        if scene.pitched[k]:  # ridge along the longer side; the two halves tilt +-30 degrees
            if b - a >= d - c:
                sgn = np.sign(vv - (c + d) / 2) + np.zeros_like(uu)
                roof_tilt[i0:i1, j0:j1, 1] = 0.5 * sgn
            else:
                sgn = np.sign(uu - (a + b) / 2) + np.zeros_like(vv)
                roof_tilt[i0:i1, j0:j1, 0] = 0.5 * sgn
    canopy = np.zeros((n, n), np.float32)
    canopy_bottom = np.zeros((n, n), np.float32)
    tree = np.full((n, n), -1, np.int32)
    tu_, tv_, tr_ = scene.trees[:, 0], scene.trees[:, 1], scene.trees[:, 2]
    tboxes = R.boxes(np.stack([tu_ - tr_, tu_ + tr_, tv_ - tr_, tv_ + tr_], 1))
    for k, (tu, tv, rad, bot, top) in enumerate(scene.trees):
        j0, j1, i0, i1 = tboxes[k]
        if j1 <= j0 or i1 <= i0:
            continue
        inside = ((R.u[None, j0:j1] - tu) ** 2 + (R.v[i0:i1, None] - tv) ** 2) <= rad * rad
        inside &= top > height[i0:i1, j0:j1]
        canopy[i0:i1, j0:j1][inside] = top
        canopy_bottom[i0:i1, j0:j1][inside] = bot
        tree[i0:i1, j0:j1][inside] = k
    R.height, R.bid, R.face, R.mat, R.albedo = height, bid, face, mat, albedo
    R.roof_tilt, R.canopy, R.tree, R.noise = roof_tilt, canopy, tree, noise
    R.canopy_bottom = canopy_bottom
    return R


def sun_vector(theta: float, azimuth_deg: float, elevation_deg: float):
    """Unit vector towards the sun in the city frame: (u, v, up)."""
    b = math.radians(azimuth_deg) + theta
    e = math.radians(elevation_deg)
    return np.array([math.sin(b) * math.cos(e), math.cos(b) * math.cos(e), math.sin(e)])


def shadow_map(R: Raster, sun, max_steps: int = 24) -> np.ndarray:
    """Boolean n x n: cells hidden from the sun by taller buildings or canopies.

    Height-field shadow marching on a 2x pooled map (shadows are soft-edged at a cell anyway): a cell is
    shadowed when, stepped towards the sun by d, the ray (at its own height + d tan(elevation)) passes
    through an occluder: below a building's top, or between a canopy's bottom and top (so a tree casts
    an offset round shadow, not one of a solid column).
    """
    n = R.n
    hs = np.maximum(R.height, R.canopy)
    top = float(hs.max())
    if top <= 0:
        return np.zeros((n, n), bool)
    m = n // 2
    hs2 = hs[:2 * m, :2 * m].reshape(m, 2, m, 2).max(axis=(1, 3))
    # occluder bottoms: canopy bottom, 0 under roofs, "none" (high) on open ground, so that the min-pool
    # of a 2x2 block that mixes canopy and open ground keeps the canopy's bottom
    hb = np.where(R.canopy > R.height, R.canopy_bottom, np.where(R.height > 0, 0.0, 1e3)).astype(np.float32)
    hb2 = hb[:2 * m, :2 * m].reshape(m, 2, m, 2).min(axis=(1, 3))
    res = 2 * R.res
    tan_e = sun[2] / max(1e-6, math.hypot(sun[0], sun[1]))
    reach = top / max(tan_e, 0.05)
    step = max(res, reach / max_steps)
    dirn = np.array([-sun[1], sun[0]]) / max(1e-9, math.hypot(sun[0], sun[1]))  # (di, dj) per metre
    pad = int(math.ceil((reach + 2 * step) / res)) + 2
    padded = np.zeros((m + 2 * pad, m + 2 * pad), np.float32)
    padded[pad:pad + m, pad:pad + m] = hs2
    padded_b = np.zeros_like(padded)
    padded_b[pad:pad + m, pad:pad + m] = hb2
    shadow = np.zeros((m, m), bool)
    thresh = hs2 + np.float32(0.05)
    d = step
    while d <= reach + step:
        di = int(round(d * dirn[0] / res))
        dj = int(round(d * dirn[1] / res))
        ray = thresh + np.float32(d * tan_e)
        win = padded[pad + di:pad + di + m, pad + dj:pad + dj + m]
        win_b = padded_b[pad + di:pad + di + m, pad + dj:pad + dj + m]
        shadow |= (win > ray) & (win_b < ray)
        d += step
    full = np.zeros((n, n), bool)
    full[:2 * m, :2 * m] = shadow.repeat(2, 0).repeat(2, 1)
    return full


def render_aerial(R: Raster, scene: W.Scene, style: W.Style, size: int, sun, rng,
                  cars: int = 6) -> np.ndarray:
    """North-up float32 RGB (size x size) of the raster; the location sits at pixel coordinate size / 2."""
    flat = 0.35 + 0.65 * sun[2]
    tilt = R.roof_tilt
    roof_n = np.concatenate([tilt, np.full(tilt.shape[:2] + (1,), 0.87, np.float32)], axis=2)
    lambert = np.clip(roof_n @ sun.astype(np.float32), 0, None)
    shade = np.where(R.bid >= 0, 0.35 + 0.65 * lambert, flat).astype(np.float32)
    img = R.albedo * shade[..., None]
    has_tree = R.tree >= 0
    if has_tree.any():
        k = R.tree[has_tree]
        tu, tv, rad = scene.trees[k, 0], scene.trees[k, 1], scene.trees[k, 2]
        ii, jj = np.nonzero(has_tree)
        ou = (R.u[jj] - tu) / rad
        ov = (R.v[ii] - tv) / rad
        rim = np.sqrt(np.clip(1 - ou * ou - ov * ov, 0, 1))
        light = 0.45 + 0.45 * np.clip(ou * sun[0] + ov * sun[1] + rim * sun[2], 0, None) + 0.15 * rim
        clump = 1.0 + 0.18 * R.noise[ii, jj]
        img[ii, jj] = scene.tree_rgb[k] * (light * clump)[:, None]
    shadow = shadow_map(R, sun)
    img *= np.where(shadow, 0.5, 1.0)[..., None].astype(np.float32)
    _paint_cars(R, img, rng, cars)
    # city frame -> north-up image: aerial pixel (c, r) <- raster (j, i)
    th, n, s2 = R_theta(style), R.n, size / 2.0
    c, s = math.cos(th), math.sin(th)
    m = np.array([[c, -s, n / 2 - c * s2 + s * s2], [s, c, n / 2 - s * s2 - c * s2]])
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def R_theta(style) -> float:  # noqa: N802
    return style.theta


def _car_rgb(rng):
    if rng.random() < 0.5:
        v = rng.choice([0.08, 0.15, 0.55, 0.75, 0.9])
        return np.array([v, v, v], np.float32)
    return np.array(W._hsv(rng.random(), rng.uniform(0.5, 0.9), rng.uniform(0.4, 0.85)), np.float32)


def _paint_cars(R: Raster, img, rng, count):
    """Cars parked/driving on road cells (top-down rectangles aligned with the road)."""
    half = R.n / 2 * R.res * 0.6
    for _ in range(count):
        u, v = R.u0 + rng.uniform(-half, half), R.v0 + rng.uniform(-half, half)
        i, j = R.index(u, v)
        if R.mat[i, j] != W.ROAD or (abs(u - R.u0) < 4 and abs(v - R.v0) < 4):
            continue
        rgb = _car_rgb(rng)
        along_v = rng.random() < 0.5
        lu, lv = (0.9, 2.2) if along_v else (2.2, 0.9)
        j0, j1 = R.cols(u - lu, u + lu)
        i0, i1 = R.rows(v - lv, v + lv)
        img[i0:i1, j0:j1] = rgb
        wu, wv = (0.7, 0.7) if along_v else (0.7, 0.7)
        j0, j1 = R.cols(u - wu, u + wu)
        i0, i1 = R.rows(v - wv, v + wv)
        img[i0:i1, j0:j1] = rgb * 0.35 + 0.05


def distance_samples(res: float, reach: float, t0: float = 0.4):
    """Ray-marching distances: at most half a cell apart near the eye, 1.5 % geometric steps further out."""
    ts = [t0]
    while ts[-1] < reach:
        ts.append(ts[-1] + max(0.5 * res, 0.015 * ts[-1]))
    return np.asarray(ts[:-1] if ts[-1] > reach else ts)


def sky(h_rows_tan, width, sun, theta, rng):
    """Sky colour for rows with elevation tangent ``h_rows_tan`` (H,) over all columns -> (H, W, 3)."""
    overcast = rng.random() < 0.25
    zen = W._hsv(rng.uniform(0.55, 0.64), rng.uniform(0.35, 0.7), rng.uniform(0.55, 0.9))
    zen = np.array(zen, np.float32)
    hor = np.clip(zen + rng.uniform(0.15, 0.35), 0, 1).astype(np.float32)
    if overcast:
        g = rng.uniform(0.6, 0.85)
        zen = hor = np.array([g, g, g * 1.02], np.float32)
    el = np.arctan(h_rows_tan)
    t = np.sqrt(np.clip(np.sin(el), 0, 1))[:, None, None]
    out = (hor * (1 - t) + zen * t) * np.ones((1, width, 1), np.float32)
    # clouds
    hh = len(h_rows_tan)
    cover = rng.uniform(0.0, 0.9) if not overcast else 0.95
    nz = 0.6 * grid_noise(hh, width, 3, 24, int(rng.integers(1 << 30))) + \
        0.4 * grid_noise(hh, width, 8, 64, int(rng.integers(1 << 30)))
    cloud = np.clip((nz + cover - 0.6) * 2.5, 0, 1)[..., None] * (el[:, None, None] > 0)
    out = out * (1 - cloud) + cloud * np.float32(0.93)
    if not overcast:  # sun glow
        beta = np.pi + 2 * np.pi * np.arange(width) / width
        sun_b = math.atan2(sun[0], sun[1]) - theta
        cos_g = np.cos(el)[:, None] * np.cos(beta[None, :] - sun_b) * math.cos(math.asin(sun[2])) + \
            np.sin(el)[:, None] * sun[2]
        out += (0.35 * np.clip(cos_g, 0, 1) ** 30)[..., None]
    return out.astype(np.float32), overcast


def render_panorama(R: Raster, scene: W.Scene, style: W.Style, height: int, width: int, vfov_deg: float, sun,
                    rng, eye: float = EYE_HEIGHT, cars: int = 4, tree_reach: float = 70.0) -> np.ndarray:
    """Equirectangular float32 RGB (height x width) seen from the raster centre at ``eye`` metres."""
    res, n = R.res, R.n
    reach = n / 2 * res * 0.98
    t = distance_samples(res, reach)
    K = len(t)
    theta = style.theta
    beta = np.pi + 2 * np.pi * np.arange(width) / width  # compass bearing of each column
    du, dv = np.sin(beta + theta), np.cos(beta + theta)  # its direction in the city frame
    pu = R.u0 + du[:, None] * t[None, :]
    pv = R.v0 + dv[:, None] * t[None, :]
    si, sj = R.index(pu, pv)  # (W, K)
    h = R.height[si, sj]
    ang = np.clip(np.maximum.accumulate((h - eye) / t[None, :], axis=1), -100.0, 100.0)
    el = np.radians(vfov_deg / 2 - (np.arange(height) + 0.5) * vfov_deg / height)
    tan_el = np.clip(np.tan(el), -99.0, 99.0)
    offs = np.arange(width, dtype=np.float64)[:, None] * 1000.0
    flat = (ang + offs).ravel()
    q = tan_el[:, None] + offs[:, 0][None, :]  # (H, W)
    k = np.searchsorted(flat, q.ravel(), side="left").reshape(height, width) - (np.arange(width) * K)[None, :]
    hit = k < K
    kc = np.minimum(k, K - 1)
    cols = np.broadcast_to(np.arange(width)[None, :], (height, width))
    ci, cj = si[cols, kc], sj[cols, kc]
    th = t[kc]
    z = eye + th * tan_el[:, None]
    b = R.bid[ci, cj]
    on_building = hit & (b >= 0)
    t_prev = t[np.maximum(kc - 1, 0)]
    wall = on_building & (z < R.height[ci, cj] - (th - t_prev) * np.abs(tan_el)[:, None] - 1e-3)
    ground = hit & ~on_building

    sky_rgb, overcast = sky(tan_el, width, sun, theta, rng)
    img = sky_rgb
    depth = np.full((height, width), np.inf, np.float32)
    shade_amb = 0.55 if not overcast else 0.8
    pano_shadow = shadow_map(R, sun) if not overcast else np.zeros((n, n), bool)
    light = (shade_amb + (1 - shade_amb) * sun[2]) if not overcast else 0.85

    # ground: exact intersection with the plane z = 0
    tg = np.where(tan_el < 0, eye / np.maximum(-tan_el, 1e-6), 0.0)[:, None] * np.ones((1, width))
    gi, gj = R.index(R.u0 + du[None, :] * tg, R.v0 + dv[None, :] * tg)
    g = ground
    col = R.albedo[gi[g], gj[g]] * light
    col *= np.where(pano_shadow[gi[g], gj[g]], 0.55, 1.0)[:, None]
    img[g] = col
    depth[g] = tg[g]
    # roofs of low buildings (seen from above the eave)
    roof = on_building & ~wall
    img[roof] = R.albedo[ci[roof], cj[roof]] * light
    depth[roof] = th[roof]
    # walls: colour by part, shading by facing, windows by floor
    if wall.any():
        wb = b[wall]
        wf = R.face[ci[wall], cj[wall]].astype(np.int64)
        rd = np.stack([np.broadcast_to(du[None, :], wall.shape)[wall],
                       np.broadcast_to(dv[None, :], wall.shape)[wall]], 1)
        nrm = FACE_NORMALS[wf]
        away = (nrm * rd).sum(1) > 0  # a face the ray cannot see: use the other axis, facing the ray
        alt = np.where(np.abs(rd[:, 0:1]) > np.abs(rd[:, 1:2]), np.c_[-np.sign(rd[:, 0]), 0 * rd[:, 0]],
                       np.c_[0 * rd[:, 0], -np.sign(rd[:, 1])])
        nrm = np.where(away[:, None], alt, nrm)
        lam = np.clip(nrm @ sun[:2], 0, None)
        wshade = (0.5 + 0.5 * lam) if not overcast else (0.75 + 0.1 * nrm[:, 1])
        zz = z[wall]
        hp = (R.u0 + th[wall] * rd[:, 0], R.v0 + th[wall] * rd[:, 1])
        along = np.where(nrm[:, 0] != 0, hp[1], hp[0])
        fh = style.floor_height
        fz = np.mod(zz, fh) / fh
        fa = np.mod(along + wb * 0.37, 3.1) / 3.1
        win = (fz > 0.3) & (fz < 0.75) & (fa > 0.2) & (fa < 0.72) & (zz > 0.9)
        win &= zz < scene.buildings[wb, 4] - 0.5
        wcol = scene.wall_rgb[wb] * (1 + 0.05 * R.noise[ci[wall], cj[wall]])[:, None]
        wcol = np.where(win[:, None], np.asarray(style.window_rgb, np.float32) + 0.15 * sky_rgb[0, 0], wcol)
        img[wall] = wcol * wshade[:, None]
        depth[wall] = th[wall]
    # far ground band below the horizon that no sample reached
    far = ~hit & (tan_el < 0)[:, None]
    img[far] = np.asarray(style.haze_rgb, np.float32) * 0.9
    depth[far] = reach
    # trees and cars: depth-tested sprites, far to near
    beta_grid = beta
    _tree_sprites(img, depth, R, scene, theta, beta_grid, tan_el, eye, tree_reach, sun, overcast)
    _car_sprites(img, depth, R, theta, beta_grid, tan_el, eye, rng, cars)
    # distance haze
    fog = (1 - np.exp(-np.minimum(depth, 1e4) / style.fog_distance))[..., None]
    fog = np.where(np.isinf(depth)[..., None], 0.0, fog)
    img = img * (1 - fog) + np.asarray(style.haze_rgb, np.float32) * fog
    return img.astype(np.float32)


def _columns(center, half_w, width):
    c0, c1 = int(math.floor(center - half_w)), int(math.ceil(center + half_w))
    return np.arange(c0, c1 + 1) % width


def _sprite_geometry(u, v, R, theta, width):
    du, dv = u - R.u0, v - R.v0
    d = math.hypot(du, dv)
    b = (math.atan2(du, dv) - theta) % (2 * math.pi)
    center = ((b - math.pi) % (2 * math.pi)) * width / (2 * math.pi)
    return d, b, center


def _tree_sprites(img, depth, R, scene, theta, beta, tan_el, eye, reach, sun, overcast):
    if not len(scene.trees):
        return
    width = len(beta)
    d_all = np.hypot(scene.trees[:, 0] - R.u0, scene.trees[:, 1] - R.v0)
    for k in np.argsort(-d_all, kind="stable"):
        tu, tv, rad, bot, top = scene.trees[k]
        d, b, center = _sprite_geometry(tu, tv, R, theta, width)
        if d > reach or d < rad + 0.5:
            continue
        half = math.asin(min(1.0, rad / d)) * width / (2 * math.pi) + 1
        cols = _columns(center, half, width)
        zrow = eye + d * tan_el  # height of each row's ray at the tree's distance
        rows = np.nonzero((zrow <= top + 0.2) & (zrow >= -0.2))[0]
        if not len(rows) or not len(cols):
            continue
        x = d * np.sin(beta[cols] - b)[None, :]  # lateral offset (m)
        zz = zrow[rows][:, None]
        cz, hz = (bot + top) / 2, (top - bot) / 2
        q = (x / rad) ** 2 + ((zz - cz) / hz) ** 2
        lobes = 0.97 + 0.18 * np.sin(x * 4.1 + k) * np.sin(zz * 3.7 + 2.3 * k)  # leaf clumps
        canopy = (q <= 1.0) & (depth[rows[:, None], cols[None, :]] > d - rad * 0.5)
        trunk = (np.abs(x) < 0.15 + 0.03 * rad) & (zz <= bot + 0.3) & (zz >= 0) & \
            (depth[rows[:, None], cols[None, :]] > d)
        trunk &= ~canopy
        base = scene.tree_rgb[k]
        lit = 0.55 + 0.35 * np.clip((zz - bot) / (top - bot), 0, 1)
        if not overcast:
            lit = lit + 0.1 * np.sign(x) * sun[0]
        ri, cj = np.nonzero(canopy)
        gr, gc = rows[ri], cols[cj]
        img[gr, gc] = base * (lit * lobes)[ri, cj][:, None]
        depth[gr, gc] = d
        ri, cj = np.nonzero(trunk)
        img[rows[ri], cols[cj]] = np.array([0.28, 0.2, 0.14], np.float32)
        depth[rows[ri], cols[cj]] = d


def _car_sprites(img, depth, R, theta, beta, tan_el, eye, rng, count):
    width = len(beta)
    for _ in range(count):
        ang, dist = rng.uniform(0, 2 * math.pi), rng.uniform(6, 35)
        u, v = R.u0 + dist * math.sin(ang), R.v0 + dist * math.cos(ang)
        i, j = R.index(u, v)
        if R.mat[i, j] != W.ROAD:
            continue
        rgb = _car_rgb(rng)
        d, b, center = _sprite_geometry(u, v, R, theta, width)
        half_m = rng.uniform(0.9, 2.2)
        half = math.atan(half_m / d) * width / (2 * math.pi) + 1
        cols = _columns(center, half, width)
        zrow = eye + d * tan_el
        rows = np.nonzero((zrow <= 1.5) & (zrow >= 0))[0]
        if not len(rows):
            continue
        x = d * np.sin(beta[cols] - b)[None, :]
        zz = zrow[rows][:, None]
        body = (np.abs(x) < half_m) & (depth[rows[:, None], cols[None, :]] > d - 1)
        body &= (zz < 1.0) | (np.abs(x) < half_m - 0.3)  # the cabin is narrower than the body
        color = np.where(((zz > 1.0) & (zz < 1.42))[..., None], rgb * 0.3 + 0.05, rgb)
        color = np.where(((zz < 0.35) & (np.abs(np.abs(x) - half_m * 0.65) < 0.35))[..., None], 0.05, color)
        color = np.broadcast_to(color, body.shape + (3,))
        ri, cj = np.nonzero(body)
        img[rows[ri], cols[cj]] = color[ri, cj]
        depth[rows[ri], cols[cj]] = d


def nuisance(img: np.ndarray, rng, strength: float = 1.0) -> np.ndarray:
    """Per-view photometric changes and sensor noise: float [0, 1] RGB -> uint8.

    Gain, per-channel white balance and gamma go through one 256-entry lookup table per channel; then a
    saturation change and Gaussian sensor noise.
    """
    gain = 1 + strength * rng.uniform(-0.2, 0.2)
    wb = 1 + strength * rng.uniform(-0.07, 0.07, 3)
    gamma = math.exp(strength * rng.uniform(-0.2, 0.2))
    sat = 1 + strength * rng.uniform(-0.25, 0.2)
    sigma = strength * rng.uniform(1.2, 5.0)
    levels = (np.arange(256) / 255.0) ** gamma
    lut = np.clip(levels[:, None] * (gain * wb)[None, :] * 255.0 + 0.5, 0, 255).astype(np.uint8)
    u8 = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    x = cv2.LUT(u8, lut.reshape(256, 1, 3)).astype(np.float32)
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * np.float32(sat)
    x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)
