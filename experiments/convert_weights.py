"""Convert published weights (PyTorch state dicts, SAFA's TensorFlow 1 checkpoints) to a Keras ``.keras`` file.

    python -m experiments.convert_weights --model resnet34 --checkpoint resnet34-b627a593.pth --out resnet34.keras
    python -m experiments.convert_weights --model geodtr --checkpoint epoch_last.pth --out geodtr.keras [--no-polar]
    python -m experiments.convert_weights --from safa-tf1 --checkpoint SAFA_CVUSA/model.ckpt --out safa.keras

``--model resnet34``: a torchvision resnet34 state dict (ImageNet IMAGENET1K_V1,
https://download.pytorch.org/models/resnet34-b627a593.pth); ``fc.*`` is ignored. Use the result as
``model.backbone_weights`` in a GeoDTR config. ``--model geodtr``: a checkpoint of the official GeoDTR code
(``model_state_dict`` of its training checkpoints or a bare state dict; ``module.`` prefixes are removed).
``--model safa-tf1`` (also spelt ``--from safa-tf1``): a checkpoint prefix of SAFA's official code
(``model.ckpt`` beside ``model.ckpt.index`` and ``model.ckpt.data-*``), read as data with
``tf.train.load_checkpoint`` (the ``.meta`` graph is never read); the input size is checked against the
spatial-aware weights (``--input-size``, default 112x616).

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
    from common.models import registry

    converters = {name: fam for fam in registry.families().values() for name in fam.converters}
    p.add_argument("--model", "--from", dest="model", required=True, choices=sorted(converters),
                   help="what the checkpoint holds: " + ", ".join(f"{n} ({converters[n].name} family)"
                                                                 for n in sorted(converters)))
    p.add_argument("--checkpoint", required=True,
                   help="PyTorch state dict: .pth (needs torch), .safetensors, .npz; or a TF1 checkpoint prefix")
    p.add_argument("--out", required=True, help="output .keras file")
    registry.add_options(p, "convert")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.out.endswith(".keras"):
        raise CVGLError(f"--out {args.out}: the output must end with .keras")
    from common.backbones.torch_weights import read_state_dict
    from common.models import registry

    convert = next(fam.converters[args.model] for fam in registry.families().values() if args.model in fam.converters)
    sd = read_state_dict(args.checkpoint)
    model, what = convert(sd, args)
    from common.files import atomic_path

    with atomic_path(args.out) as tmp:  # .tmp-PID-NAME.keras: Keras wants the ending
        model.save(tmp)
    print(f"converted {len(sd)} tensors from {args.checkpoint} -> {args.out}: {what}")
    return 0


if __name__ == "__main__":
    run_cli(main)
