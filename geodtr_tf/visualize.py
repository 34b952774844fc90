"""Picture of GeoDTR's K geometric layout descriptors over a panorama and its (polar) aerial image, as the
paper's visualisation (Zhang et al., AAAI 2023, the layout-descriptor figures): for each descriptor k the map
P[:, k] ∈ [−1, 1] over the backbone grid (8x42 for 122x671 inputs, 16x16 for a raw 256x256 aerial),
upsampled to the image and drawn with a diverging colour map (red +1, blue −1) on top of it.

* :func:`prepare_pair` -- raw RGB images -> model inputs and the pictures they show (same rules as the
  export's preprocessing: a CVACT-style 2:1 panorama is cut to its middle half; a square aerial is
  polar-transformed for polar models, a non-square one is taken as a polar map already);
* :func:`layout_maps` -- {"ground", "aerial"}: (K, h, w) descriptor maps of a GeoDTR model;
* :func:`draw_layout` -- the PNG (written atomically);
* :func:`show_descriptors` -- all three from file paths (models load with :func:`common.serving.loading.load_model`).
"""

from __future__ import annotations


import numpy as np

from common.data.images import read_rgb
from common.errors import CVGLError


def prepare_pair(spec, ground_rgb, aerial_rgb):
    """uint8 RGB images -> (ground_in, aerial_in) normalised (1, H, W, 3) float32 and the uint8 pictures."""
    import cv2

    from common.data.specs import normalise

    g = np.asarray(ground_rgb)
    if g.shape[1] / g.shape[0] < 3:  # full equirectangular panorama: keep the horizon band (rows H/4..3H/4)
        h = g.shape[0]
        g = g[h // 4: 3 * h // 4]
    gh, gw = spec.ground_size
    g = cv2.resize(g, (gw, gh), interpolation=cv2.INTER_AREA)
    a = np.asarray(aerial_rgb)
    ah, aw = spec.aerial_size
    if spec.polar and a.shape[0] == a.shape[1]:
        from common.data.polar import polar_transform_fast

        a = polar_transform_fast(a, ah, aw)
    elif not spec.polar and a.shape[0] != a.shape[1]:
        raise CVGLError(f"the model takes a raw square aerial image, got {a.shape[1]}x{a.shape[0]}")
    if a.shape[:2] != (ah, aw):
        a = cv2.resize(a, (aw, ah), interpolation=cv2.INTER_AREA)
    g_in = normalise(g.astype(np.float32), spec)[None]
    a_in = normalise(a.astype(np.float32), spec)[None]
    return g_in.astype(np.float32), a_in.astype(np.float32), g, a


def layout_maps(model, ground_in, aerial_in) -> dict:
    """{"ground": (K, h, w), "aerial": (K, h, w)} descriptor maps P = hardtanh(Q) of the first image."""
    out = {}
    for view, x in (("ground", ground_in), ("aerial", aerial_in)):
        _, p, (h, w) = model.layout(x, view, training=False)
        p = np.asarray(p)[0]  # (N, K), n = row·w + col
        out[view] = p.T.reshape(p.shape[1], h, w)
    return out


def draw_layout(ground_img, aerial_img, maps, out_png, title="", alpha=0.55) -> str:
    """K rows x 2 columns (panorama | aerial), each descriptor map over its image; writes ``out_png``."""
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = maps["ground"].shape[0]
    ga = ground_img.shape[1] / ground_img.shape[0]
    aa = aerial_img.shape[1] / aerial_img.shape[0]
    row_h = 1.0 if max(ga, aa) > 3 else 2.2  # inches per row: panoramas are wide, raw aerials square
    fig_w = row_h * (ga + aa) + 2.2
    fig, axes = plt.subplots(k + 1, 2, figsize=(fig_w, (k + 1) * (row_h + 0.35) + 0.7),
                             gridspec_kw={"width_ratios": [ga, aa]}, squeeze=False, layout="constrained")
    axes[0, 0].imshow(ground_img)
    axes[0, 0].set_title("ground panorama")
    axes[0, 1].imshow(aerial_img)
    axes[0, 1].set_title("aerial (polar)" if aa > 1.5 else "aerial")
    image = None
    # one symmetric colour scale for every map, from the largest |P| drawn: a fixed +-1 would render the
    # small ranges of a briefly trained model (e.g. P in [-0.1, 0.3]) as one flat colour
    vmax = max(1e-3, max(float(np.abs(maps[v]).max()) for v in ("ground", "aerial")))
    for i in range(k):
        for j, (view, img) in enumerate((("ground", ground_img), ("aerial", aerial_img))):
            m = cv2.resize(maps[view][i].astype(np.float32), (img.shape[1], img.shape[0]),
                           interpolation=cv2.INTER_LINEAR)
            ax = axes[i + 1, j]
            ax.imshow(img, alpha=1.0)
            image = ax.imshow(m, cmap="coolwarm", vmin=-vmax, vmax=vmax, alpha=alpha)
            lo, hi = float(maps[view][i].min()), float(maps[view][i].max())
            ax.set_xlabel(f"{view} k={i}: P in [{lo:.2f}, {hi:.2f}]", fontsize=7, labelpad=1)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.03, pad=0.01, label=f"P (layout descriptor), scale +-{vmax:.2g}")
    fig.suptitle(title or f"GeoDTR: {k} geometric layout descriptors")
    from common.files import atomic_path

    try:
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return out_png




def show_descriptors(model, ground_path, aerial_path, out_png, title="") -> dict:
    """Read the two images, run the model, draw the picture; returns the maps."""
    g_in, a_in, g_img, a_img = prepare_pair(model.input_spec_, read_rgb(ground_path), read_rgb(aerial_path))
    maps = layout_maps(model, g_in, a_in)
    draw_layout(g_img, a_img, maps, out_png, title=title)
    return maps
