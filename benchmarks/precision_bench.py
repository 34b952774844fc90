"""A model at full size under mixed precision: how far the descriptors and the loss move from float32, and
whether anything turns NaN. Random weights, one batch of random-pixel pairs.

    python -m benchmarks.precision_bench [--model mgtl] [--batch 2] [key=value ...]

``--model`` is any registered family (``python -m experiments.families``); ``key=value`` pairs are model keys
(e.g. ``variant=no_cmi steps=3`` for MGTL). Prints one row per policy: max |descriptor difference| against
float32, the loss under both, NaN or not, and the seconds the mixed forward took (CPU timings are noisy; this
is a correctness check, not a speed target).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common.errors import CVGLError, run_cli  # noqa: E402


def _model_keys(pairs) -> dict:
    import yaml

    out = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CVGLError(f"model key {item!r}: write key=value (e.g. steps=3)")
        out[key] = yaml.safe_load(value)
    return out


def main(argv=None) -> int:
    from common.models.registry import family_names, get_family

    names = family_names()
    p = argparse.ArgumentParser(prog="python -m benchmarks.precision_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=names, default="mgtl" if "mgtl" in names else names[0],
                   help="model family (default mgtl)")
    p.add_argument("--batch", type=int, default=2, help="pairs in the batch (default 2)")
    p.add_argument("model_keys", nargs="*", metavar="key=value", help="model keys of the family (default: paper)")
    args = p.parse_args(argv)
    keys = _model_keys(args.model_keys)

    import keras
    import numpy as np

    from common.data.specs import normalise

    family = get_family(args.model)
    spec = family.input_specs[0]

    def make(policy):
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(policy)
        try:
            keras.utils.set_random_seed(0)
            return family.build_full(**keys)
        finally:
            keras.config.set_dtype_policy(previous)

    rng = np.random.default_rng(0)
    g = normalise(rng.integers(0, 256, (args.batch, *spec.ground_size, 3)).astype("float32"), spec)
    a = normalise(rng.integers(0, 256, (args.batch, *spec.aerial_size, 3)).astype("float32"), spec)
    x = {"ground": g, "aerial": a}
    ref = make("float32")
    out_ref = ref(x, training=True)
    loss_ref = float(ref.compute_loss(x, None, out_ref))
    shown = " ".join(f"{k}={v}" for k, v in keys.items())
    print(f"{args.model} {shown} at {spec.ground_size[0]}x{spec.ground_size[1]}, batch {args.batch}")
    print(f"{'policy':<16}{'max |desc diff|':>16}{'loss f32':>11}{'loss mixed':>12}{'NaN':>6}{'forward s':>11}")
    for policy in ("mixed_float16", "mixed_bfloat16"):
        model = make(policy)
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
    run_cli(main)
