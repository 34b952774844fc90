"""A procedural 2.5-D city: one per area seed (style + map), and the street-view locations sampled in it.

The city lives in its own axis-aligned frame (u, v) in metres: roads run along u-lines (constant u, the road
runs "along v") and v-lines (constant v), at irregular spacings drawn once per city. The city frame is
rotated by a per-city angle ``theta`` against the world frame (east, north), so street grids of different
cities have different compass orientations::

    (east, north) = origin + R(theta) @ (u, v)

Between roads lie blocks; the content of block (a, b) -- building lots with box or L-shaped footprints,
yards, street trees, parks with ponds, parking lots, plazas -- is drawn from ``rng([seed, a, b])`` on
demand, so the map is unbounded, deterministic and independent of how many locations are sampled. Roofs
and walls take colours from two independent palettes (the ground view sees walls the aerial view never
shows). A handful of style parameters (palettes, density, building heights, road width, block size, tree
cover) make two seeds look like two different cities: the cross-area split.

Design notes: the project's ``synthetic_world`` spec; the layouts it imitates are CVUSA (Zhai et al.,
CVPR 2017; the subset of Hu et al., CVPR 2018) and CVACT (Liu & Li, CVPR 2019).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

# Ground materials (the raster's ``mat`` layer).
GRASS, ROAD, SIDEWALK, LANE, PARKING, STALL, WATER, DIRT, CONCRETE, YARD = range(10)
N_MATERIALS = 10

ROAD_EXTENT_M = 30000.0  # road lines are drawn for |u|, |v| below this


def keyed_rng(*key) -> np.random.Generator:
    """The world's random streams: one generator per key (seed, purpose, index ...), independent of call order."""
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in key])


_rng = keyed_rng


def _hsv(h, s, v):
    """HSV in [0, 1] -> RGB float in [0, 1]."""
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


@dataclasses.dataclass(frozen=True)
class Style:
    """The per-city look: drawn from the seed by :func:`draw_style`."""

    theta: float  # rotation of the street grid against north (radians)
    block_mean: float  # mean distance between parallel roads (m)
    road_width: float
    sidewalk: float
    lane_rgb: tuple
    material_rgb: tuple  # (N_MATERIALS, 3) base colours
    material_tex: tuple  # texture amplitude per material
    height_median: float
    height_sigma: float
    lot_width: float
    setback: float
    building_prob: float
    l_shape_prob: float
    pitched_prob: float
    roof_palette: tuple  # (k, 3)
    wall_palette: tuple  # (k, 3)
    floor_height: float
    window_rgb: tuple
    street_tree_spacing: float  # 0: no street trees
    tree_rgb: tuple
    tree_size: float
    yard_tree_prob: float
    park_prob: float
    parking_prob: float
    plaza_prob: float
    aerial_sun_azimuth: float  # degrees clockwise from north
    aerial_sun_elevation: float
    haze_rgb: tuple
    fog_distance: float


def _rgb(x) -> tuple:
    return tuple(float(c) for c in x)


