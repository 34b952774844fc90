"""Data-layer benchmark: polar precompute speed and tf.data pipeline throughput per core.

    python -m benchmarks.data_bench [--pairs 24] [--batches 10] [--batch-size 8] [--repeats 20]

1. Polar transform of one full-size CVUSA aerial image (750 x 750 x 3) to 122x671 and 112x616: the float64
   reference (:func:`common.data.polar.polar_transform`) vs the fast path (:func:`polar_transform_fast`), both
   measured in this run; the speed target is checked as a ratio (fast >= 50x the reference). Also the whole
   offline precompute per image as ``experiments.prepare`` does it (JPEG decode, polar, PNG encode).
2. tf.data pairs/s on one core (private thread pool of 1, intra-op parallelism 1) on a toy CVUSA folder at
   the real image sizes (aerial 750 x 750 JPEG, panorama 224 x 1232 JPEG), for the GeoDTR polar and
   SAFA/MGTL polar specs (prepared polar maps and on-the-fly polar) and GeoDTR raw, with and without
   GeoDTR's augmentation (layout simulation + semantic augmentation, "strong").
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def _best_time(fn, repeats):
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def polar_table(repeats: int) -> list:
    import cv2

    from common.synthetic.toy import _smooth_image
    from common.data.polar import polar_transform, polar_transform_fast

    rng = np.random.default_rng(0)
    img = _smooth_image(rng, 750)
    ok, jpg = cv2.imencode(".jpg", img)
    rows = []
    for h, w in ((122, 671), (112, 616)):
        ref = _best_time(lambda: polar_transform(img, h, w), max(3, repeats // 5))
        fast = _best_time(lambda: polar_transform_fast(img, h, w), repeats)
        full = _best_time(lambda: cv2.imencode(".png", polar_transform_fast(
            cv2.imdecode(jpg, cv2.IMREAD_COLOR), h, w)), repeats)
        rows.append((f"{h}x{w}", 1 / ref, 1 / fast, ref / fast, 1 / full))
    return rows


def pipeline_table(pairs: int, batches: int, batch_size: int) -> list:
    import tensorflow as tf

    from common.data.pipeline import make_dataset
    from common.data.readers import read_split
    from common.data.prepare import prepare_dataset
    from common.models.registry import families
    from common.synthetic.toy import write_toy_cvusa

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tmp = tempfile.mkdtemp(prefix="data_bench_")
    prepared = write_toy_cvusa(os.path.join(tmp, "prepared"), n_train=pairs, n_val=2, aerial_size=750,
                               pano_size=(224, 1232), seed=1)
    raw = write_toy_cvusa(os.path.join(tmp, "raw"), n_train=pairs, n_val=2, aerial_size=750,
                          pano_size=(224, 1232), seed=1)
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        prepare_dataset("cvusa", prepared, workers=1)
    opts = tf.data.Options()
    opts.threading.private_threadpool_size = 1
    opts.threading.max_intra_op_parallelism = 1
    rows = []
    # every input spec of the registered families: polar ones from the prepared maps (the first also with the
    # polar transform on the fly), raw ones from the aerial images
    specs = sorted({s.name: s for f in families().values() for s in f.input_specs}.values(), key=lambda s: s.name)
    cases, fly = [], True
    for spec in specs:
        if spec.polar:
            cases.append((spec, prepared, "prepared"))
            if fly:
                cases.append((spec, raw, "on the fly"))
                fly = False
        else:
            cases.append((spec, raw, "raw aerial"))
    for spec, root, source in cases:
        recs = read_split("cvusa", root, "train")
        for augment in (None, "strong"):
            ds = make_dataset(recs, spec, batch_size, training=True, augment=augment, seed=0,
                              verbose=False).with_options(opts)
            it = iter(ds.repeat())
            next(it)  # warm-up (graph instantiation, first files)
            t = time.perf_counter()
            for _ in range(batches):
                next(it)
            dt = time.perf_counter() - t
            rows.append((spec.name, source, augment or "none", batches * batch_size / dt))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.data_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=24, help="pairs in the toy full-size folder (default 24)")
    p.add_argument("--batches", type=int, default=10, help="timed batches per pipeline case (default 10)")
    p.add_argument("--batch-size", type=int, default=8, help="pipeline batch size (default 8)")
    p.add_argument("--repeats", type=int, default=20, help="timing repeats for the polar rows (best of N)")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    print("Polar transform, one 750x750x3 aerial image, one core (best of N)")
    head = f"{'output':<9}{'reference img/s':>17}{'fast img/s':>12}{'fast/ref':>10}{'target':>9}{'decode+polar+png img/s':>25}"
    print(head)
    print("-" * len(head))
    worst = float("inf")
    for size, ref, fast, ratio, full in polar_table(args.repeats):
        worst = min(worst, ratio)
        print(f"{size:<9}{ref:>17.1f}{fast:>12.0f}{ratio:>9.0f}x{'>= 50x':>9}{full:>25.0f}")
    print(f"fast path vs float64 reference: {worst:.0f}x at worst -> {'PASS' if worst >= 50 else 'FAIL'} (target 50x)")
    print()
    print(f"tf.data pairs/s on one core (batch {args.batch_size}, {args.batches} batches, toy CVUSA folder at "
          "full image size)")
    head = f"{'spec':<14}{'aerial source':<15}{'augment':<9}{'pairs/s':>9}"
    print(head)
    print("-" * len(head))
    for spec, source, augment, rate in pipeline_table(args.pairs, args.batches, args.batch_size):
        print(f"{spec:<14}{source:<15}{augment:<9}{rate:>9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
