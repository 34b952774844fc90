"""A picture of MGTL's cross-attention for one ground / aerial pair (arXiv 2203.09135, GKST block).

At step l the ground tower's block attends from each ground token (one azimuth bin, 20 at 112x616) to the
tokens of the aerial view *as imagined* by its G2S generator; the aerial tower does the same with S2G.
:func:`attention_figure` draws, above, the two input images (ground panorama, polar aerial; both 112x616,
with the 20 token columns marked) and, below, one row per step: the G2S map (rows: ground tokens, columns:
imagined aerial tokens) and the S2G map, averaged over the 6 heads (or one head), coloured from the map's own minimum to its maximum (the colour bar
gives the weights), with a red cross on each query's strongest key. Tokens are azimuth bins of
the same compass bearing in both views (polar aerial: north at the centre column), so weight on the diagonal
means "look at the same direction"; the dashed line marks it.

The ``no_cmi`` variant has self-attention instead (drawn the same way, titled so); ``backbone_only`` has no
attention and is refused with a CVGLError.
"""

from __future__ import annotations

import os

import numpy as np

from common.data.images import read_rgb
from common.data.specs import get_spec
from common.errors import CVGLError


def prepare_pair(ground_rgb: np.ndarray, aerial_rgb: np.ndarray, spec):
    """Raw uint8 RGB images -> (ground input, aerial input) of the model, each (1, H, W, 3) float32.

    The ground goes through :class:`common.serving.preprocess.GroundPreprocess` (crop rule, area resize, normalise).
    A square aerial image is polar-transformed at its own size (:class:`common.serving.preprocess.AerialPreprocess`);
    a non-square one is taken to be a polar map already and is only resized and normalised.
    """
    from keras import ops

    from common.data.specs import normalise
    from common.serving.preprocess import AerialPreprocess, GroundPreprocess

    spec = get_spec(spec)
    ground = np.asarray(GroundPreprocess(spec)(ground_rgb[None]), dtype="float32")
    h, w = aerial_rgb.shape[:2]
    if spec.polar and h == w:
        aerial = AerialPreprocess(spec, source_size=h)(aerial_rgb[None])
    else:
        x = ops.image.resize(ops.cast(aerial_rgb[None], "float32"), tuple(spec.aerial_size), interpolation="area")
        aerial = normalise(x, spec)
    return ground, np.asarray(aerial, dtype="float32")


def unwrap_model(model):
    """The MGTL model inside a loaded file (a bare MGTL, or an exported end-to-end wrapper)."""
    from mgtl_tf.model import MGTL

    inner = getattr(model, "model", None)
    if not isinstance(model, MGTL) and isinstance(inner, MGTL):
        model = inner
    if not isinstance(model, MGTL):
        raise CVGLError(f"the weights file holds a {type(model).__name__}, not an MGTL model; the attention "
                        f"picture needs an MGTL .keras file")
    if model.variant == "backbone_only":
        raise CVGLError("MGTL variant backbone_only has no attention to draw; use a full, naive or no_cmi model")
    return model


def attention_maps(model, ground, aerial, head="mean"):
    """{"ground": [(N, N) per step], "aerial": [...]} as numpy, averaged over heads or one head (int)."""
    maps = model.attention_maps(ground=ground, aerial=aerial)
    out = {}
    for view, per_step in maps.items():
        arrs = [np.asarray(a, dtype="float32")[0] for a in per_step]  # (heads, N, N)
        if head == "mean":
            out[view] = [a.mean(axis=0) for a in arrs]
        else:
            h = int(head)
            if not 0 <= h < arrs[0].shape[0]:
                raise CVGLError(f"--head {h} is out of range: the model has {arrs[0].shape[0]} heads "
                                f"(0..{arrs[0].shape[0] - 1}, or 'mean')")
            out[view] = [a[h] for a in arrs]
    return out


COMPASS = ((0, "N"), (90, "E"), (180, "S"), (270, "W"))


def bearing_ticks(size: float):
    """(positions, labels) of the compass points along an axis of ``size`` units (pixels or tokens) of a
    north-centred panorama or polar aerial: position p looks at bearing 180 + 360 p / size."""
    return [((b - 180) % 360) / 360 * size for b, _ in COMPASS], [f"{name} {b}" for b, name in COMPASS]