def draw_style(seed: int) -> Style:
    r = _rng(seed, 0x5717)
    grass_h = r.uniform(0.16, 0.30)
    grass = _hsv(grass_h, r.uniform(0.3, 0.65), r.uniform(0.35, 0.6))
    asphalt_v = r.uniform(0.22, 0.42)
    asphalt = tuple(np.clip(np.array([asphalt_v] * 3) + r.uniform(-0.03, 0.03, 3), 0, 1))
    concrete_v = r.uniform(0.6, 0.8)
    concrete = tuple(np.clip(np.array([concrete_v] * 3) + r.uniform(-0.04, 0.04, 3), 0, 1))
    lane = (0.95, 0.95, 0.92) if r.random() < 0.6 else (0.95, 0.8, 0.2)
    dirt = _hsv(r.uniform(0.05, 0.11), r.uniform(0.3, 0.6), r.uniform(0.4, 0.65))
    yard = _hsv(grass_h + r.uniform(-0.04, 0.04), r.uniform(0.2, 0.55), r.uniform(0.4, 0.65))
    water = _hsv(r.uniform(0.5, 0.62), r.uniform(0.4, 0.8), r.uniform(0.25, 0.5))
    parking = tuple(np.clip(np.array(asphalt) + r.uniform(0.02, 0.12), 0, 1))
    mats = [None] * N_MATERIALS
    mats[GRASS], mats[ROAD], mats[SIDEWALK], mats[LANE] = grass, asphalt, concrete, lane
    mats[PARKING], mats[STALL], mats[WATER], mats[DIRT] = parking, (0.92, 0.92, 0.9), water, dirt
    mats[CONCRETE], mats[YARD] = tuple(np.clip(np.array(concrete) * 0.9, 0, 1)), yard
    tex = [0.25, 0.12, 0.1, 0.05, 0.1, 0.05, 0.08, 0.3, 0.12, 0.3]
    roof_hue = r.uniform(0, 1)
    roofs = []
    for _ in range(int(r.integers(4, 8))):
        kind = r.random()
        if kind < 0.35:  # greys / whites
            v = r.uniform(0.3, 0.9)
            roofs.append(tuple(np.clip(np.array([v] * 3) + r.uniform(-0.04, 0.04, 3), 0, 1)))
        else:  # around the city's roof hue (terracotta, slate, green metal, ...)
            hue = (roof_hue + r.normal(0, 0.06)) % 1.0
            roofs.append(_hsv(hue, r.uniform(0.25, 0.7), r.uniform(0.3, 0.75)))
    walls = []
    wall_hue = r.uniform(0, 1)
    for _ in range(int(r.integers(4, 8))):
        if r.random() < 0.4:
            walls.append(_hsv(r.uniform(0.05, 0.15), r.uniform(0.05, 0.3), r.uniform(0.6, 0.95)))  # beige
        else:
            hue = (wall_hue + r.normal(0, 0.1)) % 1.0
            walls.append(_hsv(hue, r.uniform(0.15, 0.65), r.uniform(0.35, 0.9)))
    return Style(
        theta=float(r.uniform(0, math.pi / 2)),
        block_mean=float(r.uniform(60, 130)),
        road_width=float(r.uniform(7, 16)),
        sidewalk=float(r.uniform(1.5, 4.0)),
        lane_rgb=lane,
        material_rgb=tuple(tuple(float(c) for c in m) for m in mats),
        material_tex=tuple(tex),
        height_median=float(np.exp(r.uniform(np.log(5.0), np.log(22.0)))),
        height_sigma=float(r.uniform(0.25, 0.65)),
        lot_width=float(r.uniform(10, 32)),
        setback=float(r.uniform(0.0, 6.0)),
        building_prob=float(r.uniform(0.6, 0.98)),
        l_shape_prob=float(r.uniform(0.1, 0.5)),
        pitched_prob=float(r.uniform(0.0, 0.8)),
        roof_palette=tuple(tuple(float(c) for c in x) for x in roofs),
        wall_palette=tuple(tuple(float(c) for c in x) for x in walls),
        floor_height=float(r.uniform(2.8, 4.0)),
        window_rgb=_rgb(_hsv(r.uniform(0.5, 0.65), r.uniform(0.1, 0.4), r.uniform(0.15, 0.4))),
        street_tree_spacing=float(0.0 if r.random() < 0.2 else r.uniform(7, 22)),
        tree_rgb=_rgb(_hsv(r.uniform(0.2, 0.36), r.uniform(0.35, 0.75), r.uniform(0.2, 0.45))),
        tree_size=float(r.uniform(1.8, 3.8)),
        yard_tree_prob=float(r.uniform(0.0, 0.7)),
        park_prob=float(r.uniform(0.03, 0.18)),
        parking_prob=float(r.uniform(0.03, 0.15)),
        plaza_prob=float(r.uniform(0.0, 0.1)),
        aerial_sun_azimuth=float(r.uniform(90, 270)),
        aerial_sun_elevation=float(r.uniform(35, 70)),
        haze_rgb=_rgb(np.clip(np.array([0.72, 0.78, 0.86]) + r.uniform(-0.06, 0.06, 3), 0, 1)),
        fog_distance=float(r.uniform(150, 450)),
    )


