"""Oracle tests of the retrieval metrics (common.evaluation.retrieval).

Oracles: hand-computed small matrices with ties, the official GeoDTR evaluator's output on the golden
fixture (tests/fixtures/geodtr/recall.npz, README section 5), and a straightforward dense implementation
(full N x N distance matrix, strict count / stable argsort) on random quantised data full of ties.
"""

import sys

import numpy as np
import pytest

from common.evaluation import retrieval as R
from common.evaluation.search import topk_neighbours
from common.errors import CVGLError

FIX = "tests/fixtures/geodtr/recall.npz"


@pytest.fixture(scope="module")
def golden():
    return np.load(FIX)


# --- hand-computed ---------------------------------------------------------------------------------------
# M[k, i] = similarity of ground query k and aerial reference i (distances D = 2 - 2 M, exact on a 1/4 grid).
M = np.array(
    [
        [0.50, 0.50, 0.25, 0.75],  # true 0.5 ties with ref 1 (favours the query); ref 3 is closer -> rank 1
        [0.25, 1.00, 1.00, 0.00],  # tie with ref 2 only -> rank 0
        [0.75, 0.75, 0.50, 0.75],  # three strictly closer -> rank 3
        [0.00, 0.00, 0.00, 0.00],  # all tied -> rank 0 (index protocol)
    ]
)
QUERY = np.eye(4)  # S = QUERY @ REF.T = M
REF = M.T.copy()


def test_hand_matrix_index_protocol():
    ranks = R.true_match_ranks(QUERY, REF, chunk_size=3, backend="numpy")
    assert ranks.tolist() == [1, 0, 3, 0]
    out = R.recall_at_k(QUERY, REF, ks=(1, 2, 3, 4), backend="numpy", chunk_size=2)
    assert (out["R@1"], out["R@2"], out["R@3"], out["R@4"]) == (50.0, 75.0, 75.0, 100.0)
    assert out["R@1%"] is None and out["K_1pct"] == 0  # N < 100: R@1% does not exist
    assert out["protocol"] == "index" and out["N"] == 4
    assert out["curve"] == [50.0, 75.0, 75.0, 100.0] and out["curve_k_max"] == 4


