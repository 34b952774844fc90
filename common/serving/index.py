"""An aerial index: the descriptors of a gallery of geo-tagged aerial images, built with an export, searched
by a ground descriptor. The library behind ``python -m experiments.index`` and ``experiments.localize``.

``build_index`` embeds in batches and checkpoints atomically (a killed build resumes where it stopped); the
``.npz`` file carries the export's fingerprint, so an index is never searched with another model's descriptors.
An index may also carry an approximate search structure (``--ann``, :mod:`common.serving.ann`); it is then
searched through it, re-ranked exactly, and says so.
"""

from __future__ import annotations

import datetime
import json
import os
import sys

import numpy as np

from common.data.images import read_rgb  # noqa: F401  (the one image reader, re-exported here)
from common.errors import CVGLError


INDEX_FORMAT = 2  # 2 added latlon; format 1 files are read (latlon unknown)
READ_FORMATS = (1, 2)


FAISS_MIN_GALLERY = 100_000  # "auto" uses FAISS (when installed) from this gallery size on


def _atomic_savez(path: str, **arrays) -> None:
    from common.files import atomic_path

    with atomic_path(path, tmp=f"{path}.tmp-{os.getpid()}.npz") as tmp:  # np.savez wants the .npz ending
        np.savez(tmp, **arrays)


def _partial_key(fingerprint: str, ids, paths) -> str:
    """What a partial build embedded: the weights, and every id with its image (an orthophoto's tile ids repeat
    across tile sizes and strides; the references do not)."""
    import hashlib

    h = hashlib.sha256(fingerprint.encode())
    for i, p in zip(ids, paths):
        h.update(str(i).encode() + b"\0" + str(p).encode() + b"\0")
    return h.hexdigest()


def _ann_arrays(embeddings: np.ndarray, ann, say=None) -> tuple[dict, dict]:
    """({"ann": bytes}, meta["ann"]) of an approximate structure over ``embeddings``; ``ann`` = (kind, given
    parameters) or None (then nothing)."""
    if ann is None:
        return {}, {}
    from common.serving import ann as A

    kind, given = ann
    params = A.resolve_params(kind, embeddings.shape[0], embeddings.shape[1], given)
    index, seconds = A.build_ann(embeddings, kind, params, say=say)
    blob, sha = A.serialize(index)
    say and say(f"built {A.describe(kind, params)} over {embeddings.shape[0]} descriptors in {seconds:.1f} s "
                f"({blob.size / 2**20:.1f} MiB)")
    return {"ann": blob}, {"ann": {"kind": kind, "params": params, "sha256": sha, "build_s": round(seconds, 2),
                                   "bytes": int(blob.size)}}


def add_ann(src: str, out: str, kind: str, given: dict | None = None, say=None) -> dict:
    """Write ``out``: the index ``src`` with an approximate search structure of ``kind`` (replacing any it had),
    without embedding anything again."""
    idx = load_index(src)
    arrays, ann_meta = _ann_arrays(idx.embeddings, (kind, given), say=say)
    meta = {k: v for k, v in idx.meta.items() if k != "ann"}
    meta.update(ann_meta)
    _atomic_savez(os.path.abspath(out), embeddings=idx.embeddings, ids=np.asarray(idx.ids), positions=idx.positions,
                  latlon=idx.latlon, aerial_paths=np.asarray(idx.aerial_paths), meta=np.asarray(json.dumps(meta)),
                  **arrays)
    return meta


