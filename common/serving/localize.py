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


def localize(export, index, image: np.ndarray, k: int = 5, true_id: str | None = None, backend: str = "auto",
             say=None):
    """Top-k of one uint8 (H, W, 3) panorama: a dict with the hits (rank, id, position, distance) and, when
    ``true_id`` is in the index, its rank (0-based: the number of aerials strictly closer)."""
    from common.serving.index import check_compatible, search

    check_compatible(index, export)
    image = prepare_query(image, export.meta["input_spec"], say=say)
    q = export.embed_ground(image[None])
    idx, dist = search(index, q, k, backend=backend)
    hits = []
    for rank, (j, d) in enumerate(zip(idx[0], dist[0])):
        pos = index.positions[j]
        hits.append({
            "rank": rank + 1,
            "id": index.ids[j],
            "position": None if not np.all(np.isfinite(pos)) else [float(pos[0]), float(pos[1])],
            "distance": float(d),
            "aerial": index.aerial_paths[j],
            "true_match": index.ids[j] == true_id,
        })
    out = {"hits": hits, "true_id": true_id, "true_rank": None, "top1_error_m": None}
    if true_id is not None:
        where = [i for i, x in enumerate(index.ids) if x == true_id]
        if where:
            t = where[0]
            sims = index.embeddings @ q[0]
            out["true_rank"] = int(np.sum(sims > sims[t])) + 1  # 1-based, ties favour the true match
            out["true_distance"] = float(2.0 - 2.0 * sims[t])
            out["true_aerial"] = index.aerial_paths[t]
            p_true, p_top = index.positions[t], index.positions[idx[0][0]]
            if np.all(np.isfinite(p_true)) and np.all(np.isfinite(p_top)):
                out["top1_error_m"] = float(np.hypot(*(p_top - p_true)))
                for h in hits:
                    if h["position"] is not None:
                        h["metres_from_true"] = float(np.hypot(*(np.asarray(h["position"]) - p_true)))
    return out


def format_hits(result: dict) -> str:
    lines = [f"{'rank':>4}  {'id':<24}{'easting':>12}{'northing':>13}{'distance':>10}"]
    for h in result["hits"]:
        e, n = (f"{h['position'][0]:.1f}", f"{h['position'][1]:.1f}") if h["position"] else ("-", "-")
        mark = "  <- true match" if h["true_match"] else ""
        lines.append(f"{h['rank']:>4}  {h['id']:<24}{e:>12}{n:>13}{h['distance']:>10.4f}{mark}")
    if result["true_id"] is not None:
        if result["true_rank"] is None:
            lines.append(f"true match {result['true_id']!r}: not in the index")
        else:
            lines.append(f"true match {result['true_id']!r}: rank {result['true_rank']} of the index "
                         f"(distance {result['true_distance']:.4f})")
        if result["top1_error_m"] is not None:
            lines.append(f"top-1 is {result['top1_error_m']:.1f} m from the true position")
    return "\n".join(lines)


def _thumb(path):
    from common.data.images import read_rgb

    try:
        return read_rgb(path, "aerial image")
    except CVGLError:
        return None


def save_picture(query_img: np.ndarray, result: dict, path: str, title: str = "") -> None:
    """PNG: the query panorama across the top, its top-K aerials below (true match framed in green); when the
    true match is outside the top-K it is shown last, labelled with its rank."""
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
    ax = fig.add_subplot(grid[0, :])
    ax.imshow(query_img)
    ax.set_title(title or "query", fontsize=9)
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
