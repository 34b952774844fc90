"""Parameter report of a model: per paper component, total, beside the paper's figure.

    python -m experiments.summary --model geodtr [--no-polar] [--json]
    python -m experiments.summary --model mgtl [--variant full] [--steps 6] [--json]
    python -m experiments.summary --model safa [--json]

Models are built at full size with random weights (no training, no data); ``--json`` prints one JSON
object whose ``params`` is the integer total.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common.errors import run_cli  # noqa: E402
from common.files import to_json  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    from common.models import registry

    names = [n for n, f in sorted(registry.families().items()) if f.summarize]
    p = argparse.ArgumentParser(prog="python -m experiments.summary", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, choices=names, help="model family to report: " + ", ".join(names))
    registry.add_options(p, "summary")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p


def main(argv=None) -> int:
    from common.models.registry import get_family

    args = build_parser().parse_args(argv)
    report = get_family(args.model).summarize(args)
    if args.json:
        print(to_json(report))
    else:
        from common.models.summary import format_report

        print(format_report(report))
    return 0


if __name__ == "__main__":
    run_cli(main)
