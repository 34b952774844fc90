"""The raw-pixel retrieval baseline: the number any trained model must beat on an unseen city.

Every ground panorama of a split (CVACT: the centre half of the rows, as SAFA/GeoDTR crop it) and every
aerial image's SAFA polar transform (:func:`common.data.polar.polar_transform_fast`, 112 x 616) are resized with
area interpolation to ``size`` (H, W), flattened, centred and L2-normalised; panorama j is the query, the
polar aerials are the references, and the distance is the Euclidean pixel distance between the normalised
vectors (equivalently: normalised cross-correlation). Recall follows the evaluation protocol exactly:
rank = number of references strictly closer than the true match, hit@K iff rank < K, R@1% with
K = floor(0.01 N) (:func:`common.evaluation.retrieval.recall_at_k`). Chance level is K / N.
"""

from __future__ import annotations

import cv2
import numpy as np

from common.errors import CVGLError

POLAR_SIZE = (112, 616)


def _read(path):
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise CVGLError(f"cannot read image {path}; the file is missing or corrupt (write the world again)")
    return img


def _vector(img, size):
    x = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    x -= x.mean()
    return x / max(float(np.linalg.norm(x)), 1e-6)


def pixel_vectors(records, layout: str, size=(16, 88)):
    """(ground vectors, polar-aerial vectors), each (N, 3 H W) float32 unit-norm."""
    from common.data.readers import crop_rows
    from common.data.polar import polar_transform_fast

    g, a = [], []
    for rec in records:
        pano = _read(rec.ground)
        if layout == "cvact":
            top, bottom = crop_rows(pano.shape[0])
            pano = pano[top:bottom]
        g.append(_vector(pano, size))
        aerial = _read(rec.aerial)
        a.append(_vector(polar_transform_fast(aerial, *POLAR_SIZE), size))
    return np.stack(g), np.stack(a)


def raw_pixel_baseline(root, layout: str, split: str = "val", size=(16, 88)) -> dict:
    """Recall (percent) of raw-pixel retrieval on one split, with the chance levels beside it.

    Returns ``{"R@1", "R@5", "R@10", "R@1%", "K_1pct", "N", "chance": {same keys}, "curve", "size", "split",
    "layout"}``; ``curve[K-1]`` is R@K for K = 1 .. max(10, K_1pct) (for recall plots).
    """
    from common.data.readers import read_split
    from common.evaluation.retrieval import recall_at_k

    size = (int(size[0]), int(size[1]))
    records = read_split(layout, root, split)
    if len(records) < 2:
        raise CVGLError(f"{root}: split {split!r} has {len(records)} pair(s); the baseline needs at least 2")
    ground, polar = pixel_vectors(records, layout, size)
    rec = recall_at_k(ground, polar, ks=(1, 5, 10), backend="numpy", dtype="float64")
    n = len(records)
    k1 = rec["K_1pct"]
    chance = {f"R@{k}": 100.0 * min(k, n) / n for k in (1, 5, 10)}
    chance["R@1%"] = 100.0 * k1 / n if k1 else None
    return {"R@1": rec["R@1"], "R@5": rec["R@5"], "R@10": rec["R@10"], "R@1%": rec["R@1%"], "K_1pct": k1,
            "N": n, "chance": chance, "curve": rec["curve"], "size": list(size), "split": split, "layout": layout}


def format_baseline(result: dict) -> str:
    """A small table: raw-pixel recall beside chance."""
    def f(x):
        return "-" if x is None else f"{x:6.2f}"

    keys = ("R@1", "R@5", "R@10", "R@1%")
    head = f"{'':12s}" + "".join(f"{k:>8s}" for k in keys)
    rows = [head,
            f"{'raw pixels':12s}" + "".join(f"{f(result[k]):>8s}" for k in keys),
            f"{'chance':12s}" + "".join(f"{f(result['chance'][k]):>8s}" for k in keys)]
    note = (f"{result['layout']} {result['split']}: N = {result['N']}, R@1% at K = {result['K_1pct']}, "
            f"images compared at {result['size'][0]}x{result['size'][1]} (recall in %)")
    return "\n".join(rows + [note])
