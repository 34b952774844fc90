"""Exact cross-view retrieval metrics (R@1, R@5, R@10, R@1%) that scale to CVACT_test (92,802 x 92,802).

Protocols (see the SAFA / GeoDTR / OriCNN evaluators; GeoDTR ``utils.validatenp``, OriCNN ``RecallGeo.m``):

* **index** (CVUSA, CVACT_val): query = ground image k, database = every aerial image, true match = aerial k.
  With the distance ``D = 2 - 2 <g, a>`` (the squared Euclidean distance of unit vectors),
  ``rank_k = #{i : D[k, i] < D[k, k]}`` counts *strictly* closer references, so ties favour the query.
  Hit at K iff ``rank_k < K``; R@K is the mean in percent.
* **radius** (CVACT_test, 5 m): the references are sorted by distance; hit at K iff any of the first K lies
  within ``radius_m`` (Euclidean, metres, ``<=``) of the query's position. **Tie rule**: the sort is stable,
  i.e. references at equal distance are ordered by ascending reference index (what a stable sort by distance
  gives). Equivalently, with ``j*`` the closest reference within the radius (smallest index among equals),
  ``rank = #{j : D_j < D_j*} + #{j < j* : D_j == D_j*}`` and hit at K iff ``rank < K``; a query with no
  reference within the radius never hits (it still counts in N).

R@1% uses K = floor(0.01 N) (88 for 8,884; 928 for 92,802), where the official code reads the last of its
floor(0.01 N) + 1 slots. For N < 100 it does not exist and is reported as None.

How it scales: one pass over square blocks of the query x reference score matrix (``chunk_size`` on both
sides; memory O(chunk_size^2 + N d), never N x N). The ranks are computed once and histogrammed, so the
whole recall curve costs one matrix product (2 N^2 d FLOPs), not one pass per K. In the index protocol the
true-match scores are read from the diagonal block of the *same* matrix product (done first for each query
chunk), so a duplicate of the true match is compared with bit-identical arithmetic, exactly like a dense
evaluator. The comparison ``2 - 2 s < t`` is turned into ``s > a`` with a per-query similarity threshold
``a`` chosen so that both are equivalent for every float ``s`` (the rounding of ``2 - 2 s`` included), so
each block costs one GEMM plus one compare-and-count.

Precision: the default working dtype is float32 (sgemm runs at twice the double rate and the models'
descriptors are float32). Values that are exactly representable -- the golden fixtures -- give bit-identical
results to the official float64 evaluator; on real descriptors two references whose distances differ by less
than the float32 rounding of a d-term dot product (~1e-6) may be ordered differently from a float64
evaluator. ``dtype="float64"`` reproduces the official arithmetic exactly, at about twice the time. In the
radius protocol ``j*`` is chosen from separately computed pair scores (the few references within the radius);
references within the radius are never counted as preceding ``j*`` (true by definition), so a rounding
difference between that score and the GEMM cannot push ``j*`` or a duplicate of it down the list; a
reference *outside* the radius whose distance equals ``j*``'s up to rounding may be ordered either way.

Backends: ``"numpy"`` (OpenBLAS), ``"tf"`` (a GPU when TensorFlow sees one), ``"auto"`` (TF when a GPU is
visible, else NumPy) and ``"faiss"`` (optional; exact inner-product search of the top K, for galleries that
are served from a FAISS index; results are re-ordered by (distance, index), but which of several references
tied at the *end* of FAISS's top-K list it returns is up to FAISS; index-protocol ranks are exact below
K_1pct and censored there).

Low-level pieces reused elsewhere: :func:`true_match_ranks`, :func:`radius_ranks`, :func:`within_radius`,
:func:`recall_from_ranks`, :func:`official_recall_array`, :func:`one_percent_k`. The block backends and input
checks are :mod:`common.evaluation.backends`; top-K search is :mod:`common.evaluation.search`.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from common.errors import CVGLError
from common.evaluation.backends import (  # noqa: F401  (distance_from_similarity: part of the protocol API)
    DEFAULT_CHUNK,
    _blocks,
    _check_chunk,
    _check_dtype,
    _check_pair,
    _check_positions,
    _faiss_radius_ranks,
    _faiss_ranks,
    _pair_similarities,
    _progress,
    _resolve_backend,
    distance_from_similarity,
)


# ------------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------------
def one_percent_k(n: int) -> int:
    """K of R@1%: floor(0.01 n) in exact integer arithmetic (88 for 8,884; 928 for 92,802; 0 below 100)."""
    return int(n) // 100


def _threshold(t: np.ndarray, strict: bool) -> np.ndarray:
    """Per-query similarity thresholds ``a`` with  ``f(s) < t  <=>  s > a``  (``<=`` when not strict).

    ``f(s) = fl(2 - 2 s)`` is non-increasing in ``s`` (2 s is exact and rounding is monotone), so the set of
    similarities whose distance passes the test is ``{s > a}``; ``a`` is the largest float that fails it.
    Start from the real-number solution and walk to the exact boundary with nextafter (a few steps).
    """
    t = np.asarray(t)
    dt = t.dtype.type

    def fails(s):  # True where s does NOT pass the test
        d = distance_from_similarity(s)
        return d >= t if strict else d > t

    with np.errstate(over="ignore", invalid="ignore"):
        a = ((dt(2) - t) / dt(2)).astype(t.dtype)
        for _ in range(64):  # move down until a fails
            need = ~fails(a)
            if not need.any():
                break
            a = np.where(need, np.nextafter(a, dt(-np.inf)), a)
        for _ in range(64):  # move up while the next float still fails
            nxt = np.nextafter(a, dt(np.inf))
            need = fails(nxt)
            if not need.any():
                break
            a = np.where(need, nxt, a)
    return a.astype(t.dtype)


def recall_from_ranks(ranks: np.ndarray, kmax: int) -> np.ndarray:
    """Hit counts for K = 1..kmax: ``counts[K-1] = #{q : rank_q < K}`` (one histogram, no O(K N) loop)."""
    ranks = np.asarray(ranks, dtype=np.int64)
    hist = np.bincount(np.minimum(ranks, kmax), minlength=kmax + 1)
    return np.cumsum(hist)[:kmax]