def test_hand_matrix_radius_protocol_duplicate_positions_and_stable_ties():
    # refs 0 and 1 at the same place; each query stands at its own reference; query 4 is nowhere near.
    ref_pos = np.array([[0.0, 0.0], [0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    q = np.vstack([QUERY, [[0.0, 0.0, 0.0, 1.0]]])  # query 4 has similarities M.T[:, 3] = row 3 of M.T
    q_pos = np.vstack([ref_pos, [[500.0, 500.0]]])
    ranks, best = R.radius_ranks(q, REF, q_pos, ref_pos, 5.0, chunk_size=3, backend="numpy", return_info=True)
    # q0: refs 0,1 within 5 m, both at s=.5 -> j*=0; only ref 3 (s=.75) before it -> 1.
    # q1: refs 0 (s=.25), 1 (s=1.0) -> j*=1, nothing closer -> 0.
    # q2: ref 2 alone (s=.5); refs 0,1,3 at .75 -> 3.
    # q3: ref 3 alone, every s = 0: the stable sort puts refs 0,1,2 first -> 3 (index protocol said 0).
    # q4: nothing within 5 m -> never a hit (rank = number of references).
    assert ranks.tolist() == [1, 0, 3, 3, 4]
    assert best.tolist() == [0, 1, 2, 3, -1]
    out = R.recall_at_k(q, REF, ks=(1, 2, 4), query_pos=q_pos, reference_pos=ref_pos, radius_m=5,
                        backend="numpy")
    assert out["protocol"] == "radius_5m" and out["no_positive"] == 1
    assert (out["R@1"], out["R@2"], out["R@4"]) == (20.0, 40.0, 80.0)


def test_radius_boundary_is_inclusive():
    q = np.array([[1.0, 0.0]])
    ref = np.array([[0.0, 1.0], [1.0, 0.0]])
    ranks = R.radius_ranks(q, ref, [[0.0, 0.0]], [[3.0, 4.0], [5.0, 0.001]], 5.0, backend="numpy")
    assert ranks.tolist() == [1]  # ref 0 at exactly 5 m counts, ref 1 just beyond does not


def test_one_percent_rounding():
    assert [R.one_percent_k(n) for n in (8884, 92802, 1290, 99, 100, 199, 200)] == [88, 928, 12, 0, 1, 1, 2]
    rng = np.random.default_rng(1)
    ranks = rng.integers(0, 120, size=8884)
    out_curve = R.recall_from_ranks(ranks, 88)
    naive = [int(np.sum(ranks < k)) for k in range(1, 89)]
    assert out_curve.tolist() == naive


def test_r1pct_of_8884_is_recall_at_88():
    n = 8884
    query = np.ones((n, 1), np.float32)
    reference = ((n - np.arange(n)) / n).astype(np.float32)[:, None]  # query k has exactly k closer refs
    out = R.recall_at_k(query, reference, backend="numpy", chunk_size=4096)
    assert out["K_1pct"] == 88 and out["curve_k_max"] == 88 and len(out["curve"]) == 88
    assert out["R@1%"] == 100.0 * 88 / n and out["R@1"] == 100.0 / n and out["R@10"] == 100.0 * 10 / n


# --- golden fixture (official validatenp) --------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("chunk", [1290, 97])
def test_golden_n1290_exact(golden, dtype, chunk):
    ranks = R.true_match_ranks(golden["n1290/grd"], golden["n1290/sat"], chunk_size=chunk, backend="numpy",
                               dtype=dtype)
    assert np.array_equal(ranks, golden["n1290/helper_rank"])
    assert np.array_equal(R.official_recall_array(ranks), golden["n1290/val_accuracy"])
    out = R.recall_at_k(golden["n1290/grd"], golden["n1290/sat"], chunk_size=chunk, backend="numpy", dtype=dtype)
    assert out["K_1pct"] == 12
    for key, ref in (("R@1", "R1"), ("R@5", "R5"), ("R@10", "R10"), ("R@1%", "R1pct")):
        assert out[key] == pytest.approx(100 * float(golden[f"n1290/{ref}"]), abs=1e-12)


def test_golden_n50(golden):
    ranks = R.true_match_ranks(golden["n50/grd"], golden["n50/sat"], chunk_size=16, backend="numpy")
    assert np.array_equal(ranks, golden["n50/helper_rank"])
    assert np.array_equal(R.official_recall_array(ranks), golden["n50/val_accuracy"])


# --- the threshold trick is exact ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_similarity_threshold_matches_distance_comparison(dtype):
    rng = np.random.default_rng(2)
    s0 = rng.uniform(-1, 1, 200).astype(dtype)
    t = R.distance_from_similarity(s0)
    for strict in (True, False):
        a = R._threshold(t, strict=strict)
        s = s0.copy()
        for _ in range(40):  # walk 40 ulps each side of the boundary
            for direction in (-np.inf, np.inf):
                s = np.nextafter(s, dtype(direction))
                d = R.distance_from_similarity(s)
                expect = d < t if strict else d <= t
                assert np.array_equal(expect, s > a)
            s = s0.copy()


# --- dense oracle on random data with ties ---------------------------------------------------------------
def _tied_data(n, d=6, seed=3):
    rng = np.random.default_rng(seed)
    ref = rng.integers(-2, 3, size=(n, d)) / 8.0
    ref[rng.choice(n, n // 10, replace=False)] = ref[rng.choice(n, n // 10, replace=False)]  # duplicates
    query = ref + rng.integers(-1, 2, size=(n, d)) / 8.0
    pos = rng.integers(0, 12, size=(n, 2)).astype(np.float64) * 2.0  # many shared / 2 m-apart positions
    qpos = pos + rng.integers(-2, 3, size=(n, 2))
    return query, ref, qpos, pos


def _dense_index_ranks(q, r):
    d = 2 - 2 * (q @ r.T)
    return (d < np.diag(d)[:, None]).sum(1)


def _dense_radius_ranks(q, r, qpos, rpos, radius):
    d = 2 - 2 * (q @ r.T)
    order = np.argsort(d, axis=1, kind="stable")
    near = np.sqrt(((qpos[:, None, :] - rpos[None, :, :]) ** 2).sum(-1)) <= radius
    hit = np.take_along_axis(near, order, 1)
    return np.where(hit.any(1), hit.argmax(1), r.shape[0])


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_chunked_equals_dense(chunk):
    q, r, qpos, rpos = _tied_data(257)
    assert np.array_equal(R.true_match_ranks(q, r, chunk_size=chunk, backend="numpy"), _dense_index_ranks(q, r))
    assert np.array_equal(R.radius_ranks(q, r, qpos, rpos, 5.0, chunk_size=chunk, backend="numpy"),
                          _dense_radius_ranks(q, r, qpos, rpos, 5.0))
    idx, dist = topk_neighbours(q, r, 9, chunk_size=chunk, backend="numpy")
    dense = 2 - 2 * (q @ r.T)
    order = np.argsort(dense, axis=1, kind="stable")[:, :9]
    assert np.array_equal(idx, order)
    assert np.array_equal(dist, np.take_along_axis(dense, order, 1).astype(np.float32))


def test_radius_ranks_robust_to_pair_score_rounding(monkeypatch):
    """The score that picks j* comes from a separate dot product. If it rounds differently from the GEMM,
    neither j* nor a within-radius duplicate of it may count as closer than j* (they are in range)."""
    q = np.array([[1.0, 0.0, 0.0]])
    ref = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.75, 0.0, 0.5], [0.0, 1.0, 0.0], [0.25, 0.0, 1.0]])
    ref_pos = np.array([[0.0, 0.0], [1.0, 0.0], [50.0, 0.0], [60.0, 0.0], [70.0, 0.0]])
    args = (q, ref, [[0.0, 0.0]], ref_pos, 5.0)
    assert R.radius_ranks(*args, backend="numpy").tolist() == [1]  # only ref 2 (s=.75) precedes j*=0
    exact = R._pair_similarities
    monkeypatch.setattr(R, "_pair_similarities", lambda *a, **k: exact(*a, **k) - np.float32(1e-3))
    assert R.radius_ranks(*args, chunk_size=2, backend="numpy").tolist() == [1]
    assert R.radius_ranks(*args, chunk_size=2, backend="tf").tolist() == [1]


def test_radius_gallery_larger_than_queries():
    q, r, qpos, rpos = _tied_data(120, seed=4)
    assert np.array_equal(R.radius_ranks(q[:50], r, qpos[:50], rpos, 3.0, chunk_size=16, backend="numpy"),
                          _dense_radius_ranks(q[:50], r, qpos[:50], rpos, 3.0))


def test_tf_equals_numpy():
    import tensorflow as tf

    q, r, qpos, rpos = _tied_data(150, seed=5)
    tf32 = tf.config.experimental.tensor_float_32_execution_enabled()
    for dtype in ("float32", "float64"):
        assert np.array_equal(R.true_match_ranks(q, r, chunk_size=64, backend="tf", dtype=dtype),
                              R.true_match_ranks(q, r, chunk_size=64, backend="numpy", dtype=dtype))
    assert np.array_equal(R.radius_ranks(q, r, qpos, rpos, 5.0, chunk_size=64, backend="tf"),
                          R.radius_ranks(q, r, qpos, rpos, 5.0, chunk_size=64, backend="numpy"))
    ti, td = topk_neighbours(q, r, 5, chunk_size=64, backend="tf")
    ni, nd = topk_neighbours(q, r, 5, chunk_size=64, backend="numpy")
    assert np.array_equal(ti, ni) and np.array_equal(td, nd)
    # TensorFloat-32 is off only while ranking (a GPU would otherwise round float32 matmuls to ~10 bits)
    assert tf.config.experimental.tensor_float_32_execution_enabled() == tf32


def test_faiss_backend_when_installed():
    pytest.importorskip("faiss")
    q, r, qpos, rpos = _tied_data(300, seed=6)  # exact scores, so FAISS sees the same ties
    np.testing.assert_array_equal(np.minimum(R.true_match_ranks(q, r, backend="numpy"), 3),
                                  R.true_match_ranks(q, r, backend="faiss"))  # exact below K_1pct = 3
    # FAISS picks its own members among references tied at the end of its list: compare untied data here
    rng = np.random.default_rng(0)
    q, r = q + rng.normal(0, 1e-3, q.shape), r + rng.normal(0, 1e-3, r.shape)
    dense = np.minimum(_dense_radius_ranks(q, r, qpos, rpos, 5.0), 300)
    fr = R.radius_ranks(q, r, qpos, rpos, 5.0, backend="faiss")
    np.testing.assert_array_equal(np.where(dense < 3, dense, 300), fr)
    fi, fd = topk_neighbours(q, r, 5, backend="faiss")
    ni, nd = topk_neighbours(q, r, 5, backend="numpy")
    np.testing.assert_array_equal(fi, ni)


def test_faiss_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError, installed or not
    with pytest.raises(CVGLError, match="faiss-cpu"):
        R.recall_at_k(QUERY, REF, backend="faiss")


# --- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(query=np.ones((3, 4)), reference=np.ones((4, 4))), "one reference per query"),
        (dict(query=np.ones((3, 4)), reference=np.ones((3, 5))), "different dimensions"),
        (dict(query=np.ones(4), reference=np.ones((4, 4))), "2-D"),
        (dict(query=np.zeros((0, 4)), reference=np.zeros((0, 4))), "empty"),
        (dict(query=np.array([[1.0, np.nan]]), reference=np.ones((1, 2))), "NaN or inf"),
        (dict(query=np.ones((2, 2)), reference=np.array([[1.0, 0], [np.inf, 0]])), "NaN or inf.*row 1"),
        (dict(query=np.ones((2, 2)), reference=np.ones((2, 2)), radius_m=5.0), "needs query positions"),
        (dict(query=np.ones((2, 2)), reference=np.ones((2, 2)), radius_m=5.0, query_pos=np.zeros((2, 2))),
         "needs reference positions"),
        (dict(query=np.ones((2, 2)), reference=np.ones((2, 2)), radius_m=5.0, query_pos=np.zeros((3, 2)),
              reference_pos=np.zeros((2, 2))), "3 rows"),
        (dict(query=np.ones((2, 2)), reference=np.ones((2, 2)), radius_m=-1, query_pos=np.zeros((2, 2)),
              reference_pos=np.zeros((2, 2))), "positive"),
        (dict(query=np.ones((2, 2)), reference=np.ones((2, 2)), backend="cuda"), "backend"),
        (dict(query=np.ones((2, 2)), reference=np.ones((2, 2)), chunk_size=0), "chunk_size"),
        (dict(query=np.ones((2, 2)), reference=np.ones((2, 2)), ks=(0, 1)), "ks"),
        (dict(query=np.ones((2, 2)), reference=np.ones((2, 2)), dtype="float16"), "dtype"),
    ],
)
def test_bad_input_raises(kwargs, match):
    with pytest.raises(CVGLError, match=match):
        R.recall_at_k(**kwargs)


