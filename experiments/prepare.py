"""Validate a CVUSA / CVACT folder and precompute what the input pipeline reads.

    python -m experiments.prepare --dataset cvusa --root DATA/CVUSA [--workers 4] [--check-only]
                                  [--allow-missing] [--verify] [--sizes 122x671 112x616]

1. Reads every split (:func:`common.data.readers.read_split`) and prints a table: pairs listed, pairs with
   missing images, pairs usable, and the published count (CVUSA 35,532 / 8,884; CVACT 35,532 / 8,884 /
   92,802). Missing images are listed by name; without ``--allow-missing`` the command stops there.
2. Unless ``--check-only``: for every pair, writes the SAFA polar map of the aerial image for every size in
   ``--sizes`` (default: the polar sizes of all model input specs: GeoDTR 122x671, SAFA/MGTL 112x616) to the
   size-suffixed folder (:func:`common.data.readers.prepared_polar_path`), and for CVACT the ground centre
   crop (rows 208:624 of 832) to ``streetview_processed/``. In parallel (``--workers`` processes), with a
   progress bar; finished outputs are skipped (resumable) and every file is written to a temporary name
   and renamed (atomic: a kill never leaves a half-written image). Polar maps use the fast path
   (:func:`common.data.polar.polar_transform_fast`), converted to uint8 as ``--polar-rounding`` says (by
   default as each size's original preparation script: GeoDTR's truncates, SAFA's byte-scales), recorded in
   each size folder's ``polar.json``.
3. Images that cannot be decoded (both images of every pair with work to do are decoded; ``--verify``
   decodes finished pairs too), aerial images that are not square, aerial images whose size differs from
   the others, and panoramas with the wrong aspect ratio are listed by name; the command fails unless
   ``--allow-missing`` (then those pairs are reported as dropped). Either way they are recorded in
   ``ROOT/bad_pairs.txt``, which :func:`common.data.readers.read_split` reads: the readers then refuse those
   pairs, or drop and list them with ``allow_missing``. A pair that a later run decodes fine is taken off.
"""

from __future__ import annotations

import argparse
import os

from common.data.prepare import DEFAULT_SIZES, prepare_dataset
from common.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.prepare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=("cvusa", "cvact"), help="which dataset layout ROOT has")
    p.add_argument("--root", required=True, help="the dataset folder (CVUSA: holds splits/, bingmap/, "
                   "streetview/; CVACT: holds ACT_data.mat, ANU_data_small/, ANU_data_test/)")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)),
                   help="parallel worker processes for the precompute (default: all CPU cores)")
    p.add_argument("--check-only", action="store_true",
                   help="only validate the layout and print the counts table; write nothing")
    p.add_argument("--allow-missing", action="store_true",
                   help="drop (and list) pairs with missing or bad images instead of failing")
    p.add_argument("--verify", action="store_true",
                   help="decode and check every image, also of pairs whose outputs already exist (a resumed "
                        "run otherwise skips finished pairs without reading them)")
    p.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), metavar="HxW",
                   help="polar map sizes to precompute (default: 122x671 for GeoDTR, 112x616 for SAFA/MGTL)")
    p.add_argument("--polar-rounding", default="auto", choices=("auto", "round", "floor", "bytescale"),
                   help="how the float polar samples become uint8 (default auto: as the original preparation "
                        "script of the models trained at each size: 122x671 floor, i.e. truncation, as "
                        "GeoDTR's; 112x616 bytescale, min..max stretched to 0..255 then rounded, as SAFA's "
                        "scipy.misc.imsave; other sizes round). Recorded in each size folder's polar.json")
    p.add_argument("--splits", nargs="+", default=None,
                   help="only these splits (default: all of the dataset: cvusa train val; cvact train val test)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return prepare_dataset(args.dataset, args.root, sizes=args.sizes, splits=args.splits, workers=args.workers,
                           check_only=args.check_only, allow_missing=args.allow_missing, verify=args.verify,
                           polar_rounding=args.polar_rounding)


if __name__ == "__main__":
    run_cli(main)
