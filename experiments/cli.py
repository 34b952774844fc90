"""``cvgl``: one console command for every ``python -m experiments.<command>``.

    cvgl --help                     the commands, one line each
    cvgl <command> --help           that command's flags and defaults
    cvgl train --config geodtr_cvusa_polar_ls --root DATA/CVUSA --out RUN

``cvgl convert-weights`` and ``cvgl convert_weights`` are the same command. Installed by ``pip install .``
(``[project.scripts]`` in pyproject.toml); ``python -m experiments.cli`` is the same without installing.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "synth": "write a synthetic city in the CVUSA or CVACT layout",
    "prepare": "check a dataset folder and write its polar maps (and CVACT's ground crops)",
    "data_demo": "see what the input pipeline feeds a model: a batch, the polar maps, the augmentations",
    "train": "train a paper row (or any config) with resumable, deterministic runs",
    "evaluate": "recall with the published protocols from a run, a .keras file, an export or a TF1 checkpoint",
    "parity": "compare results with the paper rows of the configs",
    "export": "write a SavedModel that takes raw images (+ model.keras, config, model card)",
    "index": "build / inspect an aerial index from an export",
    "localize": "find a street-level image among the indexed aerial images",
    "convert_weights": "convert published weights (PyTorch state dicts, SAFA's TF1 checkpoints) to .keras",
    "summary": "parameter and FLOP report of a model family, per paper component",
    "visualize": "draw a family's picture (GeoDTR descriptors, MGTL attention) for an image pair",
    "families": "list the model families, their input specs, configs and command options",
    "demo": "the end-to-end demo: two synthetic cities, train, evaluate, export, localise",
}


def usage() -> str:
    width = max(len(c) for c in COMMANDS) + 2
    lines = ["usage: cvgl <command> [flags]   (cvgl <command> --help for its flags and defaults)", "",
             "commands:"]
    lines += [f"  {name.replace('_', '-'):<{width}}{what}" for name, what in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name = argv[0].replace("-", "_")
    if name not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; one of: {', '.join(c.replace('_', '-') for c in COMMANDS)}",
              file=sys.stderr)
        return 2
    from common.errors import run_cli

    module = importlib.import_module(f"experiments.{name}")
    sys.argv = [f"cvgl {argv[0]}", *argv[1:]]
    run_cli(module.main, argv[1:])  # exits with the command's status
    return 0


if __name__ == "__main__":
    sys.exit(main())
