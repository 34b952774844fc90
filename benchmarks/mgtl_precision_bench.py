"""MGTL / SAFA at full size (112x616) under mixed precision: how far the descriptors and the loss move from
float32, and whether anything turns NaN. Random weights, one batch of 2 random-pixel pairs.

    python -m benchmarks.mgtl_precision_bench [--model mgtl|safa] [--variant full] [--steps 6]

Prints one row per policy: max |descriptor difference| against float32, the loss under both, NaN or not,
and the seconds the mixed forward took (CPU timings are noisy; this is a correctness check, not a speed
target).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mgtl_precision_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("mgtl", "safa"), default="mgtl", help="model family (default mgtl)")
    p.add_argument("--variant", default="full", help="MGTL variant (default full)")
    p.add_argument("--steps", type=int, default=6, help="MGTL steps L (default 6)")
    p.add_argument("--batch", type=int, default=2, help="pairs in the batch (default 2)")
    args = p.parse_args(argv)

    import keras
    import numpy as np

    from common.data.specs import SAFA_POLAR, normalise
    from mgtl_tf.model import MGTL
    from mgtl_tf.safa import SAFA

    def make(dtype=None):
        kw = {"dtype": dtype} if dtype else {}
        if args.model == "safa":
            return SAFA(input_spec=SAFA_POLAR, vgg_dropout=0.0, **kw)
        return MGTL(variant=args.variant, steps=args.steps, input_spec=SAFA_POLAR, **kw)

    rng = np.random.default_rng(0)
    pixels = normalise(rng.integers(0, 256, (2 * args.batch, 112, 616, 3)).astype("float32"), SAFA_POLAR)
    x = {"ground": pixels[: args.batch], "aerial": pixels[args.batch:]}
    keras.utils.set_random_seed(0)
    ref = make()
    ref.build()
    out_ref = ref(x, training=True)
    loss_ref = float(ref.compute_loss(x, None, out_ref))
    print(f"{args.model} {args.variant if args.model == 'mgtl' else ''} at 112x616, batch {args.batch}")
    print(f"{'policy':<16}{'max |desc diff|':>16}{'loss f32':>11}{'loss mixed':>12}{'NaN':>6}{'forward s':>11}")
    for policy in ("mixed_float16", "mixed_bfloat16"):
        model = make(policy)
        model.build()
        model.set_weights(ref.get_weights())
        t = time.perf_counter()
        out = model(x, training=True)
        seconds = time.perf_counter() - t
        diff = max(float(np.abs(np.asarray(out_ref[k]) - np.asarray(out[k], dtype="float32")).max())
                   for k in ("ground", "aerial"))
        nan = any(bool(np.isnan(np.asarray(v, dtype="float32")).any()) for v in out.values())
        loss = float(model.compute_loss(x, None, out))
        print(f"{policy:<16}{diff:>16.2e}{loss_ref:>11.5f}{loss:>12.5f}{str(nan):>6}{seconds:>11.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
