"""Training-step benchmark of every paper config: step time, pairs/s, FLOPs per step and the fraction of this
machine's matmul rate, float32 against mixed precision, all measured in the same run.

    python -m benchmarks.train_bench                  # paper input sizes and batch sizes (a GPU job)
    python -m benchmarks.train_bench --quick          # CPU-sized: batch 4, 32x128 inputs, 2 timed steps
    python -m benchmarks.train_bench --quick --determinism --configs geodtr_cvusa_polar_ls mgtl_cvusa_full
                                                      # the cost of train.deterministic (op determinism)
    KERAS_BACKEND=jax python -m benchmarks.train_bench --quick   # same model code on the JAX backend

What is timed: ``model.train_on_batch`` on NumPy batches of random normalised images (no tf.data, so the JAX
backend needs no TensorFlow), with the config's optimizer, after ``--warmup`` untimed steps (tracing /
compilation). The loss is the family's full loss (``CrossViewModel.compute_loss``).

FLOPs per step = 3 x the forward FLOPs of one batch (forward + backward ~ 3 forwards, the usual estimate),
forward FLOPs counted by the backend's own compiler: TensorFlow's graph profiler (``float_operation``, counts
2 x multiply-accumulates of convolutions and matrix products) or XLA's ``cost_analysis`` under JAX. The
machine's matmul rate is the best of a few float32 (and, for the mixed rows, float16/bfloat16) 2048^3 matrix
products in the same backend; "% of matmul" = achieved FLOP/s / that rate.

Backbone weights are random (``backbone_weights: null``): speed does not depend on them.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import numpy as np

from common.errors import CVGLError, run_cli


MATMUL_DTYPE = {"off": "float32", "float16": "float16", "bfloat16": "bfloat16"}  # per --precision


def matmul_rate(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of an n^3 matrix product in the current Keras backend."""
    import keras
    from keras import ops

    a = ops.convert_to_tensor(np.random.default_rng(0).normal(size=(n, n)).astype(dtype))
    b = ops.convert_to_tensor(np.random.default_rng(1).normal(size=(n, n)).astype(dtype))
    if keras.backend.backend() == "jax":
        import jax

        jitted = jax.jit(lambda x, y: x @ y)

        def product():
            jitted(a, b).block_until_ready()
    else:
        import tensorflow as tf

        traced = tf.function(lambda x, y: tf.matmul(x, y))

        def product():
            traced(a, b).numpy()

    product()  # compile / warm up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        product()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best


def forward_flops(model, batch: dict) -> float | None:
    """FLOPs of one forward pass on ``batch``, counted by the backend's compiler (None if unavailable)."""
    import keras

    try:
        if keras.backend.backend() == "jax":
            import jax

            state = (model.trainable_variables, model.non_trainable_variables)

            def fwd(tv, ntv, x):
                out, _ = model.stateless_call(tv, ntv, x, training=False)
                return out

            tv = [v.value for v in model.trainable_variables]
            ntv = [v.value for v in model.non_trainable_variables]
            del state
            cost = jax.jit(fwd).lower(tv, ntv, batch).compile().cost_analysis()
            if isinstance(cost, (list, tuple)):
                cost = cost[0]
            return float(cost.get("flops", 0.0)) or None
        import tensorflow as tf
        from tensorflow.python.profiler import model_analyzer, option_builder

        specs = {k: tf.TensorSpec(v.shape, v.dtype) for k, v in batch.items()}
        concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(specs)
        opts = option_builder.ProfileOptionBuilder(option_builder.ProfileOptionBuilder.float_operation())
        opts = opts.with_empty_output().build()
        return float(model_analyzer.profile(graph=concrete.graph, options=opts).total_float_ops) or None
    except Exception as exc:  # a counter failure must not hide the timing
        print(f"  (FLOPs not counted: {type(exc).__name__}: {str(exc)[:120]})", file=sys.stderr)
        return None


QUICK_SIZES = {"ground": [32, 128], "polar": [32, 128], "raw": [64, 64]}


