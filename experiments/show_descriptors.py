"""Draw GeoDTR's K geometric layout descriptors over a panorama and its (polar) aerial image.

    python -m experiments.show_descriptors --weights RUN/checkpoints/best.keras \\
        --ground pano.jpg --aerial sat.jpg --out descriptors.png
    python -m experiments.show_descriptors --weights epoch_last.pth --ground ... --aerial ... --out ...

``--weights``: any GeoDTR checkpoint: a training checkpoint or converted ``.keras``, an export's model.keras,
or an official PyTorch file (.pth needs torch; .safetensors/.npz do not), converted on the fly. A square
aerial image is polar-transformed for polar models; a non-square one is taken as a polar map already.
Each row k shows P[:, k] ∈ [−1, 1] (red +1, blue −1) over both images.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common.errors import run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.show_descriptors", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--weights", required=True,
                   help="GeoDTR checkpoint: .keras (training / converted / export) or official .pth/.safetensors/.npz")
    p.add_argument("--ground", required=True, help="ground panorama image (JPEG/PNG, any size)")
    p.add_argument("--aerial", required=True, help="aerial image (square) or its polar map")
    p.add_argument("--out", required=True, help="output PNG path (written atomically)")
    p.add_argument("--polar", dest="polar", action="store_true", default=None,
                   help="official checkpoints only: the polar variant (default: read from the file)")
    p.add_argument("--no-polar", dest="polar", action="store_false",
                   help="official checkpoints only: the non-polar variant")
    p.add_argument("--heads", type=int, default=4, help="official checkpoints only: attention heads (paper: 4)")
    p.add_argument("--title", default="", help="title above the picture (default: the two file names)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from common.errors import require_file

    for path, what in ((args.ground, "ground image"), (args.aerial, "aerial image")):
        require_file(path, what, "give an existing JPEG/PNG file")
    from geodtr_tf.visualize import load_geodtr, show_descriptors

    model = load_geodtr(args.weights, polar=args.polar, num_heads=args.heads)
    title = args.title or f"GeoDTR layout descriptors: {os.path.basename(args.ground)} / {os.path.basename(args.aerial)}"
    maps = show_descriptors(model, args.ground, args.aerial, args.out, title=title)
    k, h, w = maps["ground"].shape
    print(f"wrote {args.out}: {k} descriptors over the {h}x{w} ground grid and the "
          f"{maps['aerial'].shape[1]}x{maps['aerial'].shape[2]} aerial grid")
    return 0


if __name__ == "__main__":
    run_cli(main)
