"""Evaluate a model on a CVUSA / CVACT split: R@1, R@5, R@10, R@1% with the exact published protocols.

    python -m experiments.evaluate --dataset cvusa --split val --root DATA/CVUSA --run runs/geodtr_cvusa
    python -m experiments.evaluate --dataset cvact --split test --root DATA/CVACT --export exports/geodtr_act

Embeds both views of the split (progress bar), ranks every ground query against every aerial image with
:mod:`common.evaluation.retrieval` (chunked, exact, never the N x N matrix), prints a table, and writes a JSON file and a
recall-curve PNG next to it.

Protocols (SAFA / GeoDTR evaluators for CVUSA and CVACT_val; OriCNN ``RecallGeo.m`` for CVACT_test):
``index`` -- query k's true match is aerial k, strict rank (ties favour the query); ``radius`` -- a hit at K
when any of the top-K aerials lies within ``--radius-m`` metres (UTM) of the query (CVACT_test: 5 m,
92,802 x 92,802). ``auto`` picks radius for CVACT test and index otherwise; ``--protocol index`` (alias
``id``) on CVACT test gives the exact-id variant some papers report. The JSON and the table say which ran.

Cross-area evaluation ("--cross-area") is not a separate mode: evaluate a run trained on one dataset (or one
synthetic city) with ``--dataset/--root`` of the other.

Sharded (:mod:`common.evaluation.shards`): ``--shard I/N --save-descriptors shardI.npz`` embeds only shard I of
N (cut on batch boundaries) and writes it, without scoring; ``--descriptors shard*.npz`` (instead of a model)
merges the shards, checks them against the split and scores them, equal bit for bit to the one-process run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

import numpy as np

from common.errors import CVGLError, require_dir, require_file, run_cli

HEADLINE = ("R@1", "R@5", "R@10", "R@1%")


# ------------------------------------------------------------------------------------------------------
# loading the model
# ------------------------------------------------------------------------------------------------------
def config_hash(cfg) -> str | None:
    """sha256 (first 12 hex digits) of a resolved config, key-order independent (as the training run)."""
    from common.training.recipe import config_hash as _hash

    return _hash(cfg) if cfg else None


def _read_yaml(path: str) -> dict:
    from common.models.config import read_yaml_mapping

    return read_yaml_mapping(path, "restore it or pass --weights FILE.keras")


def load_keras_model(path: str):
    """A cross-view model (or an export's end-to-end model) from a ``.keras`` file."""
    from common.serving.loading import load_keras_model as _load

    model = _load(path)
    if not (hasattr(model, "embed_ground") and hasattr(model, "embed_aerial")):
        raise CVGLError(f"{path} holds a {type(model).__name__}, not a cross-view model with embed_ground/"
                        "embed_aerial")
    return model


def _convert_tf1(path: str, dataset: str):
    """(model, note, paper-row config name or None) for a TensorFlow 1 checkpoint prefix given to --weights:
    the one converter that reads TF1 checkpoints (SAFA's, ``safa-tf1``), at its default input size."""
    import argparse

    from common.backbones.tf1_checkpoint import read_tf1_checkpoint
    from common.models import registry

    found = [(fam, name, fn) for fam in registry.families().values() for name, fn in fam.converters.items()
             if name.endswith("-tf1")]
    if len(found) != 1:
        raise CVGLError(f"--weights {path} is a TensorFlow 1 checkpoint; convert it first with "
                        "python -m experiments.convert_weights --from NAME-tf1 (one of: "
                        f"{', '.join(n for _, n, _ in found) or 'none installed'})")
    fam, name, fn = found[0]
    model, note = fn(read_tf1_checkpoint(path), argparse.Namespace(checkpoint=path, input_size=None))
    config = f"{fam.name}_{dataset}"
    return model, note, (config if os.path.isfile(os.path.join(fam.config_dir, config + ".yaml")) else None)


def save_descriptors(path: str, ground, aerial, records) -> None:
    """``path`` (.npz or .mat) holding the descriptors of ``records``, row i = pair i, atomically."""
    import numpy as np

    from common.data.records import positions_array
    from common.files import atomic_path

    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npz", ".mat"):
        raise CVGLError(f"--save-descriptors {path}: the file must end with .npz or .mat")
    ids = np.asarray([r.id for r in records])
    pos = positions_array(records)
    with atomic_path(path) as tmp:
        if ext == ".npz":
            extra = {} if pos is None else {"positions": pos}
            with open(tmp, "wb") as fh:  # np.savez on a file object: the temporary name keeps no .npz ending
                np.savez(fh, ground=ground, aerial=aerial, ids=ids, **extra)
        else:
            import scipy.io

            extra = {} if pos is None else {"utm": pos}
            scipy.io.savemat(tmp, {"grd_global_descriptor": ground, "sat_global_descriptor": aerial,
                                   "ids": ids, **extra}, do_compression=True)
    print(f"descriptors: {path} ({len(records)} pairs, {ground.shape[1]} dimensions)")


def load_source(args):
    """(model, raw_input, info) for --run / --weights / --export."""
    if args.run:
        run = require_dir(args.run, "run directory", "pass the --out directory of experiments.train")
        ckpt = os.path.join(run, "checkpoints", "best.keras")
        require_file(ckpt, "best checkpoint", "the run has not finished an epoch yet; or pass --weights "
                                              f"{os.path.join(run, 'checkpoints', 'last.keras')}")
        cfg_path = os.path.join(run, "config.yaml")
        cfg = _read_yaml(require_file(cfg_path, "run config", "the run directory is incomplete"))
        model = load_keras_model(ckpt)
        return model, False, {"kind": "run", "path": os.path.abspath(run), "config": cfg.get("name"),
                              "config_hash": config_hash(cfg), "model": cfg.get("name") or model.name}
    if args.weights:
        from common.backbones.tf1_checkpoint import tf1_prefix

        if not str(args.weights).endswith(".keras") and tf1_prefix(args.weights) is not None:
            model, note, config = _convert_tf1(args.weights, args.dataset)
            print(f"converted {args.weights} in memory: {note}" + (f"; paper row {config}" if config else ""))
            return model, False, {"kind": "weights", "path": os.path.abspath(args.weights), "config": config,
                                  "config_hash": None, "model": config or os.path.basename(args.weights),
                                  "converted": note}
        model = load_keras_model(args.weights)
        cfg = None
        guess = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(args.weights))), "config.yaml")
        if os.path.isfile(guess):
            cfg = _read_yaml(guess)
        name = (cfg or {}).get("name") or os.path.splitext(os.path.basename(args.weights))[0]
        return model, False, {"kind": "weights", "path": os.path.abspath(args.weights),
                              "config": (cfg or {}).get("name"), "config_hash": config_hash(cfg), "model": name}
    export_dir = require_dir(args.export, "export directory", "pass the --out directory of experiments.export")
    cfg_path = os.path.join(export_dir, "config.yaml")
    cfg = _read_yaml(cfg_path) if os.path.isfile(cfg_path) else None
    from common.serving.export import load_export

    # export.json, its fingerprint and the graph check are all required: a SavedModel is a program
    model = load_export(export_dir)
    name = (cfg or {}).get("name") or os.path.basename(os.path.normpath(export_dir))
    return model, True, {"kind": "export", "path": os.path.abspath(export_dir), "config": (cfg or {}).get("name"),
                         "config_hash": config_hash(cfg), "model": name}