@dataclasses.dataclass
class Scene:
    """Everything inside a square window of the city frame, as flat arrays (city-frame metres).

    ``road_u``: centres (u) of the roads running along v; ``road_v``: centres (v) of those running along u.
    ``rects``: (G, 4) ground rectangles [u0, u1, v0, v1] painted in order with ``rect_mat`` materials.
    ``buildings``: (M, 5) parts [u0, u1, v0, v1, height] with ``roof_rgb``, ``wall_rgb`` (M, 3) and
    ``pitched`` (M,) bool. ``trees``: (T, 5) [u, v, radius, canopy bottom, canopy top] with ``tree_rgb``.
    """

    road_u: np.ndarray
    road_v: np.ndarray
    road_width: float
    sidewalk: float
    rects: np.ndarray
    rect_mat: np.ndarray
    buildings: np.ndarray
    roof_rgb: np.ndarray
    wall_rgb: np.ndarray
    pitched: np.ndarray
    trees: np.ndarray
    tree_rgb: np.ndarray

    @classmethod
    def empty(cls, road_width=10.0, sidewalk=2.0):
        z = np.zeros
        return cls(z(0), z(0), road_width, sidewalk, z((0, 4)), z(0, np.int64), z((0, 5)), z((0, 3)),
                   z((0, 3)), z(0, bool), z((0, 5)), z((0, 3)))


def _jitter(r, rgb, amount):
    return np.clip(np.asarray(rgb) * (1 + r.uniform(-amount, amount)) + r.uniform(-amount, amount, 3) * 0.3,
                   0, 1)


