"""Retrieval benchmark: exact N x N recall at d = 4096 up to CVACT_test's 92,802 x 92,802.

    python -m benchmarks.retrieval_bench                       # ladder 2048, 8192, 16384 (+ dense baseline)
    python -m benchmarks.retrieval_bench --n 92802 --protocol radius index --no-dense

For every N and protocol a fresh child process generates N random unit query descriptors and N references
(reference = normalised query + noise, so ranks are non-trivial; float32, seeded), then ranks them with
:mod:`common.evaluation.retrieval` and reports:

* ``time``: wall seconds of the ranking (the whole recall computation: ranks once, then a histogram);
* ``floor``: 2 N^2 d FLOPs divided by this machine's matmul rate, measured in the same child on blocks of the
  same shape (best of several GEMMs before and after the run, so a busy machine makes the floor *smaller*
  and the ratio conservative);
* ``x floor``: time / floor -- 1.0 means the evaluation costs no more than its unavoidable matrix product;
* ``peak RSS``: the child's maximum resident set (``getrusage``), inputs included (2 N d floats);
* ``dense``: the straightforward evaluator (full N x N distance matrix, strict count against its diagonal,
  as the SAFA / GeoDTR scripts do) where it fits under ``--dense-max-gib``; its ranks must equal ours.

The radius protocol uses synthetic positions on a 7 m grid with pairs of positions 3 m apart, so many
queries have several references within 5 m (the CVACT_test situation).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

LADDER = (2048, 8192, 16384)
CVACT_TEST_N = 92802


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)


def make_data(n: int, d: int, seed: int = 0, noise: float = 14.0, step: int = 8192):
    """float32 unit queries and references, generated in row blocks (no float64 or N x d temporaries)."""
    rng = np.random.default_rng(seed)
    q = np.empty((n, d), np.float32)
    r = np.empty((n, d), np.float32)
    for a in range(0, n, step):
        b = min(a + step, n)
        x = rng.standard_normal((b - a, d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        q[a:b] = x
        y = rng.standard_normal((b - a, d), dtype=np.float32)
        y *= noise / np.sqrt(d, dtype=np.float32)
        y += x
        y /= np.linalg.norm(y, axis=1, keepdims=True)
        r[a:b] = y
    return q, r


def make_positions(n: int, seed: int = 1):
    """Pairs on a 7 m grid, every other pair shifted 3 m from its neighbour: several refs within 5 m."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n / 2)))
    cell = np.arange(n) // 2
    base = np.stack([cell % side, cell // side], 1).astype(np.float64) * 7.0
    pos = base + np.where((np.arange(n) % 2)[:, None] == 1, [3.0, 0.0], [0.0, 0.0])
    return pos + rng.uniform(-0.2, 0.2, size=pos.shape)


def matmul_rate(q, r, chunk: int, backend: str, repeats: int = 3) -> float:
    """Best FLOP/s of chunk x d x chunk GEMMs (the block shape of the evaluator) with the backend's matmul."""
    m = min(chunk, q.shape[0])
    a, b = q[:m], r[-m:]
    best = float("inf")
    if backend == "tf":
        import tensorflow as tf

        ta, tb = tf.constant(a), tf.constant(b)
        tf.linalg.matmul(ta, tb, transpose_b=True).numpy()
        for _ in range(repeats):
            t = time.perf_counter()
            tf.linalg.matmul(ta, tb, transpose_b=True).numpy()
            best = min(best, time.perf_counter() - t)
    else:
        out = np.empty((m, m), q.dtype)
        np.matmul(a, b.T, out=out)
        for _ in range(repeats):
            t = time.perf_counter()
            np.matmul(a, b.T, out=out)
            best = min(best, time.perf_counter() - t)
    return 2.0 * m * m * q.shape[1] / best


def dense_ranks(q, r) -> np.ndarray:
    """The straightforward evaluator: the whole N x N distance matrix, strict count against its diagonal."""
    dist = 2 - 2 * (q @ r.T)
    return np.count_nonzero(dist < np.diagonal(dist)[:, None], axis=1)


def child(args) -> dict:
    from common.evaluation import retrieval

    n, d = args.child, args.d
    q, r = make_data(n, d, seed=args.seed)
    rate0 = matmul_rate(q, r, args.chunk_size, args.backend if args.mode != "dense" else "numpy")
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    if args.mode == "dense":
        ranks = dense_ranks(q, r)
    elif args.mode == "index":
        ranks = retrieval.true_match_ranks(q, r, chunk_size=args.chunk_size, backend=args.backend,
                                           progress=args.progress)
    else:
        pos = make_positions(n)
        ranks = retrieval.radius_ranks(q, r, pos, pos, 5.0, chunk_size=args.chunk_size, backend=args.backend,
                                       progress=args.progress)
    elapsed = time.perf_counter() - t
    load1 = os.getloadavg()[0]
    rate1 = matmul_rate(q, r, args.chunk_size, args.backend if args.mode != "dense" else "numpy")
    rate = max(rate0, rate1)
    floor = 2.0 * n * n * d / rate
    k1 = retrieval.one_percent_k(n)
    hits = retrieval.recall_from_ranks(ranks, max(k1, 10))
    return {
        "n": n, "d": d, "mode": args.mode, "backend": args.backend if args.mode != "dense" else "numpy",
        "chunk": args.chunk_size, "time_s": elapsed, "floor_s": floor, "ratio": elapsed / floor,
        "gflops": rate / 1e9, "peak_rss_gib": _rss_gib(), "load": [load0, load1],
        "R@1": 100.0 * hits[0] / n, "R@1%": 100.0 * hits[max(k1, 1) - 1] / n,
        "ranks_sha": hashlib.sha256(np.asarray(ranks, np.int64).tobytes()).hexdigest()[:12],
    }


def run_child(n: int, mode: str, args) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.retrieval_bench", "--child", str(n), "--mode", mode, "--d",
           str(args.d), "--chunk-size", str(args.chunk_size), "--backend", args.backend, "--seed", str(args.seed)]
    if args.progress:
        cmd.append("--progress")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    if proc.returncode != 0:
        return {"n": n, "mode": mode, "error": f"child exited {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def format_row(res: dict) -> str:
    if "error" in res:
        return f"| {res['n']:>6,} | {res['mode']:<7} | {res['error']} |"
    return (f"| {res['n']:>6,} | {res['mode']:<7} | {res['backend']:<5} | {res['time_s']:8.1f} | "
            f"{res['floor_s']:8.1f} | {res['ratio']:5.2f} | {res['gflops']:6.0f} | {res['peak_rss_gib']:6.2f} | "
            f"{res['load'][0]:4.1f}/{res['load'][1]:4.1f} | {res['R@1']:6.2f} | {res['ranks_sha']} |")


HEADER = ("|      N | mode    | back. |   time s |  floor s | x flr | GFLOP/s | RSS GiB | load a/b |   R@1 | ranks |\n"
          "|-------:|---------|-------|---------:|---------:|------:|-------:|-------:|---------:|------:|-------|")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.retrieval_bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=list(LADDER),
                   help=f"gallery sizes (queries = references); CVACT_test is {CVACT_TEST_N}")
    p.add_argument("--d", type=int, default=4096, help="descriptor dimension (SAFA / GeoDTR: 4096)")
    p.add_argument("--protocol", nargs="+", choices=("index", "radius"), default=["index", "radius"],
                   help="which protocols to time")
    p.add_argument("--chunk-size", type=int, default=4096, help="block side of the chunked evaluator")
    p.add_argument("--backend", choices=("numpy", "tf"), default="numpy", help="chunked evaluator backend")
    p.add_argument("--dense-max-gib", type=float, default=2.0,
                   help="run the dense baseline when its N x N float32 matrix is at most this large")
    p.add_argument("--no-dense", action="store_true", help="skip the dense baseline")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true", help="progress bars in the children")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="index", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    print(f"retrieval benchmark: d={args.d}, chunk {args.chunk_size}, {os.cpu_count()} CPU(s), "
          f"load {os.getloadavg()[0]:.1f} at start")
    print(HEADER, flush=True)
    for n in args.n:
        rows = []
        for mode in args.protocol:
            rows.append(run_child(n, mode, args))
            print(format_row(rows[-1]), flush=True)
        if not args.no_dense and 4.0 * n * n / 2**30 <= args.dense_max_gib:
            dense = run_child(n, "dense", args)
            print(format_row(dense), flush=True)
            index = next((r for r in rows if r.get("mode") == "index"), None)
            if index and "error" not in index and "error" not in dense:
                same = "equal" if index["ranks_sha"] == dense["ranks_sha"] else "DIFFERENT"
                print(f"|        | dense vs chunked ranks: {same}; chunked is {dense['time_s'] / index['time_s']:.2f}x "
                      f"faster, {dense['peak_rss_gib'] / index['peak_rss_gib']:.2f}x less memory |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