# ------------------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------------------
def _fmt(v) -> str:
    return "   n/a" if v is None else f"{v:6.2f}"


def format_table(result: dict) -> str:
    prot = result["protocol"]
    lines = [
        f"model {result['model']} | {result['dataset']} {result['split']} | N = {result['N']:,} | protocol {prot}"
        + (f" ({result['no_positive']} queries without a match in range)" if result.get("no_positive") else ""),
        "  " + "  ".join(f"{k:>6}" for k in HEADLINE) + (f"   (R@1% is R@{result['K_1pct']})" if result['K_1pct'] else "   (R@1% needs N >= 100)"),
        "  " + "  ".join(_fmt(result["metrics"][k]) for k in HEADLINE) + "   official (ties favour the query)",
    ]
    guard = result.get("collapse_guard") or {}
    if guard.get("pessimistic"):
        lines.append("  " + "  ".join(_fmt(guard["pessimistic"][k]) for k in HEADLINE)
                     + f"   pessimistic (ties against; {guard['ties']:,} ties in {guard['tied_queries']:,} queries)")
    if guard.get("descriptors"):
        q, r = guard["descriptors"]["query"], guard["descriptors"]["reference"]
        lines.append(f"  descriptor spread {q['spread']:.3f} / {r['spread']:.3f}, effective rank "
                     f"{q['effective_rank']:.1f} / {r['effective_rank']:.1f} (ground / aerial)")
    lines.append(f"  embed {result['time']['embed_s']:.1f} s, retrieval {result['time']['retrieval_s']:.1f} s "
                 f"({result['backend']}, {result['dtype']})")
    if guard.get("collapsed"):
        from common.evaluation.collapse import collapse_line

        lines.append("  " + collapse_line(guard["collapse_reasons"], "these numbers are not a result"))
    return "\n".join(lines)


