"""Contact sheet: aerial | its SAFA polar transform | panorama, for a few pairs, read back from disk.

The polar transform is :func:`common.data.polar.polar_transform_fast` (north at the centre column), so a person
can check by eye that the polar aerial and the panorama line up (same road directions and buildings at the
same columns).
"""

from __future__ import annotations

import os

import cv2
import numpy as np


def _fit(text: str, width: int, scale: float, thickness: int) -> str:
    """``text``, its middle elided ("ab..yz") until it fits ``width`` pixels."""
    fits = lambda t: cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0] <= width  # noqa: E731
    if fits(text):
        return text
    for keep in range(len(text) - 1, 3, -1):
        short = text[: (keep + 1) // 2] + ".." + text[len(text) - keep // 2:]
        if fits(short):
            return short
    return text[:4]


def _label(img, text):
    """``img`` with ``text`` in white on a dark band along its top, scaled to the image height and elided to
    the image width (a CVACT id has 22 characters), so it is legible on light sky and stays on its panel."""
    out = img.copy()
    h, w = out.shape[:2]
    scale = max(0.35, h / 260.0)
    thickness = 1
    text = _fit(text, w - 8, scale, thickness)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    band = out[: th + base + 6, : min(w, tw + 8)]
    band[:] = (band.astype(np.float32) * 0.35).astype(np.uint8)
    cv2.putText(out, text, (4, th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out


def write_contact_sheet(root: str, layout: str, plan, path: str, count: int = 4,
                        row_height: int = 128) -> str:
    """Write a PNG of ``count`` pairs (val first) to ``path``; returns ``path``."""
    from common.data.polar import polar_transform_fast

    order = [i for i in range(plan.n) if plan.split[i] == "val"] + \
            [i for i in range(plan.n) if plan.split[i] != "val"]
    rows = []
    for i in order[:count]:
        aerial_paths, ground_paths = plan.files(i)
        aerial = cv2.imread(os.path.join(root, aerial_paths[-1]), cv2.IMREAD_COLOR)
        pano = cv2.imread(os.path.join(root, ground_paths[-1]), cv2.IMREAD_COLOR)
        h = row_height
        a = cv2.resize(aerial, (h, h), interpolation=cv2.INTER_AREA)
        pw = int(round(h * pano.shape[1] / pano.shape[0]))
        polar = polar_transform_fast(aerial, max(8, h), pw)
        polar = cv2.resize(polar, (pw, h), interpolation=cv2.INTER_AREA)
        g = cv2.resize(pano, (pw, h), interpolation=cv2.INTER_AREA)
        centre = pw // 2  # north
        for im in (polar, g):
            im[:, centre] = (0, 0, 255)
        sep = np.full((h, 4, 3), 255, np.uint8)
        rows.append(np.hstack([_label(a, f"aerial {plan.ids[i]}"), sep, _label(polar, "polar (N = red line)"),
                               sep, _label(g, f"panorama ({plan.split[i]})")]))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    if not rows:
        return path
    sheet = np.vstack(rows[:-1])
    ok, buf = cv2.imencode(".png", sheet)
    from common.files import write_bytes

    write_bytes(path, buf.tobytes())
    return path