def official_recall_array(ranks: np.ndarray) -> np.ndarray:
    """The array GeoDTR's ``validatenp`` returns: shape (1, floor(0.01 N) + 1), entry t = mean(rank < t)."""
    ranks = np.asarray(ranks, dtype=np.int64)
    n = ranks.shape[0]
    slots = one_percent_k(n) + 1
    counts = np.concatenate([[0], recall_from_ranks(ranks, slots - 1)]) if slots > 1 else np.zeros(1, np.int64)
    return (counts.astype(np.float64) / n).reshape(1, slots)


def within_radius(query_pos, reference_pos, radius_m: float) -> list:
    """For each query, the sorted reference indices whose position is within ``radius_m`` (``<=``) metres
    (Euclidean, ``sqrt(dx^2 + dy^2) <= radius_m`` in float64)."""
    qi, ri = _radius_pairs(query_pos, reference_pos, radius_m)
    return np.split(ri, np.searchsorted(qi, np.arange(1, len(query_pos))))


def _radius_pairs(query_pos, reference_pos, radius_m: float):
    """(query index, reference index) of every pair within the radius, sorted by query then reference."""
    from scipy.spatial import cKDTree

    qp = np.asarray(query_pos, dtype=np.float64)
    rp = np.asarray(reference_pos, dtype=np.float64)
    pairs = cKDTree(qp).sparse_distance_matrix(cKDTree(rp), radius_m * (1 + 1e-9) + 1e-9,
                                               output_type="ndarray")
    qi, ri = pairs["i"].astype(np.int64), pairs["j"].astype(np.int64)
    keep = np.sqrt(((qp[qi] - rp[ri]) ** 2).sum(axis=1)) <= radius_m
    qi, ri = qi[keep], ri[keep]
    order = np.lexsort((ri, qi))
    return qi[order], ri[order]


