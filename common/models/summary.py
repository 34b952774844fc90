"""Parameter reports: per paper component, total, and the paper's figure beside ours.

A family's ``summary`` module returns a report dict::

    {"model": "geodtr (polar)", "params": 48508608, "paper_params": 48508608, "paper_source": "...",
     "components": [{"name": "ResNet-34 (ground)", "params": 21284672}, ...],
     "extra": {"descriptor": 4096, "GFLOPs per pair": 123.4, "FLOPs counted as": "..."}}

:func:`format_report` prints it as a table.
"""

from __future__ import annotations


def count_weights(layers_or_vars) -> int:
    """Number of scalars in the trainable and non-trainable *trainable-kind* weights (as count_params)."""
    total = 0
    seen = set()
    for item in layers_or_vars:
        variables = getattr(item, "weights", None)
        if variables is None:
            variables = [item]
        for v in variables:
            key = id(v)
            if key in seen:
                continue
            seen.add(key)
            n = 1
            for d in v.shape:
                n *= int(d)
            total += n
    return total


def pct_diff(ours: int, paper) -> str:
    if not paper:
        return "-"
    return f"{100.0 * (ours - paper) / paper:+.2f}%"


def format_report(report: dict) -> str:
    rows = [(c["name"], f"{c['params']:,}") for c in report["components"]]
    rows.append(("total", f"{report['params']:,}"))
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{report['model']}", "-" * (width + 14)]
    for name, n in rows[:-1]:
        lines.append(f"{name:<{width}}{n:>14}")
    lines.append("-" * (width + 14))
    lines.append(f"{rows[-1][0]:<{width}}{rows[-1][1]:>14}")
    paper = report.get("paper_params")
    if paper:
        src = report.get("paper_source", "paper")
        lines.append(f"{'paper (' + src + ')':<{width}}{paper:>14,}   difference {pct_diff(report['params'], paper)}")
    for key, value in (report.get("extra") or {}).items():
        lines.append(f"{key}: {value}")
    return "\n".join(lines)
