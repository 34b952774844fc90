"""An aerial index for localisation: embeddings of a gallery of aerial images, built with an export.

    python -m experiments.index build --export EXPORT_DIR --dataset cvusa --root DATA --split val --out INDEX.npz
    python -m experiments.index info --index INDEX.npz

``build`` reads the split's aerial images (the raw ones: the export does the polar transform itself),
embeds them with the export's ``embed_aerial`` endpoint and writes one ``.npz``:

    embeddings (N, d) float32   unit-norm aerial descriptors
    ids (N,)                    pair ids of the split
    positions (N, 2) float64    easting, northing in metres (NaN when the dataset has none)
    aerial_paths (N,)           the images, for pictures
    meta                        JSON: fingerprint of the export's weights, export path, dataset, split, root

The file is written under a temporary name and renamed when complete. A long build saves its progress
every ``--checkpoint-every`` images to ``INDEX.partial.npz`` and resumes from it when run again with the same
export and split (the partial file is deleted when the index is complete).

Search (:func:`search`) is exact: the top-K by distance 2 - 2 cos, computed with
:func:`common.evaluation.search.topk_neighbours` (NumPy/TF blocks, or FAISS ``IndexFlatIP`` when it is installed and
the gallery is large, or with ``--backend faiss``).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from common.errors import CVGLError, run_cli
from common.serving.index import build_index, load_index


# ---------------------------------------------------------------------------------------------- images


# ------------------------------------------------------------------------------------------------ build


# ------------------------------------------------------------------------------------------------- load


# -------------------------------------------------------------------------------------------------- CLI
def _build(args):
    from common.data.readers import read_split
    from common.serving.export import load_export

    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--checkpoint-every", args.checkpoint_every, 1),
                             ("--limit", args.limit, 0)):
        if value < low:
            raise CVGLError(f"{flag} must be >= {low}, got {value}" + (" (0 = all pairs)" if flag == "--limit" else ""))
    export = load_export(args.export)
    records = read_split(args.dataset, args.root, args.split, allow_missing=args.allow_missing)
    if args.limit:
        records = records[: args.limit]
    meta = build_index(export, records, args.out, batch_size=args.batch_size,
                       checkpoint_every=args.checkpoint_every,
                       description={"dataset": args.dataset, "split": args.split, "root": os.path.abspath(args.root)})
    print(f"wrote {os.path.abspath(args.out)}: {meta['count']} aerial images of {args.dataset}/{args.split}, "
          f"{meta['descriptor_dim']}-d, model {meta.get('model')} (fingerprint {meta['fingerprint'][:12]})")
    return 0


def _info(args):
    idx = load_index(args.index)
    for key in ("model", "fingerprint", "dataset", "split", "root", "count", "descriptor_dim", "export", "created"):
        print(f"{key:<15}{idx.meta.get(key)}")
    known = np.isfinite(idx.positions).all(axis=1).sum()
    print(f"{'positions':<15}{known} of {len(idx)} known")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.index",
                                     description="Build or inspect an aerial index for experiments.localize.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="embed a split's aerial images with an export")
    b.add_argument("--export", required=True, help="export directory written by experiments.export")
    b.add_argument("--dataset", required=True, choices=("cvusa", "cvact"), help="dataset layout of --root")
    b.add_argument("--root", required=True, help="dataset folder (CVUSA or CVACT layout)")
    b.add_argument("--split", default="val", choices=("train", "val", "test"), help="which split's aerials (default %(default)s)")
    b.add_argument("--out", required=True, help="index file to write (.npz)")
    b.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default %(default)s)")
    b.add_argument("--checkpoint-every", type=int, default=2048,
                   help="save progress every this many images, resumed when the build is run again "
                        "(default %(default)s)")
    b.add_argument("--limit", type=int, default=0, help="index only the first N pairs (default 0 = all)")
    b.add_argument("--allow-missing", action="store_true", help="drop pairs whose image files are missing")
    i = sub.add_parser("info", help="print what an index holds")
    i.add_argument("--index", required=True, help="index file (.npz)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "build":
        if args.batch_size < 1:
            raise CVGLError(f"--batch-size must be positive, got {args.batch_size}")
        return _build(args)
    return _info(args)


if __name__ == "__main__":
    run_cli(main)