# --- collapse guard: ties, pessimistic ranks, descriptor health ------------------------------------------------
def test_ties_and_pessimistic_ranks_equal_a_dense_oracle():
    """Descriptors drawn from 4 directions only: many exact ties. Pessimistic index rank = #{i != k : D <= D_kk};
    radius: #{j outside the radius : D_j <= D_j*}; both against a dense float64 oracle."""
    rng = np.random.default_rng(7)
    dirs = np.eye(4, 6)
    q = dirs[rng.integers(0, 4, 60)]
    r = dirs[rng.integers(0, 4, 60)]
    d = 2 - 2 * q @ r.T
    ranks, ties = R.true_match_ranks(q, r, chunk_size=16, backend="numpy", return_ties=True)
    diag = np.diag(d)[:, None]
    assert np.array_equal(ranks, (d < diag).sum(1))
    assert np.array_equal(ranks + ties, (d <= diag).sum(1) - 1)  # pessimistic: every tie against
    pos = rng.uniform(0, 30, (60, 2))
    rranks, best, rties = R.radius_ranks(q, r, pos, pos, 5.0, chunk_size=16, backend="numpy", return_ties=True)
    near = np.sqrt(((pos[:, None] - pos[None]) ** 2).sum(-1)) <= 5.0
    for k in range(60):
        if best[k] < 0:
            continue
        t = d[k, best[k]]
        assert rranks[k] + rties[k] == np.count_nonzero((d[k] <= t) & ~near[k])
    out = R.recall_at_k(q, r, ks=(1,), chunk_size=16, backend="numpy")
    assert out["ties"] == int(ties.sum()) and out["tied_queries"] == int(np.count_nonzero(ties))
    assert out["pessimistic"]["R@1"] == pytest.approx(100 * np.mean(ranks + ties < 1))


