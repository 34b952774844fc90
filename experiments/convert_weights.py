"""Convert PyTorch weights to a Keras ``.keras`` file.

    python -m experiments.convert_weights --model resnet34 --checkpoint resnet34-b627a593.pth --out resnet34.keras
    python -m experiments.convert_weights --model geodtr --checkpoint epoch_last.pth --out geodtr.keras [--no-polar]

``--model resnet34``: a torchvision resnet34 state dict (ImageNet IMAGENET1K_V1,
https://download.pytorch.org/models/resnet34-b627a593.pth); ``fc.*`` is ignored. Use the result as
``model.backbone_weights`` in a GeoDTR config. ``--model geodtr``: a checkpoint of the official GeoDTR code
(``model_state_dict`` of its training checkpoints or a bare state dict; ``module.`` prefixes are removed).

``.safetensors`` and ``.npz`` are read without PyTorch; ``.pth`` needs torch installed and is read with
``weights_only=True``. Any missing, unexpected or mis-shaped tensor stops the conversion with the full list
of offending keys; nothing is written then. The output is written atomically (temporary name + rename).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common.errors import CVGLError, run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.convert_weights", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--model", required=True, choices=("geodtr", "resnet34"),
                   help="what the checkpoint holds: an official GeoDTR model or a torchvision resnet34")
    p.add_argument("--checkpoint", required=True, help="PyTorch state dict: .pth (needs torch), .safetensors, .npz")
    p.add_argument("--out", required=True, help="output .keras file")
    p.add_argument("--polar", dest="polar", action="store_true", default=None,
                   help="GeoDTR: the checkpoint is the polar variant (122x671 aerial); default: read from the file")
    p.add_argument("--no-polar", dest="polar", action="store_false",
                   help="GeoDTR: the checkpoint is the non-polar variant (256x256 raw aerial)")
    p.add_argument("--heads", type=int, default=4,
                   help="GeoDTR: attention heads of the checkpoint (not stored in the weights; paper: 4)")
    p.add_argument("--dropout", type=float, default=0.3, help="GeoDTR: dropout for further training (paper: 0.3)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.out.endswith(".keras"):
        raise CVGLError(f"--out {args.out}: the output must end with .keras")
    from geodtr_tf.convert import convert_geodtr, convert_resnet34, read_state_dict

    sd = read_state_dict(args.checkpoint)
    if args.model == "resnet34":
        model = convert_resnet34(sd, source=args.checkpoint)
        what = f"ResNet-34 trunk, {model.count_params():,} numbers"
    else:
        model = convert_geodtr(sd, polar=args.polar, num_heads=args.heads, dropout=args.dropout,
                               source=args.checkpoint)
        n = sum(int(v.numpy().size) for v in model.trainable_weights)
        variant = "polar" if model.input_spec_.polar else "non-polar"
        what = (f"GeoDTR ({variant}, K={model.num_descriptors}, {model.num_layers} layers, "
                f"{model.num_heads} heads, FFN {model.ffn_dim}), {n:,} parameters")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, f".tmp-{os.getpid()}-{os.path.basename(args.out)}")
    try:
        model.save(tmp)
        os.replace(tmp, args.out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"converted {len(sd)} tensors from {args.checkpoint} -> {args.out}: {what}")
    return 0


if __name__ == "__main__":
    run_cli(main)
