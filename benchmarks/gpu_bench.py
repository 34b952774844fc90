"""GPU benchmark, ready for the first lent device: the training step of GeoDTR, MGTL and SAFA at paper input and
batch sizes, float32 and mixed bfloat16, under the Keras JAX backend, beside the official PyTorch GeoDTR.

    python -m benchmarks.gpu_bench --reference OFFICIAL_GEODTR_CHECKOUT --json $OUT/gpu_bench.json
    python -m benchmarks.gpu_bench --smoke            # any machine, tiny sizes: the script cannot rot

Made for a machine with JAX and PyTorch but no TensorFlow: it picks ``KERAS_BACKEND=jax`` unless the
environment says otherwise, feeds NumPy batches (``model.train_on_batch``, no tf.data) and imports nothing of
TensorFlow on that path. Everything it needs travels with the working tree (the official GeoDTR checkout is
a few hundred kB).

What it prints:

* the machine's float32 and bfloat16 matmul rates (best of a few n^3 products, n = 8192 on a GPU);
* per config and precision: step seconds (median of ``--steps`` after ``--warmup`` compile steps), pairs/s,
  step FLOPs (3 x the forward FLOPs XLA counts) and % of the matmul rate of that precision;
* the official GeoDTR (``GeoDTR.py`` of ``--reference``, random weights: ``torchvision``'s ResNet-34 is built
  without its download) trained the same way as its ``train.py`` (counterfactual forward, soft-margin triplet
  + CF loss, ``clip_grad_norm_`` 1.0, AdamW eps 1e-6) on the same batch size, float32 and ``torch.autocast``
  bfloat16, and ours / official per precision (< 1: ours is faster).

A time budget (``--budget-s``, default 420 s) bounds the run: rows not reached are listed as skipped, so the
whole fits in 8 minutes of a lent GPU. ``--smoke`` shrinks every input to 32x128, batch 2, one timed step, and
times the reference at batch 1 on its own fixed paper size (it only takes 122x671).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported anywhere; the environment wins

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

CONFIGS = ("geodtr_cvusa_polar_ls", "mgtl_cvusa_full", "safa_cvusa")
PRECISIONS = ("off", "bfloat16")
MATMUL = {"off": "float32", "bfloat16": "bfloat16"}


def build_parser():
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_bench", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="*", default=list(CONFIGS), help="paper configs (default: %(default)s)")
    p.add_argument("--precisions", nargs="*", default=list(PRECISIONS), choices=PRECISIONS,
                   help="off = float32, bfloat16 = mixed bfloat16 (default: %(default)s)")
    p.add_argument("--reference", default=None,
                   help="a checkout of the official GeoDTR code (its GeoDTR.py and utils.py); default: no reference")
    p.add_argument("--steps", type=int, default=5, help="timed steps per row (default %(default)s; --smoke 1)")
    p.add_argument("--warmup", type=int, default=2, help="untimed compile steps first (default %(default)s)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="stop starting new rows after this many seconds (default %(default)s)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, batch 2, one step: checks the script runs")
    p.add_argument("--json", default=None, help="also write the rows as JSON to this file (default: none)")
    return p


# ------------------------------------------------------------------------------------------------ ours
def _ours(name, precision, args):
    from benchmarks.train_bench import bench_config, quick_config
    from common.models.config import load_config

    cfg = load_config(name)
    if args.smoke:
        cfg = quick_config(cfg, 0, 2)
    r = bench_config(cfg, precision, args.steps, args.warmup)
    return {"model": cfg["name"], "precision": precision, "batch": r["batch"], "step_s": r["step_s"],
            "pairs_s": r["pairs_s"], "step_flops": r["step_flops"]}


# ------------------------------------------------------------------------------------------------ official
def _reference(ref_dir, precision, batch, args):
    """The official GeoDTR's training step on random batches; a dict, or a string saying why it did not run."""
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed"
    if not (ref_dir and os.path.isfile(os.path.join(ref_dir, "GeoDTR.py"))):
        return "no --reference checkout with GeoDTR.py"
    import torch

    from benchmarks._official_geodtr import official_step

    device = "cuda" if torch.cuda.is_available() else "cpu"
    step, _ = official_step(ref_dir, batch, precision, device)

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    s = float(np.median(times))
    return {"model": "official GeoDTR (PyTorch)", "precision": precision, "batch": batch, "step_s": s,
            "pairs_s": batch / s, "step_flops": None, "device": device}


# ------------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.steps, args.warmup = 1, 1
    if args.steps < 1 or args.warmup < 0:
        from common.errors import CVGLError

        raise CVGLError("--steps must be >= 1 and --warmup >= 0")
    import keras

    from benchmarks.train_bench import matmul_rate

    t0 = time.time()
    backend = keras.backend.backend()
    device = "?"
    if backend == "jax":
        import jax

        device = str(jax.devices()[0])
    gpu = "cuda" in device.lower() or "gpu" in device.lower()
    n = 8192 if gpu else (256 if args.smoke else 2048)
    rates = {p: matmul_rate(MATMUL[p], n=n) for p in args.precisions}
    print(f"backend {backend} on {device}; matmul {n}^3: "
          + ", ".join(f"{MATMUL[p]} {r / 1e12:.2f} TFLOP/s" for p, r in rates.items()), flush=True)
    rows, skipped = [], []
    for name in args.configs:
        for precision in args.precisions:
            if time.time() - t0 > args.budget_s:
                skipped.append(f"{name} {precision}")
                continue
            r = _ours(name, precision, args)
            rows.append(r)
            print(f"  {r['model']:<26}{precision:<10}batch {r['batch']:>3}  step {r['step_s']:8.4f} s", flush=True)
    ref_batch = 1 if args.smoke else next((r["batch"] for r in rows if r["model"].startswith("geodtr")), 32)
    refs = {}
    for precision in args.precisions:
        if time.time() - t0 > args.budget_s or (args.smoke and precision != "off"):  # CPU bfloat16: minutes
            skipped.append(f"official GeoDTR {precision}")
            continue
        got = _reference(args.reference, precision, ref_batch, args)
        if isinstance(got, str):
            print(f"  official GeoDTR: skipped ({got})")
            break
        refs[precision] = got
        rows.append(got)
        print(f"  {got['model']:<26}{precision:<10}batch {got['batch']:>3}  step {got['step_s']:8.4f} s", flush=True)
    for r in rows:
        rate = rates.get(r["precision"])
        r["pct_matmul"] = (100.0 * r["step_flops"] / r["step_s"] / rate) if r["step_flops"] and rate else None
        ref = refs.get(r["precision"])
        r["vs_official"] = (r["step_s"] / ref["step_s"] if ref and r["model"].startswith("geodtr")
                            and ref["batch"] == r["batch"] else None)
    print()
    print(f"| model | precision | batch | step (s) | pairs/s | % of {('bf16/fp32')} matmul | ours / official |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        pm = "-" if r["pct_matmul"] is None else f"{r['pct_matmul']:.1f}"
        vs = "-" if r["vs_official"] is None else f"{r['vs_official']:.2f}"
        print(f"| {r['model']} | {r['precision']} | {r['batch']} | {r['step_s']:.4f} | {r['pairs_s']:.2f} | {pm} | {vs} |")
    if skipped:
        print(f"skipped (time budget {args.budget_s:g} s): {', '.join(skipped)}")
    print(f"total {time.time() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"backend": backend, "device": device, "matmul_flops": rates, "rows": rows,
                       "skipped": skipped, "smoke": args.smoke}, fh, indent=2, default=float)
    return 0


if __name__ == "__main__":
    from common.errors import run_cli

    run_cli(main)
