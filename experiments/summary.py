"""Parameter report of a model: per paper component, total, beside the paper's figure.

    python -m experiments.summary --model geodtr [--no-polar] [--json]
    python -m experiments.summary --model mgtl [--variant full] [--steps 6] [--json]
    python -m experiments.summary --model safa [--json]

Models are built at full size with random weights (no training, no data); ``--json`` prints one JSON
object whose ``params`` is the integer total.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common.errors import run_cli  # noqa: E402

SUMMARY_MODULES = {"geodtr": "geodtr_tf.summary", "mgtl": "mgtl_tf.summary", "safa": "mgtl_tf.summary"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.summary", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, choices=sorted(SUMMARY_MODULES), help="model family to report")
    p.add_argument("--polar", dest="polar", action="store_true", default=True,
                   help="GeoDTR: polar aerial input 122x671 (default)")
    p.add_argument("--no-polar", dest="polar", action="store_false",
                   help="GeoDTR: raw 256x256 aerial input")
    p.add_argument("--variant", default="full",
                   help="MGTL: backbone_only | no_cmi | full | naive (default full)")
    p.add_argument("--steps", type=int, default=6, help="MGTL: number of recurrent steps L (default 6)")
    p.add_argument("--literal-block", action="store_true",
                   help="MGTL: the block as printed in the paper, F = F' + LN(F') (no FFN)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(SUMMARY_MODULES[args.model])
    report = module.summarize(args)
    if args.json:
        print(json.dumps(report))
    else:
        from common.summary import format_report

        print(format_report(report))
    return 0


if __name__ == "__main__":
    run_cli(main)
