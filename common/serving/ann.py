"""Approximate nearest-neighbour search for large aerial indexes (FAISS, the optional package ``faiss-cpu``).

An index of N aerial descriptors is searched exactly by default (every query against every descriptor, cost
N x d per query). From a few hundred thousand references on, an approximate structure answers in a fraction of
that time, at the price of sometimes missing the true nearest neighbours. Four kinds, all inner-product (the
descriptors are unit vectors, so the order is that of the distance 2 - 2 cos):

========  ===============================================  =====================================================
kind      structure                                         memory per reference (d = 4096)
========  ===============================================  =====================================================
flat      ``IndexFlatIP``: exact, FAISS's blocked GEMM      4 d bytes (16 KiB)
ivf       ``IndexIVFFlat``: k-means cells, ``nprobe`` read  4 d bytes + the centroids
hnsw      ``IndexHNSWFlat``: a navigable small-world graph  4 d + 8 M bytes
ivfpq     ``IndexIVFPQ``: cells + product-quantised codes   ``pq_m`` bytes (64 by default) + the codebooks
========  ===============================================  =====================================================

The candidates of an approximate search are always **re-ranked exactly** with the float32 descriptors the
index file keeps (:func:`ann_search`, ``rerank`` candidates per query), so the distances reported are exact and
the only error left is a true neighbour that the structure did not return. How often that happens, against
exact search, is measured by ``benchmarks/ann_bench.py`` (the table in docs/serving.md), which chose the
defaults of :func:`default_params`.

The FAISS structure is serialised into the index ``.npz`` itself (an array of bytes, with its SHA-256 in the
meta), so the index stays one file that is written atomically and bound to the export's fingerprint; FAISS's
own binary reader parses it (no pickle, no code).
"""

from __future__ import annotations

import hashlib
import math
import time

import numpy as np

from common.errors import CVGLError


KINDS = ("flat", "ivf", "hnsw", "ivfpq")
PQ_MIN_TRAIN = 39 * 256  # FAISS's k-means wants 39 points per centroid; a PQ sub-quantiser has 256 centroids
IVF_MIN_PER_CELL = 39
TRAIN_PER_CELL = 64  # k-means training sample per IVF cell (FAISS warns below 39, caps at 256)
KMEANS_ITERATIONS = 10  # FAISS's default is 25; at 4096-d training is the build's cost, and 10 lose no recall
                        # measurable in benchmarks/ann_bench.py's real-descriptor table


def import_faiss():
    try:
        import faiss
    except ImportError:
        raise CVGLError("an approximate index needs the optional package faiss-cpu: pip install faiss-cpu "
                        "(or faiss-gpu); or build an exact index (leave out --ann)") from None
    return faiss


