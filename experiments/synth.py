"""Write a synthetic area in the CVUSA or CVACT layout, or print the raw-pixel baseline of one.

Write (the seed selects the city: style and map; two seeds are two different-looking areas)::

    python -m experiments.synth --layout cvusa --out data/synth_a --seed 1 --train 2000 --val 500
    python -m experiments.synth --layout cvact --out data/synth_act --seed 2 --train 800 --val 200 \\
        --test 400 --aerial-size 256 --pano-size 128x256 --workers 2

Full-size defaults are the real sizes (CVUSA aerial 750, panorama 224x1232; CVACT 1200 and 832x1664). A
contact sheet (aerial | polar | panorama for a few pairs) is written to ``OUT/contact_sheet.png``.
An interrupted run resumes when started again with the same arguments.

Orthophoto (one city as a geo-referenced GeoTIFF plus panoramas at known lat/lon, for map localisation:
``index build --orthophoto``, then ``localize --true-latlon``; :mod:`common.synthetic.orthophoto`)::

    python -m experiments.synth --orthophoto --out data/map_a --seed 1 --extent-m 600 --queries 50 \\
        --aerial-size 128 --pano-size 32x176

Baseline (raw-pixel retrieval of resized panoramas against resized polar aerials on the val split; the
number a trained model must beat on an unseen city)::

    python -m experiments.synth --baseline data/synth_b --layout cvusa

See :mod:`common.synthetic` (world, rendering, layouts) and :mod:`common.synthetic.baseline`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from common.errors import CVGLError, run_cli
from common.files import to_json


def _size_hw(text: str):
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 224x1232, got {text!r}") from None
    return h, w


def _read_layout(root: str):
    path = os.path.join(root, "synth.json")
    if os.path.isfile(path):
        with open(path) as fh:
            return json.load(fh)["arguments"]["layout"]
    if os.path.isfile(os.path.join(root, "ACT_data.mat")):
        return "cvact"
    if os.path.isdir(os.path.join(root, "splits")):
        return "cvusa"
    raise CVGLError(f"cannot tell the layout of {root} (no synth.json, ACT_data.mat or splits/); "
                    "pass --layout")


MAX_SIDE = 4096  # pixels: larger than any real dataset's image side (CVACT panoramas are 832x1664)
MAX_WORKERS = 256


def check_flags(args) -> None:
    """Range-check every numeric flag; a value out of range is one CVGLError naming the flag and the range
    (``--aerial-size 0`` would otherwise silently fall back to the default size)."""
    def whole(flag, value, lo, hi, what):
        if value is not None and not lo <= value <= hi:
            raise CVGLError(f"{flag} must be {what}, got {value}")

    def real(flag, value, ok, what):
        if value is not None and not (math.isfinite(value) and ok(value)):
            raise CVGLError(f"{flag} must be {what}, got {value}")

    def size(flag, hw, lo):
        if hw is not None and not all(lo <= v <= MAX_SIDE for v in hw):
            raise CVGLError(f"{flag} must be HxW with both sides in {lo}..{MAX_SIDE} pixels, got {hw[0]}x{hw[1]}")

    whole("--seed", args.seed, 0, 2 ** 32 - 1, "in 0..4294967295 (the area seed is 32-bit)")
    for flag in ("train", "val", "test"):
        whole(f"--{flag}", getattr(args, flag), 0, 10 ** 8, f"a number of pairs in 0..{10 ** 8}")
    whole("--aerial-size", args.aerial_size, 16, MAX_SIDE, f"the aerial image side in 16..{MAX_SIDE} pixels")
    size("--pano-size", args.pano_size, 8)
    whole("--workers", args.workers, 1, MAX_WORKERS, f"a number of processes in 1..{MAX_WORKERS}")
    real("--vfov", args.vfov, lambda v: 0 < v <= 180, "a vertical field of view in (0, 180] degrees")
    real("--heading-noise", args.heading_noise, lambda v: 0 <= v <= 180,
         "a standard deviation in [0, 180] degrees (0 = north-aligned)")
    real("--near-fraction", args.near_fraction, lambda v: 0 <= v <= 1, "a share of the locations in [0, 1]")
    size("--baseline-size", args.baseline_size, 1)


def _orthophoto(args) -> int:
    from common.synthetic.orthophoto import write_orthophoto

    if not args.out:
        raise CVGLError("--orthophoto needs --out DIR")
    if args.layout or args.train or args.val or args.test:
        raise CVGLError("--orthophoto writes a map, not a dataset: drop --layout/--train/--val/--test")
    if not math.isfinite(args.extent_m):
        raise CVGLError(f"--extent-m must be a number of metres, got {args.extent_m}")
    t0 = time.time()
    m = write_orthophoto(args.out, args.seed, extent_m=args.extent_m, aerial_size=args.aerial_size or 750,
                         n_queries=args.queries, pano_size=args.pano_size or (224, 1232), vfov_deg=args.vfov)
    m["seconds"] = round(time.time() - t0, 2)
    if args.json:
        print(to_json(m, indent=2))
    else:
        lat, lon = m["centre_latlon"]
        print(f"wrote {os.path.join(os.path.abspath(args.out), m['orthophoto'])}: {m['size_px']}x{m['size_px']} px, "
              f"{m['metres_per_pixel']:.3f} m/px, {m['crs']}, centred at lat {lat:.6f}, lon {lon:.6f}")
        print(f"  {m['queries']} query panoramas with their true lat/lon in "
              f"{os.path.join(os.path.abspath(args.out), m['queries_csv'])} ({m['seconds']} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.synth",
        description="Write a synthetic cross-view area in the exact CVUSA or CVACT layout (aerial images, "
                    "north-aligned panoramas, split files), or print the raw-pixel baseline of one.",
        epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layout", choices=("cvusa", "cvact"), default=None,
                   help="on-disk layout to write (required when writing); with --baseline, read from the "
                        "folder's synth.json when omitted")
    p.add_argument("--out", help="folder to write (must be new or empty, or hold an interrupted run with the "
                                 "same arguments, which is resumed)")
    p.add_argument("--seed", type=int, default=0,
                   help="area seed: selects the city's style and map (default 0)")
    p.add_argument("--train", type=int, default=0, help="number of training pairs (default 0)")
    p.add_argument("--val", type=int, default=0, help="number of validation pairs (default 0)")
    p.add_argument("--test", type=int, default=0,
                   help="CVACT only: extra test pairs; valSetAll (the 5 m test protocol) = val + test "
                        "(default 0)")
    p.add_argument("--aerial-size", type=int, default=None,
                   help="aerial image side in pixels, 16..4096 (default: 750 for cvusa, 1200 for cvact); "
                        "the image always covers 150 m")
    p.add_argument("--pano-size", type=_size_hw, default=None,
                   help="panorama HxW, each side 8..4096 (default: 224x1232 for cvusa, 832x1664 for cvact)")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes, 1..256 (default 1; "
                                                          "the files are identical for any value)")
    p.add_argument("--vfov", type=float, default=None,
                   help="vertical field of view of the panorama in degrees, centred on the horizon (default: "
                        "360 H / W for cvusa, i.e. square pixels, about +-33 deg; 180 for cvact)")
    p.add_argument("--heading-noise", type=float, default=0.0,
                   help="std. dev. (degrees) of a random panorama heading error; 0 = north-aligned as the "
                        "real data (default)")
    p.add_argument("--near-fraction", type=float, default=0.1,
                   help="share of locations placed 1-4.5 m from another one (the CVACT_test 5 m rule; "
                        "default 0.1)")
    p.add_argument("--no-sheet", action="store_true", help="do not write contact_sheet.png")
    p.add_argument("--orthophoto", action="store_true",
                   help="instead of a dataset layout: write the city as orthophoto.tif (GeoTIFF, UTM) with --queries "
                        "panoramas at known lat/lon (queries.csv); --aerial-size sets its resolution (150 m per "
                        "that many pixels, as the aerial tiles)")
    p.add_argument("--extent-m", type=float, default=600.0,
                   help="--orthophoto: side of the square orthophoto in metres (default %(default)s)")
    p.add_argument("--queries", type=int, default=50,
                   help="--orthophoto: number of query panoramas (default %(default)s)")
    p.add_argument("--baseline", metavar="DIR", default=None,
                   help="instead of writing: print R@1/R@5/R@10/R@1%% of raw-pixel retrieval on DIR's split")
    p.add_argument("--split", default="val", help="split for --baseline (default val)")
    p.add_argument("--baseline-size", type=_size_hw, default=(16, 88),
                   help="HxW both views are resized to for --baseline (default 16x88)")
    p.add_argument("--json", action="store_true", help="print the summary / baseline as JSON")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_flags(args)
    if args.baseline:
        from common.synthetic.baseline import format_baseline, raw_pixel_baseline

        root = args.baseline
        if not os.path.isdir(root):
            raise CVGLError(f"baseline folder not found: {root} (write one with --out first)")
        layout = args.layout or _read_layout(root)
        result = raw_pixel_baseline(root, layout, args.split, args.baseline_size)
        print(to_json(result, indent=2) if args.json else format_baseline(result))
        return 0
    if args.orthophoto:
        return _orthophoto(args)
    if not args.out or not args.layout:
        raise CVGLError("writing a world needs --layout {cvusa,cvact} and --out DIR (or use --baseline DIR)")
    from common.synthetic import write_world

    t0 = time.time()
    summary = write_world(args.layout, args.out, args.seed, args.train, args.val, args.test,
                          aerial_size=args.aerial_size, pano_size=args.pano_size, workers=args.workers,
                          heading_noise_deg=args.heading_noise, near_fraction=args.near_fraction,
                          vfov_deg=args.vfov,
                          contact_sheet=not args.no_sheet)
    summary["seconds"] = round(time.time() - t0, 2)
    if args.json:
        print(to_json(summary, indent=2))
    else:
        s = summary
        print(f"wrote {s['pairs']} pairs ({', '.join(f'{k} {v}' for k, v in s['splits'].items())}) in "
              f"{s['seconds']} s to {s['root']}", file=sys.stdout)
        print(f"  layout {s['layout']}, seed {s['seed']}, aerial {s['aerial_size']} px "
              f"({s['metres_per_aerial_pixel']:.3f} m/px), panorama {s['pano_size'][0]}x{s['pano_size'][1]} "
              f"(vertical fov {s['vfov_deg']:.1f} deg), street grid at {s['city_rotation_deg']:.1f} deg")
        if s.get("locations_within_5m_of_another") is not None:
            print(f"  {s['locations_within_5m_of_another']} locations lie within 5 m of another")
        if s.get("contact_sheet"):
            print(f"  contact sheet: {os.path.join(s['root'], s['contact_sheet'])}")
    return 0


if __name__ == "__main__":
    run_cli(main)
