"""Side by side with the official GeoDTR on this machine: training step time, first step and peak memory of our
Keras GeoDTR against the official PyTorch code, at full paper size, on the same batches, in one run.

    python -m benchmarks.official_bench --reference OFFICIAL_GEODTR_CHECKOUT --torch-python TORCH_ENV/bin/python
    python -m benchmarks.official_bench --reference DIR --torch-python PY --batches 4 8 --steps 5 --rounds 2

Both sides train the paper configuration (``geodtr_cvusa_polar_ls``: 122x671 ground and polar aerial, K = 8,
2 layers, FFN 2048, dropout 0.3, random weights) on the same random batches (written once to a temporary
``.npz``, NHWC for ours, transposed to NCHW for the official code), with their own recipes' optimizers (ours:
the torch-semantics AdamW of the config; theirs: ``torch.optim.AdamW`` eps 1e-6 + ``clip_grad_norm_``). Each
side runs in a fresh child process per round, so peak RSS (``getrusage``) is that side's alone and the first
step is a cold one: ours includes tracing and graph compilation, theirs the first eager step. Rounds
alternate the two sides (ours, official, ours, official, ...) so a change of machine load hits both; the
table reports the best round of each (the least disturbed).

The official code runs in ``--torch-python``, an interpreter with PyTorch and torchvision (the project does
not depend on them); it imports ``GeoDTR.py`` and ``utils.py`` from ``--reference``. Without either, the
benchmark says so in one line and exits 2.

Ratio = ours / official: below 1 ours is faster or smaller.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from common.errors import CVGLError, run_cli

CONFIG = "geodtr_cvusa_polar_ls"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def ours_child(batches_path: str, steps: int, breakdown: bool = False) -> dict:
    """Our side (its own process): build, compile, first step, then the median of ``steps`` steps; with
    ``breakdown``, also the median forward (training mode, loss included) and forward + backward (gradients of
    every trainable weight, no update) as their own compiled functions, after one untimed call each."""
    import warnings

    t0 = time.perf_counter()  # the first step counts from here (the official side: from before import torch)
    import keras

    from common.data.specs import get_spec
    from common.models.config import build_model, load_config
    from common.training.optim import build_optimizer

    keras.utils.set_random_seed(0)
    cfg = load_config(CONFIG)
    cfg["model"]["backbone_weights"] = None
    spec = get_spec(cfg["input_spec"])
    with np.load(batches_path) as z:
        aerial, ground = z["aerial"], z["ground"]
    if tuple(aerial.shape[2:4]) != tuple(spec.aerial_size) or tuple(ground.shape[2:4]) != tuple(spec.ground_size):
        raise CVGLError(f"batches of {aerial.shape[2:4]} / {ground.shape[2:4]} do not fit {CONFIG}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg)
    model.compile(optimizer=build_optimizer(cfg["train"]["optimizer"]), jit_compile="auto")
    losses, times = [], []
    for i in range(steps + 1):
        batch = {"ground": ground[i % len(ground)], "aerial": aerial[i % len(aerial)]}
        t = time.perf_counter()
        loss = model.train_on_batch(batch)
        losses.append(float(np.asarray(loss if not isinstance(loss, (list, tuple)) else loss[0])))
        times.append(time.perf_counter() - (t0 if i == 0 else t))
    out = {"side": "ours", "first_step_s": times[0], "step_s": float(np.median(times[1:])), "steps": steps,
           "losses": losses, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if breakdown:
        import tensorflow as tf

        def loss_of(x):
            return model.compute_loss(x=x, y_pred=model(x, training=True))

        @tf.function
        def forward(x):
            return loss_of(x)

        @tf.function
        def forward_backward(x):
            with tf.GradientTape() as tape:
                loss = loss_of(x)
            return tape.gradient(loss, model.trainable_variables)

        batch = {"ground": tf.constant(ground[0]), "aerial": tf.constant(aerial[0])}
        for name, fn in (("forward_s", forward), ("forward_backward_s", forward_backward)):
            tf.nest.map_structure(np.asarray, fn(batch))
            took = []
            for _ in range(steps):
                t = time.perf_counter()
                tf.nest.map_structure(np.asarray, fn(batch))
                took.append(time.perf_counter() - t)
            out[name] = float(np.median(took))
    return out


def _env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(cmd, threads, what):
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_env(threads))
    if out.returncode != 0:
        raise CVGLError(f"the {what} side failed (exit {out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_reference(reference: str | None, torch_python: str | None) -> str | None:
    """None when the official side can run, else why not (one line)."""
    if not reference or not all(os.path.isfile(os.path.join(reference, f)) for f in ("GeoDTR.py", "utils.py")):
        return ("--reference must name a checkout of the official GeoDTR code (its GeoDTR.py and utils.py: "
                "git clone https://github.com/zxh009123/GeoDTR)")
    if not torch_python:
        return "--torch-python must name a Python interpreter with PyTorch and torchvision (pip install torch torchvision)"
    probe = subprocess.run([torch_python, "-c", "import torch, torchvision"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"--torch-python {torch_python} cannot import torch and torchvision: install them there"
    return None


def make_batches(path: str, batch: int, count: int, seed: int = 0) -> None:
    from common.data.specs import get_spec
    from common.models.config import load_config

    spec = get_spec(load_config(CONFIG)["input_spec"])
    rng = np.random.default_rng(seed)
    np.savez(path, aerial=rng.uniform(-1, 1, (count, batch, *spec.aerial_size, 3)).astype(np.float32),
             ground=rng.uniform(-1, 1, (count, batch, *spec.ground_size, 3)).astype(np.float32))


def _split(side: dict) -> dict:
    """Backward = (forward + backward) - forward; update = step - (forward + backward): the optimizer and
    clipping (0 when the separate timings leave nothing for it)."""
    if "forward_backward_s" in side:
        side = dict(side, backward_s=side["forward_backward_s"] - side["forward_s"],
                    update_s=max(0.0, side["step_s"] - side["forward_backward_s"]))
    return side


def format_table(rows) -> str:
    lines = ["| batch | what | ours | official | ratio |", "|---|---|---|---|---|"]
    for r in rows:
        o, t = _split(r["ours"]), _split(r["official"])
        for key, label, unit in (("step_s", "training step", "s"), ("forward_s", "of which forward", "s"),
                                 ("backward_s", "of which backward", "s"), ("update_s", "of which update", "s"),
                                 ("first_step_s", "first step (cold)", "s"), ("peak_rss_gib", "peak RSS", "GiB")):
            if key not in o:
                continue
            ratio = f"**{o[key] / t[key]:.2f}**" if t[key] > 0 else "-"
            lines.append(f"| {r['batch']} | {label} | {o[key]:.2f} {unit} | {t[key]:.2f} {unit} | {ratio} |")
    return "\n".join(lines)


def build_parser():
    p = argparse.ArgumentParser(prog="python -m benchmarks.official_bench", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", default=None, help="checkout of the official GeoDTR code (default: none; required)")
    p.add_argument("--torch-python", default=None,
                   help="Python interpreter with torch and torchvision for the official side (default: none; "
                        "required)")
    p.add_argument("--batches", type=int, nargs="+", default=[4], help="batch sizes (default: %(default)s)")
    p.add_argument("--steps", type=int, default=3, help="timed steps after the first, per round (default %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per side (default %(default)s)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="threads for each side (default: every core of this process, %(default)s)")
    p.add_argument("--breakdown", action="store_true",
                   help="also time the forward pass and forward + backward alone (no update), each side "
                        "(default: off)")
    p.add_argument("--json", default=None, help="write the rows as JSON to this file (default: none)")
    p.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        print(json.dumps(ours_child(args.child[0], int(args.child[1]), args.child[2] == "1")))
        return 0
    why = check_reference(args.reference, args.torch_python)
    if why:
        raise CVGLError(why)
    if args.steps < 1 or args.rounds < 1 or args.threads < 1 or min(args.batches) < 2:
        raise CVGLError("--steps, --rounds and --threads must be >= 1, every batch >= 2 (the triplet loss needs "
                        "two pairs)")
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    rows = []
    with tempfile.TemporaryDirectory(prefix="cvgl-official-bench-") as tmp:
        for b in args.batches:
            path = os.path.join(tmp, f"batches_{b}.npz")
            make_batches(path, b, args.steps + 1)
            got = {"ours": [], "official": []}
            for r in range(args.rounds):
                say(f"batch {b}, round {r + 1}/{args.rounds}: ours ...")
                got["ours"].append(_run([sys.executable, "-m", "benchmarks.official_bench", "--child", path,
                                         str(args.steps), str(int(args.breakdown))], args.threads, "ours"))
                say(f"batch {b}, round {r + 1}/{args.rounds}: official ...")
                got["official"].append(_run([args.torch_python, os.path.join(HERE, "_official_geodtr.py"),
                                             os.path.abspath(args.reference), path, str(args.steps),
                                             str(args.threads), str(int(args.breakdown))], args.threads,
                                            "official"))
            keys = ("step_s", "first_step_s", "peak_rss_gib") + (("forward_s", "forward_backward_s")
                                                                  if args.breakdown else ())
            best = {side: {key: min(x[key] for x in runs) for key in keys} for side, runs in got.items()}
            rows.append({"batch": b, **best, "rounds": got})
    if args.json:  # first: a table that fails to print loses nothing
        from common.files import write_json

        write_json(args.json, {"threads": args.threads, "steps": args.steps, "rows": rows})
    print(f"GeoDTR ({CONFIG}, random weights), {args.threads} threads each, best of {args.rounds} alternating "
          f"rounds, {args.steps} timed steps after the first")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    run_cli(main)