class City:
    """The city of one seed: style, road lines, and block contents on demand."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.style = s = draw_style(self.seed)
        self.lines = []
        for axis in (0, 1):
            r = _rng(self.seed, 0x40AD, axis)
            n = int(2 * ROAD_EXTENT_M / (s.block_mean * 0.6)) + 2
            gaps = s.block_mean * r.uniform(0.6, 1.4, n)
            pos = np.concatenate([[0.0], np.cumsum(gaps)])
            pos -= pos[n // 2] + r.uniform(0, gaps[n // 2])
            self.lines.append(pos)
        # road_u: u-centres of roads running along v; road_v: v-centres of roads running along u.
        self.road_u, self.road_v = self.lines

    # -------------------------------------------------------------- frames
    @property
    def theta(self) -> float:
        return self.style.theta

    def origin(self):
        """Per-area UTM-like offset (easting, northing) in metres."""
        r = _rng(self.seed, 0x0719)
        return float(r.uniform(300000, 700000)), float(r.uniform(3.6e6, 5.3e6))

    def to_world(self, u, v):
        c, s = math.cos(self.theta), math.sin(self.theta)
        e0, n0 = self.origin()
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        return e0 + c * u - s * v, n0 + s * u + c * v

    # -------------------------------------------------------------- scenes
    def scene(self, u0: float, v0: float, half: float) -> Scene:
        """All roads, ground rectangles, buildings and trees that touch the window centre +- half."""
        s = self.style
        ru = self.road_u[(self.road_u > u0 - half - 20) & (self.road_u < u0 + half + 20)]
        rv = self.road_v[(self.road_v > v0 - half - 20) & (self.road_v < v0 + half + 20)]
        a0 = int(np.searchsorted(self.road_u, u0 - half)) - 1
        a1 = int(np.searchsorted(self.road_u, u0 + half))
        b0 = int(np.searchsorted(self.road_v, v0 - half)) - 1
        b1 = int(np.searchsorted(self.road_v, v0 + half))
        parts = [self._block(a, b) for a in range(max(a0, 0), a1 + 1) for b in range(max(b0, 0), b1 + 1)]
        def cat(k, shape):
            return np.concatenate([p[k] for p in parts]) if parts else np.zeros(shape)

        return Scene(ru, rv, s.road_width, s.sidewalk, cat(0, (0, 4)), cat(1, (0,)).astype(np.int64),
                     cat(2, (0, 5)), cat(3, (0, 3)), cat(4, (0, 3)), cat(5, (0,)).astype(bool),
                     cat(6, (0, 5)), cat(7, (0, 3)))

    @functools.lru_cache(maxsize=512)
    def _block(self, a: int, b: int):
        """Contents of the block between u-roads a, a+1 and v-roads b, b+1."""
        s = self.style
        r = _rng(self.seed, 0xB10C, a, b)
        edge = s.road_width / 2 + s.sidewalk
        ua, ub = self.road_u[a] + edge, self.road_u[a + 1] - edge
        va, vb = self.road_v[b] + edge, self.road_v[b + 1] - edge
        rects, mats, blds, roofs, walls, pitched, trees, trgb = [], [], [], [], [], [], [], []

        def tree(u, v, scale=1.0):
            rad = s.tree_size * scale * r.uniform(0.7, 1.3)
            bottom = r.uniform(1.8, 3.2)
            top = bottom + rad * r.uniform(1.6, 2.6)
            trees.append([u, v, rad, bottom, top])
            trgb.append(_jitter(r, s.tree_rgb, 0.15))

        # street trees on the sidewalk ring of this block
        if s.street_tree_spacing > 0:
            off = s.sidewalk / 2
            for (p0, p1, fixed, along_u) in ((ua, ub, va - off, True), (ua, ub, vb + off, True),
                                             (va, vb, ua - off, False), (va, vb, ub + off, False)):
                k = np.arange(p0 + s.street_tree_spacing / 2, p1, s.street_tree_spacing)
                for p in k:
                    if r.random() < 0.85:
                        pos = p + r.uniform(-1, 1)
                        tree(pos, fixed, 0.9) if along_u else tree(fixed, pos, 0.9)
        if ub - ua < 8 or vb - va < 8:
            rects.append([ua, ub, va, vb]), mats.append(CONCRETE)
            return self._pack(rects, mats, blds, roofs, walls, pitched, trees, trgb)
        kind = r.random()
        if kind < s.park_prob:
            rects.append([ua, ub, va, vb]), mats.append(GRASS)
            if r.random() < 0.6:  # pond
                w, h = (ub - ua) * r.uniform(0.2, 0.5), (vb - va) * r.uniform(0.2, 0.5)
                cu, cv = r.uniform(ua + w / 2, ub - w / 2), r.uniform(va + h / 2, vb - h / 2)
                rects.append([cu - w / 2, cu + w / 2, cv - h / 2, cv + h / 2]), mats.append(WATER)
            pu = r.uniform(ua, ub)
            rects.append([pu - 1.2, pu + 1.2, va, vb]), mats.append(DIRT)
            pond = rects[1] if len(rects) > 2 else None
            for _ in range(int((ub - ua) * (vb - va) / 120)):
                u, v = r.uniform(ua, ub), r.uniform(va, vb)
                if pond is not None and pond[0] - 3 < u < pond[1] + 3 and pond[2] - 3 < v < pond[3] + 3:
                    continue
                tree(u, v, 1.2)
        elif kind < s.park_prob + s.parking_prob:
            rects.append([ua, ub, va, vb]), mats.append(PARKING)  # stall lines painted by the raster
        elif kind < s.park_prob + s.parking_prob + s.plaza_prob:
            rects.append([ua, ub, va, vb]), mats.append(CONCRETE)
            for _ in range(int((ub - ua) * (vb - va) / 500)):
                tree(r.uniform(ua, ub), r.uniform(va, vb))
        else:
            yard = YARD if r.random() < 0.7 else DIRT
            rects.append([ua, ub, va, vb]), mats.append(yard)
            self._lots(r, ua, ub, va, vb, rects, mats, blds, roofs, walls, pitched, tree)
        return self._pack(rects, mats, blds, roofs, walls, pitched, trees, trgb)

    def _lots(self, r, ua, ub, va, vb, rects, mats, blds, roofs, walls, pitched, tree):
        """Rows of building lots along the longer side of a block (two rows when it is deep enough)."""
        s = self.style
        along_u = (ub - ua) >= (vb - va)
        length, depth = (ub - ua, vb - va) if along_u else (vb - va, ub - ua)
        rows = 2 if depth > 24 else 1
        row_depth = depth / rows
        n_lots = max(1, int(round(length / (s.lot_width * r.uniform(0.8, 1.2)))))
        edges = np.linspace(0, length, n_lots + 1)
        for row in range(rows):
            for k in range(n_lots):
                l0, l1 = edges[k], edges[k + 1]
                d0, d1 = row * row_depth, (row + 1) * row_depth
                if r.random() > s.building_prob:
                    if r.random() < s.yard_tree_prob * 2:
                        pl, pd = r.uniform(l0, l1), r.uniform(d0, d1)
                        tree(*((ua + pl, va + pd) if along_u else (ua + pd, va + pl)))
                    continue
                sb = s.setback * r.uniform(0.5, 1.5)
                side = r.uniform(0.5, 2.0)
                f_l0, f_l1 = l0 + side, l1 - side
                # setback from the street side of this row; small gap at the back
                f_d0 = d0 + (sb if row == 0 else 1.0)
                f_d1 = d1 - (sb if row == rows - 1 else 1.0)
                if f_l1 - f_l0 < 4 or f_d1 - f_d0 < 4:
                    continue
                h = float(np.clip(s.height_median * np.exp(r.normal(0, s.height_sigma)), 3.0, 40.0))
                roof = _jitter(r, s.roof_palette[int(r.integers(len(s.roof_palette)))], 0.08)
                wall = _jitter(r, s.wall_palette[int(r.integers(len(s.wall_palette)))], 0.08)
                pitch = bool(r.random() < s.pitched_prob and h < 14)
                footprint = [[f_l0, f_l1, f_d0, f_d1, h]]
                if r.random() < s.l_shape_prob:  # L-shape: a narrower wing of another height
                    cut_l = f_l0 + (f_l1 - f_l0) * r.uniform(0.4, 0.7)
                    cut_d = f_d0 + (f_d1 - f_d0) * r.uniform(0.35, 0.65)
                    h2 = float(np.clip(h * r.uniform(0.5, 1.3), 3.0, 40.0))
                    footprint = [[f_l0, cut_l, f_d0, f_d1, h], [cut_l, f_l1, f_d0, cut_d, h2]]
                for (p0, p1, q0, q1, hh) in footprint:
                    if along_u:
                        box = [ua + p0, ua + p1, va + q0, va + q1]
                    else:
                        box = [ua + q0, ua + q1, va + p0, va + p1]
                    blds.append(box + [hh]), roofs.append(roof), walls.append(wall), pitched.append(pitch)
                if r.random() < s.yard_tree_prob:
                    pl, pd = r.uniform(l0, l1), d0 + r.uniform(0.2, 0.8) * max(sb, 0.5)
                    tree(*((ua + pl, va + pd) if along_u else (ua + pd, va + pl)), 0.8)

    @staticmethod
    def _pack(rects, mats, blds, roofs, walls, pitched, trees, trgb):
        f = lambda x, k: np.asarray(x, np.float64).reshape(-1, k)  # noqa: E731
        return (f(rects, 4), np.asarray(mats, np.int64), f(blds, 5), f(roofs, 3), f(walls, 3),
                np.asarray(pitched, bool), f(trees, 5), f(trgb, 3))

    # -------------------------------------------------------------- locations
    def sample_locations(self, n: int, near_fraction: float = 0.1, spacing_m: float = 80.0):
        """``n`` street-view locations (u, v) along the roads, like a survey car.

        The sampled area grows with ``n`` so that there is about one location per ``spacing_m`` of road.
        A fraction ``near_fraction`` is placed 1 to 4.5 m from an earlier location (the CVACT_test 5 m rule);
        no two locations are closer than 1 m.
        Returns (n, 2) float64 city-frame coordinates; deterministic in (seed, n, near_fraction).
        """
        s = self.style
        r = _rng(self.seed, 0x10C5, n)
        side = max(300.0, math.sqrt(n * spacing_m * s.block_mean / 2.0))
        out = np.zeros((n, 2))
        lanes = s.road_width / 4
        ru = self.road_u[np.abs(self.road_u) < side / 2]
        rv = self.road_v[np.abs(self.road_v) < side / 2]
        grid = {}  # 2 m cells -> indices, to keep every two locations at least 1 m apart
        k = 0
        while k < n:
            if k > 0 and r.random() < near_fraction:
                base = out[int(r.integers(k))]
                ang = r.uniform(0, 2 * math.pi)
                p = base + r.uniform(1.0, 4.5) * np.array([math.cos(ang), math.sin(ang)])
            elif r.random() < len(ru) / max(1, len(ru) + len(rv)):
                lane_u = ru[int(r.integers(len(ru)))] + r.choice([-lanes, lanes])
                p = np.array([lane_u, r.uniform(-side / 2, side / 2)])
            else:
                along = r.uniform(-side / 2, side / 2)
                p = np.array([along, rv[int(r.integers(len(rv)))] + r.choice([-lanes, lanes])])
            cell = (int(p[0] // 2), int(p[1] // 2))
            close = [out[j] for dx in (-1, 0, 1) for dy in (-1, 0, 1)
                     for j in grid.get((cell[0] + dx, cell[1] + dy), ())]
            if any(math.hypot(*(p - q)) < 1.0 for q in close):
                continue
            out[k] = p
            grid.setdefault(cell, []).append(k)
            k += 1
        return out