def quick_config(cfg: dict, factor: int, batch: int) -> dict:
    """Shrink a config's input: ``factor`` 0 = the quick sizes (ground 32x128, polar aerial 32x128, raw aerial
    64x64: sizes every family accepts, e.g. GeoDTR's layout extractor needs N/2 divisible by its 4 heads);
    otherwise divide the paper sizes by ``factor``."""
    from common.data.specs import get_spec

    cfg = copy.deepcopy(cfg)
    spec = get_spec(cfg["input_spec"]).to_config()
    if factor == 0:
        spec["ground_size"] = list(QUICK_SIZES["ground"])
        spec["aerial_size"] = list(QUICK_SIZES["polar" if spec["polar"] else "raw"])
    else:
        for key in ("ground_size", "aerial_size"):
            h, w = spec[key]
            spec[key] = [max(16, h // factor), max(32, w // factor)]
    cfg["input_spec"] = spec
    cfg["train"]["batch_size"] = batch
    return cfg


def bench_config(cfg: dict, precision: str, steps: int, warmup: int) -> dict:
    import keras

    from common.models.config import build_model
    from common.data.specs import get_spec
    from common.training.optim import build_optimizer, set_precision

    set_precision(precision)
    keras.utils.set_random_seed(0)
    cfg = copy.deepcopy(cfg)
    cfg["model"]["backbone_weights"] = None
    spec = get_spec(cfg["input_spec"])
    b = int(cfg["train"]["batch_size"])
    rng = np.random.default_rng(0)
    batch = {"ground": rng.uniform(-1, 1, size=(b, *spec.ground_size, 3)).astype("float32"),
             "aerial": rng.uniform(-1, 1, size=(b, *spec.aerial_size, 3)).astype("float32")}
    if cfg.get("dataset") == "cvact":
        batch["position"] = rng.uniform(0, 1000, size=(b, 2)).astype("float32")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg)
    model.compile(optimizer=build_optimizer(cfg["train"]["optimizer"], precision=precision), jit_compile="auto")
    flops = forward_flops(model, batch)
    for _ in range(warmup):
        model.train_on_batch(batch)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        loss = model.train_on_batch(batch)
        float(np.asarray(loss if not isinstance(loss, (list, tuple)) else loss[0]))
        times.append(time.perf_counter() - t)
    step = float(np.median(times))
    set_precision("off")
    return {"batch": b, "step_s": step, "pairs_s": b / step, "fwd_flops": flops,
            "step_flops": None if flops is None else 3.0 * flops}


def build_parser():
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="CPU-sized run: batch 4, inputs 32x128 (raw aerial 64x64), 2 timed steps (paper sizes take "
                        "minutes per step on a CPU)")
    p.add_argument("--configs", nargs="*", help="config names or paths (default: every paper config)")
    p.add_argument("--precisions", nargs="*", default=None,
                   help="precisions to compare (default: off and float16 on a GPU, off and bfloat16 on a CPU)")
    p.add_argument("--steps", type=int, help="timed steps (default 5, quick 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (tracing / compilation)")
    p.add_argument("--batch-size", type=int, help="override the paper batch size")
    p.add_argument("--size-factor", type=int, help="divide the paper input sizes by this (default 1)")
    p.add_argument("--determinism", action="store_true",
                   help="instead of the precision table: the step time with TensorFlow op determinism off and on "
                        "(train.deterministic), float32, each mode in its own process (it is process-wide), "
                        "rounds interleaved off/on/off/on, and the ratio on/off")
    p.add_argument("--op-determinism", choices=("on", "off"), help=argparse.SUPPRESS)  # one child of --determinism
    return p


