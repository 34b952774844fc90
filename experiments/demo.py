"""The demo: two synthetic cities, GeoDTR and MGTL trained on city A, evaluated on the unseen city B beside the
raw-pixel baseline and chance, exported, one query localised, pictures written.

    python -m experiments.demo [--out demo_out]

What it does (well over 10 minutes on a 2-core CPU, see docs/training.md; ``--quick`` for a smoke run):

1. writes city A (2,000 training pairs + 100 validation pairs for model selection) and city B (500 pairs,
   evaluation only) with :func:`common.synthetic.write_world` in the CVUSA layout, aerial 128 px, panorama
   32x176 (folders that already hold the same world are reused);
2. measures the raw-pixel baseline on city B (:func:`common.synthetic.baseline.raw_pixel_baseline`);
3. trains GeoDTR (``geodtr_cvusa_polar_ls``) and MGTL (``mgtl_cvusa_full``) -- the real model classes, built
   from the paper-row configs -- through :func:`common.training.runner.run_training` with the demo overrides
   below (printed as ``<- override`` in each recipe);
4. evaluates each best checkpoint (best R@1 on city A's val) on city B (index protocol: R@1, R@5, R@10, R@1%);
5. exports it (``experiments.export``), builds an index of city A's val aerials (``experiments.index build``;
   pairs never trained on) and localises the panorama of val pair ``LOCALISE_QUERY`` among them
   (``experiments.localize``; its true-match rank goes into ``demo_results.json``); then the map path: city A
   as a GeoTIFF orthophoto (400 m) with 50 new panoramas at known lat/lon, cut into 150 m tiles every 10 m
   and indexed (``index build --orthophoto``), each panorama localised (``localize --true-latlon``): the share
   inside its top-1 tile and the median error go into ``demo_results.json`` (``map``);
6. writes pictures: recall curves, a retrieval grid, GeoDTR layout descriptors, MGTL attention maps.

Layout of ``--out``: ``data/city_a``, ``data/city_b``, ``runs/<model>/`` (training runs + pictures),
``exports/<model>/``, ``demo_results.json`` (a list, one object per model: ``model``, ``R@1``, ``R@5``,
``R@10``, ``R@1%`` on city B, and the baseline's four under ``baseline``), ``recall_curves.png``.

Differences from the paper configs (all of them; CPU-sized and from scratch, since ImageNet weights cannot be
downloaded here):

* both: random initialisation (paper: ImageNet); batch 32 with the last partial batch dropped;
  ``train.colour_shuffle``, a cross-city augmentation no paper config uses (per-view channel permutation and
  gains: the cities differ in palette); ``train.azimuth_roll`` (one random common azimuth roll of panorama and
  polar aerial, no paper config uses it: a synthetic city has one street-grid orientation); both ramped in
  over the first 4 epochs (``train.augment_ramp_epochs: 4``: a sample is augmented with a probability rising
  linearly from 0 to 1), so the models leave the collapsed start before the task gets hard;
  ``train.deterministic: true``;
* GeoDTR: input 32x192 for both views (paper 122x671; 192 so that the 2x12 positions give a token width
  divisible by the 4 heads), ResNet-34 widths 16-32-64-64 (paper 64-128-256-512), FFN 256 (2048), dropout 0
  (0.3), AdamW 1e-3 (1e-4) at a constant rate (5 warm-up epochs then cosine), no LS / SA augmentation (both
  strong), 16 epochs (200);
* MGTL: input 32x176 for both views (paper 112x616), VGG16 widths 8-16-32-64-64 (64-...-512), 2 steps (6),
  token width 64 with 4 heads (384, 6), MLP/generators 128 (1536), Adam 2e-4 constant (1e-5), LS + SA
  augmentation as GeoDTR uses (none), 12 epochs (150).

Measured (``python -m experiments.demo --out DIR``, fresh folder): see docs/training.md, the demo section.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np

from common.errors import CVGLError, run_cli
from common.synthetic.layouts import AERIAL_EXTENT_M

def demo_recipes() -> dict:
    """family name -> its demo recipe (``Family.demo``: config, epochs, overrides, expected seconds), every
    registered family that has one."""
    from common.models.registry import families

    return {name: fam.demo for name, fam in sorted(families().items()) if fam.demo}


COMMON = {
    "input_spec.ground_size": [32, 176],
    "input_spec.aerial_size": [32, 176],
    "train.batch_size": 32,
    "train.drop_remainder": True,
    "train.azimuth_roll": True,
    "train.colour_shuffle": True,
    "train.deterministic": True,
}
SEED_A, SEED_B = 11, 22  # the default city pair (--seeds A B)
AERIAL_PX, PANO_SIZE = 128, (32, 176)  # the cities' aerial tiles (covering AERIAL_EXTENT_M) and panoramas
# The orthophoto of city A and its index. Measured with a trained demo GeoDTR: the descriptors of tiles cut at a
# query's exact position find it (R@1 44 % among 50) but fall to 14 % at 5 m off and 4 % at 10 m (the models are
# trained on centred pairs), so the stride must be small; 10 m keeps the index at 625 tiles.
MAP_EXTENT_M, MAP_STRIDE_M, MAP_QUERIES = 400.0, 10.0, 50
# Expected seconds of the shared stages on an idle 2-core CPU (each family's recipe gives its own epoch and
# after-training seconds); the ETA scales these by how fast this machine has been so far.
EXPECTED_S = {"cities": 30.0, "baseline": 10.0}
# the localised query: this pair of city A's val split (never trained on), against all of that split's aerials
LOCALISE_QUERY = 0


def build_parser():
    p = argparse.ArgumentParser(prog="python -m experiments.demo", description=__doc__.split("\n\n")[0],
                                epilog=__doc__[__doc__.index("Differences from the paper"):],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out); rerunning resumes")
    recipes = demo_recipes()
    p.add_argument("--models", nargs="+", choices=sorted(recipes), default=sorted(recipes),
                   help="which model families to train (default all with a demo recipe: "
                        + " ".join(sorted(recipes)) + ")")
    p.add_argument("--train", type=int, default=2000, help="training pairs of city A (default 2000)")
    p.add_argument("--val-a", type=int, default=100,
                   help="validation pairs of city A, for model selection (default 100)")
    p.add_argument("--val-b", type=int, default=500, help="evaluation pairs of the unseen city B (default 500)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs for every model (default: each model's demo epochs, "
                        + ", ".join(f"{k} {v['epochs']}" for k, v in recipes.items()) + ")")
    p.add_argument("--seeds", type=int, nargs=2, metavar=("A", "B"), default=[SEED_A, SEED_B],
                   help=f"world seeds of city A (training) and city B (unseen, evaluation); default {SEED_A} {SEED_B}")
    p.add_argument("--workers", type=int, default=2, help="processes writing the synthetic cities (default 2)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 64 + 16 pairs in A, 100 in B, 1 epoch, 5 map queries (numbers meaningless)")
    p.add_argument("--skip-export", action="store_true", help="do not export / localise")
    p.add_argument("--map-queries", type=int, default=MAP_QUERIES,
                   help="new panoramas of city A localised on its orthophoto (default %(default)s)")
    p.add_argument("--map-stride-m", type=float, default=MAP_STRIDE_M,
                   help="metres between the map's tile centres (default %(default)s: 625 tiles of the 400 m map)")
    return p


def _say(msg):
    print(msg, flush=True)


class DemoClock:
    """Wall and CPU time of the demo, and an ETA from the stages still to run.

    Each stage has an expected duration (``EXPECTED_S``, seconds on an idle 2-core CPU); the ETA is the
    expected time of what is left, scaled by (time taken so far / time expected so far)."""

    def __init__(self, models, epochs):
        self.t0 = time.time()
        self.cpu0 = self.cpu()
        self.plan = {"cities": EXPECTED_S["cities"], "baseline": EXPECTED_S["baseline"]}
        recipes = demo_recipes()
        for m in models:
            self.plan.update({f"{m}/epoch{e}": recipes[m]["expected_epoch_s"] for e in range(1, epochs[m] + 1)})
            self.plan[f"{m}/after"] = recipes[m]["expected_after_s"]
        self.done = set()

    @staticmethod
    def cpu() -> float:
        import resource

        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    def elapsed(self) -> float:
        return time.time() - self.t0

    def finish(self, stage: str) -> str:
        self.done.add(stage)
        spent = sum(v for k, v in self.plan.items() if k in self.done)
        left = sum(v for k, v in self.plan.items() if k not in self.done)
        speed = self.elapsed() / spent if spent else 1.0
        pct = 100.0 * spent / (spent + left)
        return (f"[demo {pct:3.0f}% | {_mmss(self.elapsed())} elapsed, CPU {_mmss(self.cpu() - self.cpu0)} | "
                f"ETA {_mmss(left * speed)}]")


def _mmss(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _epoch_clock(clock, name):
    """A Keras callback printing the demo's progress line after each training epoch."""
    import keras

    class _Tick(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            _say(clock.finish(f"{name}/epoch{epoch + 1}"))

    return _Tick()


def write_cities(out, n_train, n_val_a, n_val_b, workers, seeds=(SEED_A, SEED_B)):
    from common.synthetic import write_world

    roots = {}
    for name, seed, n_tr, n_va in (("city_a", seeds[0], n_train, n_val_a), ("city_b", seeds[1], 0, n_val_b)):
        root = os.path.join(out, "data", name)
        t = time.time()
        info = write_world("cvusa", root, seed, n_tr, n_va, aerial_size=AERIAL_PX, pano_size=PANO_SIZE,
                           workers=workers, near_fraction=0.0, progress=True)
        _say(f"{name} (seed {seed}): {n_tr} train + {n_va} val pairs, street grid at "
             f"{info.get('city_rotation_deg', float('nan')):.0f} deg  [{time.time() - t:.0f} s]")
        roots[name] = root
    return roots


def demo_config(model_name, epochs=None):
    """(resolved config, marked overrides) of ``model_name``'s demo run."""
    from common.models.config import load_config
    from common.training import recipe

    spec = demo_recipes()[model_name]
    cfg = load_config(spec["config"])
    overrides = dict(COMMON)
    overrides.update(spec["overrides"])
    overrides["train.epochs"] = epochs or spec["epochs"]
    return recipe.resolve(cfg, list(overrides.items()))


def train_model(cfg, marked, root_a, run_dir, extra_callbacks=()):
    """Train the resolved demo config on city A (its val split selects the best epoch); returns the results."""
    from common.data.specs import get_spec
    from common.training import recipe
    from common.training.data import records_data
    from common.training.runner import run_training

    data = records_data(cfg, root_a, get_spec(cfg["input_spec"]), seed=0, val_split="val", embed_batch_size=64)
    data.val_note = (f"city A val ({data.n_val} pairs), for model selection only; city B is never used in "
                     "training or selection")
    _say(recipe.format_recipe(cfg, marked))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_training(cfg, run_dir, data, strategy="auto", seed=0, verbose=2, extra_callbacks=extra_callbacks,
                            overrides=recipe.override_values(cfg, marked))


def evaluate_on(model, records, spec, batch_size=64):
    from common.evaluation.embedding import embed_records
    from common.evaluation.retrieval import recall_at_k

    g, a = embed_records(model, records, spec, batch_size, progress=False)
    return recall_at_k(g, a, ks=(1, 5, 10), return_ranks=True), g, a


def _checkpoint(run_dir) -> str:
    """The best checkpoint, or (every epoch collapsed, so there is none) the last one."""
    best = os.path.join(run_dir, "checkpoints", "best.keras")
    return best if os.path.exists(best) else os.path.join(run_dir, "checkpoints", "last.keras")


def _load_best(run_dir):
    from common.serving.loading import load_keras_model

    return load_keras_model(_checkpoint(run_dir), "checkpoint")


def recall_figure(curves: dict, baseline_curve, chance_curve, out_png, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, curve in curves.items():
        k = np.arange(1, len(curve) + 1)
        ax.plot(k, curve, label=name, lw=2)
    k = np.arange(1, len(baseline_curve) + 1)
    ax.plot(k, baseline_curve, "--", color="grey", label="raw-pixel baseline")
    ax.plot(k, chance_curve, ":", color="black", label="chance")
    ax.set_xlabel("K (top-K aerial candidates)")
    ax.set_ylabel("recall@K on city B (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def retrieval_grid(records, g, a, out_png, title, n_queries=5, top=5):
    """Rows: a ground query of city B, then its top-``top`` aerial images (green frame = the true match)."""
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sims = g[:n_queries] @ a.T
    fig, axes = plt.subplots(n_queries, top + 1, figsize=(2.0 * (top + 3), 1.6 * n_queries),
                             gridspec_kw={"width_ratios": [3] + [1] * top})
    for i in range(n_queries):
        order = np.argsort(-sims[i])[:top]
        pano = cv2.cvtColor(cv2.imread(records[i].ground), cv2.COLOR_BGR2RGB)
        axes[i, 0].imshow(pano)
        axes[i, 0].set_title(f"query {records[i].id}", fontsize=7)
        for j, idx in enumerate(order):
            ax = axes[i, j + 1]
            ax.imshow(cv2.cvtColor(cv2.imread(records[idx].aerial), cv2.COLOR_BGR2RGB))
            hit = idx == i
            for side in ax.spines.values():
                side.set_edgecolor("limegreen" if hit else "white")
                side.set_linewidth(4 if hit else 0.5)
            ax.set_title(f"#{j + 1}{' true' if hit else ''}", fontsize=7)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def model_pictures(name, model, record, run_dir):
    """The family's picture (``Family.visualize``) of one held-out pair, or None when it has none."""
    from common.models.registry import get_family

    family = get_family(name)
    if family.visualize is None:
        return None
    out = os.path.join(run_dir, f"{name}_{family.demo.get('picture', 'picture')}.png")
    try:
        family.visualize(model, record.ground, record.aerial, out,
                         argparse.Namespace(title=f"{name} {family.visualize_what}, {record.id}"))
        return out
    except Exception as exc:  # a picture must not sink the demo; say so
        _say(f"  ({name} picture not written: {type(exc).__name__}: {exc})")
        return None


def export_and_localise(run_dir, export_dir, root, query, work):
    """Export the run (``common.serving.export``), index the val aerials of ``root``
    (``common.serving.index``) and localise ``query`` (a record of that split) among them
    (``common.serving.localize``): the three steps of experiments.export / index / localize, as a library.
    Returns a summary dict."""
    from common.data.readers import read_split
    from common.serving.export import load_export, model_card, write_export
    from common.data.images import read_rgb
    from common.serving.index import build_index, load_index
    from common.serving.loading import load_trained_model, resolve_run
    from common.serving.localize import find_true_id, localize, save_picture
    from common.serving.preprocess import end_to_end

    cfg, ckpt, results = resolve_run(run_dir)
    write_export(end_to_end(load_trained_model(ckpt, cfg)), export_dir, cfg, results=results, overwrite=True,
                 model_card=model_card, ground={"aerial_extent_m": AERIAL_EXTENT_M, "aerial_px": AERIAL_PX})
    export = load_export(export_dir)
    index_path = os.path.join(work, "city_a_val_index.npz")
    if os.path.exists(index_path):
        os.remove(index_path)
    build_index(export, read_split("cvusa", root, "val"), index_path,
                description={"dataset": "cvusa", "split": "val", "root": os.path.abspath(root)})
    index = load_index(index_path)
    image = read_rgb(query.ground, "query image")
    found = localize(export, index, image, k=min(5, len(index)), true_id=find_true_id(query.ground, index.ids))
    found.update(query=os.path.abspath(query.ground), index=index.path, export=export.path)
    loc_dir = os.path.join(work, "localize")
    os.makedirs(loc_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(query.ground))[0]
    loc_path = os.path.join(loc_dir, f"{stem}.json")
    from common.training.callbacks import atomic_write_json

    atomic_write_json(loc_path, found)
    save_picture(image, found, os.path.join(loc_dir, f"{stem}.png"), title=f"query {os.path.basename(query.ground)}")
    return {"status": "done", "export": export_dir, "index": index_path, "query": query.ground, "localize": found,
            "localize_json": loc_path}


def localise_on_map(export_dir, seed, map_dir, work, n_queries=MAP_QUERIES, extent_m=None, stride_m=None):
    """The map path: city ``seed`` as a GeoTIFF orthophoto with panoramas at known lat/lon
    (:mod:`common.synthetic.orthophoto`), cut into the model's 150 m tiles every ``MAP_STRIDE_M`` m and indexed
    (``index build --orthophoto``), every query localised (``localize --true-latlon``). Returns a summary:
    the share of queries inside their top-1 tile (|dE|, |dN| <= 75 m), within one tile of it (<= 150 m), the
    median error; the first query's JSON and picture are written as ``localize`` writes them."""
    from common.files import write_json
    from common.geo import haversine_m
    from common.geo.tiles import orthophoto_tiles
    from common.data.images import read_rgb
    from common.serving.export import load_export
    from common.serving.index import build_index, load_index
    from common.serving.localize import localize, save_picture
    from common.synthetic.orthophoto import read_queries, write_orthophoto

    extent_m, stride_m = extent_m or MAP_EXTENT_M, stride_m or MAP_STRIDE_M
    m = write_orthophoto(map_dir, seed, extent_m=extent_m, aerial_size=AERIAL_PX, n_queries=n_queries,
                         pano_size=PANO_SIZE, progress=False)
    export = load_export(export_dir)
    records, info = orthophoto_tiles(os.path.join(map_dir, m["orthophoto"]), AERIAL_EXTENT_M, stride_m,
                                     tile_px=AERIAL_PX, say=_say)
    index_path = os.path.join(work, "map_index.npz")
    if os.path.exists(index_path):
        os.remove(index_path)
    build_index(export, records, index_path, description=info, progress=False)
    index = load_index(index_path)
    errors, inside, chance_in, chance_near = [], 0, [], []
    for i, q in enumerate(read_queries(map_dir)):
        d = index.positions - (q["easting"], q["northing"])  # chance: the top-1 a uniformly random tile
        chance_in.append(np.mean(np.all(np.abs(d) <= AERIAL_EXTENT_M / 2, axis=1)))
        chance_near.append(np.mean(np.hypot(d[:, 0], d[:, 1]) <= AERIAL_EXTENT_M))
        image = read_rgb(q["path"], "query panorama")
        found = localize(export, index, image, k=5, true_latlon=(q["lat"], q["lon"]))
        top = found["hits"][0]
        j = index.ids.index(top["id"])
        de, dn = index.positions[j] - (q["easting"], q["northing"])
        inside += bool(abs(de) <= AERIAL_EXTENT_M / 2 and abs(dn) <= AERIAL_EXTENT_M / 2)
        errors.append(float(haversine_m(q["lat"], q["lon"], *top["latlon"])))
        if i == 0:
            found.update(query=q["path"], index=index.path, export=export.path)
            loc_dir = os.path.join(work, "localize_map")
            os.makedirs(loc_dir, exist_ok=True)
            write_json(os.path.join(loc_dir, f"{q['id']}.json"), found)
            save_picture(image, found, os.path.join(loc_dir, f"{q['id']}.png"),
                         title=f"query {q['id']} (true lat {q['lat']:.6f}, lon {q['lon']:.6f})")
    errors = np.asarray(errors)
    return {"orthophoto": os.path.join(map_dir, m["orthophoto"]), "index": index_path, "tiles": len(index),
            "tile_m": AERIAL_EXTENT_M, "stride_m": stride_m, "extent_m": extent_m, "queries": len(errors),
            "inside_top1_tile": round(100.0 * inside / len(errors), 1),
            "within_one_tile": round(100.0 * float(np.mean(errors <= AERIAL_EXTENT_M)), 1),
            "median_error_m": round(float(np.median(errors)), 1),
            "chance_inside_top1_tile": round(100.0 * float(np.mean(chance_in)), 1),
            "chance_within_one_tile": round(100.0 * float(np.mean(chance_near)), 1)}


def _fmt(v):
    return "    -" if v is None else f"{v:5.1f}"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.quick:
        args.train, args.val_a, args.val_b, args.epochs, args.map_queries = 64, 16, 100, 1, 5
    if args.map_queries < 1:
        raise CVGLError(f"--map-queries must be >= 1, got {args.map_queries}")
    if not (args.map_stride_m > 0 and args.map_stride_m <= MAP_EXTENT_M - AERIAL_EXTENT_M):
        raise CVGLError(f"--map-stride-m must be in (0, {MAP_EXTENT_M - AERIAL_EXTENT_M:g}] metres, got "
                        f"{args.map_stride_m}")
    if args.train < 32 or args.val_a < 2 or args.val_b < 2 or (args.epochs is not None and args.epochs < 1):
        raise CVGLError("--train must be >= 32 (one batch), --val-a/--val-b >= 2 and --epochs >= 1")
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    t_start = time.time()
    seeds = tuple(args.seeds)
    if seeds[0] == seeds[1]:
        raise CVGLError(f"--seeds {seeds[0]} {seeds[1]}: city B must be another city than city A (two different seeds)")
    clock = DemoClock(args.models, {m: args.epochs or demo_recipes()[m]["epochs"] for m in args.models})

    from common.data.readers import read_split
    from common.data.specs import get_spec
    from common.synthetic.baseline import raw_pixel_baseline

    _say("== 1. two synthetic cities (CVUSA layout) ==")
    roots = write_cities(out, args.train, args.val_a, args.val_b, args.workers, seeds)
    _say(clock.finish("cities"))
    records_b = read_split("cvusa", roots["city_b"], "val")
    records_a_val = read_split("cvusa", roots["city_a"], "val")
    records_loc = records_a_val[LOCALISE_QUERY % len(records_a_val)]

    _say("== 2. raw-pixel baseline on city B ==")
    base = raw_pixel_baseline(roots["city_b"], "cvusa", split="val")
    chance = base["chance"]
    _say(f"baseline (N={base['N']}): R@1 {base['R@1']:.2f}  R@5 {base['R@5']:.2f}  R@10 {base['R@10']:.2f}  "
         f"R@1% {base['R@1%']}   chance R@1 {chance['R@1']:.2f}")
    _say(clock.finish("baseline"))
    n_b = len(records_b)
    kmax = max(10, n_b // 100)
    chance_curve = [100.0 * k / n_b for k in range(1, kmax + 1)]
    baseline_curve = base["curve"][:kmax]

    results, curves = [], {}
    for name in args.models:
        _say(f"== 3. train {name} on city A ==")
        cfg, marked = demo_config(name, args.epochs)
        spec = get_spec(cfg["input_spec"])
        run_dir = os.path.join(out, "runs", name)
        train_res = train_model(cfg, marked, roots["city_a"], run_dir, [_epoch_clock(clock, name)])

        _say(f"== 4. evaluate {name} on the unseen city B ==")
        model, checkpoint = _load_best(run_dir), os.path.basename(_checkpoint(run_dir))
        if checkpoint != "best.keras":
            _say(f"  {name}: every epoch had collapsed descriptors, so there is no best.keras; evaluating "
                 f"{checkpoint}, and the numbers below are not a result")
        metrics, g, a = evaluate_on(model, records_b, spec)
        curves[name] = metrics["curve"][:kmax]
        entry = {"model": name, "config": cfg["name"], **{k: metrics[k] for k in ("R@1", "R@5", "R@10", "R@1%")},
                 "N": metrics["N"], "baseline": {k: base[k] for k in ("R@1", "R@5", "R@10", "R@1%")},
                 "chance": {k: chance[k] for k in ("R@1", "R@5", "R@10", "R@1%")},
                 "best_epoch": train_res["best_epoch"], "train_time_s": train_res["time_s"],
                 "city_a_val": train_res["metrics"], "differs_from_paper": sorted(marked),
                 "seeds": list(seeds), "checkpoint": checkpoint,
                 "collapsed": bool(metrics["collapsed"]) or checkpoint != "best.keras",
                 "pessimistic": metrics["pessimistic"], "collapsed_epochs": train_res["collapsed_epochs"]}
        ratio = metrics["R@1"] / base["R@1"] if base["R@1"] else float("inf")
        entry["R@1_over_baseline"] = round(ratio, 2)
        _say(f"{name} on city B: R@1 {metrics['R@1']:.2f}  R@5 {metrics['R@5']:.2f}  R@10 {metrics['R@10']:.2f}  "
             f"R@1% {metrics['R@1%']}  ({ratio:.1f}x the raw-pixel R@1)")
        if metrics["collapsed"]:
            from common.evaluation.collapse import collapse_line

            _say("  " + collapse_line(metrics["collapse_reasons"], f"{name} on city B"))

        _say(f"== 5. pictures, export and localisation ({name}) ==")
        pics = [recall_figure({name: curves[name]}, baseline_curve, chance_curve,
                              os.path.join(run_dir, "recall_curve.png"), f"{name} on unseen city B"),
                retrieval_grid(records_b, g, a, os.path.join(run_dir, "retrieval_grid.png"),
                               f"{name}: city B queries and their top-5 aerials (green = true match)"),
                model_pictures(name, model, records_b[0], run_dir)]
        entry["pictures"] = [p for p in pics if p]
        if args.skip_export:
            entry["export"] = {"status": "skipped (--skip-export)"}
        else:
            try:
                entry["export"] = export_and_localise(run_dir, os.path.join(out, "exports", name), roots["city_a"],
                                                      records_loc, run_dir)
            except CVGLError as exc:
                entry["export"] = {"status": f"failed: {exc}"}
            _say(f"  export / localise: {entry['export']['status']}")
            loc = entry["export"].get("localize") or {}
            if loc.get("true_rank") is not None:
                entry["localize_true_rank"] = loc["true_rank"]
                _say(f"  held-out query {loc['true_id']}: true match ranked {loc['true_rank']} of {len(records_a_val)} "
                     f"city-A val aerials ({'in' if loc['true_rank'] <= 5 else 'NOT in'} the top 5)")
            if entry["export"].get("status") == "done":
                mp = localise_on_map(entry["export"]["export"], seeds[0], os.path.join(out, "data", "map_a"),
                                     run_dir, n_queries=args.map_queries, stride_m=args.map_stride_m)
                entry["map"] = mp
                _say(f"  map of city A ({mp['tiles']} tiles of {mp['tile_m']:g} m every {mp['stride_m']:g} m): "
                     f"{mp['inside_top1_tile']:.0f} % of {mp['queries']} new panoramas inside their top-1 tile, "
                     f"{mp['within_one_tile']:.0f} % within one tile (150 m), median error {mp['median_error_m']:.0f} m "
                     f"(a random tile: {mp['chance_inside_top1_tile']:.0f} % / {mp['chance_within_one_tile']:.0f} %)")
        results.append(entry)
        _write_results(out, results)
        _say(clock.finish(f"{name}/after"))

    recall_figure(curves, baseline_curve, chance_curve, os.path.join(out, "recall_curves.png"),
                  "unseen city B: trained models vs raw pixels")
    _say("")
    _say(f"unseen city B (seed {seeds[1]}; trained on city A, seed {seeds[0]}), {n_b} ground queries against "
         f"{n_b} aerials (index protocol)")
    _say(f"{'':22}{'R@1':>7}{'R@5':>7}{'R@10':>7}{'R@1%':>7}   x raw pixels (R@1 / R@5)")
    for e in results:
        x5 = e["R@5"] / base["R@5"] if base["R@5"] else float("inf")
        _say(f"{e['model']:<22}" + "".join(f"{_fmt(e[k]):>7}" for k in ("R@1", "R@5", "R@10", "R@1%"))
             + f"   {e['R@1_over_baseline']:.1f}x / {x5:.1f}x" + ("   COLLAPSED" if e["collapsed"] else ""))
    _say(f"{'raw-pixel baseline':<22}" + "".join(f"{_fmt(base[k]):>7}" for k in ("R@1", "R@5", "R@10", "R@1%")))
    _say(f"{'chance':<22}" + "".join(f"{_fmt(chance[k]):>7}" for k in ("R@1", "R@5", "R@10", "R@1%")))
    wall, cpu = time.time() - t_start, clock.cpu() - clock.cpu0
    _say(f"results: {os.path.join(out, 'demo_results.json')}   wall {_mmss(wall)}, CPU {_mmss(cpu)}")
    _write_results(out, results, {"seeds": list(seeds), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)})
    return 0


def _write_results(out, results, timing=None):
    from common.training.callbacks import atomic_write_json

    atomic_write_json(os.path.join(out, "demo_results.json"), results)
    if timing is not None:
        atomic_write_json(os.path.join(out, "demo_time.json"), timing)


if __name__ == "__main__":
    run_cli(main)
