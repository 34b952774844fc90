"""Approximate search benchmark: build time, memory, query latency and recall relative to exact search of every
``--ann`` kind (common.serving.ann), on random descriptors at scale and on the real descriptors of an index.

    python -m benchmarks.ann_bench                                   # random 4096-d, 10^5 (every kind) and 10^6 (ivfpq)
    python -m benchmarks.ann_bench --sizes 100000 --kinds hnsw ivf   # a part of it
    python -m benchmarks.ann_bench --index MAP.npz --export EXPORT --queries-csv map/queries.csv --sizes

**Random descriptors** (time and memory only): each (kind, N) runs in a fresh child process that generates N
unit Gaussian 4096-d float32 references in blocks (seeded), builds the structure with the project's defaults,
and times 200 single-query searches (what ``localize`` does: one query, top 10, re-ranked exactly from the
float32 descriptors). Reported: build seconds, the structure's bytes (FAISS's serialised size), the child's peak
RSS (everything: references, structure, Python, FAISS), median and 95th-percentile query milliseconds, and
the speed-up over exact search in the same child. Random Gaussian descriptors have no cluster structure, the
worst case for IVF and PQ: their recall says nothing about real galleries and is not reported. A (kind, N)
whose float32 references alone exceed ``--max-gib`` (default 6 GiB: a flat 10^6 x 4096 gallery is 15.3 GiB)
is not run but extrapolated linearly from the largest measured N, and marked ``~``.

**Real descriptors** (recall): ``--index`` an index built by ``experiments.index build`` (e.g. an orthophoto
cut at a small stride) and the ground panoramas of ``--queries-csv`` (``experiments.synth --orthophoto``'s
``queries.csv``: id,path,...) embedded with ``--export``. For each kind: R@1 and R@10 *relative to exact
search* (the fraction of queries whose exact top-1 is the approximate top-1; the mean overlap of the two
top-10 lists), with the query time, for the default parameters (marked ``*``, those of
:func:`common.serving.ann.default_params`) and a sweep of the query-time knob (nprobe, efSearch).

``--json FILE`` writes every row as strict JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np

DIM = 4096
SIZES = (100_000, 1_000_000)
KINDS = ("flat", "ivf", "hnsw", "ivfpq")
SWEEP = {"nprobe": (1, 2, 4, 8, 16, 32, 64), "ef_search": (16, 32, 64, 128, 256)}  # the real table's knobs


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)


def _random_block(a, b, dim, seed=0):
    rng = np.random.default_rng([seed, a])
    x = rng.standard_normal((b - a, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _time_queries(fn, queries):
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q[None])
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3), float(np.percentile(times, 95) * 1e3)


def child(kind: str, n: int, dim: int, n_queries: int) -> dict:
    """One random-descriptor measurement (runs in its own process, for a clean peak RSS)."""
    from common.evaluation.search import topk_neighbours
    from common.serving import ann as A

    params = A.resolve_params(kind, n, dim)
    refs = np.empty((n, dim), np.float32)
    for a in range(0, n, 16384):
        refs[a:min(n, a + 16384)] = _random_block(a, min(n, a + 16384), dim)
    queries = refs[np.random.default_rng(1).choice(n, n_queries, replace=False)] + 0.02 * _random_block(
        0, n_queries, dim, seed=7)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index, build_s = A.build_ann(refs, kind, params)
    A.set_search_params(index, kind, params)
    blob_bytes = int(A.import_faiss().serialize_index(index).size)
    ann_ms, ann_p95 = _time_queries(lambda q: A.ann_search(index, kind, params, refs, q, 10), queries)
    exact_ms, _ = _time_queries(lambda q: topk_neighbours(q, refs, 10, backend="numpy"), queries[: min(20, n_queries)])
    return {"kind": kind, "n": n, "dim": dim, "params": params, "build_s": round(build_s, 2),
            "structure_gib": blob_bytes / 2**30, "peak_rss_gib": _rss_gib(), "query_ms": ann_ms,
            "query_p95_ms": ann_p95, "exact_ms": exact_ms, "speedup": exact_ms / ann_ms, "measured": True}


def _run_child(kind, n, dim, n_queries):
    cmd = [sys.executable, "-m", "benchmarks.ann_bench", "--child", kind, str(n), str(dim), str(n_queries)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    if out.returncode != 0:
        raise SystemExit(f"child {kind} N={n} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _extrapolate(row: dict, n: int) -> dict:
    """Linear in N: build, structure, RSS above the interpreter (0.5 GiB), exact query time; IVF query time
    with nprobe/nlist fixed is linear too; HNSW's grows with log N."""
    f = n / row["n"]
    out = dict(row, n=n, measured=False)
    for key in ("build_s", "structure_gib", "exact_ms"):
        out[key] = row[key] * f
    out["peak_rss_gib"] = None  # the child's RSS holds copies made by the benchmark; only measured rows show it
    grow = math.log(n) / math.log(row["n"]) if row["kind"] == "hnsw" else f
    out["query_ms"], out["query_p95_ms"] = row["query_ms"] * grow, row["query_p95_ms"] * grow
    out["speedup"] = out["exact_ms"] / out["query_ms"]
    out["params"] = row["params"]
    return out


