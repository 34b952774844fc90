"""An aerial index for localisation: embeddings of a gallery of aerial images, built with an export.

    python -m experiments.index build --export EXPORT_DIR --dataset cvusa --root DATA --split val --out INDEX.npz
    python -m experiments.index build --export EXPORT_DIR --tiles DIR --tiles-csv tiles.csv --out MAP.npz
    python -m experiments.index build --export EXPORT_DIR --orthophoto city.tif --stride-m 25 --out MAP.npz
    python -m experiments.index build ... --shard 0/2 --out part0.npz   (and 1/2: one process each)
    python -m experiments.index merge --out INDEX.npz part0.npz part1.npz
    python -m experiments.index build ... --ann hnsw --out BIG.npz    (approximate search, for 10^5+ tiles)
    python -m experiments.index ann --index INDEX.npz --ann ivfpq --out INDEX_PQ.npz   (no re-embedding)
    python -m experiments.index info --index INDEX.npz

``build`` reads aerial images from one of three sources and embeds them with the export's ``embed_aerial``
endpoint (the raw images: the export does the polar transform itself):

* a dataset split (``--dataset --root --split``);
* a folder of geo-referenced tiles and a CSV ``path,lat,lon[,m_per_px][,id]`` (``--tiles --tiles-csv``);
* a geo-referenced orthophoto (``--orthophoto``, GeoTIFF or any raster GDAL reads) cut into north-up tiles of
  ``--tile-m`` metres every ``--stride-m`` metres, resampled to ``--tile-px`` pixels; a raster in degrees, rotated
  or south-up is warped to its UTM zone on the fly (:mod:`common.geo.tiles`).

``--tile-m`` and ``--tile-px`` default to the ground and pixels of the model's training tiles when the export
records them (``experiments.export --aerial-extent-m --aerial-px``; the synthetic world's exports do). It writes
one ``.npz``:

    embeddings (N, d) float32   unit-norm aerial descriptors
    ids (N,)                    pair ids of the split, or tile ids (orthophoto: r<row>c<col>)
    positions (N, 2) float64    easting, northing in metres (a map: in the index CRS, meta "crs")
    latlon (N, 2) float64       latitude, longitude in degrees (NaN when unknown, e.g. a dataset split)
    aerial_paths (N,)           the images (or orthophoto tile references), for pictures
    meta                        JSON: fingerprint of the export's weights, export path, and the source

The file is written under a temporary name and renamed when complete. A long build saves its progress
every ``--checkpoint-every`` images to ``INDEX.partial.npz`` and resumes from it when run again with the same
export and split (the partial file is deleted when the index is complete).

Search (:func:`search`) is exact by default: the top-K by distance 2 - 2 cos, computed with
:func:`common.evaluation.search.topk_neighbours` (NumPy/TF blocks, or FAISS ``IndexFlatIP`` when it is installed and
the gallery is large, or with ``--backend faiss``).

**Approximate search** (``--ann flat|ivf|hnsw|ivfpq``, needs ``pip install faiss-cpu``): a FAISS structure is built
over the descriptors and stored in the same ``.npz`` (:mod:`common.serving.ann`). ``localize`` then searches through
it, re-ranks its candidates exactly, and says that the search was approximate (``localize --exact`` searches every
descriptor instead). Parameters default to the choices measured in docs/serving.md ("Approximate search at
scale"): ``ivf`` nlist ~ sqrt(N), nprobe nlist/32; ``hnsw`` M 32, efSearch 128; ``ivfpq`` 64-byte codes for
4096-d. Up to ~10^5 aerials exact search is fast enough and loses nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

from common.errors import CVGLError, run_cli
from common.serving.index import build_index, load_index


# -------------------------------------------------------------------------------------------------- CLI
def _source(args, export):
    """(records, description) of the build's source; exactly one of the three must be given."""
    given = [name for name, on in (("--dataset/--root", args.dataset or args.root), ("--tiles/--tiles-csv",
             args.tiles or args.tiles_csv), ("--orthophoto", args.orthophoto)) if on]
    if len(given) != 1:
        raise CVGLError("give one source of aerial images: --dataset and --root (a dataset split), --tiles and "
                        "--tiles-csv (geo-referenced tiles), or --orthophoto FILE.tif"
                        + (f"; got {' and '.join(given)}" if given else ""))
    extent, px = export.meta.get("aerial_extent_m"), export.meta.get("aerial_px")
    say = lambda line: print(line, file=sys.stderr)  # noqa: E731
    if args.orthophoto:
        from common.geo.tiles import orthophoto_tiles

        tile_m = args.tile_m or extent
        if not tile_m:
            raise CVGLError("--tile-m is needed: the export does not record the ground its training tiles covered "
                            "(give the metres one aerial image of the training data spans)")
        if extent and abs(tile_m - extent) > 0.05 * extent:
            say(f"--tile-m {tile_m:g} differs from the {extent:g} m the model was trained on; expect weaker matches")
        stride = args.stride_m or tile_m / 4
        return orthophoto_tiles(args.orthophoto, tile_m, stride, tile_px=args.tile_px or px, say=say)
    if args.tiles or args.tiles_csv:
        from common.geo.tiles import read_tiles_csv

        if not (args.tiles and args.tiles_csv):
            raise CVGLError("--tiles DIR and --tiles-csv CSV go together (the CSV's paths are relative to DIR)")
        return read_tiles_csv(args.tiles, args.tiles_csv, extent_m=args.tile_m or extent,
                              tile_px=args.tile_px or px, allow_missing=args.allow_missing, say=say)
    from common.data.readers import read_split

    if not (args.dataset and args.root):
        raise CVGLError("--dataset and --root go together (a dataset split to index)")
    records = read_split(args.dataset, args.root, args.split, allow_missing=args.allow_missing)
    return records, {"source": "dataset", "dataset": args.dataset, "split": args.split,
                     "root": os.path.abspath(args.root)}


