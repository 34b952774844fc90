"""The registered model families: name, what it is, its input specs, configs and what the commands offer.

    python -m experiments.families [--json]

A family registers itself once (``common.models.registry.register_family``); this lists what the commands
find. ``CVGL_FAMILIES=my_package`` adds a family of your own (comma-separated module names).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common.errors import run_cli  # noqa: E402
from common.files import to_json  # noqa: E402


def describe() -> list:
    """One dict per registered family."""
    from common.models.registry import families

    out = []
    for name, fam in sorted(families().items()):
        configs = sorted(os.path.splitext(f)[0] for f in os.listdir(fam.config_dir) if f.endswith(".yaml")) \
            if fam.config_dir and os.path.isdir(fam.config_dir) else []
        out.append({
            "name": name,
            "description": fam.description,
            "module": getattr(fam.build_model, "__module__", None),
            "input_specs": {s.name: s.to_config() for s in fam.input_specs},
            "configs": configs,
            "summary": fam.summarize is not None,
            "visualize": fam.visualize_what if fam.visualize else None,
            "converters": sorted(fam.converters),
            "demo": (fam.demo or {}).get("config"),
        })
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.families", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON list instead of the table (default: table)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    rows = describe()
    if args.json:
        print(to_json(rows))
        return 0
    for r in rows:
        specs = ", ".join(f"{n} ({'x'.join(map(str, s['ground_size']))} ground, "
                          f"{'x'.join(map(str, s['aerial_size']))} {'polar' if s['polar'] else 'raw'} aerial, "
                          f"{s['normalisation']})" for n, s in r["input_specs"].items()) or "-"
        print(f"{r['name']}: {r['description']}")
        print(f"  module      {r['module']}")
        print(f"  inputs      {specs}")
        print(f"  configs     {' '.join(r['configs']) or '-'}")
        extras = ["summary" if r["summary"] else "", f"visualize ({r['visualize']})" if r["visualize"] else "",
                  f"convert_weights ({', '.join(r['converters'])})" if r["converters"] else "",
                  f"demo ({r['demo']})" if r["demo"] else ""]
        print(f"  commands    {', '.join(e for e in extras if e) or '-'}")
    return 0


if __name__ == "__main__":
    run_cli(main)
