"""Export a trained model as a SavedModel that takes raw images: ``python -m experiments.export``.

    python -m experiments.export --run RUN_DIR --out EXPORT_DIR
    python -m experiments.export --weights model.keras --config geodtr_cvusa_polar_ls --out EXPORT_DIR

Writes ``EXPORT_DIR/`` (layout in :mod:`common.export`): ``saved_model/`` with the endpoints
``embed_ground`` and ``embed_aerial`` (uint8 (B, H, W, 3), any batch and image size -> (B, d) unit-norm
float32), doing the ground crop/resize, the aerial polar transform and the normalisation inside the graph
(:mod:`common.preprocess`); ``model.keras`` (the same end-to-end model); ``config.yaml``; ``export.json``
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
import json
import os

from common.errors import CVGLError, require_file, run_cli

CHECKPOINT_NAMES = ("best.keras", "last.keras")


# --------------------------------------------------------------------------------------------- sources
def _read_yaml(path: str) -> dict:
    from common.config import read_yaml_mapping

    cfg = read_yaml_mapping(path, "it should be the resolved config of the run")
    if "model" not in cfg or "input_spec" not in cfg:
        raise CVGLError(f"config {path} lacks 'model' / 'input_spec' (see common/config.py for the schema)")
    return cfg


def resolve_run(run_dir: str):
    """(config dict, checkpoint path, results dict or None) of a training run directory."""
    fix = "pass the directory experiments.train wrote (it holds config.yaml and checkpoints/)"
    if not os.path.isdir(run_dir):
        raise CVGLError(f"run directory not found: {run_dir} ({fix})")
    cfg = _read_yaml(require_file(os.path.join(run_dir, "config.yaml"), "run config", fix))
    ckpt = None
    for name in CHECKPOINT_NAMES:
        path = os.path.join(run_dir, "checkpoints", name)
        if os.path.isfile(path):
            ckpt = path
            break
    if ckpt is None:
        raise CVGLError(
            f"no checkpoint in {os.path.join(run_dir, 'checkpoints')} (expected {' or '.join(CHECKPOINT_NAMES)}); "
            "train first, or pass --weights FILE.keras --config CFG"
        )
    results = None
    results_path = os.path.join(run_dir, "results.json")
    if os.path.isfile(results_path):
        try:
            with open(results_path) as fh:
                results = json.load(fh)
        except (OSError, ValueError) as exc:
            raise CVGLError(f"{results_path} is not valid JSON ({exc}); re-run the evaluation or delete it") from None
    return cfg, ckpt, results


def load_trained_model(checkpoint: str, cfg: dict):
    """The trained CrossViewModel from a ``.keras`` file (full model) or ``.weights.h5`` (weights of cfg)."""
    import keras

    from common.config import build_model, family_module
    from common.model_base import CrossViewModel

    family = (cfg.get("model") or {}).get("family")
    if family:
        family_module(family)  # registers the family's serializable classes
    require_file(checkpoint, "checkpoint", "pass an existing .keras file")
    try:
        if checkpoint.endswith(".weights.h5"):
            model = build_model(cfg)
            model.load_weights(checkpoint)
        else:
            model = keras.saving.load_model(checkpoint, compile=False)
    except CVGLError:
        raise
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CVGLError(
            f"checkpoint {checkpoint} cannot be loaded as a {family or 'cvgl'} model ({first[:300]}); check that it "
            "belongs to this config and is not truncated"
        ) from None
    if not isinstance(model, CrossViewModel):
        raise CVGLError(f"checkpoint {checkpoint} holds a {type(model).__name__}, not a cross-view model")
    return model


# ------------------------------------------------------------------------------------------- model card
def model_card(meta: dict, cfg: dict, results) -> str:
    """MODEL_CARD.md: what the model is, what it was trained and evaluated on, how to call it."""
    from experiments.parity import METRICS, compare

    spec = meta["input_spec"]
    source = cfg.get("source") or {}
    lines = [
        f"# Model card: {meta.get('name') or 'cross-view model'}",
        "",
        "Cross-view geo-localisation: a street-level panorama and an aerial image are embedded into the same "
        "space; the closest aerial descriptor to a panorama's descriptor is its predicted location.",
        "",
        "## Model",
        f"- family: {meta.get('family')}; paper row: {source.get('paper', '-')}, {source.get('table', '-')}, "
        f"\"{source.get('row', '-')}\"",
        f"- parameters: {meta['parameters']:,}; descriptor: {meta['descriptor_dim']} floats, unit L2 norm "
        "(distance = 2 - 2 cos)",
        f"- fingerprint (SHA-256 of the SavedModel weights): `{meta['fingerprint']}`",
        "",
        "## Data",
        f"- trained on: {cfg.get('dataset', '-')} layout; augmentation: "
        + (", ".join(f"{k} {v}" for k, v in (cfg.get("augment") or {}).items()) or "none"),
        f"- training: {json.dumps(cfg.get('train', {}), default=str)}",
    ]
    if isinstance(results, dict):
        for key, label in (("val_note", "validation"), ("best_epoch", "checkpoint: best epoch"),
                           ("root", "evaluated on data at")):
            if results.get(key) is not None:
                lines.append(f"- {label}: {results[key]}")
    lines += [
        "",
        "## Input (done inside the exported graph)",
        "- both endpoints take uint8 RGB images (B, H, W, 3) of any batch size and image size",
        "- ground: a panorama with width/height < 3 (full sphere, e.g. CVACT 832x1664) keeps its middle half of "
        f"rows (208:624 of 832); then area resize to {spec['ground_size'][0]}x{spec['ground_size'][1]}",
    ]
    if spec["polar"]:
        s = meta["aerial_source_size"]
        resize = f"area resize to {s}x{s}, " if s else "at its own size (no resize), "
        lines.append(
            f"- aerial: centre square, {resize}SAFA polar transform to "
            f"{spec['aerial_size'][0]}x{spec['aerial_size'][1]} (north = centre column)"
        )
    else:
        lines.append(f"- aerial: centre square, area resize to {spec['aerial_size'][0]}x{spec['aerial_size'][1]}")
    lines.append(f"- normalisation: {spec['normalisation']} ({'x/127.5-1' if spec['normalisation'] == 'tanh' else 'RGB->BGR minus VGG means'})")
    lines += ["", "## Evaluation"]
    report = compare(results) if results is not None else []
    if not report:
        lines.append("No results.json in the run: evaluate with `python -m experiments.evaluate` and re-export.")
    else:
        lines.append("| dataset | split | protocol | " + " | ".join(METRICS) + " | paper R@1 |")
        lines.append("|---" * (len(METRICS) + 4) + "|")
        for item in report:
            ev, row = item["evaluation"], item["paper"]
            vals = [f"{ev['metrics'][m]:.2f}" if m in ev["metrics"] else "-" for m in METRICS]
            paper = f"{row['metrics']['R@1']:.2f}" if row and "R@1" in row["metrics"] else "-"
            lines.append(f"| {ev.get('dataset')} | {ev.get('split')} | {ev.get('protocol')} | "
                         + " | ".join(vals) + f" | {paper} |")
        lines.append("")
        lines.append("Protocols: index = query k's true match is aerial k (CVUSA, CVACT_val); radius_5m = a hit "
                     "is any retrieved aerial within 5 m (CVACT_test). R@1% uses K = floor(N/100).")
    lines += [
        "",
        "## Usage",
        "```python",
        "import tensorflow as tf",
        "m = tf.saved_model.load('saved_model')",
        "g = m.embed_ground(tf.constant(panoramas_uint8))   # (B, d)",
        "a = m.embed_aerial(tf.constant(aerials_uint8))     # (B, d)",
        "scores = tf.matmul(g, a, transpose_b=True)        # higher = closer",
        "```",
        "or `keras.layers.TFSMLayer('saved_model', call_endpoint='embed_ground')`.",
        "",
        "## Limits",
        "- Inputs are expected north-aligned (panorama centre column = north, aerial image north up), as in "
        "CVUSA/CVACT; an unaligned panorama degrades retrieval.",
        f"- Exported SavedModel vs Keras model on probe images: max |difference| {meta['max_abs_diff_vs_keras']:.2g}.",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- main
def main(argv=None):
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
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    args = parser.parse_args(argv)

    if bool(args.run) == bool(args.weights):
        raise CVGLError("give exactly one of --run RUN_DIR or --weights FILE.keras (with --config)")
    results = None
    if args.run:
        cfg, ckpt, results = resolve_run(args.run)
        if args.config:
            from common.config import load_config

            cfg = load_config(args.config)
    else:
        if not args.config:
            raise CVGLError("--weights needs --config (the config YAML or paper-row name the weights belong to)")
        from common.config import load_config

        cfg = load_config(args.config)
        ckpt = args.weights
    if args.results:
        from experiments.parity import load_results

        results = load_results(args.results)

    from common.export import write_export
    from common.preprocess import end_to_end

    model = load_trained_model(ckpt, cfg)
    e2e = end_to_end(model, aerial_source_size=args.aerial_size)
    print(f"exporting {cfg.get('name')} from {ckpt} ...")
    meta = write_export(e2e, args.out, cfg, results=results, overwrite=args.overwrite, model_card=model_card)
    print(f"wrote {os.path.abspath(args.out)}")
    print(f"  saved_model/  endpoints embed_ground, embed_aerial (uint8 any size -> {meta['descriptor_dim']}-d)")
    print(f"  model.keras, config.yaml, export.json, MODEL_CARD.md")
    print(f"  fingerprint {meta['fingerprint'][:16]}  (SavedModel vs Keras: max diff {meta['max_abs_diff_vs_keras']:.2g})")
    return 0


if __name__ == "__main__":
    run_cli(main)