def token_ticks(n: int):
    """Compass-point ticks on token indices 0..n-1 (token k spans bearings 180 + 360 [k, k+1) / n)."""
    pos, lab = bearing_ticks(n)
    return [p - 0.5 for p in pos], lab


def attention_figure(maps: dict, ground_rgb: np.ndarray, aerial_rgb: np.ndarray, out_png: str,
                     title: str = "", self_attention: bool = False, head="mean") -> str:
    """Draw the picture described in the module docstring; writes ``out_png`` atomically and returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = len(maps["ground"])
    n = maps["ground"][0].shape[0]
    fig = plt.figure(figsize=(11, 2.6 + 2.9 * steps))
    grid = fig.add_gridspec(steps + 1, 2, height_ratios=[1.0] + [1.6] * steps, hspace=0.45, wspace=0.25)
    for col, (img, name) in enumerate(((ground_rgb, "ground panorama"), (aerial_rgb, "polar aerial"))):
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(img, aspect="auto")
        width = img.shape[1]
        for k in range(1, n):
            ax.axvline(k * width / n, color="white", lw=0.4, alpha=0.6)
        ax.set_title(f"{name} ({n} tokens = azimuth bins; compass bearing, degrees)", fontsize=9)
        pos, lab = bearing_ticks(width)
        ax.set_xticks(pos)
        ax.set_xticklabels(lab, fontsize=7)
        ax.set_yticks([])
    kind = "self-attention (w/o CMI)" if self_attention else "cross-attention"
    which = "mean over heads" if head == "mean" else f"head {head}"
    labels = {"ground": ("ground token", "imagined aerial token (G2S)" if not self_attention else "ground token"),
              "aerial": ("aerial token", "imagined ground token (S2G)" if not self_attention else "aerial token")}
    for step in range(steps):
        for col, view in enumerate(("ground", "aerial")):
            ax = fig.add_subplot(grid[step + 1, col])
            m = maps[view][step]
            lo, hi = float(m.min()), float(m.max())
            im = ax.imshow(m, cmap="viridis", vmin=lo, vmax=max(hi, lo + 1e-6), aspect="equal")
            ax.scatter(m.argmax(axis=1), np.arange(n), s=6, c="red", marker="x", linewidths=0.8)
            ax.plot([-0.5, n - 0.5], [-0.5, n - 0.5], "w--", lw=0.6, alpha=0.7)
            ax.set_title(f"step {step + 1}: {view} tower {kind}", fontsize=9)
            ax.set_ylabel(labels[view][0] + " (query)", fontsize=8)
            ax.set_xlabel(labels[view][1] + " (key)", fontsize=8)
            pos, lab = token_ticks(n)
            ax.set_xticks(pos)
            ax.set_xticklabels(lab)
            ax.set_yticks(pos)
            ax.set_yticklabels(lab)
            ax.tick_params(labelsize=6)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    fig.suptitle((title + "\n" if title else "") + f"MGTL {kind} per step, {which}", fontsize=11)
    out_dir = os.path.dirname(os.path.abspath(out_png))
    if not os.path.isdir(out_dir):
        raise CVGLError(f"output folder does not exist: {out_dir} (create it or choose another --out)")
    from common.files import atomic_path

    try:
        with atomic_path(out_png, makedirs=False) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return out_png


def show_attention(model, ground_path: str, aerial_path: str, out_png: str, head="mean", title="") -> dict:
    """Read a pair from disk, run both towers of an MGTL model, draw the picture. Returns the maps."""
    from common.data.specs import denormalise

    model = unwrap_model(model)
    ground_raw, aerial_raw = read_rgb(ground_path), read_rgb(aerial_path)
    ground, aerial = prepare_pair(ground_raw, aerial_raw, model.input_spec_)
    maps = attention_maps(model, ground, aerial, head=head)
    shown = [np.clip(np.asarray(denormalise(x[0], model.input_spec_)), 0, 255).astype("uint8")
             for x in (ground, aerial)]
    title = title or f"{os.path.basename(ground_path)}  /  {os.path.basename(aerial_path)}"
    attention_figure(maps, shown[0], shown[1], out_png, title=title,
                     self_attention=not model.ground_tower.has_generators, head=head)
    return maps