def random_rows(sizes, kinds, dim, n_queries, max_gib, say):
    rows, done = [], {}
    for n in sizes:
        for kind in kinds:
            refs_gib = n * dim * 4 / 2**30
            if refs_gib > max_gib and kind != "ivfpq" or kind == "ivfpq" and n * dim * 4 / 2**30 > 4 * max_gib:
                if kind in done:
                    rows.append(_extrapolate(done[kind], n))
                    say(f"{kind} N={n}: {refs_gib:.1f} GiB of references > --max-gib {max_gib:g}; extrapolated")
                continue
            say(f"{kind} N={n} ...")
            row = _run_child(kind, n, dim, n_queries)
            rows.append(row)
            done[kind] = row
    return rows


def real_rows(index_path, export_path, queries_csv, kinds, say, sweep=True):
    """Recall relative to exact search on the real descriptors of an index and its queries."""
    import csv

    from common.data.images import read_rgb
    from common.errors import CVGLError
    from common.evaluation.search import topk_neighbours
    from common.serving import ann as A
    from common.serving.export import load_export
    from common.serving.index import check_compatible, load_index

    index = load_index(index_path)
    export = load_export(export_path)
    check_compatible(index, export)
    with open(queries_csv, newline="") as fh:
        paths = [os.path.join(os.path.dirname(os.path.abspath(queries_csv)), r["path"]) for r in csv.DictReader(fh)]
    say(f"embedding {len(paths)} queries with {export_path}")
    q = np.concatenate([np.asarray(export.embed_ground(np.stack([read_rgb(p) for p in paths[a:a + 16]])),
                                   np.float32) for a in range(0, len(paths), 16)])
    refs = index.embeddings
    exact_i, _ = topk_neighbours(q, refs, 10, backend="numpy")
    exact_ms, _ = _time_queries(lambda x: topk_neighbours(x, refs, 10, backend="numpy"), q)
    rows = []
    n, dim = refs.shape
    for kind in kinds:
        try:
            params = A.resolve_params(kind, n, dim)
        except CVGLError as exc:  # a gallery too small for PQ: reported, not fatal
            rows.append({"kind": kind, "n": n, "dim": dim, "skipped": str(exc)})
            continue
        structure, build_s = A.build_ann(refs, kind, params)
        knob = {"ivf": "nprobe", "ivfpq": "nprobe", "hnsw": "ef_search"}.get(kind)
        values = [params.get(knob)] if knob is None or not sweep else sorted(
            {v for v in SWEEP[knob] if knob != "nprobe" or v <= params["nlist"]} | {params[knob]})
        for value in values:
            p = dict(params, **({knob: value} if knob else {}))
            A.set_search_params(structure, kind, p)
            found = np.concatenate([A.ann_search(structure, kind, p, refs, q[a:a + 1], 10)[0] for a in range(len(q))])
            ms, p95 = _time_queries(lambda x: A.ann_search(structure, kind, p, refs, x, 10), q)
            rows.append({"kind": kind, "n": n, "dim": dim, "params": p, "build_s": round(build_s, 2),
                         "default": knob is None or value == params[knob],
                         "r1_rel": float(np.mean(found[:, 0] == exact_i[:, 0]) * 100),
                         "r10_rel": float(np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact_i)]) * 100),
                         "query_ms": ms, "query_p95_ms": p95, "exact_ms": exact_ms, "queries": len(q)})
    return rows


def _params(p):
    return " ".join(f"{k}={v}" for k, v in p.items()) or "-"


