"""Train one paper row (a YAML config) over ``model.fit``, resumably.

    python -m experiments.train --config geodtr_tf/configs/geodtr_cvusa_polar_ls.yaml --root DATA --out RUN
    python -m experiments.train --config mgtl_cvusa --root DATA --out RUN --epochs 2 model.steps=1

Prints the resolved recipe first (every value that differs from the file is marked ``<- override`` or
``<- flag``), then trains with per-epoch validation (R@1 picks ``best.keras``, as in the papers), and writes
the run directory (see :mod:`common.training.runner`): ``config.yaml``, ``checkpoints/best.keras`` and
``last.keras``, ``backup/`` (resume state), ``logs/`` (CSV, TensorBoard) and ``results.json``. Rerun the same
command after a crash or a kill: it resumes after the last finished epoch; rerun it with a larger ``--epochs``
to extend a finished run. A run directory is used by one process at a time (``RUN/.lock``).

Multi-GPU: ``--strategy mirrored`` (or ``auto`` with several GPUs). Multi-node: start the same command on
every node with ``--strategy multiworker`` and that node's ``TF_CONFIG``; worker 0 writes the run directory
(put it on a shared file system). The loss always sees the whole global batch (``--batch-size`` is global).
"""

from __future__ import annotations

import argparse
import os

from common.errors import CVGLError, require_dir, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.train",
        description="Train a cross-view model from a paper-row config (any registered family: python -m experiments.families) over model.fit.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="overrides: dotted keys into the config with YAML values, e.g.\n"
               "  input_spec.ground_size=[32,192]  model.num_layers=1  train.optimizer.learning_rate=1e-3",
    )
    p.add_argument("--config", required=True,
                   help="a config YAML path, or the name of one shipped with a family (python -m experiments.families lists them)")
    p.add_argument("--root", required=True, help="dataset folder in the CVUSA or CVACT layout (the config's dataset)")
    p.add_argument("--out", required=True, help="run directory (created; an existing one of the same config is resumed)")
    p.add_argument("--epochs", type=int, help="override train.epochs (the schedule spans this many epochs); on a "
                                               "finished run directory, a larger value extends the run")
    p.add_argument("--steps-per-epoch", type=int,
                   help="training steps per epoch (default: one pass over the training split)")
    p.add_argument("--batch-size", type=int, help="override train.batch_size (the GLOBAL batch over all replicas)")
    p.add_argument("--mixed-precision", choices=("off", "float16", "bfloat16"),
                   help="Keras mixed-precision policy (float16 adds dynamic loss scaling); default off (float32). "
                        "Losses are computed in float32 either way. On a CPU, keep it off: it is slower there")
    p.add_argument("--strategy", choices=("auto", "one", "mirrored", "multiworker"), default="auto",
                   help="tf.distribute strategy: auto = multiworker if TF_CONFIG is set, mirrored over several "
                        "GPUs, else one device (default auto)")
    p.add_argument("--seed", type=int, help="random seed of weights, shuffling and augmentation (default 0)")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="set train.deterministic: deterministic TensorFlow kernels and seeded everything, so the "
                        "same command twice gives bit-identical weights and a resumed run equals an "
                        "uninterrupted one (default: the config's value, false in the paper configs)")
    p.add_argument("--val-split", default="val",
                   help="split validated after every epoch (default val; CVUSA's val IS its test split); "
                        "'none' turns validation off (best.keras then follows the training loss)")
    p.add_argument("--validate-every", type=int, default=1, help="validate every N epochs, and after the last (default %(default)s)")
    p.add_argument("--allow-missing", action="store_true",
                   help="drop (and list) the pairs whose images are missing, cut short or listed in the root's "
                        "bad_pairs.txt (by prepare --verify) instead of refusing to start (default: refuse)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (see below)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.strategy == "multiworker" or (args.strategy == "auto" and os.environ.get("TF_CONFIG")):
        from common.training.distribute import make_strategy

        make_strategy(args.strategy)  # first thing: the collective ops are configured when TensorFlow starts
    from common.models.config import load_config
    from common.data.specs import get_spec
    from common.training import recipe
    from common.training.data import records_data
    from common.training.runner import run_training

    require_dir(args.root, "dataset folder (--root)", "point --root at a folder in the CVUSA or CVACT layout, "
                "e.g. one written by python -m experiments.synth")
    cfg = load_config(args.config)
    cli = {"train.epochs": args.epochs, "train.batch_size": args.batch_size,
           "train.steps_per_epoch": args.steps_per_epoch, "train.mixed_precision": args.mixed_precision,
           "train.seed": args.seed, "train.deterministic": args.deterministic}
    cfg, marked = recipe.resolve(cfg, recipe.parse_overrides(args.overrides), cli=cli)
    train = cfg["train"]
    train.setdefault("mixed_precision", "off")
    train.setdefault("seed", 0)
    if args.validate_every < 1:
        raise CVGLError(f"--validate-every must be >= 1, got {args.validate_every}")
    print(recipe.format_recipe(cfg, marked), flush=True)
    spec = get_spec(cfg["input_spec"])
    val_split = None if args.val_split.lower() == "none" else args.val_split
    data = records_data(cfg, args.root, spec, seed=train["seed"], val_split=val_split,
                        embed_batch_size=max(2, int(train["batch_size"])), allow_missing=args.allow_missing)
    results = run_training(cfg, os.path.abspath(args.out), data, strategy=args.strategy,
                           precision=train["mixed_precision"], seed=int(train["seed"]),
                           steps_per_epoch=train.get("steps_per_epoch"), validate_every=args.validate_every,
                           overrides=recipe.override_values(cfg, marked))
    m = results["metrics"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    if results["best_epoch"] is None and results["collapsed_epochs"]:
        print(f"done: {results['epochs_done']}/{results['epochs']} epochs in {results['time_s']:.0f} s; every "
              f"validated epoch was COLLAPSED, no best checkpoint ({results['val_note']})")
    else:
        print(f"done: {results['epochs_done']}/{results['epochs']} epochs in {results['time_s']:.0f} s; best "
              f"epoch {results['best_epoch']}: R@1 {fmt(m['R@1'])}  R@5 {fmt(m['R@5'])}  R@10 {fmt(m['R@10'])}  "
              f"R@1% {fmt(m['R@1%'])}  ({results['val_note']})")
    print(f"results: {os.path.join(args.out, 'results.json')}")
    return 0


if __name__ == "__main__":
    run_cli(main)
