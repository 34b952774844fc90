"""Draw what a model looks at for one ground / aerial pair: each family's own picture.

    python -m experiments.visualize --weights RUN --ground pano.jpg --aerial sat.jpg --out picture.png
    python -m experiments.visualize --config mgtl_cvusa_full --ground ... --aerial ... --out untrained.png

GeoDTR draws its K geometric layout descriptors over both images, MGTL its cross-attention per step
(``python -m experiments.families`` lists what each family draws). ``--weights`` is anything
``common.serving.loading.load_model`` reads: a training run directory, a ``.keras`` file (a checkpoint or a
converted official checkpoint: ``experiments.convert_weights``) or an export directory. ``--config`` builds
that config's model with RANDOM weights (to see the picture's layout before training). A square aerial image
is polar-transformed for polar models; a non-square one is taken as a polar map already.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common.errors import CVGLError, require_file, run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    from common.models import registry

    p = argparse.ArgumentParser(prog="python -m experiments.visualize", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="trained model: run directory, .keras file or export directory")
    src.add_argument("--config", help="config name or YAML path: build that model with RANDOM weights")
    p.add_argument("--ground", required=True, help="ground panorama image (JPEG/PNG, any size)")
    p.add_argument("--aerial", required=True, help="aerial image (square: polar-transformed here) or polar map")
    p.add_argument("--out", required=True, help="output PNG path (written atomically)")
    p.add_argument("--title", default="", help="title line above the picture (default: the two file names)")
    registry.add_options(p, "visualize")
    return p


def load(weights: str | None, config: str | None):
    """The cross-view model of ``--weights`` (any source) or of ``--config`` with random weights."""
    if weights:
        from common.serving.loading import load_model

        return load_model(weights).model
    from common.models.config import build_model, load_config

    cfg = load_config(config)
    cfg["model"]["backbone_weights"] = "random"  # every family reads "random" as random on purpose
    return build_model(cfg)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for path, what in ((args.ground, "ground image"), (args.aerial, "aerial image")):
        require_file(path, what, "give an existing JPEG/PNG file")
    from common.models.registry import family_of

    model = load(args.weights, args.config)
    family = family_of(model)
    if family.visualize is None:
        raise CVGLError(f"the {family.name} family draws no picture (python -m experiments.families lists "
                        "the families that do)")
    args.title = args.title or ("UNTRAINED (random weights) " if args.config else "") + \
        f"{family.name} {family.visualize_what}: {os.path.basename(args.ground)} / {os.path.basename(args.aerial)}"
    what = family.visualize(model, args.ground, args.aerial, args.out, args)
    print(f"wrote {args.out}: {what}")
    return 0


if __name__ == "__main__":
    run_cli(main)