def format_random(rows) -> str:
    lines = [f"{'kind':<7}{'N':>11}  {'build s':>9}{'structure':>11}{'served':>10}{'peak RSS':>10}{'query ms':>10}"
             f"{'p95':>9}{'exact ms':>10}{'speed-up':>9}  parameters"]
    for r in rows:
        mark = " " if r["measured"] else "~"
        served = r["n"] * r["dim"] * 4 / 2**30 + r["structure_gib"]
        rss = f"{r['peak_rss_gib']:>8.2f} G" if r.get("peak_rss_gib") is not None else f"{'-':>10}"
        lines.append(f"{r['kind']:<7}{r['n']:>10,}{mark} {r['build_s']:>9.1f}{r['structure_gib']:>9.2f} G"
                     f"{served:>8.1f} G{rss}{r['query_ms']:>10.2f}{r['query_p95_ms']:>9.2f}"
                     f"{r['exact_ms']:>10.1f}{r['speedup']:>8.0f}x  {_params(r['params'])}")
    lines.append("~ = extrapolated linearly from the largest measured N with its parameters (references over "
                 "--max-gib); served = the float32 descriptors an index keeps for the exact re-rank + the structure; "
                 "peak RSS = the measuring process (references, structure, its serialised copy)")
    return "\n".join(lines)


def format_real(rows) -> str:
    lines = [f"{'kind':<7}{'N':>8}{'dim':>6}  {'R@1 rel':>8}{'R@10 rel':>9}{'query ms':>10}{'exact ms':>10}"
             f"{'build s':>9}  parameters"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['kind']:<7}{r['n']:>8}{r['dim']:>6}  not built: {r['skipped']}")
            continue
        lines.append(f"{r['kind'] + ('*' if r.get('default') else ''):<7}{r['n']:>8}{r['dim']:>6}  {r['r1_rel']:>7.1f}%{r['r10_rel']:>8.1f}%"
                     f"{r['query_ms']:>10.2f}{r['exact_ms']:>10.2f}{r['build_s']:>9.1f}  {_params(r['params'])}")
    lines.append("* = the default parameters; R@K rel = how often the exact top-1 / top-10 is found")
    return "\n".join(lines)


def build_parser():
    p = argparse.ArgumentParser(prog="python -m benchmarks.ann_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="*", default=list(SIZES),
                   help="random gallery sizes (default: %(default)s; none: real descriptors only)")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="kinds (default: all)")
    p.add_argument("--dim", type=int, default=DIM, help="random descriptor size (default %(default)s)")
    p.add_argument("--queries", type=int, default=200, help="timed single queries per row (default %(default)s)")
    p.add_argument("--max-gib", type=float, default=6.0,
                   help="largest float32 reference set built for flat/ivf/hnsw (ivfpq: 4x this); larger ones "
                        "are extrapolated (default %(default)s)")
    p.add_argument("--index", default=None, help="an index of real descriptors for the recall table (default none)")
    p.add_argument("--export", default=None, help="the export the index was built with (with --index)")
    p.add_argument("--queries-csv", default=None, help="CSV with a path column of ground panoramas, relative "
                                                        "to its folder (with --index)")
    p.add_argument("--json", default=None, help="write the rows as JSON to this file (default: none)")
    p.add_argument("--format", default=None, metavar="JSON", help="print the tables of a --json file again")
    p.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.child:
        kind, n, dim, nq = args.child
        print(json.dumps(child(kind, int(n), int(dim), int(nq))))
        return 0
    if args.format:
        with open(args.format) as fh:
            report = json.load(fh)
        for row in report.get("random", []):
            if not row["measured"]:
                row["peak_rss_gib"] = None
        if report.get("real"):
            print(format_real(report["real"]))
        if report.get("random"):
            print(format_random(report["random"]))
        return 0
    from common.serving.ann import import_faiss

    import_faiss()
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    report = {}
    if args.index:
        if not (args.export and args.queries_csv):
            raise SystemExit("--index needs --export and --queries-csv")
        report["real"] = real_rows(args.index, args.export, args.queries_csv, args.kinds, say)
        print("real descriptors: recall relative to exact search, one query at a time, top 10")
        print(format_real(report["real"]))
    if args.sizes:
        report["random"] = random_rows(args.sizes, args.kinds, args.dim, args.queries, args.max_gib, say)
        print(f"random {args.dim}-d unit descriptors: build, memory, single-query latency (top 10, re-ranked)")
        print(format_random(report["random"]))
    if args.json:
        from common.files import write_json

        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
