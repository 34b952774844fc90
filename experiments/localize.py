"""Localise a street-level panorama: its top-K aerial images from an index, with positions and distances.

    python -m experiments.localize --export EXPORT_DIR --index INDEX.npz --query pano.jpg [--top-k 5] [--out DIR]

The query (any size, uint8 JPEG/PNG, north at the centre column as in CVUSA/CVACT) is embedded with the
export's ``embed_ground`` endpoint and compared with every aerial descriptor of the index (exact search,
distance 2 - 2 cos). Prints the top-K ids, positions and distances; writes ``DIR/<query>.json`` and
``DIR/<query>.png`` (the query above its top-K aerial images).

**True match.** When the query's file name contains an id of the index (``0000019.jpg`` -> ``0000019``;
CVACT ``<id>_grdView.jpg`` -> ``<id>``; the longest such id wins) or ``--true-id`` names one, the output gives
its rank, marks it in the table and the picture (green frame), and, with positions, the error in metres of
the top-1 position.

The index must have been built with the same export (same weights fingerprint), else the command refuses.
"""

from __future__ import annotations

import argparse
import os
import sys

from common.errors import CVGLError, run_cli
from common.serving.localize import find_true_id, format_hits, localize, save_picture


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
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.top_k < 1:
        raise CVGLError(f"--top-k must be a positive integer, got {args.top_k}")

    from common.serving.export import load_export
    from common.data.images import read_rgb
    from common.files import write_json
    from common.serving.index import check_compatible, load_index

    image = read_rgb(args.query, "query image")
    index = load_index(args.index)
    export = load_export(args.export)
    check_compatible(index, export)
    true_id = args.true_id or find_true_id(args.query, index.ids)
    result = localize(export, index, image, k=min(args.top_k, len(index)), true_id=true_id, backend=args.backend,
                      say=lambda line: print(line, file=sys.stderr))
    result.update(query=os.path.abspath(args.query), index=index.path, export=export.path,
                  model=export.meta.get("name"))
    print(f"query {args.query} -> top {len(result['hits'])} of {len(index)} aerial images "
          f"({index.meta.get('dataset')}/{index.meta.get('split')})")
    print(format_hits(result))
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.splitext(os.path.basename(args.query))[0]
    json_path = os.path.join(args.out, f"{stem}.json")
    write_json(json_path, result)
    png_path = os.path.join(args.out, f"{stem}.png")
    save_picture(image, result, png_path, title=f"query {os.path.basename(args.query)}")
    print(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
