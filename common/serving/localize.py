"""Localise one street-level image: embed it with an export, search an aerial index, return the top-K
aerial ids with their similarities (and the true match's rank when the query's id is known); draw the hits.
The library behind ``python -m experiments.localize``.
"""

from __future__ import annotations

import os

import numpy as np

from common.errors import CVGLError


def find_true_id(query_path: str, ids) -> str | None:
    """The index id the query's file name names: the whole stem, else the longest id the stem starts with
    followed by a separator (``<id>_grdView``), else the longest id contained in the stem; None if none."""
    stem = os.path.splitext(os.path.basename(query_path))[0]
    idset = set(ids)
    if stem in idset:
        return stem
    prefixed = [i for i in idset if i and stem.startswith(i) and not stem[len(i)].isalnum()]
    if prefixed:
        return max(prefixed, key=len)
    inside = [i for i in idset if i and i in stem]
    return max(inside, key=len) if inside else None


MIN_SIDE = 16  # pixels: below this a query holds no usable layout
MAX_FACTOR = 8  # a query larger than this many times the model's input (per side) is area-downscaled first


def prepare_query(image: np.ndarray, spec: dict, what: str = "query image", say=None) -> np.ndarray:
    """Check a query panorama's size against the model's ground input ``spec`` (an InputSpec config).

    Too small (a side under :data:`MIN_SIDE` px): CVGLError. Much larger than the model reads (more than
    :data:`MAX_FACTOR` times its input per side): area-downscaled here, on the CPU, so that a 6000x30000
    photo does not cost gigabytes inside the graph (the export's own resize would give nearly the same
    pixels); ``say`` gets one line about it. Smaller than the input: embedded, with one line saying so.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise CVGLError(f"{what}: expected an RGB image, got an array of shape {image.shape} ({image.dtype})")
    h, w = image.shape[:2]
    gh, gw = spec["ground_size"]
    if min(h, w) < MIN_SIDE:
        raise CVGLError(f"{what} is {h}x{w} pixels: too small to localise (each side must be at least {MIN_SIDE} "
                        f"px; the model reads {gh}x{gw}); give the full panorama")
    if h > MAX_FACTOR * gh or w > MAX_FACTOR * gw:
        import cv2

        scale = min(MAX_FACTOR * gh / h, MAX_FACTOR * gw / w)
        nh, nw = max(MIN_SIDE, int(round(h * scale))), max(MIN_SIDE, int(round(w * scale)))
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
        if say:
            say(f"{what}: {h}x{w} is far larger than the model's {gh}x{gw} input; area-downscaled to {nh}x{nw} first")
    elif (h < gh or w < gw) and say:
        say(f"{what}: {h}x{w} is smaller than the model's {gh}x{gw} input; it is upsampled, expect a weaker match")
    return image


def query_views(export, image: np.ndarray, fov=None, heading=None, n_headings: int = 12,
                projection: str = "pinhole", say=None):
    """(images, headings): what the model is shown for one query. A panorama (``fov`` None) is itself, after
    :func:`prepare_query` (refused when its aspect ratio is not a panorama's); a photo of horizontal field of view
    ``fov`` is placed in a 360-degree canvas (:mod:`common.serving.canvas`) at ``heading``, or at each of
    ``n_headings`` candidate headings when the heading is unknown."""
    from common.serving import canvas as cv

    spec = export.meta["input_spec"]
    h, w = image.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise CVGLError(f"query image is {h}x{w} pixels: too small to localise (each side must be at least "
                        f"{MIN_SIDE} px)")
    if fov is None:
        if heading is not None:
            raise CVGLError("--heading needs --fov (the photo's horizontal field of view; 360 for a panorama "
                            "that is not north-aligned)")
        cv.check_panorama(image)
        return [prepare_query(image, spec, say=say)], [None]
    ch, cw, vfov = cv.canvas_geometry(spec, export.meta.get("dataset"))
    tried = [float(heading) % 360.0] if heading is not None else cv.headings(n_headings)
    return [cv.place_in_canvas(image, fov, t, (ch, cw), vfov, projection)[0] for t in tried], tried


def _latlon_or_none(index, j):
    ll = index.latlon[j]
    return [float(ll[0]), float(ll[1])] if np.all(np.isfinite(ll)) else None


def localize(export, index, image: np.ndarray, k: int = 5, true_id: str | None = None, backend: str = "auto",
             say=None, fov=None, heading=None, n_headings: int = 12, projection: str = "pinhole",
             true_latlon=None, exact: bool = False, ann_params: dict | None = None):
    """Top-k of one uint8 (H, W, 3) query: a dict with the hits (rank, id, position, lat/lon, distance) and,
    when ``true_id`` is in the index, its rank (1-based: one plus the number of aerials strictly closer).

    ``fov`` / ``heading`` / ``n_headings`` / ``projection``: a limited field-of-view photo (:func:`query_views`);
    with several candidate headings an aerial's similarity is its best over them, and each hit records the
    heading that gave it. ``true_latlon``: the query's true (lat, lon); hits then carry metres from it.
    An index with an approximate structure is searched through it (unless ``exact``; ``ann_params`` override its
    query-time parameters) and the result's ``search`` says so; the true match's rank is always exact."""
    from common.geo import haversine_m
    from common.serving.index import check_compatible, search

    check_compatible(index, export)
    views, tried = query_views(export, image, fov, heading, n_headings, projection, say)
    q = np.asarray(export.embed_ground(np.stack(views)), np.float32)  # (T, d)
    best = {}  # aerial -> (similarity, heading index): the top-k of the best over headings is in the union
    for t in range(len(tried)):
        idx, dist = search(index, q[t:t + 1], k, backend=backend, exact=exact, ann_params=ann_params)
        for j, d in zip(idx[0], dist[0]):
            if j < 0:  # an approximate structure that returned fewer than k candidates
                continue
            sim = 1.0 - float(d) / 2.0
            if int(j) not in best or sim > best[int(j)][0]:
                best[int(j)] = (sim, t)
    order = sorted(best, key=lambda j: (-best[j][0], j))[:k]
    hits = []
    for rank, j in enumerate(order):
        pos = index.positions[j]
        hit = {
            "rank": rank + 1,
            "id": index.ids[j],
            "position": None if not np.all(np.isfinite(pos)) else [float(pos[0]), float(pos[1])],
            "latlon": _latlon_or_none(index, j),
            "distance": 2.0 - 2.0 * best[j][0],
            "aerial": index.aerial_paths[j],
            "true_match": index.ids[j] == true_id,
        }
        if tried[best[j][1]] is not None:
            hit["heading"] = tried[best[j][1]]
        hits.append(hit)
    approximate = index.approximate and not exact
    if approximate:
        from common.serving.ann import query_params

        a = index.meta["ann"]
        search_info = {"approximate": True, "kind": a["kind"], "params": query_params(a["kind"], a["params"],
                                                                                       ann_params)}
    else:
        search_info = {"approximate": False}
    out = {"hits": hits, "true_id": true_id, "true_rank": None, "top1_error_m": None, "search": search_info,
           "view": {"fov": fov, "projection": projection if fov is not None else None,
                    "headings_tried": [t for t in tried if t is not None] or None,
                    "heading": hits[0].get("heading") if hits else None}}
    sims = (index.embeddings @ q.T).max(axis=1)
    if true_id is not None:
        where = [i for i, x in enumerate(index.ids) if x == true_id]
        if where:
            t = where[0]
            out["true_rank"] = int(np.sum(sims > sims[t])) + 1  # 1-based, ties favour the true match; exact
            out["true_distance"] = float(2.0 - 2.0 * sims[t])
            out["true_aerial"] = index.aerial_paths[t]
            p_true, p_top = index.positions[t], index.positions[order[0]]
            if true_latlon is None and np.all(np.isfinite(p_true)) and np.all(np.isfinite(p_top)):
                out["top1_error_m"] = float(np.hypot(*(p_top - p_true)))
                for h in hits:
                    if h["position"] is not None:
                        h["metres_from_true"] = float(np.hypot(*(np.asarray(h["position"]) - p_true)))
    if true_latlon is not None:
        out["true_latlon"] = [float(true_latlon[0]), float(true_latlon[1])]
        for h in hits:
            if h["latlon"] is not None:
                h["metres_from_true"] = float(haversine_m(true_latlon[0], true_latlon[1], *h["latlon"]))
        if hits and hits[0].get("metres_from_true") is not None:
            out["top1_error_m"] = hits[0]["metres_from_true"]
        else:
            say and say("the index has no lat/lon for its tiles: the distance to --true-latlon is unknown")
    return out


def index_source(meta: dict) -> str:
    """What an index was built from, in a few words."""
    if meta.get("source") == "orthophoto":
        return f"orthophoto {os.path.basename(meta['orthophoto'])}, {meta['tile_m']:g} m tiles every {meta['stride_m']:g} m"
    if meta.get("source") == "tiles":
        return f"tiles of {os.path.basename(meta['tiles_csv'])}"
    return f"{meta.get('dataset')}/{meta.get('split')}"


def format_hits(result: dict) -> str:
    geo = any(h.get("latlon") for h in result["hits"])
    head = f"{'lat':>12}{'lon':>13}" if geo else f"{'easting':>12}{'northing':>13}"
    off = any(h.get("metres_from_true") is not None for h in result["hits"])
    turn = any(h.get("heading") is not None for h in result["hits"])
    lines = [f"{'rank':>4}  {'id':<24}{head}{'distance':>10}" + (f"{'m off':>9}" if off else "")
             + (f"{'heading':>9}" if turn else "")]
    for h in result["hits"]:
        where = h.get("latlon") if geo else h["position"]
        fmt = "{:.6f}" if geo else "{:.1f}"
        a, b = (fmt.format(where[0]), fmt.format(where[1])) if where else ("-", "-")
        line = f"{h['rank']:>4}  {h['id']:<24}{a:>12}{b:>13}{h['distance']:>10.4f}"
        if off:
            m = h.get("metres_from_true")
            line += f"{m:>9.1f}" if m is not None else f"{'-':>9}"
        if turn:
            line += f"{h['heading']:>9.0f}"
        if h["true_match"]:
            line += "  <- true match"
        lines.append(line)
    if result["true_id"] is not None:
        if result["true_rank"] is None:
            lines.append(f"true match {result['true_id']!r}: not in the index")
        else:
            lines.append(f"true match {result['true_id']!r}: rank {result['true_rank']} of the index "
                         f"(distance {result['true_distance']:.4f})")
    if result.get("true_latlon") and result["hits"] and result["hits"][0].get("latlon"):
        lat, lon = result["hits"][0]["latlon"]
        lines.append(f"top-1 at lat {lat:.6f}, lon {lon:.6f}")
    if result["top1_error_m"] is not None:
        lines.append(f"top-1 is {result['top1_error_m']:.1f} m from the true position")
    search = result.get("search") or {}
    if search.get("approximate"):
        from common.serving.ann import describe

        lines.append(f"{describe(search['kind'], search['params'])}: the nearest aerials may be missed "
                     "(recall in docs/serving.md); --exact searches every descriptor")
    view = result.get("view") or {}
    if view.get("fov") is not None:
        tried = view.get("headings_tried") or []
        lines.append(f"photo: {view['fov']:g} degree field of view ({view['projection']}), "
                     + (f"heading {tried[0]:g} given" if len(tried) == 1 else
                        f"heading unknown: {len(tried)} headings tried, best {view['heading']:g}"))
    return "\n".join(lines)


def _thumb(path):
    from common.geo.tiles import read_tile

    try:
        return read_tile(path)
    except CVGLError:
        return None


def save_picture(query_img: np.ndarray, result: dict, path: str, title: str = "", canvas=None) -> None:
    """PNG: the query across the top, its top-K aerials below (true match framed in green); when the true match
    is outside the top-K it is shown last, labelled with its rank. ``canvas``: for a limited field-of-view
    photo, what the model saw (the photo in its 360-degree canvas), shown beside the photo."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(h["aerial"], f"#{h['rank']} {h['id']}\nd={h['distance']:.3f}"
               + (f", {h['metres_from_true']:.0f} m off" if h.get("metres_from_true") is not None else ""),
               h["true_match"]) for h in result["hits"]]
    if result.get("true_rank") and not any(h["true_match"] for h in result["hits"]):
        panels.append((result["true_aerial"], f"true {result['true_id']}\nrank {result['true_rank']}", True))
    n = max(len(panels), 1)
    fig = plt.figure(figsize=(max(2.2 * n, 8), 2.2 + 2.6))
    grid = fig.add_gridspec(2, n, height_ratios=[1.0, 1.3])
    if canvas is None:
        ax = fig.add_subplot(grid[0, :])
        ax.imshow(query_img)
        ax.set_title(title or "query", fontsize=9)
        ax.axis("off")
    else:
        top = grid[0, :].subgridspec(1, 2, width_ratios=[1.0, 3.0])
        ax = fig.add_subplot(top[0, 0])
        ax.imshow(query_img)
        ax.set_title(title or "query", fontsize=9)
        ax.axis("off")
        ax = fig.add_subplot(top[0, 1])
        ax.imshow(canvas)
        view = result.get("view") or {}
        ax.set_title(f"what the model saw: the photo in a 360-degree canvas (N at the centre, heading "
                     f"{view.get('heading') or 0:g}), the rest masked", fontsize=9)
        ax.axis("off")
    for i, (p, label, is_true) in enumerate(panels):
        ax = fig.add_subplot(grid[1, i])
        img = _thumb(p)
        if img is not None:
            ax.imshow(img)
        else:
            ax.text(0.5, 0.5, "image\nmissing", ha="center", va="center")
        ax.set_title(label, fontsize=7, color="green" if is_true else "black")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor("green" if is_true else "0.7")
            spine.set_linewidth(4 if is_true else 1)
    fig.tight_layout()
    from common.files import atomic_path

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