# ------------------------------------------------------------------------------------------------------
# backends: one block of scores S = Q_chunk @ R_chunk^T and the compare-and-count on it
# ------------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------------
# ranks
# ------------------------------------------------------------------------------------------------------
def true_match_ranks(query, reference, chunk_size: int = DEFAULT_CHUNK, backend: str = "auto",
                     dtype: str = "float32", progress: bool = False, return_ties: bool = False):
    """Index protocol ranks: ``rank_k = #{i : D[k, i] < D[k, k]}`` (strict; ties favour the query), int64 (N,).

    Query k's true match is reference k. One pass of square ``chunk_size`` blocks; for each query chunk the
    diagonal block is computed first and gives the true-match distances from the same GEMM.

    ``return_ties``: also return ``ties_k = #{i != k : D[k, i] == D[k, k]}`` (references exactly as close as
    the true match; the pessimistic rank, ties against the query, is ``rank + ties``). One more compare per
    block, no second GEMM. Not available with the faiss backend (returns None there).
    """
    dtype = _check_dtype(dtype)
    q, r = _check_pair(query, reference, dtype, same_count=True)
    chunk = _check_chunk(chunk_size)
    backend = _resolve_backend(backend)
    if backend == "faiss":
        kmax = max(one_percent_k(q.shape[0]), 1)
        ranks = _faiss_ranks(q, r, kmax, targets=np.arange(q.shape[0]), chunk=chunk)[0]
        return (ranks, None) if return_ties else ranks
    n = q.shape[0]
    starts = list(range(0, n, chunk))
    with _blocks(backend, q, r) as ops:
        ranks = np.zeros(n, dtype=np.int64)
        ties = np.zeros(n, dtype=np.int64)
        bar = _progress(len(starts) ** 2, "ranking", progress)
        for i, a0 in enumerate(starts):
            a1 = min(a0 + chunk, n)
            s = ops.scores(a0, a1, a0, a1)
            t = distance_from_similarity(ops.diag(s))  # true-match distances, same arithmetic as every block
            thr = _threshold(t, strict=True)
            thr_le = _threshold(t, strict=False) if return_ties else None
            cnt = ops.count_greater(s, thr)
            le = ops.count_greater(s, thr_le) - 1 if return_ties else None  # the true match itself is "<="
            for j, c0 in enumerate(starts):
                if j == i:
                    continue
                block = ops.scores(a0, a1, c0, min(c0 + chunk, n))
                cnt += ops.count_greater(block, thr)
                if return_ties:
                    le += ops.count_greater(block, thr_le)
                if bar is not None:
                    bar.update(1)
            ranks[a0:a1] = cnt
            if return_ties:
                ties[a0:a1] = np.maximum(le - cnt, 0)  # >= 0 even when a score overflows to inf
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return (ranks, ties) if return_ties else ranks