def default_nlist(n: int) -> int:
    """IVF cells: the power of two nearest sqrt(N) (256 at 10^5, 1024 at 10^6: the low end of FAISS's
    sqrt(N)..16 sqrt(N), because training and filling cost N x nlist x d and d is 4096 here; the table in
    docs/serving.md shows the cost), at most 65,536 and at most what N can train (39 references per cell)."""
    nearest = 2 ** round(math.log2(math.sqrt(max(n, 1))))
    trainable = 2 ** int(math.log2(max(n // IVF_MIN_PER_CELL, 1)))
    return int(max(1, min(65536, nearest, trainable)))


def default_params(kind: str, n: int, dim: int) -> dict:
    """The parameters an ``--ann KIND`` build uses unless told otherwise (chosen from benchmarks/ann_bench.py)."""
    if kind == "flat":
        return {}
    if kind == "hnsw":
        return {"hnsw_m": 32, "ef_construction": 80, "ef_search": 128, "rerank": 50}
    nlist = default_nlist(n)
    params = {"nlist": nlist, "nprobe": max(8, nlist // 32), "rerank": 50}
    if kind == "ivfpq":
        params["pq_m"] = _default_pq_m(dim)
        params["rerank"] = 200  # 64-byte codes order the candidates coarsely; the exact re-rank fixes it
    return params


def _default_pq_m(dim: int) -> int:
    """Sub-quantisers: one byte per 64 dimensions (64 bytes for 4096-d), at least 8, dividing ``dim``."""
    m = max(8, dim // 64)
    while m > 1 and dim % m:
        m -= 1
    return m


PARAMS = {"flat": (), "ivf": ("nlist", "nprobe", "rerank"), "hnsw": ("hnsw_m", "ef_construction", "ef_search", "rerank"),
           "ivfpq": ("nlist", "nprobe", "pq_m", "rerank")}


def resolve_params(kind: str, n: int, dim: int, given: dict | None = None) -> dict:
    """``default_params`` with the non-None values of ``given`` on top; CVGLError for a parameter that ``kind``
    does not have, a value out of range, or a gallery too small to train the structure."""
    if kind not in KINDS:
        raise CVGLError(f"--ann {kind!r} is not a kind of index; choose one of {', '.join(KINDS)}")
    params = default_params(kind, n, dim)
    for key, value in (given or {}).items():
        if value is None:
            continue
        if key not in PARAMS[kind]:
            raise CVGLError(f"--{key.replace('_', '-')} does not apply to --ann {kind} (it takes "
                            f"{', '.join('--' + p.replace('_', '-') for p in PARAMS[kind]) or 'no parameters'})")
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise CVGLError(f"--{key.replace('_', '-')} must be a positive integer, got {value!r}")
        params[key] = int(value)
    if kind in ("ivf", "ivfpq"):
        if params["nprobe"] > params["nlist"]:
            params["nprobe"] = params["nlist"]
        need = IVF_MIN_PER_CELL * params["nlist"]
        if n < need:
            raise CVGLError(f"--ann {kind} with {params['nlist']} cells needs at least {need} references to train "
                            f"(39 per cell), the gallery has {n}; give a smaller --nlist, or use --ann hnsw or flat "
                            "(or exact search) at this size")
    if kind == "ivfpq":
        if dim % params["pq_m"]:
            raise CVGLError(f"--pq-m {params['pq_m']} must divide the descriptor size {dim}")
        if n < PQ_MIN_TRAIN:
            raise CVGLError(f"--ann ivfpq needs at least {PQ_MIN_TRAIN} references to train its codebooks (39 per "
                            f"code), the gallery has {n}; use --ann hnsw, ivf or flat at this size")
    return params


def _train_sample(embeddings: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    n = embeddings.shape[0]
    if n <= size:
        return np.ascontiguousarray(embeddings, np.float32)
    pick = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    return np.ascontiguousarray(embeddings[pick], np.float32)


def build_ann(embeddings: np.ndarray, kind: str, params: dict, add_chunk: int = 65536, say=None):
    """A trained, filled FAISS index over ``embeddings`` (N, d) unit float32 rows; returns ``(index, seconds)``.
    Training samples are drawn with a fixed seed, so a build is repeatable."""
    faiss = import_faiss()
    t0 = time.perf_counter()
    n, dim = embeddings.shape
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["hnsw_m"], ip)
        index.hnsw.efConstruction = params["ef_construction"]
    else:
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, params["nlist"], ip)
        else:
            index = faiss.IndexIVFPQ(quantizer, dim, params["nlist"], params["pq_m"], 8, ip)
        index.cp.seed = 1234
        index.cp.niter = KMEANS_ITERATIONS
        size = max(TRAIN_PER_CELL * params["nlist"], PQ_MIN_TRAIN if kind == "ivfpq" else 0)
        sample = _train_sample(embeddings, size)
        say and say(f"training --ann {kind} on {sample.shape[0]} descriptors ({params['nlist']} cells)")
        index.train(sample)
    for a in range(0, n, add_chunk):
        index.add(np.ascontiguousarray(embeddings[a:a + add_chunk], np.float32))
    return index, time.perf_counter() - t0


def query_params(kind: str, stored: dict, overrides: dict | None = None) -> dict:
    """The stored parameters of an index's structure with the non-None query-time ``overrides`` (nprobe,
    ef_search, rerank) on top; CVGLError for one that ``kind`` does not have or a value below 1."""
    params = dict(stored)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if key not in PARAMS[kind]:
            raise CVGLError(f"{flag} does not apply to this index's --ann {kind}")
        if value < 1:
            raise CVGLError(f"{flag} must be a positive integer, got {value}")
        params[key] = int(value)
    return params


def set_search_params(index, kind: str, params: dict) -> None:
    if kind in ("ivf", "ivfpq"):
        index.nprobe = int(params["nprobe"])
    elif kind == "hnsw":
        index.hnsw.efSearch = int(params["ef_search"])


def serialize(index) -> tuple[np.ndarray, str]:
    """(uint8 bytes, sha256 hex) of a FAISS index, for the index ``.npz``."""
    blob = import_faiss().serialize_index(index)
    return blob, hashlib.sha256(blob.tobytes()).hexdigest()


def deserialize(blob: np.ndarray, sha256: str, kind: str, params: dict, path: str = "index"):
    """The FAISS index stored in an index file, after checking its SHA-256; CVGLError when it does not match."""
    faiss = import_faiss()
    blob = np.ascontiguousarray(blob, np.uint8)
    if hashlib.sha256(blob.tobytes()).hexdigest() != sha256:
        raise CVGLError(f"{path}: its approximate search structure does not match its checksum (a damaged file); "
                        "rebuild it with python -m experiments.index ann --index INDEX.npz --ann KIND --out NEW.npz")
    try:
        index = faiss.deserialize_index(blob)
    except RuntimeError as exc:
        raise CVGLError(f"{path}: FAISS cannot read its approximate search structure ({exc}); rebuild it") from None
    set_search_params(index, kind, params)
    return index


def ann_search(index, kind: str, params: dict, embeddings, query: np.ndarray, k: int):
    """Top-``k`` of each query through the approximate ``index``, re-ranked exactly: the structure proposes
    ``max(k, rerank)`` candidates, whose exact distances (2 - 2 cos with ``embeddings``, ties by index) decide
    their order. Returns (indices (Q, k) int64, distances (Q, k) float32); a row the structure could not fill
    (an IVF probe of nearly empty cells) ends in index -1 at distance inf."""
    q = np.ascontiguousarray(query, np.float32)
    cand = max(k, int(params.get("rerank", k))) if kind != "flat" else k
    cand = min(cand, int(index.ntotal))
    _, idx = index.search(q, cand)
    out_i = np.full((q.shape[0], k), -1, np.int64)
    out_d = np.full((q.shape[0], k), np.inf, np.float32)
    for row in range(q.shape[0]):
        c = idx[row][idx[row] >= 0]
        if not c.size:
            continue
        d = (2.0 - 2.0 * (np.asarray(embeddings[c], np.float32) @ q[row])).astype(np.float32)
        order = np.lexsort((c, d))[:k]
        out_i[row, : order.size], out_d[row, : order.size] = c[order], d[order]
    return out_i, out_d


def describe(kind: str, params: dict) -> str:
    """One line for a user: which approximate search answered."""
    shown = ", ".join(f"{k} {v}" for k, v in params.items())
    return f"approximate search (--ann {kind}" + (f": {shown}" if shown else "") + ")"