def build_index(export, records, out: str, batch_size: int = 16, checkpoint_every: int = 2048,
                description: dict | None = None, progress: bool = True, reader=None, offset: int = 0,
                ann=None, say=None) -> dict:
    """Embed the aerial images of ``records`` with ``export`` (a :class:`common.serving.export.Export`) into ``out``.

    ``records``: dataset :class:`~common.data.records.PairRecord` s or map :class:`~common.geo.tiles.TileRecord` s
    (which carry ``latlon``); ``reader``: path -> uint8 RGB (default :func:`common.geo.tiles.read_tile`, which
    reads plain image files too). ``offset``: where ``records`` start in the whole gallery (a shard,
    :mod:`common.evaluation.shards`): chunks are cut at the same global multiples of ``checkpoint_every`` as in a
    one-process build, so every batch is the same and the merged shards equal it bit for bit. ``ann``:
    (kind, parameters) of an approximate search structure to add (:mod:`common.serving.ann`), or None."""
    from tqdm import tqdm

    from common.evaluation.embedding import embed_view_raw
    from common.geo.tiles import read_tile

    reader = reader or read_tile

    if not records:
        raise CVGLError("the split has no pairs to index; check --root/--split")
    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    ids = [r.id for r in records]
    paths = [r.aerial for r in records]  # the raw aerial tiles: the export does the polar transform
    positions = np.asarray([r.position if r.position is not None else (np.nan, np.nan) for r in records],
                           dtype=np.float64)
    latlon = np.asarray([getattr(r, "latlon", None) or (np.nan, np.nan) for r in records], dtype=np.float64)
    n, dim = len(records), int(export.meta["descriptor_dim"])
    key = _partial_key(export.fingerprint, ids, paths)
    partial = f"{os.path.splitext(out)[0]}.partial.npz"
    emb = np.zeros((n, dim), dtype=np.float32)
    done = 0
    if os.path.isfile(partial):
        try:
            with np.load(partial, allow_pickle=False) as z:
                if str(z["key"]) == key:
                    done = int(z["done"])
                    emb[:done] = z["embeddings"][:done]
        except (OSError, ValueError, KeyError):
            done = 0
        if done:
            print(f"resuming from {partial}: {done} of {n} images already embedded", file=sys.stderr)
    bar = tqdm(total=n, initial=done, desc="embedding aerial images", unit="img", disable=not progress)
    cuts = sorted({0, n} | {k * checkpoint_every - offset for k in range(offset // checkpoint_every + 1,
                                                                           (offset + n) // checkpoint_every + 1)
                            if 0 < k * checkpoint_every - offset < n})
    for a, b in zip(cuts[:-1], cuts[1:]):  # one chunk per checkpoint
        if b <= done:
            continue
        a = max(a, done)
        emb[a:b] = embed_view_raw(export, records[a:b], "aerial", batch_size=batch_size, progress=False,
                                   reader=reader)
        bar.update(b - a)
        if b < n:
            _atomic_savez(partial, key=np.asarray(key), done=np.asarray(b), embeddings=emb[:b])
    bar.close()
    meta = {
        "format": INDEX_FORMAT,
        "fingerprint": export.fingerprint,
        "export": export.path,
        "model": export.meta.get("name"),
        "descriptor_dim": dim,
        "count": n,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    meta.update(description or {})
    if ann is not None:
        from common.serving.ann import resolve_params

        resolve_params(ann[0], n, dim, ann[1])  # refused before the embedding would be lost
    extra, ann_meta = _ann_arrays(emb, ann, say=say)
    meta.update(ann_meta)
    _atomic_savez(out, embeddings=emb, ids=np.asarray(ids), positions=positions, latlon=latlon,
                  aerial_paths=np.asarray(paths), meta=np.asarray(json.dumps(meta)), **extra)
    if os.path.exists(partial):
        os.remove(partial)
    return meta


class Index:
    """A loaded index: ``embeddings``, ``ids``, ``positions`` (metres, the index CRS), ``latlon`` (degrees,
    NaN when unknown), ``aerial_paths`` (files or tile references), ``meta``."""

    def __init__(self, path, embeddings, ids, positions, aerial_paths, meta, latlon=None, ann_blob=None):
        self.path = path
        self._ann_blob = ann_blob
        self._ann = None
        self.embeddings = embeddings
        self.ids = ids
        self.positions = positions
        self.aerial_paths = aerial_paths
        self.meta = meta
        self.latlon = latlon if latlon is not None else np.full((len(ids), 2), np.nan)
        self.fingerprint = meta["fingerprint"]

    def __len__(self):
        return len(self.ids)

    @property
    def approximate(self) -> bool:
        """Whether the index carries an approximate search structure (``--ann``)."""
        return self._ann_blob is not None

    def ann(self):
        """The FAISS structure (read on first use, checksum checked)."""
        if self._ann is None:
            from common.serving.ann import deserialize

            a = self.meta["ann"]
            self._ann = deserialize(self._ann_blob, a["sha256"], a["kind"], a["params"], path=self.path)
        return self._ann


def merge_indexes(paths, out: str, ann=None, say=None) -> dict:
    """Merge the shard indexes of ``index build --shard`` into ``out`` (equal to a one-process build but for its
    creation time); CVGLError unless they are one export's shards that tile one gallery. ``ann``: as in
    :func:`build_index` (the structure is built over the whole gallery, here)."""
    from common.evaluation.shards import merge

    arrays, meta = merge(paths, identity_keys=("fingerprint", "batch_size", "checkpoint_every"))
    if meta is None:
        raise CVGLError(f"{paths[0]} is a whole index, not a shard (build shards with index build --shard I/N)")
    index_meta = json.loads(str(arrays.pop("index_meta")[0]))
    for key in ("shard", "range", "count"):
        index_meta.pop(key, None)
    index_meta.update(count=int(len(arrays["ids"])), merged_from=meta["merged_from"],
                      created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    extra, ann_meta = _ann_arrays(np.asarray(arrays["embeddings"], np.float32), ann, say=say)
    index_meta.update(ann_meta)
    _atomic_savez(os.path.abspath(out), embeddings=arrays["embeddings"], ids=arrays["ids"],
                  positions=arrays["positions"], latlon=arrays["latlon"], aerial_paths=arrays["aerial_paths"],
                  meta=np.asarray(json.dumps(index_meta)), **extra)
    return index_meta


def load_index(path: str) -> Index:
    fix = "build it with python -m experiments.index build --export EXPORT_DIR ..."
    if not os.path.isfile(path):
        raise CVGLError(f"index not found: {path} ({fix})")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            idx = Index(os.path.abspath(path), z["embeddings"].astype(np.float32), [str(i) for i in z["ids"]],
                        z["positions"].astype(np.float64), [str(p) for p in z["aerial_paths"]], meta,
                        z["latlon"].astype(np.float64) if "latlon" in z.files else None,
                        z["ann"] if "ann" in z.files else None)
    except Exception as exc:  # noqa: BLE001 - a truncated .npz raises BadZipFile, EOFError, zlib errors...
        raise CVGLError(f"index {path} is unreadable or not an index file ({type(exc).__name__}: {exc}); "
                        f"{fix}") from None
    if isinstance(meta, dict) and str(meta.get("format", "")).startswith("cvgl-descriptor-shard"):
        raise CVGLError(f"{path} is shard {meta['shard'][0]}/{meta['shard'][1]} of an index build, not an index: merge "
                        "the shards with python -m experiments.index merge --out INDEX.npz SHARD.npz ...")
    if not isinstance(meta, dict) or meta.get("format") not in READ_FORMATS or "fingerprint" not in meta:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise CVGLError(f"index {path} has format {got!r}, this code reads {INDEX_FORMAT}; {fix}")
    if idx.approximate and not (isinstance(meta.get("ann"), dict) and {"kind", "params", "sha256"} <= set(meta["ann"])):
        raise CVGLError(f"index {path} holds an approximate search structure without its description; rebuild it "
                        "with python -m experiments.index ann --index INDEX.npz --ann KIND --out NEW.npz")
    n = len(idx.ids)
    if idx.embeddings.ndim != 2 or idx.embeddings.shape[0] != n or idx.positions.shape != (n, 2) \
            or idx.latlon.shape != (n, 2) \
            or len(idx.aerial_paths) != n or n == 0:
        raise CVGLError(f"index {path} is inconsistent ({n} ids, embeddings {idx.embeddings.shape}, positions "
                        f"{idx.positions.shape}); {fix}")
    if not np.all(np.isfinite(idx.embeddings)) or np.any(np.abs(np.linalg.norm(idx.embeddings, axis=1) - 1) > 1e-3):
        raise CVGLError(f"index {path} holds descriptors that are not unit vectors (an interrupted or damaged "
                        f"build?); {fix}")
    return idx


def check_compatible(index: Index, export) -> None:
    """CVGLError unless ``index`` was built with the weights of ``export``."""
    if index.fingerprint != export.fingerprint:
        raise CVGLError(
            f"index {index.path} was built with another model (fingerprint {index.fingerprint[:12]}, model "
            f"{index.meta.get('model')!r}) than export {export.path} ({export.fingerprint[:12]}, model "
            f"{export.meta.get('name')!r}); rebuild the index with: python -m experiments.index build --export "
            f"{export.path} ..."
        )


def search(index: Index, query: np.ndarray, k: int = 5, backend: str = "auto", exact: bool = False,
           ann_params: dict | None = None):
    """Top-k aerials of each query descriptor: (indices (Q, k), distances 2 - 2 cos (Q, k)). Exact unless the
    index carries an approximate structure (and ``exact`` is False): then its candidates re-ranked exactly
    (:func:`common.serving.ann.ann_search`), with ``ann_params`` (nprobe, ef_search, rerank) over the stored ones."""
    from common.evaluation.search import topk_neighbours

    if index.approximate and not exact:
        from common.serving.ann import ann_search, query_params, set_search_params

        a = index.meta["ann"]
        params = query_params(a["kind"], a["params"], ann_params)
        structure = index.ann()
        set_search_params(structure, a["kind"], params)
        return ann_search(structure, a["kind"], params, index.embeddings, query, k)

    if backend == "auto" and len(index) >= FAISS_MIN_GALLERY:
        try:
            import faiss  # noqa: F401

            backend = "faiss"
        except ImportError:
            pass
    return topk_neighbours(np.asarray(query, np.float32), index.embeddings, k, backend=backend)
