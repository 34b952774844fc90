"""Export a trained model as a SavedModel that takes raw images: ``python -m experiments.export``.

    python -m experiments.export --run RUN_DIR --out EXPORT_DIR
    python -m experiments.export --weights model.keras --config geodtr_cvusa_polar_ls --out EXPORT_DIR

Writes ``EXPORT_DIR/`` (layout in :mod:`common.serving.export`): ``saved_model/`` with the endpoints
``embed_ground`` and ``embed_aerial`` (uint8 (B, H, W, 3), any batch and image size -> (B, d) unit-norm
float32), doing the ground crop/resize, the aerial polar transform and the normalisation inside the graph
(:mod:`common.serving.preprocess`); ``model.keras`` (the same end-to-end model); ``config.yaml``; ``export.json``
and ``MODEL_CARD.md`` (data, protocol, metrics from ``RUN/results.json``, the paper's numbers beside them).
The directory is written under a temporary name and renamed when complete and verified (the SavedModel must
reproduce the Keras model on probe images to 1e-5).

Use it without this project::

    import tensorflow as tf
    m = tf.saved_model.load("EXPORT_DIR/saved_model")
    descriptor = m.embed_ground(tf.constant(uint8_panoramas))      # (B, d)
"""

from __future__ import annotations

import argparse
import math
import os

from common.errors import CVGLError, run_cli

from common.serving.export import model_card
from common.serving.loading import load_trained_model, resolve_run


# ------------------------------------------------------------------------------------------- model card


def _with_run_evaluations(run_dir, results):
    """results.json followed by every ``eval_*.json`` that experiments.evaluate wrote into the run (cross-area,
    CVACT_test, ...), so the model card lists every evaluation that was run."""
    import glob
    import json

    found = []
    for path in sorted(glob.glob(os.path.join(run_dir, "eval_*.json"))):
        try:
            with open(path) as fh:
                found.append(json.load(fh))
        except (OSError, ValueError):
            print(f"note: {path} is not readable JSON; left out of the model card")
    if not found:
        return results
    return ([results] if results is not None else []) + found


# ------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.export",
        description="Export a trained model as a TF SavedModel with raw-image endpoints embed_ground / "
        "embed_aerial (preprocessing in the graph), plus model.keras, config.yaml and MODEL_CARD.md.",
    )
    src = parser.add_argument_group("what to export (one of)")
    src.add_argument("--run", help="training run directory (config.yaml, checkpoints/best.keras, results.json)")
    src.add_argument("--weights", help="a .keras model file (or .weights.h5 of --config) instead of --run")
    parser.add_argument("--config", help="config YAML path or paper-row name; with --weights (default: the run's)")
    parser.add_argument("--results", help="results.json for the model card (default: RUN/results.json)")
    parser.add_argument("--out", required=True, help="export directory to create (written atomically)")
    parser.add_argument("--aerial-size", type=int, default=None,
                        help="polar models: area-resize every aerial input to S x S before the polar transform "
                        "(default: none; the polar transform is computed on the square image as it is, which "
                        "is exactly what the offline preparation did to the training tiles; give S when your "
                        "aerial images have another resolution than the training data, e.g. 750 for CVUSA)")
    parser.add_argument("--aerial-extent-m", type=float, default=None,
                        help="ground side in metres of one training aerial image, recorded for map indexes (index "
                             "build --orthophoto cuts tiles of this size) (default: unknown; the synthetic world's "
                             "is 150)")
    parser.add_argument("--aerial-px", type=int, default=None,
                        help="pixels per side of one training aerial image, recorded with --aerial-extent-m "
                             "(default: unknown)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out that is itself an earlier export (never any other "
                        "directory, never the run being exported)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)

    if bool(args.run) == bool(args.weights):
        raise CVGLError("give exactly one of --run RUN_DIR or --weights FILE.keras (with --config)")
    results = None
    if args.run:
        cfg, ckpt, results = resolve_run(args.run)
        results = _with_run_evaluations(args.run, results)
        if args.config:
            from common.models.config import load_config

            cfg = load_config(args.config)
    else:
        if not args.config:
            raise CVGLError("--weights needs --config (the config YAML or paper-row name the weights belong to)")
        from common.models.config import load_config

        cfg = load_config(args.config)
        ckpt = args.weights
    if args.results:
        from common.evaluation.parity import load_results

        results = load_results(args.results)

    from common.serving.export import check_replaceable, write_export
    from common.serving.preprocess import end_to_end

    protect = [p for p in (args.run, ckpt, os.path.dirname(os.path.abspath(ckpt))) if p]
    if os.path.exists(args.out):
        if not args.overwrite:
            raise CVGLError(f"export directory already exists: {args.out} (pass --overwrite or choose another --out)")
        check_replaceable(args.out, protect)  # before the model is loaded: fail at once
    if args.aerial_extent_m is not None and not (math.isfinite(args.aerial_extent_m) and args.aerial_extent_m > 0):
        raise CVGLError(f"--aerial-extent-m must be a positive number of metres, got {args.aerial_extent_m}")
    if args.aerial_px is not None and not 16 <= args.aerial_px <= 8192:
        raise CVGLError(f"--aerial-px must be in 16..8192 pixels, got {args.aerial_px}")
    if args.aerial_px is not None and args.aerial_extent_m is None:
        raise CVGLError("--aerial-px needs --aerial-extent-m (the ground those pixels cover)")
    model = load_trained_model(ckpt, cfg)
    e2e = end_to_end(model, aerial_source_size=args.aerial_size)
    print(f"exporting {cfg.get('name')} from {ckpt} ...")
    meta = write_export(e2e, args.out, cfg, results=results, overwrite=args.overwrite, model_card=model_card,
                        protect=protect, ground={"aerial_extent_m": args.aerial_extent_m,
                                                 "aerial_px": args.aerial_px})
    print(f"wrote {os.path.abspath(args.out)}")
    print(f"  saved_model/  endpoints embed_ground, embed_aerial (uint8 any size -> {meta['descriptor_dim']}-d)")
    print(f"  model.keras, config.yaml, export.json, MODEL_CARD.md")
    print(f"  fingerprint {meta['fingerprint'][:16]}  (SavedModel vs Keras: max diff {meta['max_abs_diff_vs_keras']:.2g})")
    return 0


if __name__ == "__main__":
    run_cli(main)
