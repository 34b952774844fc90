"""Localise a street-level panorama or photo: its top-K aerial images from an index, with positions and distances.

    python -m experiments.localize --export EXPORT_DIR --index INDEX.npz --query pano.jpg [--top-k 5] [--out DIR]
    python -m experiments.localize --export EXPORT_DIR --index MAP.npz --query photo.jpg --fov 70 [--heading 135]

The query (any size, uint8 JPEG/PNG) is embedded with the export's ``embed_ground`` endpoint and compared with
every aerial descriptor of the index (exact search, distance 2 - 2 cos). Prints the top-K ids, positions (lat/lon
for a map index: ``index build --orthophoto`` / ``--tiles-csv``) and distances; writes ``DIR/<query>.json`` and
``DIR/<query>.png`` (the query above its top-K aerial images).

**Panorama or photo.** Without ``--fov`` the query must be a north-aligned panorama (north at the centre column,
as CVUSA/CVACT; aspect 2:1 or wider); a narrower image is refused with the flag to use. With ``--fov DEG`` it is
a photo of that horizontal field of view: it is placed in a 360-degree canvas at ``--heading`` (compass degrees
of its centre, clockwise from north) with the rest masked, as the panorama-trained models expect
(:mod:`common.serving.canvas`); with no heading, ``--headings N`` candidate headings are tried and the best kept.
The picture then shows the canvas (what the model saw) beside the photo. Expect much weaker matches than with a
panorama: docs/serving.md has the measured fall with the field of view.

**True match.** When the query's file name contains an id of the index (``0000019.jpg`` -> ``0000019``;
CVACT ``<id>_grdView.jpg`` -> ``<id>``; the longest such id wins) or ``--true-id`` names one, the output gives
its rank, marks it in the table and the picture (green frame), and, with positions, the error in metres of
the top-1 position. ``--true-latlon LAT,LON`` gives the true position of a query on a map index: every hit
then carries its distance in metres from it.

The index must have been built with the same export (same weights fingerprint), else the command refuses.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from common.errors import CVGLError, run_cli
from common.serving.localize import find_true_id, format_hits, index_source, localize, save_picture


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.localize",
        description="Find where a street-level panorama was taken: its top-K aerial images in an index built "
        "by experiments.index with the same export.",
    )
    parser.add_argument("--export", required=True, help="export directory written by experiments.export")
    parser.add_argument("--index", required=True, help="index file written by experiments.index build")
    parser.add_argument("--query", required=True, help="ground panorama image (JPEG/PNG, any size, north-aligned)")
    parser.add_argument("--top-k", type=int, default=5, help="how many aerial candidates to list (default %(default)s)")
    parser.add_argument("--out", default="localize_out",
                        help="folder for <query>.json and <query>.png (default: localize_out)")
    parser.add_argument("--true-id", default=None,
                        help="id of the true aerial, when the query file name does not contain it")
    parser.add_argument("--backend", default="auto", choices=("auto", "numpy", "tf", "faiss"),
                        help="exact search backend (default auto: FAISS for galleries of 100k+ when installed)")
    parser.add_argument("--exact", action="store_true",
                        help="search every descriptor even when the index has an approximate structure (--ann) "
                             "(default: use it)")
    parser.add_argument("--nprobe", type=int, default=None,
                        help="approximate ivf/ivfpq index: cells read per query (default: the index's)")
    parser.add_argument("--ef-search", type=int, default=None,
                        help="approximate hnsw index: search breadth (default: the index's)")
    parser.add_argument("--rerank", type=int, default=None,
                        help="approximate index: candidates re-ranked exactly (default: the index's)")
    parser.add_argument("--true-latlon", default=None, metavar="LAT,LON",
                        help="the query's true position in degrees (WGS 84): hits carry metres from it (default: "
                             "unknown)")
    parser.add_argument("--fov", type=float, default=None, metavar="DEG",
                        help="the query is a photo with this horizontal field of view in degrees (a phone: about "
                             "65-75); default: the query is a panorama")
    parser.add_argument("--heading", type=float, default=None, metavar="DEG",
                        help="compass heading of the photo's centre, degrees clockwise from north (default: "
                             "unknown, --headings candidates are tried)")
    parser.add_argument("--headings", type=int, default=12,
                        help="candidate headings tried when --heading is not given (default %(default)s, every "
                             "30 degrees)")
    parser.add_argument("--projection", default="pinhole", choices=("pinhole", "equirect"),
                        help="the photo's projection: pinhole (a normal camera) or equirect (a slice of a "
                             "panorama; needed beyond 170 degrees) (default %(default)s)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.top_k < 1:
        raise CVGLError(f"--top-k must be a positive integer, got {args.top_k}")
    for flag, v in (("--fov", args.fov), ("--heading", args.heading)):
        if v is not None and not math.isfinite(v):
            raise CVGLError(f"{flag} must be a finite number of degrees, got {v}")

    from common.serving.export import load_export
    from common.data.images import read_rgb
    from common.files import write_json
    from common.serving.index import check_compatible, load_index

    from common.geo import parse_latlon
    from common.serving.localize import query_views

    true_latlon = parse_latlon(args.true_latlon, "--true-latlon") if args.true_latlon else None
    image = read_rgb(args.query, "query image")
    index = load_index(args.index)
    export = load_export(args.export)
    check_compatible(index, export)
    ann_params = {"nprobe": args.nprobe, "ef_search": args.ef_search, "rerank": args.rerank}
    given = [f"--{k.replace('_', '-')}" for k, v in ann_params.items() if v is not None]
    if given and (not index.approximate or args.exact):
        raise CVGLError(f"{', '.join(given)} tune an approximate index; {args.index} is searched exactly"
                        + (" (--exact)" if args.exact else " (it was built without --ann)"))
    if index.approximate and not args.exact:
        from common.serving.ann import query_params

        query_params(index.meta["ann"]["kind"], index.meta["ann"]["params"], ann_params)  # refused before embedding
    true_id = args.true_id or find_true_id(args.query, index.ids)
    say = lambda line: print(line, file=sys.stderr)  # noqa: E731
    result = localize(export, index, image, k=min(args.top_k, len(index)), true_id=true_id, backend=args.backend,
                      say=say, fov=args.fov, heading=args.heading, n_headings=args.headings,
                      projection=args.projection, true_latlon=true_latlon, exact=args.exact,
                      ann_params=ann_params)
    result.update(query=os.path.abspath(args.query), index=index.path, export=export.path,
                  model=export.meta.get("name"))
    print(f"query {args.query} -> top {len(result['hits'])} of {len(index)} aerial images "
          f"({index_source(index.meta)})")
    print(format_hits(result))
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.splitext(os.path.basename(args.query))[0]
    json_path = os.path.join(args.out, f"{stem}.json")
    write_json(json_path, result)
    png_path = os.path.join(args.out, f"{stem}.png")
    canvas = None
    if args.fov is not None:  # what the model saw, at the heading of the top-1 hit
        canvas = query_views(export, image, args.fov, result["view"]["heading"], projection=args.projection)[0][0]
    save_picture(image, result, png_path, title=f"query {os.path.basename(args.query)}", canvas=canvas)
    print(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
