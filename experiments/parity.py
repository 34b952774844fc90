"""Accuracy parity: our recall beside the paper's for the same setting, and the difference per metric.

    python -m experiments.parity --results RUN/results.json [--config NAME] [--strict] [--json]

The papers' numbers live in ONE place: the ``expected`` entries of the paper-row configs
(``geodtr_tf/configs/*.yaml``, ``mgtl_tf/configs/*.yaml``; schema in :mod:`common.models.config`), each config
naming its source (paper, table, row). Nothing is copied here. A results file (written by
``experiments.evaluate`` / ``experiments.train``) names the config it ran and holds one or more evaluations
(dataset, split, protocol, metrics in percent); each evaluation is compared with the config's ``expected``
entry of the same dataset, split and protocol.

``--strict`` exits with status 1 when any compared R@1 is more than :data:`STRICT_R1_DROP` points below the
paper (and with status 2 when nothing could be compared, since then nothing was checked).

Sources of the stored numbers: GeoDTR (Zhang et al., AAAI 2023) Table 1/2 as read off the authors' poster;
MGTL (arXiv 2203.09135) and SAFA (NeurIPS 2019) via the configs' ``source`` fields.
"""

from __future__ import annotations

import argparse
import sys

from common.errors import CVGLError, run_cli
from common.files import to_json
from common.evaluation.parity import STRICT_R1_DROP, compare, format_report, load_results, strict_failures


# ---------------------------------------------------------------------------------------------- paper rows


# ------------------------------------------------------------------------------------------- our results


# ------------------------------------------------------------------------------------------------ compare


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.parity",
        description="Print our recall beside the paper's for the same setting (numbers from the `expected` "
        "entries of the paper-row configs) and the difference per metric.",
    )
    parser.add_argument("--results", required=True,
                        help="results.json written by experiments.evaluate or experiments.train")
    parser.add_argument("--config", default=None,
                        help="paper-row config name to compare with (default: the one the results file names)")
    parser.add_argument("--strict", action="store_true",
                        help=f"exit 1 if any R@1 is more than {STRICT_R1_DROP:g} point below the paper; exit 2 if "
                        "no evaluation has a paper row to compare with")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON instead of a table")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)

    results = load_results(args.results)
    report = compare(results, config=args.config)
    if not report:
        raise CVGLError(
            f"{args.results} holds no evaluation with R@K metrics (expected keys like \"R@1\" in percent, with "
            "dataset and split); pass the results.json of experiments.evaluate"
        )
    if args.json:
        print(to_json(report, indent=2))
    else:
        print(format_report(report, args.config))
    if args.strict:
        if not any(item["paper"] is not None for item in report):
            raise CVGLError(
                f"--strict: no evaluation in {args.results} matches a paper row (config "
                f"{args.config or report[0]['evaluation'].get('config')!r}); nothing was checked"
            )
        failures = strict_failures(report)
        if failures:
            for item in failures:
                ev = item["evaluation"]
                print(f"FAIL: {ev.get('dataset')}/{ev.get('split')} R@1 is {-item['diffs']['R@1']:.2f} points below "
                      f"the paper (tolerance {STRICT_R1_DROP:g})", file=sys.stderr)
            return 1
        print(f"parity OK: every compared R@1 within {STRICT_R1_DROP:g} point of the paper or above it")
    return 0


if __name__ == "__main__":
    run_cli(main)
