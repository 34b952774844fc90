"""Benchmark of the synthetic world: writing speed, full-size rate, raw-pixel baseline, cross-city check.

    python -m benchmarks.synth_bench                       # speed (small + full size) and the baseline
    python -m benchmarks.synth_bench --cross-city          # + a small CNN trained on city A, tested on B
    python -m benchmarks.synth_bench --quick               # a fast smoke run (100 pairs, no full size)

Prints tables:

1. **Speed**: 1,000 pairs (CVUSA layout, aerial 256, panorama 64x352) written with ``--workers 2`` and
   with 1 (target: under 60 s on a 2-core machine), then the full-size rate (pairs/s) for CVUSA
   (750 / 224x1232) and CVACT (1200 / 832x1664). The machine's load average is printed beside the numbers,
   since a shared machine slows every figure down.
2. **Raw-pixel baseline** on a 500-pair val split of a city used for nothing else (R@1 must be below 20 %
   and well above chance).
3. **Cross-city** (``--cross-city``): a two-branch CNN (a few conv layers per view, azimuth-preserving
   descriptor, soft-margin triplet loss as SAFA) trained on city A's train split, evaluated on city B's val
   split beside the raw-pixel baseline of city B: the views truly correspond and a learned model beats
   pixels on an unseen area.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

SMALL = dict(aerial_size=256, pano_size=(64, 352))
BASELINE_SEED = 424242  # a city used for nothing else
CITY_A, CITY_B = 7001, 7002


def _load():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _cpu_seconds():
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def time_write(layout, out, seed, n_train, n_val, workers, n_test=0, reuse=False, **sizes):
    """(wall seconds, CPU seconds of this process and its workers) to write a world into ``out`` (emptied
    first unless ``reuse``: then a finished world with the same arguments is kept, missing pairs written)."""
    from common.synthetic import write_world

    if not reuse:
        shutil.rmtree(out, ignore_errors=True)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    write_world(layout, out, seed, n_train, n_val, n_test, workers=workers, progress=False,
                contact_sheet=False, **sizes)
    return time.perf_counter() - t0, _cpu_seconds() - c0


def speed(tmp, pairs, full_pairs):
    """Wall-clock and CPU time of writing. On a machine shared with other jobs the wall clock is slower than
    the CPU time / workers (printed as 'if idle'), which is what an otherwise idle machine would take."""
    rows = []
    for workers in (2, 1):
        load = _load()
        s, cpu = time_write("cvusa", os.path.join(tmp, f"small{workers}"), 9001, pairs - pairs // 5,
                            pairs // 5, workers, **SMALL)
        rows.append((f"cvusa 256 / 64x352, {pairs} pairs", workers, s, cpu, pairs, load))
    if full_pairs:
        for layout in ("cvusa", "cvact"):
            load = _load()
            s, cpu = time_write(layout, os.path.join(tmp, f"full_{layout}"), 9002, full_pairs, 0, 2)
            size = "750 / 224x1232" if layout == "cvusa" else "1200 / 832x1664"
            rows.append((f"{layout} full size {size}, {full_pairs} pairs", 2, s, cpu, full_pairs, load))
    print("\nSpeed")
    print(f"{'job':44s} {'workers':>7s} {'wall s':>8s} {'pairs/s':>8s} {'CPU s':>8s} {'if idle s':>9s} "
          f"{'load avg':>8s}")
    for job, w, s, cpu, n, load in rows:
        print(f"{job:44s} {w:7d} {s:8.1f} {n / s:8.2f} {cpu:8.1f} {cpu / w:9.1f} {load:8.1f}")
    return rows


def baseline(tmp, n_val=500):
    from common.synthetic.baseline import format_baseline, raw_pixel_baseline

    root = os.path.join(tmp, "baseline")
    time_write("cvusa", root, BASELINE_SEED, 0, n_val, 2, reuse=True, **SMALL)
    res = raw_pixel_baseline(root, "cvusa", "val")
    print(f"\nRaw-pixel baseline, unused city (seed {BASELINE_SEED}), {n_val} val pairs")
    print(format_baseline(res))
    return res


# ----------------------------------------------------------------------------------------------- cross-city
def _arrays(root, split, size):
    """Panoramas resized to ``size`` and polar aerials at ``size`` as uint8 arrays."""
    import cv2

    from common.data.readers import read_split
    from common.data.polar import polar_transform_fast

    g, a = [], []
    for rec in read_split("cvusa", root, split):
        pano = cv2.imread(rec.ground)[:, :, ::-1]
        g.append(cv2.resize(pano, (size[1], size[0]), interpolation=cv2.INTER_AREA))
        aerial = cv2.imread(rec.aerial)[:, :, ::-1]
        a.append(cv2.resize(polar_transform_fast(np.ascontiguousarray(aerial), 112, 616), (size[1], size[0]),
                            interpolation=cv2.INTER_AREA))
    return np.stack(g), np.stack(a)


def _branch(name):
    import keras
    from keras import layers

    inp = keras.Input((None, None, 3), name=f"{name}_in")
    x = layers.Rescaling(1 / 127.5, -1.0)(inp)
    for filters in (16, 32, 48):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(16, 1)(x)  # (H/8, W/8, 16): keep the azimuth layout, as SAFA's descriptor does
    x = layers.Flatten()(x)
    x = layers.UnitNormalization()(x)
    return keras.Model(inp, x, name=name)


def cross_city(tmp, n_train=2000, n_val=500, epochs=12, size=(32, 176), batch=32):
    """Train on city A, evaluate on city B; returns (model recall dict, raw-pixel recall dict) on city B."""
    import keras

    from common.training.losses import soft_margin_triplet
    from common.evaluation.retrieval import recall_at_k
    from common.synthetic.baseline import raw_pixel_baseline

    a_root, b_root = os.path.join(tmp, "cityA"), os.path.join(tmp, "cityB")
    t0 = time.perf_counter()
    time_write("cvusa", a_root, CITY_A, n_train, 10, 2, reuse=True, **SMALL)
    time_write("cvusa", b_root, CITY_B, 0, n_val, 2, reuse=True, **SMALL)
    g_tr, a_tr = _arrays(a_root, "train", size)
    g_te, a_te = _arrays(b_root, "val", size)
    t_data = time.perf_counter() - t0
    keras.utils.set_random_seed(0)
    ground, aerial = _branch("ground"), _branch("aerial")
    opt = keras.optimizers.Adam(3e-4)
    params = ground.trainable_variables + aerial.trainable_variables
    import tensorflow as tf

    @tf.function
    def step(g, a):
        with tf.GradientTape() as tape:
            loss = soft_margin_triplet(aerial(a, training=True), ground(g, training=True), alpha=10.0)
        opt.apply_gradients(zip(tape.gradient(loss, params), params))
        return loss

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(len(g_tr))
        losses = []
        for s in range(0, len(order) - batch + 1, batch):
            idx = order[s:s + batch]
            g, a = g_tr[idx], a_tr[idx]
            if rng.random() < 0.5:  # mirror both views: bearing -> -bearing keeps the pair aligned
                g, a = g[:, :, ::-1], a[:, :, ::-1]
            losses.append(float(step(tf.constant(g, tf.float32), tf.constant(a, tf.float32))))
        print(f"  epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.4f}", flush=True)
    t_train = time.perf_counter() - t0
    emb_g = ground.predict(g_te.astype(np.float32), batch_size=128, verbose=0)
    emb_a = aerial.predict(a_te.astype(np.float32), batch_size=128, verbose=0)
    model = recall_at_k(emb_g, emb_a, backend="numpy")
    pixels = raw_pixel_baseline(b_root, "cvusa", "val")
    print(f"\nCross-city: trained on city A (seed {CITY_A}, {n_train} pairs, {epochs} epochs, "
          f"{t_train:.0f} s; data {t_data:.0f} s), tested on city B (seed {CITY_B}, {n_val} val pairs)")
    keys = ("R@1", "R@5", "R@10", "R@1%")
    print(f"{'':22s}" + "".join(f"{k:>8s}" for k in keys))
    for name, res in (("small CNN (city A)", model), ("raw pixels", pixels), ("chance", pixels["chance"])):
        print(f"{name:22s}" + "".join(f"{res[k]:8.2f}" for k in keys))
    return model, pixels


def main(argv=None):
    sys.stdout.reconfigure(line_buffering=True)  # tables appear as they are measured
    p = argparse.ArgumentParser(prog="python -m benchmarks.synth_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=1000, help="pairs for the small-size speed test")
    p.add_argument("--full-pairs", type=int, default=6, help="pairs per layout at full size (0: skip)")
    p.add_argument("--cross-city", action="store_true", help="also train a small CNN on city A, test on B")
    p.add_argument("--epochs", type=int, default=12, help="epochs of the cross-city CNN")
    p.add_argument("--no-speed", action="store_true", help="skip the speed table")
    p.add_argument("--no-baseline", action="store_true", help="skip the raw-pixel baseline")
    p.add_argument("--quick", action="store_true", help="smoke run: 100 pairs, no full size")
    p.add_argument("--keep", default=None,
                   help="write the worlds here and keep them (default: a temp folder)")
    args = p.parse_args(argv)
    if args.quick:
        args.pairs, args.full_pairs = 100, 0
    tmp = args.keep or tempfile.mkdtemp(prefix="synth_bench_")
    os.makedirs(tmp, exist_ok=True)
    print(f"CPU cores: {os.cpu_count()}, load average at start: {_load():.1f}")
    try:
        if not args.no_speed:
            speed(tmp, args.pairs, args.full_pairs)
        if not args.no_baseline:
            baseline(tmp, 100 if args.quick else 500)
        if args.cross_city:
            cross_city(tmp, epochs=args.epochs)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    main()
