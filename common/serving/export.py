"""Writing and reading an export directory: a SavedModel with raw-image endpoints, for any runtime.

Layout of ``EXPORT/`` (written by :func:`write_export`, into a temporary sibling directory renamed at the end,
so a crash never leaves a half-written export under the final name)::

    saved_model/     TF SavedModel; endpoints (also signatures) embed_ground / embed_aerial:
                     uint8 (B, H, W, 3), any B, H, W -> float32 (B, d) unit-norm descriptors
    model.keras      the same end-to-end Keras model (common.serving.preprocess.EndToEndModel), raw uint8 input
    config.yaml      the resolved run configuration
    export.json      machine-readable facts: fingerprint, input spec, descriptor size, aerial source size
    MODEL_CARD.md    data, protocol, metrics, preprocessing, usage

The **fingerprint** is a SHA-256 over every variable the SavedModel's endpoints use (values, shapes and
dtypes; independent of order and names, see :func:`variables_fingerprint`). :func:`load_export` recomputes
it from the loaded SavedModel and compares it with ``export.json``, so a SavedModel swapped or damaged after
export is caught; an index stores the fingerprint of the export that built it, so a query embedded by
another model is refused.

Loading needs only TensorFlow: ``tf.saved_model.load(EXPORT + "/saved_model").embed_ground(uint8_batch)``,
or ``keras.layers.TFSMLayer(EXPORT + "/saved_model", call_endpoint="embed_ground")``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil

import numpy as np

from common.errors import CVGLError
from common.synthetic import is_synthetic_root

FORMAT_VERSION = 1
ENDPOINTS = ("embed_ground", "embed_aerial")
TOLERANCE = 1e-5  # max |SavedModel - Keras| on the probe images, checked before the export is published


def variables_fingerprint(variables) -> str:
    """SHA-256 over the variables' shapes, dtypes and values, independent of their order and names.

    The digests of the single variables are sorted before they are combined, so the Keras model's weights
    and the SavedModel's restored variables (another order, other names) give the same fingerprint.
    """
    digests = []
    for v in variables:
        value = np.asarray(v.numpy() if hasattr(v, "numpy") else v)
        h = hashlib.sha256()
        h.update(f"{value.shape}|{value.dtype}|".encode())
        h.update(np.ascontiguousarray(value).tobytes())
        digests.append(h.hexdigest())
    return hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()


def saved_model_variables(loaded) -> list:
    """The variables the endpoints of a loaded SavedModel use (public API: the signatures' captures)."""
    seen, out = set(), []
    for name in ENDPOINTS:
        for v in loaded.signatures[name].variables:
            if id(v) not in seen:
                seen.add(id(v))
                out.append(v)
    return out


def probe_images(spec, seed: int = 0):
    """Deterministic uint8 probe batches: CVUSA-sized and full-sphere ground panoramas, three aerial sizes."""
    rng = np.random.default_rng(seed)
    return {
        "ground": [
            rng.integers(0, 256, (2, 224, 1232, 3), dtype=np.uint8),
            rng.integers(0, 256, (1, 208, 416, 3), dtype=np.uint8),
        ],
        "aerial": [
            rng.integers(0, 256, (2, 256, 256, 3), dtype=np.uint8),
            rng.integers(0, 256, (1, 300, 320, 3), dtype=np.uint8),
            rng.integers(0, 256, (1, 750, 750, 3), dtype=np.uint8),
        ],
    }


def _write_saved_model(e2e, path: str) -> None:
    import keras
    import tensorflow as tf

    # No archive.track(e2e): the endpoints capture the variables they use, and tracking the Keras variables
    # as well would store every weight twice (measured: 329 MB instead of 170 MB for GeoDTR).
    archive = keras.export.ExportArchive()
    signature = [tf.TensorSpec((None, None, None, 3), tf.uint8, name="images")]
    archive.add_endpoint("embed_ground", lambda images: e2e.embed_ground(images), input_signature=signature)
    archive.add_endpoint("embed_aerial", lambda images: e2e.embed_aerial(images), input_signature=signature)
    archive.write_out(path, verbose=False)


def check_replaceable(out_dir: str, protect=()) -> None:
    """``--overwrite`` replaces only a directory that is itself an export (export.json + saved_model/), never
    one of ``protect`` (the run being exported) nor a directory that holds one of them."""
    real = os.path.realpath(out_dir)
    for p in protect:
        rp = os.path.realpath(p)
        if real == rp or rp.startswith(real + os.sep):
            raise CVGLError(f"--out {out_dir} is (or holds) {p}, the source of this export; --overwrite never "
                            "replaces it: choose another --out")
    if not os.path.isdir(real) or not (os.path.isfile(os.path.join(real, "export.json"))
                                       and os.path.isdir(os.path.join(real, "saved_model"))):
        raise CVGLError(f"--out {out_dir} exists and is not an export directory (no export.json + saved_model/); "
                        "--overwrite replaces only an earlier export: choose another --out or remove it yourself")


def write_export(e2e, out_dir: str, config: dict, results: dict | None = None, overwrite: bool = False,
                 model_card=None, protect=(), ground: dict | None = None) -> dict:
    """Write ``e2e`` (an EndToEndModel) as an export directory; returns the export.json dict.

    ``overwrite`` replaces an existing export only (:func:`check_replaceable`; ``protect``: paths it must never
    replace, e.g. the source run). ``model_card``: callable(meta, config, results) -> markdown text (the CLI passes its own); the export is
    verified (SavedModel vs Keras on probe images, to :data:`TOLERANCE`) before it is renamed into place.
    ``ground``: what one training aerial image covers, ``aerial_extent_m`` (metres) and ``aerial_px`` (pixels), when
    known; recorded in export.json for map indexes (None values: unknown).
    """
    from common.errors import writing

    with writing(os.path.abspath(out_dir)):  # a full disk inside TensorFlow's writer names the export
        return _write_export(e2e, out_dir, config, results, overwrite, model_card, protect, ground or {})


def _write_export(e2e, out_dir, config, results, overwrite, model_card, protect, ground) -> dict:
    import tensorflow as tf
    import yaml

    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not overwrite:
        raise CVGLError(f"export directory already exists: {out_dir} (pass --overwrite or choose another --out)")
    if os.path.exists(out_dir):
        check_replaceable(out_dir, protect=protect)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(out_dir)}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        _write_saved_model(e2e, os.path.join(tmp, "saved_model"))
        e2e.save(os.path.join(tmp, "model.keras"))
        clean_cfg = {k: v for k, v in config.items() if not k.startswith("_")}
        with open(os.path.join(tmp, "config.yaml"), "w") as fh:
            yaml.safe_dump(clean_cfg, fh, sort_keys=False)

        from common.serving.graph_check import check_saved_model

        check_saved_model(os.path.join(tmp, "saved_model"))  # what loaders will check: fail here, at export time
        loaded = tf.saved_model.load(os.path.join(tmp, "saved_model"))
        worst = 0.0
        dim = None
        for view in ("ground", "aerial"):
            for batch in probe_images(e2e.input_spec_)[view]:
                ref = np.asarray(getattr(e2e, f"embed_{view}")(batch))
                got = getattr(loaded, f"embed_{view}")(tf.constant(batch)).numpy()
                worst = max(worst, float(np.max(np.abs(ref - got))))
                dim = got.shape[-1]
        if not worst <= TOLERANCE:
            raise CVGLError(
                f"the SavedModel written to {tmp} differs from the Keras model by {worst:.3g} (> {TOLERANCE}) on "
                "the probe images; this is a bug in the export, please report it"
            )
        spec = e2e.input_spec_
        meta = {
            "format_version": FORMAT_VERSION,
            "fingerprint": variables_fingerprint(saved_model_variables(loaded)),
            "name": config.get("name"),
            "family": (config.get("model") or {}).get("family"),
            "dataset": config.get("dataset"),
            "input_spec": spec.to_config(),
            "aerial_source_size": e2e.aerial_source_size,
            "descriptor_dim": int(dim),
            "parameters": int(e2e.count_params()),
            "endpoints": list(ENDPOINTS),
            "max_abs_diff_vs_keras": worst,
            "aerial_extent_m": ground.get("aerial_extent_m"),
            "aerial_px": ground.get("aerial_px"),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        from common.files import to_json

        with open(os.path.join(tmp, "export.json"), "w") as fh:
            fh.write(to_json(meta, indent=2) + "\n")
        if model_card is not None:
            with open(os.path.join(tmp, "MODEL_CARD.md"), "w") as fh:
                fh.write(model_card(meta, clean_cfg, results))
        if os.path.exists(out_dir):
            old = f"{tmp}.old"
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


class Export:
    """A loaded export directory: ``embed_ground(uint8 NHWC) -> np.ndarray``, ``embed_aerial``, ``meta``."""

    def __init__(self, path: str, loaded, meta: dict):
        self.path = path
        self.loaded = loaded
        self.meta = meta
        self.fingerprint = meta["fingerprint"]

    def _embed(self, endpoint, images):
        import tensorflow as tf

        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise CVGLError(f"{endpoint} takes uint8 (B, H, W, 3) images, got {images.dtype} {images.shape}")
        return getattr(self.loaded, endpoint)(tf.constant(images)).numpy()

    def embed_ground(self, images) -> np.ndarray:
        return self._embed("embed_ground", images)

    def embed_aerial(self, images) -> np.ndarray:
        return self._embed("embed_aerial", images)


def read_export_meta(export_dir: str) -> dict:
    """export.json of an export directory, checked; CVGLError naming the problem otherwise."""
    fix = "run python -m experiments.export --run RUN_DIR --out EXPORT_DIR to (re)create it"
    if not os.path.isdir(export_dir):
        raise CVGLError(f"export directory not found: {export_dir} ({fix})")
    meta_path = os.path.join(export_dir, "export.json")
    if not os.path.isfile(meta_path):
        raise CVGLError(f"{export_dir} is not an export directory: export.json is missing ({fix})")
    try:
        with open(meta_path) as fh:
            meta = json.load(fh)
    except (OSError, ValueError) as exc:
        raise CVGLError(f"export metadata {meta_path} is unreadable ({exc}); {fix}") from None
    if not isinstance(meta, dict) or "fingerprint" not in meta or "input_spec" not in meta:
        raise CVGLError(f"export metadata {meta_path} lacks fingerprint/input_spec; {fix}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CVGLError(
            f"export {export_dir} has format_version {meta.get('format_version')!r}, this code reads "
            f"{FORMAT_VERSION}; {fix}"
        )
    return meta


def load_export(export_dir: str, verify: bool = True) -> Export:
    """Load and check an export directory (TensorFlow only; no project model code is imported).

    Raises CVGLError when the directory is missing, incomplete, corrupt, lacks an endpoint, or when its
    SavedModel weights do not match the fingerprint recorded at export time (``verify``).
    """
    import tensorflow as tf

    export_dir = os.path.abspath(export_dir)
    meta = read_export_meta(export_dir)
    sm = os.path.join(export_dir, "saved_model")
    fix = "re-run python -m experiments.export"
    if not os.path.isfile(os.path.join(sm, "saved_model.pb")):
        raise CVGLError(f"export {export_dir} is incomplete: saved_model/saved_model.pb is missing ({fix})")
    from common.serving.graph_check import check_saved_model

    check_saved_model(sm)  # a SavedModel is a program: its graph is read and checked before any of it runs
    try:
        loaded = tf.saved_model.load(sm)
    except Exception as exc:  # noqa: BLE001 - TF raises many types for a damaged SavedModel
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CVGLError(f"export {export_dir} is corrupt: its SavedModel cannot be loaded ({first}); {fix}") from None
    for name in ENDPOINTS:
        if not hasattr(loaded, name) or name not in getattr(loaded, "signatures", {}):
            raise CVGLError(f"export {export_dir}: the SavedModel has no endpoint {name!r} ({fix})")
    if verify:
        actual = variables_fingerprint(saved_model_variables(loaded))
        if actual != meta["fingerprint"]:
            raise CVGLError(
                f"export {export_dir} is mismatched: the SavedModel's weights (fingerprint {actual[:12]}) are not "
                f"the ones export.json records ({meta['fingerprint'][:12]}); {fix}"
            )
    return Export(export_dir, loaded, meta)


def model_card(meta: dict, cfg: dict, results) -> str:
    """MODEL_CARD.md: what the model is, what it was trained and evaluated on, how to call it.

    ``results``: the run's results.json dict, or a list of it and the evaluations run since (``eval_*.json``
    beside the run: cross-area, CVACT_test, ...); every one is a row of the evaluation table."""
    from common.evaluation.parity import METRICS, compare

    spec = meta["input_spec"]
    source = cfg.get("source") or {}
    evaluations = results if isinstance(results, list) else [results] if results is not None else []
    primary = evaluations[0] if evaluations and isinstance(evaluations[0], dict) else None
    synthetic = bool(primary and (primary.get("synthetic") or is_synthetic_root(primary.get("root"))))
    lines = [
        f"# Model card: {meta.get('name') or 'cross-view model'}",
        "",
        "Cross-view geo-localisation: a street-level panorama and an aerial image are embedded into the same "
        "space; the closest aerial descriptor to a panorama's descriptor is its predicted location.",
        "",
        "## Model",
        f"- family: {meta.get('family')}; paper row: {source.get('paper', '-')}, {source.get('table', '-')}, "
        f"\"{source.get('row', '-')}\"",
        f"- parameters: {meta['parameters']:,}; descriptor: {meta['descriptor_dim']} floats, unit L2 norm "
        "(distance = 2 - 2 cos)",
        f"- fingerprint (SHA-256 of the SavedModel weights): `{meta['fingerprint']}`",
        "",
        "## Data",
        f"- trained on: {cfg.get('dataset', '-')} layout; augmentation: "
        + (", ".join(f"{k} {v}" for k, v in (cfg.get("augment") or {}).items()) or "none"),
        f"- training: {json.dumps(cfg.get('train', {}), default=str)}",
    ]
    if synthetic:
        lines.append("- **trained on the project's synthetic world**, not on the paper's data: its numbers below are "
                     "not comparable with the paper's")
    if primary is not None:
        for key, label in (("val_note", "validation"), ("best_epoch", "checkpoint: best epoch"),
                           ("root", "trained on data at")):
            if primary.get(key) is not None:
                lines.append(f"- {label}: {primary[key]}")
        overrides = primary.get("overrides") or {}
        if overrides:
            lines.append(f"- differs from the paper row in {len(overrides)} keys: "
                         + "; ".join(f"`{k}` = {json.dumps(v, default=str)}" for k, v in overrides.items()))
        elif "overrides" in primary:
            lines.append("- the paper row's recipe, no overrides")
    lines += [
        "",
        "## Input (done inside the exported graph)",
        "- both endpoints take uint8 RGB images (B, H, W, 3) of any batch size and image size",
        "- ground: a panorama with width/height < 3 (full sphere, e.g. CVACT 832x1664) keeps its middle half of "
        f"rows (208:624 of 832); then area resize to {spec['ground_size'][0]}x{spec['ground_size'][1]}",
    ]
    if spec["polar"]:
        s = meta["aerial_source_size"]
        resize = f"area resize to {s}x{s}, " if s else "at its own size (no resize), "
        lines.append(
            f"- aerial: centre square, {resize}polar transform (SAFA's sampling grid) to "
            f"{spec['aerial_size'][0]}x{spec['aerial_size'][1]} (north = centre column)"
        )
    else:
        lines.append(f"- aerial: centre square, area resize to {spec['aerial_size'][0]}x{spec['aerial_size'][1]}")
    lines.append(f"- normalisation: {spec['normalisation']} ({'x/127.5-1' if spec['normalisation'] == 'tanh' else 'RGB->BGR minus VGG means'})")
    if meta.get("aerial_extent_m"):
        px = f" at {meta['aerial_px']} px ({meta['aerial_extent_m'] / meta['aerial_px']:.3f} m/px)" if meta.get("aerial_px") else ""
        lines.append(f"- training aerial tiles cover {meta['aerial_extent_m']:g} m{px}: map indexes "
                     "(index build --orthophoto) cut tiles of this size by default")
    lines += ["", "## Evaluation"]
    report = compare(evaluations) if evaluations else []
    if not report:
        lines.append("No results.json in the run: evaluate with `python -m experiments.evaluate` and re-export.")
    else:
        lines.append("| dataset | split | protocol | " + " | ".join(METRICS) + " | paper R@1 |")
        lines.append("|---" * (len(METRICS) + 4) + "|")
        for item in report:
            ev, row = item["evaluation"], item["paper"]
            vals = [f"{ev['metrics'][m]:.2f}" if m in ev["metrics"] else "-" for m in METRICS]
            if is_synthetic_root(ev.get("root")) or (synthetic and ev.get("root") is None):
                paper = "not comparable (synthetic world)"
            else:
                paper = f"{row['metrics']['R@1']:.2f}" if row and "R@1" in row["metrics"] else "-"
            lines.append(f"| {ev.get('dataset')} | {ev.get('split')} | {ev.get('protocol')} | "
                         + " | ".join(vals) + f" | {paper} |")
        lines.append("")
        lines.append("Protocols: index = query k's true match is aerial k (CVUSA, CVACT_val); radius_5m = a hit "
                     "is any retrieved aerial within 5 m (CVACT_test). R@1% uses K = floor(N/100).")
    lines += [
        "",
        "## Usage",
        "```python",
        "import tensorflow as tf",
        "m = tf.saved_model.load('saved_model')",
        "g = m.embed_ground(tf.constant(panoramas_uint8))   # (B, d)",
        "a = m.embed_aerial(tf.constant(aerials_uint8))     # (B, d)",
        "scores = tf.matmul(g, a, transpose_b=True)        # higher = closer",
        "```",
        "or `keras.layers.TFSMLayer('saved_model', call_endpoint='embed_ground')`.",
        "",
        "## Limits",
        "- Inputs are expected north-aligned (panorama centre column = north, aerial image north up), as in "
        "CVUSA/CVACT; an unaligned panorama degrades retrieval.",
        f"- Exported SavedModel vs Keras model on probe images: max |difference| {meta['max_abs_diff_vs_keras']:.2g}.",
        "",
    ]
    return "\n".join(lines)
