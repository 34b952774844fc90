"""Parity with the papers: our evaluations (``RUN/results.json``) beside the numbers each config's
``expected:`` block quotes from its paper's table. The library behind ``python -m experiments.parity`` and
the model card of ``experiments.export``.
"""

from __future__ import annotations

import json
import math
import os
import sys

import yaml

from common.errors import CVGLError, require_file
from common.models.config import config_paths
from common.synthetic import is_synthetic_root


METRICS = ("R@1", "R@5", "R@10", "R@1%")


STRICT_R1_DROP = 1.0  # points of R@1 below the paper that --strict tolerates


def paper_rows(paths=None) -> list:
    """Every ``expected`` entry of the paper-row configs, as dicts with the config name and source."""
    rows = []
    for path in config_paths() if paths is None else paths:
        try:
            with open(path) as fh:
                cfg = yaml.safe_load(fh) or {}
        except (OSError, yaml.YAMLError) as exc:
            print(f"warning: skipping unreadable config {path}: {exc}", file=sys.stderr)
            continue
        if not isinstance(cfg, dict):
            continue
        name = cfg.get("name") or os.path.splitext(os.path.basename(path))[0]
        source = cfg.get("source") or {}
        for entry in cfg.get("expected") or []:
            if not isinstance(entry, dict):
                continue
            rows.append({
                "config": name,
                "family": (cfg.get("model") or {}).get("family"),
                "trained_on": cfg.get("dataset"),
                "paper": source.get("paper", "?"),
                "table": source.get("table", "?"),
                "row": source.get("row", "?"),
                "dataset": str(entry.get("dataset", cfg.get("dataset"))).lower(),
                "split": entry.get("split"),
                "protocol": entry.get("protocol"),
                "metrics": {m: float(entry[m]) for m in METRICS if entry.get(m) is not None},
                "path": path,
            })
    return rows


def _config_name(d: dict):
    for key in ("config", "config_name", "name", "model"):
        v = d.get(key)
        if isinstance(v, dict):
            v = v.get("name")
        if isinstance(v, str) and v:
            return os.path.splitext(os.path.basename(v))[0]
    return None


def _one(d: dict, parent: dict) -> dict | None:
    metrics = d.get("metrics") if isinstance(d.get("metrics"), dict) else d
    found = {m: metrics[m] for m in METRICS if isinstance(metrics.get(m), (int, float))}
    if not found:
        return None

    def pick(key):
        v = d.get(key, metrics.get(key, parent.get(key)))
        return v if v is None else str(v)

    return {
        "root": pick("root"),
        "config": _config_name(d) or _config_name(parent),
        "dataset": (pick("dataset") or "").lower() or None,
        "split": pick("split"),
        "protocol": pick("protocol"),
        "metrics": {m: float(v) for m, v in found.items()},
    }


def our_evaluations(results) -> list:
    """The evaluations in a results file: a single evaluation dict, a list of them, or a dict holding a list
    under ``evaluations`` / ``results`` / ``evals`` (or a dict of dicts keyed by split). Metrics in percent."""
    out = []
    if isinstance(results, list):
        for item in results:
            out.extend(our_evaluations(item) if isinstance(item, (list, dict)) else [])
        return out
    if not isinstance(results, dict):
        return out
    single = _one(results, {})
    if single is not None:
        return [single]
    for key in ("evaluations", "results", "evals", "final", "test", "val", "best"):
        sub = results.get(key)
        items = sub if isinstance(sub, list) else [sub] if isinstance(sub, dict) else []
        for item in items:
            if isinstance(item, dict):
                one = _one(item, results)
                if one is not None:
                    if one["split"] is None and key in ("test", "val"):
                        one["split"] = key
                    out.append(one)
    return out


def load_results(path: str):
    require_file(path, "results file", "pass the results.json written by experiments.evaluate or experiments.train")
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        raise CVGLError(f"results file {path} is not valid JSON ({exc}); re-run the evaluation") from None


def _norm_protocol(p):
    if p is None:
        return None
    p = str(p).lower().replace(" ", "")
    # experiments.evaluate writes "index" / "radius_5m"; configs may spell the 5 m rule "utm_5m"
    return {"index": "index", "exact": "index", "radius_5m": "radius_5m", "5m": "radius_5m",
            "radius5m": "radius_5m", "utm_5m": "radius_5m", "utm5m": "radius_5m"}.get(p, p)


def match(evaluation: dict, rows: list, config: str | None = None) -> dict | None:
    """The paper row of the same config, dataset, split (and protocol when both name one), else None."""
    name = config or evaluation.get("config")
    candidates = [
        r for r in rows
        if r["config"] == name and r["dataset"] == evaluation.get("dataset")
        and (r["split"] is None or evaluation.get("split") is None or r["split"] == evaluation.get("split"))
    ]
    p = _norm_protocol(evaluation.get("protocol"))
    if p is not None:
        exact = [r for r in candidates if _norm_protocol(r["protocol"]) in (p, None)]
        candidates = exact
    return candidates[0] if candidates else None


def compare(results, rows=None, config: str | None = None) -> list:
    """[{evaluation, paper (or None), diffs {metric: ours - paper}}] for every evaluation in ``results``."""
    rows = paper_rows() if rows is None else rows
    report = []
    for ev in our_evaluations(results):
        row = match(ev, rows, config)
        diffs = {}
        if row is not None:
            for m in METRICS:
                if m in ev["metrics"] and m in row["metrics"]:
                    diffs[m] = ev["metrics"][m] - row["metrics"][m]
        report.append({"evaluation": ev, "paper": row, "diffs": diffs})
    return report


def strict_failures(report: list, drop: float = STRICT_R1_DROP) -> list:
    """The compared evaluations whose R@1 is more than ``drop`` points below the paper."""
    return [item for item in report if "R@1" in item["diffs"] and item["diffs"]["R@1"] < -drop - 1e-9]


def _fmt(v):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def format_report(report: list, config: str | None = None) -> str:
    lines = []
    for item in report:
        ev, row = item["evaluation"], item["paper"]
        setting = f"{ev.get('dataset') or '?'} / {ev.get('split') or '?'} / {ev.get('protocol') or '?'}"
        name = config or ev.get("config") or "?"
        lines.append(f"{name}: {setting}")
        if row is None:
            lines.append("  no paper row for this setting (the config's `expected` entries do not cover it)")
            lines.append("  ours: " + ", ".join(f"{m} {_fmt(v)}" for m, v in ev["metrics"].items()))
            lines.append("")
            continue
        lines.append(f"  paper: {row['paper']}, {row['table']}, row \"{row['row']}\"")
        if is_synthetic_root(ev.get("root")):
            lines.append("  note: these results are on a synthetic world, not the paper's data: not comparable")
        lines.append(f"  {'metric':<8}{'ours':>9}{'paper':>9}{'diff':>9}")
        for m in METRICS:
            ours, paper = ev["metrics"].get(m), row["metrics"].get(m)
            if ours is None and paper is None:
                continue
            diff = item["diffs"].get(m)
            lines.append(f"  {m:<8}{_fmt(ours):>9}{_fmt(paper):>9}{('-' if diff is None else f'{diff:+.2f}'):>9}")
        lines.append("")
    return "\n".join(lines).rstrip()
