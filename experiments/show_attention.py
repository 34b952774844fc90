"""Draw MGTL's cross-attention for one ground / aerial pair: per step, which imagined aerial tokens each ground
token attends to (G2S), and the same for the aerial tower (S2G).

    python -m experiments.show_attention --weights RUN/checkpoints/best.keras \\
        --ground pano.jpg --aerial sat.jpg --out attention.png [--head mean|0..5]
    python -m experiments.show_attention --config mgtl_cvusa_full --ground ... --aerial ... --out ...

``--weights`` is an MGTL ``.keras`` file (a training checkpoint, or an export's model.keras). Without it,
``--config`` builds that config's model with random weights: the picture then shows an untrained model
(useful to check the tooling, not the paper). A square aerial image is polar-transformed; a non-square one is
taken as a polar map already.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common.errors import CVGLError, require_file, run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.show_attention", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="MGTL .keras file (checkpoint or export model.keras)")
    src.add_argument("--config", help="config name or YAML path: build that MGTL model with RANDOM weights")
    p.add_argument("--ground", required=True, help="ground panorama image (JPEG/PNG, any size)")
    p.add_argument("--aerial", required=True, help="aerial image (square: polar-transformed here) or polar map")
    p.add_argument("--out", required=True, help="output PNG path (written atomically)")
    p.add_argument("--head", default="mean", help="attention head to draw: 'mean' over heads (default) or 0..5")
    p.add_argument("--title", default="", help="title line above the picture (default: the two file names)")
    return p


def load_mgtl(weights: str | None, config: str | None):
    import keras

    import mgtl_tf  # noqa: F401  (registers the MGTL classes)
    import common.preprocess  # noqa: F401  (an export's model.keras wraps the model in EndToEndModel)

    if weights:
        require_file(weights, "MGTL weights file", "give a .keras file saved by training or export")
        try:
            return keras.saving.load_model(weights, compile=False)
        except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad file
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise CVGLError(f"cannot load {weights} as a Keras model ({first}); give an MGTL .keras file") from None
    from common.config import build_model, load_config

    cfg = load_config(config)
    if cfg["model"].get("family") != "mgtl":
        raise CVGLError(f"config {cfg['_path']} is family {cfg['model'].get('family')!r}; "
                        f"the attention picture needs an MGTL config")
    cfg["model"]["backbone_weights"] = None
    return build_model(cfg)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.head != "mean" and not args.head.isdigit():
        raise CVGLError(f"--head must be 'mean' or a head index, got {args.head!r}")
    for path, what in ((args.ground, "ground image"), (args.aerial, "aerial image")):
        require_file(path, what, "give an existing JPEG/PNG file")
    from mgtl_tf.visualize import show_attention

    model = load_mgtl(args.weights, args.config)
    title = args.title or ("UNTRAINED (random weights) " if args.config else "") + \
        f"{os.path.basename(args.ground)} / {os.path.basename(args.aerial)}"
    maps = show_attention(model, args.ground, args.aerial, args.out, head=args.head, title=title)
    print(f"wrote {args.out}: {len(maps['ground'])} steps x 2 towers, {maps['ground'][0].shape[0]} tokens")
    return 0


if __name__ == "__main__":
    run_cli(main)
