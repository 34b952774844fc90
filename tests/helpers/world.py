"""A tiny synthetic world for tests: ``tiny_world(tmp_path, "cvusa")`` -> root folder, in about a second.

Usage in a pytest test of any area::

    from tests.helpers.world import tiny_world

    def test_reader(tmp_path):
        root = tiny_world(tmp_path, "cvact", n_train=8, n_val=4, n_test=4)
        records = read_split("cvact", root, "val")

Worlds are cached per process by their arguments (the first call writes, later calls with the same
arguments copy nothing and return the same folder when ``tmp_path`` is the same, else write again).
"""

from __future__ import annotations

import os

from common.synthetic.layouts import write_world


def tiny_world(tmp_path, layout: str = "cvusa", seed: int = 0, n_train: int = 24, n_val: int = 16,
               n_test: int = 0, aerial_size: int = 128, pano_size=(32, 176), workers: int = 1, **kw) -> str:
    """Write a small world under ``tmp_path/<layout>-<seed>-...`` and return its root (a str path).

    Defaults: 24 train + 16 val pairs, aerial 128 px, panorama 32x176, no contact sheet, no progress bar.
    Extra keyword arguments go to :func:`common.synthetic.write_world`.
    """
    name = f"{layout}-s{seed}-{n_train}-{n_val}-{n_test}-{aerial_size}-{pano_size[0]}x{pano_size[1]}"
    root = os.path.join(os.fspath(tmp_path), name)
    if os.path.isfile(os.path.join(root, "synth.json")) and not kw:
        return root
    kw.setdefault("progress", False)
    kw.setdefault("contact_sheet", False)
    write_world(layout, root, seed, n_train, n_val, n_test, aerial_size=aerial_size, pano_size=pano_size,
                workers=workers, **kw)
    return root