def _atomic_write(path: str, data: bytes) -> None:
    from common.files import write_bytes

    write_bytes(path, data)


def plot_curve(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    curve = result["curve"]
    ks = np.arange(1, len(curve) + 1)
    marks = {k: f"R@{k}" for k in (1, 5, 10)}
    if result["K_1pct"] >= 1:
        marks[result["K_1pct"]] = f"{marks[result['K_1pct']]}, R@1%" if result["K_1pct"] in marks else "R@1%"
    marks = {k: v for k, v in sorted(marks.items()) if k <= len(curve)}
    # the values go into the legend (below the plot); the points get short labels just above them
    values = ", ".join(f"{v} {curve[k - 1]:.1f}" for k, v in marks.items())
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=100)
    ax.plot(ks, curve, lw=2, label=f"{result['model']}: {values}")
    if result.get("protocol") == "index" and result.get("N"):
        ax.plot(ks, 100.0 * ks / result["N"], ":", color="black", lw=1, label="chance (K / N)")
    for k, label in marks.items():
        ax.plot([k], [curve[k - 1]], "o", color="C3", ms=4)
        ax.annotate(label, (k, curve[k - 1]), textcoords="offset points", xytext=(0, 7), ha="center",
                    fontsize=7, bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
    ax.set_xscale("log")
    ax.set_xlim(0.8, max(len(curve), 10) * 1.6)
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("K (top-K aerial images)")
    ax.set_ylabel("recall@K (%)")
    ax.set_ylim(0, 105)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"{result['dataset']} {result['split']}, N={result['N']:,}, protocol {result['protocol']}",
                 fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=1, fontsize=8, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    _atomic_write(path, buf.getvalue())


def resolve_protocol(args) -> str:
    p = {"id": "index"}.get(args.protocol, args.protocol)
    if p == "auto":
        return "radius" if (args.dataset == "cvact" and args.split == "test") else "index"
    return p


# ------------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.evaluate",
        description="Recall@K (R@1, R@5, R@10, R@1%) of a model on a CVUSA/CVACT split, ground queries "
        "against all aerial images. Writes a JSON file and a recall-curve PNG. Cross-area evaluation: give a "
        "run trained on one dataset (or synthetic city) and --dataset/--root of the other.",
    )
    p.add_argument("--dataset", required=True, choices=("cvusa", "cvact"), help="dataset layout under --root")
    p.add_argument("--split", required=True, choices=("val", "test"),
                   help="val: CVUSA val-19zl (8,884) or CVACT valSet (8,884); test: CVACT valSetAll (92,802)")
    p.add_argument("--root", required=True, help="dataset root directory (the layout of --dataset)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="training run directory: loads RUN/checkpoints/best.keras and RUN/config.yaml")
    src.add_argument("--weights", help="a .keras model file (any family; the families are imported to load it), or "
                                       "a TensorFlow 1 checkpoint prefix of SAFA's official code (model.ckpt), "
                                       "converted in memory and compared with the SAFA paper row")
    src.add_argument("--export", help="an export directory: its SavedModel embeds the raw uint8 image files")
    src.add_argument("--descriptors", nargs="+", metavar="FILE",
                     help="score descriptors instead of a model: the shard files of --shard runs (merged, checked to "
                          "tile the split) or one --save-descriptors .npz")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="embed only shard I of N (0-based, cut on batch boundaries) into --save-descriptors FILE.npz "
                        "and stop; score the shards with --descriptors (default: the whole split)")
    p.add_argument("--batch-size", type=int, default=32, help="images per embedding batch (default %(default)s)")
    p.add_argument("--out", help="JSON path (default: RUN/eval_<dataset>_<split>.json with --run, else "
                                 "./eval_<dataset>_<split>.json); the PNG curve is written beside it")
    p.add_argument("--protocol", choices=("auto", "index", "id", "radius"), default="auto",
                   help="auto: radius for CVACT test, index otherwise; index (alias id): exact-id match; "
                        "radius: any top-K aerial within --radius-m metres (needs positions); default %(default)s")
    p.add_argument("--radius-m", type=float, default=5.0, help="radius of the radius protocol, metres (default %(default)s)")
    p.add_argument("--chunk-size", type=int, default=4096,
                   help="queries/references per block of the score matrix (memory ~ chunk^2 floats; default "
                        "%(default)s)")
    p.add_argument("--backend", choices=("auto", "tf", "numpy", "faiss"), default="auto",
                   help="retrieval backend: auto = TF on a GPU if visible, else NumPy; faiss needs faiss-cpu (default %(default)s)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="distance arithmetic; float64 matches the official float64 evaluators bit for bit (default %(default)s)")
    p.add_argument("--allow-missing", action="store_true",
                   help="drop pairs with missing image files (listed) instead of failing; changes N")
    p.add_argument("--save-descriptors", metavar="FILE", default=None,
                   help="also write the descriptors: FILE.npz (ground, aerial, ids[, positions]) or FILE.mat "
                        "(grd_global_descriptor / sat_global_descriptor, one row per pair, as the research "
                        "repositories' MATLAB evaluation reads; plus ids and utm) (default: not written)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise CVGLError(f"--batch-size must be positive, got {args.batch_size}")
    if args.chunk_size < 1:
        raise CVGLError(f"--chunk-size must be positive, got {args.chunk_size}")
    if args.dataset == "cvusa" and args.split == "test":
        raise CVGLError("CVUSA has no test split: its published numbers are on val-19zl (use --split val)")
    protocol = resolve_protocol(args)
    require_dir(args.root, "dataset root", f"pass the {args.dataset.upper()} directory with --root")
    t_start = time.perf_counter()

    from common.data.readers import read_split
    from common.data.records import positions_array
    from common.evaluation.embedding import embed_records

    records = read_split(args.dataset, args.root, args.split, allow_missing=args.allow_missing)
    if not records:
        raise CVGLError(f"{args.dataset} {args.split} under {args.root} has no pairs; check --root/--split")
    positions = None
    if protocol == "radius":
        positions = positions_array(records)
        if positions is None:
            raise CVGLError(f"the radius protocol needs a position for every pair, but {args.dataset} "
                            f"{args.split} under {args.root} has none (CVACT: ACT_data.mat utm; CVUSA: "
                            "coordinates.csv); use --protocol index")

    if args.descriptors:
        return _score_descriptors(args, records, positions, protocol, t_start)
    shard = None
    if args.shard:
        from common.evaluation.shards import parse_shard

        shard = parse_shard(args.shard)
        if not (args.save_descriptors and args.save_descriptors.endswith(".npz")):
            raise CVGLError("--shard needs --save-descriptors FILE.npz (where the shard's descriptors go)")
    model, raw, info = load_source(args)
    progress = not args.no_progress
    if raw:
        aerial_input = "aerial: the raw images, through the export's own preprocessing"
    else:
        from common.data.pipeline import aerial_input_note

        aerial_input = aerial_input_note(records, model.input_spec_)
    print(aerial_input)
    if shard is not None:
        return _embed_shard(args, model, raw, info, records, shard, progress)
    t0 = time.perf_counter()
    ground, aerial = embed_records(model, records, batch_size=args.batch_size, progress=progress, raw=raw)
    t_embed = time.perf_counter() - t0
    result = _score(args, info, records, ground, aerial, positions, protocol, aerial_input, t_embed, t_start,
                    progress)
    return _write_result(args, result)


def _identity(args, info) -> dict:
    """What must agree between the shards of one run (model and batching)."""
    return {"model": info["model"], "config": info["config"], "config_hash": info["config_hash"],
            "source": {"kind": info["kind"], "path": info["path"]}, "batch_size": args.batch_size,
            "dataset": args.dataset, "split": args.split, "root": os.path.abspath(args.root)}


def _embed_shard(args, model, raw, info, records, shard, progress) -> int:
    from common.data.records import positions_array
    from common.evaluation.embedding import embed_records
    from common.evaluation.shards import shard_meta, shard_range, write_shard

    i, n = shard
    start, end = shard_range(len(records), i, n, args.batch_size)
    if start == end:
        raise CVGLError(f"shard {i}/{n} is empty: the split has only {-(-len(records) // args.batch_size)} batches "
                        f"of {args.batch_size}; use fewer shards")
    part = records[start:end]
    ground, aerial = embed_records(model, part, batch_size=args.batch_size, progress=progress, raw=raw)
    arrays = {"ground": ground, "aerial": aerial, "ids": np.asarray([r.id for r in part])}
    pos = positions_array(part)
    if pos is not None:
        arrays["positions"] = pos
    write_shard(args.save_descriptors, arrays, shard_meta(records, i, n, start, end, **_identity(args, info)))
    print(f"shard {i}/{n}: pairs {start}..{end - 1} of {len(records)} -> {args.save_descriptors}; score all shards "
          f"with: python -m experiments.evaluate --dataset {args.dataset} --split {args.split} --root {args.root} "
          f"--descriptors SHARD.npz ...")
    return 0


def _score_descriptors(args, records, positions, protocol, t_start) -> int:
    """Score merged shard files (or one descriptors file) against the split, without the model."""
    from common.evaluation.shards import merge, records_key

    if args.shard:
        raise CVGLError("--shard embeds with a model; --descriptors scores files: give one of them")
    arrays, meta = merge(args.descriptors, identity_keys=("config_hash", "source", "batch_size"))
    for key in ("ground", "aerial", "ids"):
        if key not in arrays:
            raise CVGLError(f"{args.descriptors[0]} holds no {key!r} array: not a descriptors file of evaluate")
    ids = [str(i) for i in arrays["ids"]]
    if meta is not None and meta.get("records_key") != records_key(records) or ids != [r.id for r in records]:
        raise CVGLError(f"the descriptors are of another split than {args.dataset} {args.split} under {args.root} "
                        f"({len(ids)} ids vs {len(records)} pairs, or other ids/images); give the split they were "
                        "embedded from")
    meta = meta or {}
    info = {"model": meta.get("model"), "config": meta.get("config"), "config_hash": meta.get("config_hash"),
            "kind": "descriptors", "path": [os.path.abspath(p) for p in args.descriptors]}
    note = f"descriptors from {len(args.descriptors)} file(s)" + (f", {meta['merged_from']} shards merged"
                                                                   if meta.get("merged_from") else "")
    print(note)
    ground = np.asarray(arrays["ground"], np.float32)
    aerial = np.asarray(arrays["aerial"], np.float32)
    if args.save_descriptors:
        save_descriptors(args.save_descriptors, ground, aerial, records)
    progress = not args.no_progress
    result = _score(args, info, records, ground, aerial, positions, protocol, note, 0.0, t_start, progress)
    return _write_result(args, result)


def _score(args, info, records, ground, aerial, positions, protocol, aerial_input, t_embed, t_start,
           progress) -> dict:
    from common.evaluation.retrieval import recall_at_k

    if args.save_descriptors and info["kind"] != "descriptors":
        save_descriptors(args.save_descriptors, ground, aerial, records)
    t0 = time.perf_counter()
    metrics = recall_at_k(ground, aerial, ks=(1, 5, 10), query_pos=positions, reference_pos=positions,
                          radius_m=args.radius_m if protocol == "radius" else None, chunk_size=args.chunk_size,
                          backend=args.backend, dtype=args.dtype, progress=progress)
    t_ret = time.perf_counter() - t0

    result = {
        "model": info["model"],
        "config": info["config"],
        "config_hash": info["config_hash"],
        "source": {"kind": info["kind"], "path": info["path"],
                   **({"converted": info["converted"]} if info.get("converted") else {})},
        "dataset": args.dataset,
        "split": args.split,
        "root": os.path.abspath(args.root),
        "aerial_input": aerial_input,
        "protocol": metrics["protocol"],
        "metrics": {k: metrics[k] for k in HEADLINE},
        "N": metrics["N"],
        "N_reference": metrics["N_reference"],
        "K_1pct": metrics["K_1pct"],
        "descriptor_dim": int(ground.shape[1]),
        "curve": metrics["curve"],
        "collapse_guard": {k: metrics[k] for k in ("ties", "tied_queries", "pessimistic", "descriptors",
                                                   "collapsed", "collapse_reasons")},
        "backend": metrics["backend"],
        "dtype": metrics["dtype"],
        "time": {"embed_s": round(t_embed, 3), "retrieval_s": round(t_ret, 3),
                 "total_s": round(time.perf_counter() - t_start, 3)},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    for key in ("radius_m", "no_positive"):
        if key in metrics:
            result[key] = metrics[key]
    return result


def _write_result(args, result) -> int:
    out = args.out or os.path.join(args.run or ".", f"eval_{args.dataset}_{args.split}.json")
    from common.files import write_json

    write_json(out, result)
    png = os.path.splitext(out)[0] + ".png"
    plot_curve(result, png)
    print(format_table(result))
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