def determinism_table(args) -> int:
    """Step time with op determinism off / on, two interleaved rounds of one child process per mode."""
    import json
    import subprocess

    from common.models.registry import families

    configs = args.configs or [f.demo["config"] for _, f in sorted(families().items()) if f.demo]
    child = [sys.executable, "-m", "benchmarks.train_bench", "--precisions", "off", "--warmup", str(args.warmup)]
    if args.quick:
        child.append("--quick")
    for flag, value in (("--steps", args.steps), ("--batch-size", args.batch_size), ("--size-factor", args.size_factor)):
        if value:
            child += [flag, str(value)]
    times = {}
    for rnd in range(2):
        for mode in ("off", "on"):
            for cfg in configs:
                out = subprocess.run(child + ["--configs", cfg, "--op-determinism", mode], capture_output=True,
                                     text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
                if out.returncode:
                    raise CVGLError(f"benchmark child for {cfg} (op determinism {mode}) failed: "
                                    f"{out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                times.setdefault((cfg, mode), []).append(row["step_s"])
                print(f"  round {rnd + 1}: {cfg:<28} op determinism {mode:<3}  step {row['step_s']:.3f} s", flush=True)
    print("| config | step, determinism off (s) | step, on (s) | on / off |")
    print("|---|---|---|---|")
    for cfg in configs:
        off, on = min(times[(cfg, "off")]), min(times[(cfg, "on")])
        print(f"| {cfg} | {off:.3f} | {on:.3f} | {on / off:.2f} |")
    return 0


def _has_gpu() -> bool:
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.determinism:
        return determinism_table(args)
    import keras

    from common.models.config import config_paths, load_config

    if args.op_determinism:  # a child of --determinism: one config, one mode, one JSON line
        import json

        import tensorflow as tf

        if args.op_determinism == "on":
            tf.config.experimental.enable_op_determinism()
        cfg = load_config(args.configs[0])
        factor = args.size_factor if args.size_factor else (0 if args.quick else 1)
        if args.quick or args.batch_size or factor != 1:
            cfg = quick_config(cfg, factor, args.batch_size or (4 if args.quick else cfg["train"]["batch_size"]))
        r = bench_config(cfg, "off", args.steps or (2 if args.quick else 5), args.warmup)
        print(json.dumps({"config": cfg["name"], "step_s": r["step_s"]}))
        return 0

    paths = args.configs or config_paths()
    if not paths:
        raise CVGLError("no configs found in the registered families' config folders; pass --configs")
    steps = args.steps or (2 if args.quick else 5)
    factor = args.size_factor if args.size_factor else (0 if args.quick else 1)
    gpu = _has_gpu()
    precisions = args.precisions or (["off", "float16"] if gpu else ["off", "bfloat16"])
    rates = {p: matmul_rate(MATMUL_DTYPE[p]) for p in precisions}
    print(f"backend {keras.backend.backend()}, {'GPU' if gpu else 'CPU'}; matmul 2048^3: "
          + ", ".join(f"{p} {r / 1e9:.1f} GFLOP/s" for p, r in rates.items()))
    seen, rows = {}, []
    for path in paths:
        cfg = load_config(path)
        if args.quick or args.batch_size or factor != 1:
            cfg = quick_config(cfg, factor, args.batch_size or (4 if args.quick else cfg["train"]["batch_size"]))
        key = repr((cfg["model"], cfg["input_spec"], cfg["train"]["batch_size"], cfg["train"]["optimizer"]))
        for precision in precisions:
            if (key, precision) in seen:  # same architecture and batch: same timing
                r = dict(seen[(key, precision)])
            else:
                r = bench_config(cfg, precision, steps, args.warmup)
                seen[(key, precision)] = r
            r.update(config=cfg["name"], precision=precision)
            r["pct_matmul"] = None if r["step_flops"] is None else 100 * r["step_flops"] / r["step_s"] / rates[precision]
            rows.append(r)
            gf = "-" if r["step_flops"] is None else f"{r['step_flops'] / 1e9:.1f}"
            pm = "-" if r["pct_matmul"] is None else f"{r['pct_matmul']:.1f}"
            print(f"  {r['config']:<34} {precision:<9} batch {r['batch']:>3}  step {r['step_s']:8.3f} s  "
                  f"{r['pairs_s']:8.2f} pairs/s  {gf:>8} GFLOP/step  {pm:>5}% of matmul", flush=True)
    # the machine is measured again at the end and the better rate kept (other load may have slowed one)
    for p in precisions:
        rates[p] = max(rates[p], matmul_rate(MATMUL_DTYPE[p]))
    for r in rows:
        if r["step_flops"] is not None:
            r["pct_matmul"] = 100 * r["step_flops"] / r["step_s"] / rates[r["precision"]]
    print()
    print("matmul 2048^3 (best of start and end): " + ", ".join(f"{p} {r / 1e9:.1f} GFLOP/s" for p, r in rates.items()))
    print(f"| config | precision | batch | step (s) | pairs/s | GFLOP/step | % of matmul |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        gf = "-" if r["step_flops"] is None else f"{r['step_flops'] / 1e9:.1f}"
        pm = "-" if r["pct_matmul"] is None else f"{r['pct_matmul']:.1f}"
        print(f"| {r['config']} | {r['precision']} | {r['batch']} | {r['step_s']:.3f} | {r['pairs_s']:.2f} | "
              f"{gf} | {pm} |")
    return 0


if __name__ == "__main__":
    run_cli(main)