def test_constant_and_zero_descriptors_are_collapsed():
    for x in (np.ones((50, 8)), np.zeros((50, 8))):
        out = R.recall_at_k(x, x, backend="numpy")
        assert out["R@1"] == 100.0 and out["pessimistic"]["R@1"] == 0.0  # official protocol fooled, guard not
        assert out["collapsed"] and len(out["collapse_reasons"]) == 3


def test_nearly_constant_descriptors_are_collapsed_and_healthy_ones_not():
    from common.evaluation.collapse import MIN_SPREAD, descriptor_stats

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 32))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    healthy = R.recall_at_k(x + 0.05 * rng.normal(size=x.shape), x, backend="numpy")
    assert not healthy["collapsed"] and healthy["ties"] == 0
    st = descriptor_stats(x)
    assert st["spread"] == pytest.approx(np.sqrt(1 - np.sum(x.mean(0) ** 2)), abs=1e-6)
    assert 25 < st["effective_rank"] <= 32 and abs(st["mean_cosine"]) < 0.02
    # all descriptors within a small cone around one direction: distinct (no ties), but collapsed
    c = np.zeros(32)
    c[0] = 1
    tight = c + 0.5 * MIN_SPREAD * x
    tight /= np.linalg.norm(tight, axis=1, keepdims=True)
    out = R.recall_at_k(tight, tight, backend="numpy")
    assert out["ties"] == 0 and out["R@1"] == 100.0
    assert out["collapsed"] and "all alike" in out["collapse_reasons"][0]
