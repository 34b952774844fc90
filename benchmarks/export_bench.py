"""Export benchmark: embedding throughput of the exported SavedModel vs the in-process Keras model (CPU).

    python -m benchmarks.export_bench                          # GeoDTR (polar), full size, batch 8
    python -m benchmarks.export_bench --family mgtl --batch 4
    python -m benchmarks.export_bench --size tiny              # seconds, for a smoke run

One process, one model (random weights: throughput does not depend on them), the same raw uint8 images for
every contender — CVUSA-sized panoramas (224 x 1232) and aerial tiles (750 x 750) — and the same work:
in-graph preprocessing (crop / area resize / polar transform / normalisation) + the tower. Contenders:

* ``keras graph``      ``EndToEndModel.embed_*`` under ``tf.function`` (what ``model.predict`` runs): the
  in-process baseline;
* ``saved_model``      the export's endpoint after ``tf.saved_model.load`` (what a user of the export runs);
* ``tower only``       the bare CrossViewModel under ``tf.function`` on already-preprocessed float inputs,
  for reference (what the in-graph preprocessing costs).

Timing: after one warm-up call each, the contenders are called in turn ``--reps`` times (interleaved, so a
change of machine load hits them alike). Images/s is from each contender's fastest call (on a shared
machine the minimum is the time least disturbed by other processes). The **ratio** saved_model / keras
graph is the median over the repetitions of the paired ratio (the two calls of one repetition run back to
back, under the same load), in wall time and in process CPU time. Target: wall ratio >= 0.9 for both views;
the exit status is 1 when it is missed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

TARGET = 0.9


def build(family: str, size: str):
    """The family's paper-size model or its tiny variant (``Family.tiny``), random weights."""
    import warnings

    from common.models.registry import get_family

    fam = get_family(family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fam.build_full() if size == "full" else fam.build_tiny()


def _time(fn, x):
    """(wall seconds, process CPU seconds) of one call, result materialised."""
    w0, c0 = time.perf_counter(), time.process_time()
    np.asarray(fn(x))
    return time.perf_counter() - w0, time.process_time() - c0


def bench(family, size="full", batch=8, reps=5, seed=0):
    import tensorflow as tf

    from common.serving.export import load_export, write_export
    from common.serving.preprocess import end_to_end

    model = build(family, size)
    e2e = end_to_end(model)
    rng = np.random.default_rng(seed)
    images = {"ground": rng.integers(0, 256, (batch, 224, 1232, 3), dtype=np.uint8),
              "aerial": rng.integers(0, 256, (batch, 750, 750, 3), dtype=np.uint8)}
    sig = [tf.TensorSpec((None, None, None, 3), tf.uint8)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_export(e2e, os.path.join(tmp, "export"), {"name": f"{family}_{size}_bench", "model": {"family": family}})
        export_s = time.perf_counter() - t0
        loaded = load_export(os.path.join(tmp, "export")).loaded
        rows = []
        for view in ("ground", "aerial"):
            x = tf.constant(images[view])
            prepared = (e2e.ground_preprocess if view == "ground" else e2e.aerial_preprocess)(x)
            keras_fn = getattr(e2e, f"embed_{view}")
            tower = getattr(model, f"embed_{view}")
            contenders = {
                "keras graph": (tf.function(lambda t, f=keras_fn: f(t), input_signature=sig), x),
                "saved_model": (getattr(loaded, f"embed_{view}"), x),
                "tower only": (tf.function(lambda t, f=tower: f(t)), prepared),
            }
            ref = np.asarray(contenders["keras graph"][0](x))
            diff = float(np.max(np.abs(np.asarray(contenders["saved_model"][0](x)) - ref)))
            for fn, arg in contenders.values():  # warm-up (tracing)
                _time(fn, arg)
            times = {name: [] for name in contenders}
            for _ in range(reps):
                for name, (fn, arg) in contenders.items():
                    times[name].append(_time(fn, arg))
            ips = {name: batch / min(w for w, _ in t) for name, t in times.items()}
            paired = [(g[0] / s[0], g[1] / s[1]) for g, s in zip(times["keras graph"], times["saved_model"])]
            rows.append({"view": view, **ips, "ratio": statistics.median(p[0] for p in paired),
                         "cpu_ratio": statistics.median(p[1] for p in paired), "max_diff": diff})
    return {"family": family, "size": size, "batch": batch, "reps": reps, "export_s": export_s,
            "spec": model.input_spec_.name, "rows": rows}


def format_table(res: dict) -> str:
    head = (f"{'view':<8}{'keras graph':>13}{'saved_model':>13}{'tower only':>12}{'SM / keras':>12}"
            f"{'(CPU time)':>12}{'max|diff|':>11}")
    lines = [f"{res['family']} ({res['spec']}, {res['size']}), batch {res['batch']}, {res['reps']} repetitions; "
             f"images/s on the CPU (fastest call); export written in {res['export_s']:.1f} s", head, "-" * len(head)]
    for r in res["rows"]:
        lines.append(f"{r['view']:<8}{r['keras graph']:>13.2f}{r['saved_model']:>13.2f}{r['tower only']:>12.2f}"
                     f"{r['ratio']:>11.2f}x{r['cpu_ratio']:>11.2f}x{r['max_diff']:>11.1e}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.export_bench",
                                description="Exported SavedModel vs in-process Keras model: embedding images/s.")
    from common.models.registry import family_names

    names = family_names()
    p.add_argument("--family", choices=names, default=names[0],
                   help=f"model family to export (default {names[0]}; any of {', '.join(names)})")
    p.add_argument("--size", choices=("full", "tiny"), default="full",
                   help="full: the paper's input sizes and widths; tiny: a seconds-long smoke run")
    p.add_argument("--batch", type=int, default=8, help="images per call")
    p.add_argument("--reps", type=int, default=7, help="timed calls per contender")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    res = bench(args.family, args.size, args.batch, args.reps)
    print(format_table(res))
    worst = min(r["ratio"] for r in res["rows"])
    ok = worst >= TARGET
    print(f"target saved_model >= {TARGET:g} x keras graph: {'met' if ok else 'MISSED'} (worst {worst:.2f}x)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
