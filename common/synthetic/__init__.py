"""The synthetic world: a procedural 2.5-D city per seed, rendered as aerial/panorama pairs in the exact
CVUSA and CVACT layouts (see the project's synthetic_world spec).

Public API::

    write_world(layout, out, seed, n_train, n_val, n_test=0, aerial_size=None, pano_size=None, workers=1,
                heading_noise_deg=0.0, near_fraction=0.1, vfov_deg=None, progress=True,
                contact_sheet=True) -> dict
    raw_pixel_baseline(root, layout, split="val", size=(16, 88)) -> dict      (common.synthetic.baseline)
    is_synthetic_root(root) -> bool        (a data root the world wrote: results on it are not comparable)

Modules: world (style, map, locations), render (raster, aerial, panorama, nuisances), noise,
layouts (writers), sheet (contact sheet), baseline (raw-pixel retrieval baseline), toy (tiny worlds of
noise images for pipeline checks). The pytest helper ``tiny_world`` is in tests/helpers/world.py.
"""

import os


def is_synthetic_root(root) -> bool:
    """Whether a data root was written by the synthetic world (it holds the world's ``synth.json``)."""
    return bool(root) and os.path.isfile(os.path.join(str(root), "synth.json"))


from common.synthetic.layouts import LAYOUTS, render_pair, write_world  # noqa: E402,F401
from common.synthetic.world import City, draw_style  # noqa: F401
