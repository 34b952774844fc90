"""Exact top-K search of query descriptors against a reference gallery (the localisation's search), block by
block on the backends of :mod:`common.evaluation.backends`; ties are ordered by reference index.
"""

from __future__ import annotations

import numpy as np

from common.errors import CVGLError
from common.evaluation.backends import (
    DEFAULT_CHUNK,
    _blocks,
    _check_chunk,
    _check_dtype,
    _check_pair,
    _faiss_search,
    _progress,
    _resolve_backend,
    distance_from_similarity,
)


def _merge_topk(dist: np.ndarray, idx: np.ndarray, k: int):
    """Rows sorted by (distance, index); keep k. ``idx`` must already be ascending along each row."""
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, 1), np.take_along_axis(idx, order, 1)


def _block_topk(d: np.ndarray, k: int, c0: int):
    """Exact (distance, index)-ordered top k of one block (k <= columns)."""
    n = d.shape[1]
    if k >= n:
        idx = np.broadcast_to(np.arange(c0, c0 + n), d.shape)
        return _merge_topk(d, np.ascontiguousarray(idx), k)
    part = np.argpartition(d, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(d, part, 1)
    kth = vals.max(axis=1)
    n_le = np.count_nonzero(d <= kth[:, None], axis=1)
    part = np.sort(part, axis=1)  # ascending index so the stable sort orders ties by index
    out_d, out_i = _merge_topk(np.take_along_axis(d, part, 1), part + c0, k)
    for row in np.nonzero(n_le > k)[0]:  # ties at the k-th distance: take the smallest indices
        order = np.argsort(d[row], kind="stable")[:k]
        out_d[row], out_i[row] = d[row, order], order + c0
    return out_d, out_i


def topk_neighbours(query, reference, k: int, chunk_size: int = DEFAULT_CHUNK, backend: str = "auto",
                    dtype: str = "float32", progress: bool = False):
    """The k nearest references of every query: ``(indices (Nq, k) int64, distances (Nq, k))``, ordered by
    distance ``2 - 2 s`` and, among equal distances, by reference index (a stable sort). Chunked: memory
    O(chunk_size^2 + Nq k). ``k`` larger than the gallery is clipped to it."""
    dtype = _check_dtype(dtype)
    q, r = _check_pair(query, reference, dtype, same_count=False)
    chunk = _check_chunk(chunk_size)
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise CVGLError(f"k must be a positive integer, got {k!r}") from None
    if k < 1:
        raise CVGLError(f"k must be a positive integer, got {k}")
    k = min(k, r.shape[0])
    backend = _resolve_backend(backend)
    if backend == "faiss":
        sims, idx = _faiss_search(q, r, k, chunk)
        return idx, distance_from_similarity(sims.astype(dtype))
    with _blocks(backend, q, r) as ops:
        nq, nr = q.shape[0], r.shape[0]
        out_i = np.zeros((nq, k), dtype=np.int64)
        out_d = np.zeros((nq, k), dtype=dtype)
        rstarts = list(range(0, nr, chunk))
        bar = _progress(len(range(0, nq, chunk)) * len(rstarts), "top-k", progress)
        for a0 in range(0, nq, chunk):
            a1 = min(a0 + chunk, nq)
            run_d = np.zeros((a1 - a0, 0), dtype=dtype)
            run_i = np.zeros((a1 - a0, 0), dtype=np.int64)
            for c0 in rstarts:
                c1 = min(c0 + chunk, nr)
                d = distance_from_similarity(np.asarray(ops.to_numpy(ops.scores(a0, a1, c0, c1))))
                bd, bi = _block_topk(d, min(k, c1 - c0), c0)
                run_d, run_i = _merge_topk(np.concatenate([run_d, bd], 1), np.concatenate([run_i, bi], 1), k)
                if bar is not None:
                    bar.update(1)
            out_d[a0:a1], out_i[a0:a1] = run_d, run_i
    if bar is not None:
        bar.close()
    return out_i, out_d