def _ann(args):
    """(kind, parameters) of --ann and its parameter flags, or None."""
    given = {k: getattr(args, k) for k in ("nlist", "nprobe", "hnsw_m", "ef_search", "pq_m", "rerank")}
    if args.ann is None:
        named = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None]
        if named:
            raise CVGLError(f"{', '.join(named)} need --ann KIND (the approximate structure they tune)")
        return None
    from common.serving.ann import import_faiss

    import_faiss()  # refused before any embedding
    return args.ann, given


def _say(line):
    print(line, file=sys.stderr)


def _build(args):
    from common.serving.export import load_export
    from common.serving.localize import index_source

    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--checkpoint-every", args.checkpoint_every, 1),
                             ("--limit", args.limit, 0)):
        if value < low:
            raise CVGLError(f"{flag} must be >= {low}, got {value}" + (" (0 = all pairs)" if flag == "--limit" else ""))
    for flag, value in (("--tile-m", args.tile_m), ("--stride-m", args.stride_m)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise CVGLError(f"{flag} must be a positive number of metres, got {value}")
    if args.tile_px is not None and not 16 <= args.tile_px <= 2048:
        raise CVGLError(f"--tile-px must be in 16..2048 pixels, got {args.tile_px}")
    ann = _ann(args)
    if ann and args.shard:
        raise CVGLError("--ann applies to the whole gallery: give it to index merge, not to each --shard")
    export = load_export(args.export)
    records, description = _source(args, export)
    if args.limit:
        records = records[: args.limit]
    if args.shard:
        return _build_shard(args, export, records, description)
    meta = build_index(export, records, args.out, batch_size=args.batch_size,
                       checkpoint_every=args.checkpoint_every, description=description, ann=ann, say=_say)
    print(f"wrote {os.path.abspath(args.out)}: {meta['count']} aerial images of {index_source(meta)}, "
          f"{meta['descriptor_dim']}-d, model {meta.get('model')} (fingerprint {meta['fingerprint'][:12]})")
    return 0


def _build_shard(args, export, records, description):
    """Shard I of N of the build (common.evaluation.shards): the same chunks and batches as one process."""
    from common.evaluation.shards import parse_shard, shard_meta, shard_range, write_shard

    i, n = parse_shard(args.shard)
    if not args.out.endswith(".npz"):
        raise CVGLError(f"--out {args.out}: a shard is written as .npz")
    start, end = shard_range(len(records), i, n, args.batch_size, chunk=args.checkpoint_every)
    if start == end:
        raise CVGLError(f"shard {i}/{n} is empty: {len(records)} images make fewer batches of {args.batch_size} "
                        "than shards; use fewer shards")
    whole = f"{os.path.splitext(args.out)[0]}.unsharded.npz"  # build_index's own file (and its resume)
    meta = build_index(export, records[start:end], whole, batch_size=args.batch_size,
                       checkpoint_every=args.checkpoint_every, description=description, offset=start)
    with np.load(whole, allow_pickle=False) as z:
        arrays = {k: z[k] for k in ("embeddings", "ids", "positions", "latlon", "aerial_paths")}
    arrays["index_meta"] = np.asarray([json.dumps(meta)])
    write_shard(args.out, arrays, shard_meta(records, i, n, start, end, fingerprint=export.fingerprint,
                                             batch_size=args.batch_size, checkpoint_every=args.checkpoint_every))
    os.remove(whole)
    print(f"wrote shard {i}/{n} of the index: images {start}..{end - 1} of {len(records)} -> "
          f"{os.path.abspath(args.out)}; merge with python -m experiments.index merge --out INDEX.npz SHARD.npz ...")
    return 0


def _merge(args):
    from common.serving.index import merge_indexes

    meta = merge_indexes(args.shards, args.out, ann=_ann(args), say=_say)
    print(f"wrote {os.path.abspath(args.out)}: {meta['count']} aerial images from {meta['merged_from']} shards")
    return 0


def _add_ann(args):
    from common.serving.ann import describe
    from common.serving.index import add_ann

    ann = _ann(args)
    if ann is None:
        raise CVGLError("index ann needs --ann KIND (flat, ivf, hnsw or ivfpq)")
    if os.path.abspath(args.out) == os.path.abspath(args.index):
        raise CVGLError(f"--out {args.out} is the input index; write the approximate index to a new file")
    meta = add_ann(args.index, args.out, *ann, say=_say)
    print(f"wrote {os.path.abspath(args.out)}: {meta['count']} aerial images, "
          f"{describe(meta['ann']['kind'], meta['ann']['params'])}")
    return 0


def _info(args):
    idx = load_index(args.index)
    keys = ("model", "fingerprint", "source", "dataset", "split", "root", "orthophoto", "tiles_csv", "crs", "tile_m",
            "stride_m", "tile_px", "count", "descriptor_dim", "export", "created")
    for key in keys:
        if key in idx.meta or key in ("model", "fingerprint", "count"):
            print(f"{key:<15}{idx.meta.get(key)}")
    known = np.isfinite(idx.positions).all(axis=1).sum()
    print(f"{'positions':<15}{known} of {len(idx)} known")
    print(f"{'lat/lon':<15}{int(np.isfinite(idx.latlon).all(axis=1).sum())} of {len(idx)} known")
    if idx.approximate:
        from common.serving.ann import describe

        a = idx.meta["ann"]
        print(f"{'search':<15}{describe(a['kind'], a['params'])}, {a['bytes'] / 2**20:.1f} MiB, built in "
              f"{a['build_s']} s")
    else:
        print(f"{'search':<15}exact")
    return 0


def _ann_flags(p) -> None:
    from common.serving.ann import KINDS

    g = p.add_argument_group("approximate search (FAISS; see docs/serving.md for the measured recall)")
    g.add_argument("--ann", default=None, choices=KINDS,
                   help="add an approximate search structure: flat (exact, FAISS), ivf (k-means cells), hnsw "
                        "(graph), ivfpq (cells + 64-byte codes, for 10^6+) (default: none, exact search)")
    g.add_argument("--nlist", type=int, default=None,
                   help="ivf/ivfpq: k-means cells (default: the power of two nearest sqrt(N))")
    g.add_argument("--nprobe", type=int, default=None, help="ivf/ivfpq: cells read per query (default: nlist/32, "
                                                            "at least 8)")
    g.add_argument("--hnsw-m", type=int, default=None, help="hnsw: links per node (default 32)")
    g.add_argument("--ef-search", type=int, default=None, help="hnsw: search breadth (default 128)")
    g.add_argument("--pq-m", type=int, default=None,
                   help="ivfpq: bytes per code, dividing the descriptor size (default: size/64, 64 for 4096-d)")
    g.add_argument("--rerank", type=int, default=None,
                   help="candidates re-ranked exactly per query (default 50; ivfpq 200)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.index",
                                     description="Build or inspect an aerial index for experiments.localize.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="embed aerial images (a dataset split, geo-referenced tiles or an orthophoto) "
                                     "with an export", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--export", required=True, help="export directory written by experiments.export")
    b.add_argument("--dataset", default=None, choices=("cvusa", "cvact"),
                   help="dataset layout of --root (source 1; default: none)")
    b.add_argument("--root", default=None, help="dataset folder, CVUSA or CVACT layout (source 1; default: none)")
    b.add_argument("--tiles", default=None, help="folder of aerial tiles (source 2, with --tiles-csv; default: none)")
    b.add_argument("--tiles-csv", default=None,
                   help="CSV with a header path,lat,lon[,m_per_px][,id]; paths relative to --tiles (default: none)")
    b.add_argument("--orthophoto", default=None,
                   help="geo-referenced raster (GeoTIFF), cut into north-up tiles (source 3; default: none)")
    b.add_argument("--tile-m", type=float, default=None,
                   help="ground side of one tile in metres (default: the model's training tiles, from the export)")
    b.add_argument("--stride-m", type=float, default=None,
                   help="orthophoto: metres between tile centres (default: a quarter of --tile-m)")
    b.add_argument("--tile-px", type=int, default=None,
                   help="pixels per tile side after resampling (default: the model's training tiles, else the "
                        "orthophoto's own resolution)")
    b.add_argument("--split", default="val", choices=("train", "val", "test"), help="which split's aerials (default %(default)s)")
    b.add_argument("--out", required=True, help="index file to write (.npz)")
    b.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default %(default)s)")
    b.add_argument("--checkpoint-every", type=int, default=2048,
                   help="save progress every this many images, resumed when the build is run again "
                        "(default %(default)s)")
    b.add_argument("--limit", type=int, default=0, help="index only the first N pairs or tiles (default 0 = all)")
    b.add_argument("--shard", default=None, metavar="I/N",
                   help="build only shard I of N (0-based; cut on the one-process batches) into --out; join them "
                        "with index merge (default: the whole gallery)")
    b.add_argument("--allow-missing", action="store_true",
                   help="drop pairs or tiles whose image files are missing (default: refuse)")
    _ann_flags(b)
    m = sub.add_parser("merge", help="join the shards of index build --shard into one index (equal to a "
                                     "one-process build)")
    m.add_argument("--out", required=True, help="index file to write (.npz)")
    m.add_argument("shards", nargs="+", help="the shard files, every one of the N")
    _ann_flags(m)
    a = sub.add_parser("ann", help="write a copy of an index with an approximate search structure (no "
                                   "re-embedding)")
    a.add_argument("--index", required=True, help="index file (.npz)")
    a.add_argument("--out", required=True, help="index file to write (.npz)")
    _ann_flags(a)
    i = sub.add_parser("info", help="print what an index holds")
    i.add_argument("--index", required=True, help="index file (.npz)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "build":
        if args.batch_size < 1:
            raise CVGLError(f"--batch-size must be positive, got {args.batch_size}")
        return _build(args)
    if args.command == "merge":
        return _merge(args)
    if args.command == "ann":
        return _add_ann(args)
    return _info(args)


if __name__ == "__main__":
    run_cli(main)
