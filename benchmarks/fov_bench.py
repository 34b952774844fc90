"""How localisation falls with the query's field of view, and with an unknown heading.

    python -m benchmarks.fov_bench --export demo_out/exports/geodtr --root demo_out/data/city_a [--split val]

Every ground panorama of the split is turned into photos (:func:`common.serving.canvas.crop_from_panorama`) at
a heading drawn per query (seeded) and localised among the split's aerials with
:func:`common.serving.localize.localize`, as ``experiments.localize --fov`` does:

* ``360``: the panorama itself (the models' training input);
* ``180`` / ``90`` ``equirect``: a slice of the panorama (the limited-FoV protocol of the field);
* ``90`` / ``70`` ``pinhole``: a camera photo (4:3 landscape, as a phone), its vertical extent clipped to the
  panorama's rows;

each with the heading given (``--heading``) and unknown (``--headings 12``: every 30 degrees, best kept).
Prints R@1 / R@5 / R@10 per row (ties favour the query, as the index protocol) and chance.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

ROWS = [(360, "equirect"), (180, "equirect"), (90, "equirect"), (90, "pinhole"), (70, "pinhole")]


def build_parser():
    p = argparse.ArgumentParser(prog="python -m benchmarks.fov_bench", description=__doc__.split("\n\n")[0],
                                epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", required=True, help="export directory (experiments.export)")
    p.add_argument("--root", required=True, help="dataset folder in the CVUSA layout (e.g. a synthetic city)")
    p.add_argument("--split", default="val", help="split whose pairs are queries and gallery (default %(default)s)")
    p.add_argument("--limit", type=int, default=0, help="use the first N pairs only (default 0 = all)")
    p.add_argument("--headings", type=int, default=12,
                   help="candidate headings when the heading is unknown (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-query headings (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from common.data.images import read_rgb
    from common.data.readers import read_split
    from common.files import to_json
    from common.serving.canvas import crop_from_panorama
    from common.serving.export import load_export
    from common.serving.index import build_index, load_index
    from common.serving.localize import localize

    export = load_export(args.export)
    records = read_split("cvusa", args.root, args.split)
    if args.limit:
        records = records[: args.limit]
    n = len(records)
    with tempfile.TemporaryDirectory() as tmp:
        build_index(export, records, os.path.join(tmp, "index.npz"), progress=False,
                    description={"dataset": "cvusa", "split": args.split, "root": os.path.abspath(args.root)})
        index = load_index(os.path.join(tmp, "index.npz"))
    rng = np.random.default_rng(args.seed)
    heading = rng.uniform(0, 360, n)
    panos = [read_rgb(r.ground, "ground panorama") for r in records]
    ph, pw = panos[0].shape[:2]
    pano_vfov = 360.0 * ph / pw
    table = []
    for fov, projection in ROWS:
        for known in (True, False):
            if fov == 360 and not known:
                continue
            ranks = []
            for i, (rec, pano) in enumerate(zip(records, panos)):
                if fov == 360:
                    found = localize(export, index, pano, k=1, true_id=rec.id)
                else:
                    w = max(16, int(round(pw * fov / 360)))
                    hw = (ph, w) if projection == "equirect" else (max(16, int(round(w * 3 / 4))), w)
                    photo = crop_from_panorama(pano, pano_vfov, fov, heading[i], hw, projection)
                    found = localize(export, index, photo, k=1, true_id=rec.id, fov=fov,
                                     heading=heading[i] if known else None, n_headings=args.headings,
                                     projection=projection)
                ranks.append(found["true_rank"])
            ranks = np.asarray(ranks)
            row = {"fov": fov, "projection": projection, "heading": "given" if known else f"unknown ({args.headings})"}
            row.update({f"R@{k}": round(100.0 * float(np.mean(ranks <= k)), 1) for k in (1, 5, 10)})
            table.append(row)
            print(f"  {fov:>3} {projection:<9}{row['heading']:<14}R@1 {row['R@1']:5.1f}  R@5 {row['R@5']:5.1f}  "
                  f"R@10 {row['R@10']:5.1f}", file=sys.stderr, flush=True)
    chance = {f"R@{k}": round(100.0 * k / n, 1) for k in (1, 5, 10)}
    if args.json:
        print(to_json({"N": n, "model": export.meta.get("name"), "rows": table, "chance": chance}, indent=2))
        return 0
    print(f"{n} queries against {n} aerials ({args.split} of {args.root}), model {export.meta.get('name')}")
    print(f"{'FoV':>5}  {'projection':<11}{'heading':<15}{'R@1':>6}{'R@5':>7}{'R@10':>7}")
    for r in table:
        print(f"{r['fov']:>5}  {r['projection']:<11}{r['heading']:<15}{r['R@1']:>6.1f}{r['R@5']:>7.1f}{r['R@10']:>7.1f}")
    print(f"{'chance':<33}{chance['R@1']:>6.1f}{chance['R@5']:>7.1f}{chance['R@10']:>7.1f}")
    return 0


if __name__ == "__main__":
    from common.errors import run_cli

    run_cli(main)