def radius_ranks(query, reference, query_pos, reference_pos, radius_m: float = 5.0,
                 chunk_size: int = DEFAULT_CHUNK, backend: str = "auto", dtype: str = "float32",
                 progress: bool = False, return_info: bool = False, return_ties: bool = False):
    """Radius protocol ranks: the 0-based position, in the stable distance sort, of the first reference
    within ``radius_m`` of the query (int64 (Nq,)); ``n_reference`` (never a hit) when there is none.

    With ``return_info`` also returns ``(ranks, best)`` where ``best[q]`` is that reference's index (-1: none);
    with ``return_ties`` as well, ``(ranks, best, ties)`` where ``ties[q]`` counts the references outside the
    radius exactly as close as ``j*`` that the stable sort puts *after* it (the pessimistic rank, every tie
    against the query, is ``ranks + ties``; None with the faiss backend).
    """
    dtype = _check_dtype(dtype)
    q, r = _check_pair(query, reference, dtype, same_count=False)
    nq, nr = q.shape[0], r.shape[0]
    qp = _check_positions(query_pos, nq, "query")
    rp = _check_positions(reference_pos, nr, "reference")
    try:
        radius_m = float(radius_m)
    except (TypeError, ValueError):
        raise CVGLError(f"radius_m must be a positive number of metres, got {radius_m!r}") from None
    if not (radius_m > 0 and math.isfinite(radius_m)):
        raise CVGLError(f"radius_m must be a positive number of metres, got {radius_m!r}")
    chunk = _check_chunk(chunk_size)
    backend = _resolve_backend(backend)

    # the closest reference within the radius of each query (smallest index among equal distances)
    qi, ri = _radius_pairs(qp, rp, radius_m)
    dist = distance_from_similarity(_pair_similarities(q, r, qi, ri))
    best = np.full(nq, -1, dtype=np.int64)
    tbest = np.full(nq, np.inf, dtype=dtype)
    if qi.size:
        order = np.lexsort((ri, dist, qi))  # by query, then distance, then reference index
        first = np.ones(order.size, dtype=bool)
        first[1:] = qi[order][1:] != qi[order][:-1]
        sel = order[first]
        best[qi[sel]] = ri[sel]
        tbest[qi[sel]] = dist[sel]

    if backend == "faiss":
        kmax = max(one_percent_k(nr), 1)
        ranks = _faiss_radius_ranks(q, r, np.split(ri, np.searchsorted(qi, np.arange(1, nq))), kmax, chunk)
        if return_ties:
            return ranks, best, None
        return (ranks, best) if return_info else ranks

    has = best >= 0
    pq, pr = qi, ri  # within-radius pairs, sorted by query
    a_thr = np.full(nq, np.inf, dtype=dtype)  # rows without a positive: count nothing
    b_thr = np.full(nq, np.inf, dtype=dtype)
    a_thr[has] = _threshold(tbest[has], strict=True)  # D < t   <=> s > a
    b_thr[has] = _threshold(tbest[has], strict=False)  # D <= t  <=> s > b

    with _blocks(backend, q, r) as ops:
        ranks = np.zeros(nq, dtype=np.int64)
        pess = np.zeros(nq, dtype=np.int64)  # #{j outside the radius : D_j <= D_j*}
        qstarts, rstarts = range(0, nq, chunk), list(range(0, nr, chunk))
        bar = _progress(len(qstarts) * len(rstarts), "ranking (radius)", progress)
        for a0 in qstarts:
            a1 = min(a0 + chunk, nq)
            a, b, jb = a_thr[a0:a1], b_thr[a0:a1], best[a0:a1]
            pq0, pq1 = np.searchsorted(pq, [a0, a1])  # the within-radius pairs of this query chunk
            cnt = np.zeros(a1 - a0, dtype=np.int64)
            cnt_le = np.zeros(a1 - a0, dtype=np.int64)
            for c0 in rstarts:
                c1 = min(c0 + chunk, nr)
                s = ops.scores(a0, a1, c0, c1)
                # Strictly closer references everywhere, plus references at exactly j*'s distance *before*
                # j* (stable sort by (distance, index)). References within the radius never count: by
                # definition none precedes j*, and removing them also makes the count immune to the GEMM
                # rounding j* (or a duplicate of it) differently from the pair score that chose j*.
                less = ops.count_greater(s, a)
                cnt += less
                sel = pq0 + np.nonzero((pr[pq0:pq1] >= c0) & (pr[pq0:pq1] < c1))[0]
                rows_p, cols_p = pq[sel] - a0, pr[sel]
                sv = ops.gather(s, rows_p, cols_p - c0) if sel.size else np.zeros(0, dtype)
                over = sv > a[rows_p]
                tie_p = (sv > b[rows_p]) & ~over
                np.subtract.at(cnt, rows_p[over], 1)
                # equal-distance references outside the radius are rare: find the rows that have any
                n_tie_in = np.bincount(rows_p[tie_p], minlength=a1 - a0)
                le = ops.count_greater(s, b)
                cnt_le += le
                np.subtract.at(cnt_le, rows_p[sv > b[rows_p]], 1)
                rows = np.nonzero((le - less > n_tie_in) & (jb > c0))[0]
                if rows.size:
                    split = np.minimum(jb[rows] - c0, c1 - c0)
                    cnt[rows] += ops.count_ties_before(s, rows, a[rows], b[rows], split)
                    undo = tie_p & (cols_p < jb[rows_p]) & np.isin(rows_p, rows)
                    np.subtract.at(cnt, rows_p[undo], 1)
                if bar is not None:
                    bar.update(1)
            ranks[a0:a1] = cnt
            pess[a0:a1] = cnt_le
    if bar is not None:
        bar.close()
    ranks[~has] = nr
    if return_ties:
        ties = np.where(has, np.maximum(pess - ranks, 0), 0)
        return ranks, best, ties
    return (ranks, best) if return_info else ranks


