"""The data layer end to end on a tiny synthetic world, with a picture.

    python -m experiments.data_demo --out demo_out/data [--pairs 8] [--seed 0]

1. writes a tiny CVUSA-layout world (the synthetic city renderer of :mod:`common.synthetic`; if it is not
   available or fails, simple toy images in the same layout from :mod:`common.synthetic.toy`),
2. runs ``experiments.prepare`` on it (layout check, counts table, polar maps for GeoDTR 122x671 and
   SAFA/MGTL 112x616),
3. builds one augmented training batch with the tf.data pipeline (GeoDTR polar spec, layout simulation and
   semantic augmentation "strong") and one plain batch,
4. writes ``OUT/data_demo.png``: per pair, the aerial image | its polar map | the panorama | the augmented
   polar aerial | the augmented panorama (the same flip/rotation in both, so the columns still line up).

Finishes in well under a minute on a laptop CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from common.errors import CVGLError, run_cli


def write_world(root: str, pairs: int, seed: int) -> str:
    """Synthetic city if available, else toy images; returns a description of what was written."""
    n_val = 2
    try:
        from common.synthetic import write_world as synth

        synth("cvusa", root, seed=seed, n_train=pairs, n_val=n_val, aerial_size=192, pano_size=(56, 308),
              workers=1, progress=False, contact_sheet=False)
        return "synthetic city (common.synthetic)"
    except Exception as exc:  # noqa: BLE001 - the demo must run even while the renderer is being built
        from common.synthetic.toy import write_toy_cvusa

        print(f"note: synthetic world unavailable ({type(exc).__name__}: {exc}); writing toy images instead",
              file=sys.stderr)
        write_toy_cvusa(root, n_train=pairs, n_val=n_val, aerial_size=192, pano_size=(56, 308), seed=seed)
        return "toy images (common.synthetic.toy)"


def picture(path, records, plain, augmented, spec, n_rows):
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from common.data.specs import denormalise

    def img(x):
        return np.clip(denormalise(np.asarray(x), spec), 0, 255).astype(np.uint8)

    titles = ["aerial (north up)", "polar aerial", "panorama", "augmented polar", "augmented panorama"]
    widths = [1.0, 3.0, 3.0, 3.0, 3.0]
    fig, axes = plt.subplots(n_rows, 5, figsize=(17, 1.5 * n_rows + 0.6), gridspec_kw={"width_ratios": widths},
                             squeeze=False)
    for i in range(n_rows):
        aerial = cv2.imread(records[i].aerial)[..., ::-1]
        row = [aerial, img(plain["aerial"][i]), img(plain["ground"][i]), img(augmented["aerial"][i]),
               img(augmented["ground"][i])]
        for j, im in enumerate(row):
            ax = axes[i, j]
            ax.imshow(im, aspect="auto")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=10)
            if j in (1, 2) and i == 0:
                w = im.shape[1]
                ax.set_xticks([0, w // 4, w // 2, 3 * w // 4])
                ax.set_xticklabels(["S", "W", "N", "E"], fontsize=8)
        axes[i, 0].set_ylabel(records[i].id, fontsize=8)
    fig.suptitle("Data layer: SAFA polar transform (north at the centre column) and GeoDTR augmentation "
                 "(same flip/rotation on both views)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.data_demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (the world goes to OUT/world, the picture to "
                   "OUT/data_demo.png)")
    p.add_argument("--pairs", type=int, default=8, help="training pairs in the tiny world (default 8)")
    p.add_argument("--seed", type=int, default=0, help="world and augmentation seed (default 0)")
    p.add_argument("--spec", default="geodtr_polar",
                   help="a polar input spec of a registered family, whose pipeline is shown (default geodtr_polar; "
                        "python -m experiments.families lists them)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.pairs < 4:
        raise CVGLError("--pairs must be at least 4 (one batch of 4 is shown)")
    t0 = time.time()
    root = os.path.join(args.out, "world")
    os.makedirs(args.out, exist_ok=True)
    if not os.path.isfile(os.path.join(root, "splits", "train-19zl.csv")):
        what = write_world(root, args.pairs, args.seed)
        print(f"1. wrote {args.pairs} + 2 pairs of {what} in the CVUSA layout to {root}")
    else:
        print(f"1. reusing the world in {root}")
    from common.data.prepare import prepare_dataset

    print("2. python -m experiments.prepare --dataset cvusa --root", root)
    prepare_dataset("cvusa", root, workers=1)

    from common.data.pipeline import make_dataset
    from common.data.readers import read_split
    from common.data.specs import get_spec

    spec = get_spec(args.spec)
    if not spec.polar:
        from common.errors import CVGLError

        raise CVGLError(f"--spec {args.spec}: the data demo shows the polar pipeline; give a polar input spec")
    records = read_split("cvusa", root, "train")[:4]
    plain = next(iter(make_dataset(records, spec, 4, training=False)))
    augmented = next(iter(make_dataset(records, spec, 4, training=True, shuffle=False,
                                       augment="strong", seed=args.seed)))
    print(f"3. batches: ground {tuple(plain['ground'].shape)}, aerial {tuple(plain['aerial'].shape)}, "
          f"values in [{float(plain['ground'].numpy().min()):.2f}, {float(plain['ground'].numpy().max()):.2f}]")
    out = os.path.join(args.out, "data_demo.png")
    picture(out, records, plain, augmented, spec, 4)
    print(f"4. picture: {out}  ({time.time() - t0:.1f} s in all)")
    return 0


if __name__ == "__main__":
    run_cli(main)