# ------------------------------------------------------------------------------------------------------
# top-k neighbours (localisation, indexes) and the optional FAISS path
# ------------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------------
# the metric
# ------------------------------------------------------------------------------------------------------
def recall_at_k(query, reference, ks: Sequence[int] = (1, 5, 10), query_pos=None, reference_pos=None,
                radius_m: Optional[float] = None, chunk_size: int = DEFAULT_CHUNK, backend: str = "auto",
                dtype: str = "float32", progress: bool = False, return_ranks: bool = False) -> dict:
    """Recall at K of ground queries against the aerial references, in percent.

    ``radius_m=None`` selects the index protocol (query k's true match is reference k, positions unused);
    a radius selects the radius protocol (CVACT_test: 5 m) and needs both position arrays.

    Returns ``{"R@1", "R@5", "R@10", ..., "R@1%", "curve", "curve_k_max", "K_1pct", "N", "N_reference",
    "protocol", "dtype", "backend", "ties", "tied_queries", "pessimistic", "descriptors", "collapsed",
    "collapse_reasons"}``: ``R@K`` for every K in ``ks`` (float, percent), ``R@1%`` at
    K = floor(0.01 N) (None when N < 100), ``curve[K-1] = R@K`` for K = 1..``curve_k_max`` with
    ``curve_k_max = max(K_1pct, max(ks))``; the collapse guard (:mod:`common.evaluation.collapse`): ``ties`` (references
    exactly as close as the true match, summed over queries), ``tied_queries``, ``pessimistic`` (the R@K
    dict with every tie counted against the query; None with the faiss backend), ``descriptors`` (spread,
    mean cosine, effective rank, all-zero rows of each view), ``collapsed`` and ``collapse_reasons``; radius
    protocol adds ``"radius_m"`` and ``"no_positive"`` (queries
    with no reference within the radius). ``return_ranks`` adds the rank array under ``"ranks"``.
    """
    try:
        ks = [int(k) for k in ks]
    except (TypeError, ValueError):
        raise CVGLError(f"ks must be positive integers, got {ks!r}") from None
    if not ks or min(ks) < 1:
        raise CVGLError(f"ks must be positive integers, got {ks!r}")
    resolved = _resolve_backend(backend)
    if radius_m is None:
        ranks, ties = true_match_ranks(query, reference, chunk_size, resolved, dtype, progress, return_ties=True)
        n_ref = ranks.shape[0]
        protocol = "index"
        extra = {}
    else:
        ranks, best, ties = radius_ranks(query, reference, query_pos, reference_pos, radius_m, chunk_size,
                                         resolved, dtype, progress, return_ties=True)
        n_ref = int(np.asarray(reference).shape[0])
        protocol = f"radius_{float(radius_m):g}m"
        extra = {"radius_m": float(radius_m), "no_positive": int(np.count_nonzero(best < 0))}
    n = int(ranks.shape[0])
    k1 = one_percent_k(n)
    kmax = max(k1, max(ks))

    def recalls(r):
        curve = [100.0 * int(h) / n for h in recall_from_ranks(r, kmax)]
        out = {f"R@{k}": curve[k - 1] for k in ks}
        out["R@1%"] = curve[k1 - 1] if k1 >= 1 else None
        return out, curve

    out, curve = recalls(ranks)
    out.update({"curve": curve, "curve_k_max": kmax, "K_1pct": k1, "N": n, "N_reference": n_ref,
                "protocol": protocol, "dtype": _check_dtype(dtype), "backend": resolved})
    out.update(extra)
    out.update(_collapse_guard(out, ranks, ties, query, reference, recalls))
    if return_ranks:
        out["ranks"] = ranks
    return out


def _collapse_guard(out, ranks, ties, query, reference, recalls) -> dict:
    """The tie count, the pessimistic R@K and the descriptor health of a result (:mod:`common.evaluation.collapse`)."""
    from common.evaluation.collapse import collapse_verdict, descriptor_stats

    guard = {"ties": None, "tied_queries": None, "pessimistic": None}
    if ties is not None:
        guard.update(ties=int(ties.sum()), tied_queries=int(np.count_nonzero(ties)),
                     pessimistic=recalls(ranks + ties)[0])
    stats = {"query": descriptor_stats(query), "reference": descriptor_stats(reference)}
    pess_r1 = guard["pessimistic"]["R@1"] if guard["pessimistic"] else None
    reasons = collapse_verdict(out["R@1"], pess_r1, stats["query"], stats["reference"])
    guard.update(descriptors=stats, collapsed=bool(reasons), collapse_reasons=reasons)
    return guard
