"""The machinery under the retrieval protocols: input checks, the score-matrix block backends (NumPy /
OpenBLAS, TensorFlow on a GPU when one is visible) and the optional FAISS paths.

A backend yields square blocks of the query x reference similarity matrix (``chunk_size`` on both sides, so
memory is O(chunk_size^2 + N d), never N x N); :mod:`common.evaluation.retrieval` turns them into ranks and
:mod:`common.evaluation.search` into top-K lists. ``"auto"`` is TF when a GPU is visible, else NumPy.
"""

from __future__ import annotations

import numpy as np

from common.errors import CVGLError


DEFAULT_CHUNK = 4096


_BACKENDS = ("auto", "tf", "numpy", "faiss")


_DTYPES = ("float32", "float64")


def _check_finite(x: np.ndarray, name: str, step: int = 8192) -> None:
    for a in range(0, x.shape[0], step):
        block = x[a : a + step]
        if not np.isfinite(block).all():
            bad = a + int(np.nonzero(~np.isfinite(block).all(axis=1))[0][0])
            raise CVGLError(
                f"{name} embeddings contain NaN or inf (first at row {bad}); the model diverged or an input "
                "image is broken -- re-run the embedding and check the checkpoint"
            )


def _as_matrix(x, name: str, dtype: str) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise CVGLError(f"{name} embeddings are not an array: {exc}") from None
    if arr.ndim != 2:
        raise CVGLError(f"{name} embeddings must be a 2-D (N, d) array, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise CVGLError(f"{name} embeddings are empty (0 rows): the split has no images -- check --root/--split")
    if arr.shape[1] == 0:
        raise CVGLError(f"{name} embeddings have dimension 0")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise CVGLError(f"{name} embeddings must be numeric, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    _check_finite(arr, name)
    return arr


def _check_dtype(dtype) -> str:
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in _DTYPES:
        raise CVGLError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    return name


def _check_pair(query, reference, dtype: str, same_count: bool):
    q = _as_matrix(query, "query (ground)", dtype)
    r = _as_matrix(reference, "reference (aerial)", dtype)
    if q.shape[1] != r.shape[1]:
        raise CVGLError(
            f"query and reference embeddings have different dimensions ({q.shape[1]} vs {r.shape[1]}); "
            "they must come from the same model"
        )
    if same_count and q.shape[0] != r.shape[0]:
        raise CVGLError(
            f"index protocol needs one reference per query, got {q.shape[0]} queries and {r.shape[0]} "
            "references; embed both views of the same split (or use the radius protocol with positions)"
        )
    return q, r


def _check_chunk(chunk_size) -> int:
    try:
        c = int(chunk_size)
    except (TypeError, ValueError):
        raise CVGLError(f"chunk_size must be a positive integer, got {chunk_size!r}") from None
    if c < 1:
        raise CVGLError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return c


def _check_positions(pos, n: int, name: str) -> np.ndarray:
    if pos is None:
        raise CVGLError(
            f"the radius protocol needs {name} positions (N x 2 metres, e.g. CVACT utm); none were given -- "
            "use the index protocol or a dataset with positions"
        )
    p = np.asarray(pos, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise CVGLError(f"{name} positions must have shape (N, 2), got {p.shape}")
    if p.shape[0] != n:
        raise CVGLError(f"{name} positions have {p.shape[0]} rows but there are {n} {name} embeddings")
    if not np.isfinite(p).all():
        raise CVGLError(f"{name} positions contain NaN or inf (row {int(np.nonzero(~np.isfinite(p).all(1))[0][0])})")
    return p


def _tf_visible_gpu() -> bool:
    try:
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    except Exception:  # pragma: no cover - TF missing or broken
        return False


def _resolve_backend(backend: str) -> str:
    if backend not in _BACKENDS:
        raise CVGLError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "tf" if _tf_visible_gpu() else "numpy"
    if backend == "faiss":
        _import_faiss()
    return backend


def _import_faiss():
    try:
        import faiss  # noqa: F401
    except ImportError:
        raise CVGLError(
            "the faiss backend needs the optional package faiss-cpu (or faiss-gpu): pip install faiss-cpu; "
            "or use --backend numpy / tf, which are exact and need nothing extra"
        ) from None
    return faiss


class _NumpyBlocks:
    """Blocks are written into one reused buffer (no page faults of a fresh 64 MB array per block); a block
    is valid until the next call of :meth:`scores`."""

    def __init__(self, q: np.ndarray, r: np.ndarray):
        self.q, self.r = q, r
        self.buf = np.empty(0, dtype=q.dtype)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.buf = np.empty(0, dtype=self.q.dtype)
        return False

    def scores(self, a0, a1, c0, c1):
        m, n = a1 - a0, c1 - c0
        if self.buf.size < m * n:
            self.buf = np.empty(m * n, dtype=self.q.dtype)
        out = self.buf[: m * n].reshape(m, n)
        return np.matmul(self.q[a0:a1], self.r[c0:c1].T, out=out)

    @staticmethod
    def diag(s):
        return np.diagonal(s).copy()

    @staticmethod
    def count_greater(s, a):
        return np.count_nonzero(s > a[:, None], axis=1).astype(np.int64)

    @staticmethod
    def count_ties_before(s, rows, a, b, split):
        """For the given rows: #{cols < split : b < s <= a} (references at exactly the threshold distance)."""
        sr = s[rows]
        cols = np.arange(s.shape[1])[None, :]
        sel = (sr > b[:, None]) & ~(sr > a[:, None]) & (cols < split[:, None])
        return np.count_nonzero(sel, axis=1).astype(np.int64)

    @staticmethod
    def to_numpy(s):
        return s

    @staticmethod
    def gather(s, rows, cols):
        return s[rows, cols]


class _TFBlocks:
    """TensorFlow blocks. TensorFloat-32 (on by default for float32 matmuls on recent GPUs, ~10 mantissa bits)
    would make ranks wrong, so it is switched off while a ranking runs and restored afterwards."""

    def __init__(self, q: np.ndarray, r: np.ndarray):
        import tensorflow as tf

        self.tf = tf
        self.q = q
        self.r = tf.convert_to_tensor(r)  # resident once (on the GPU when there is one)

    def __enter__(self):
        exp = self.tf.config.experimental
        self._tf32 = exp.tensor_float_32_execution_enabled()
        exp.enable_tensor_float_32_execution(False)
        return self

    def __exit__(self, *exc):
        self.tf.config.experimental.enable_tensor_float_32_execution(self._tf32)
        return False

    def scores(self, a0, a1, c0, c1):
        tf = self.tf
        return tf.linalg.matmul(tf.convert_to_tensor(self.q[a0:a1]), self.r[c0:c1], transpose_b=True)

    def diag(self, s):
        return self.tf.linalg.diag_part(s).numpy()

    def count_greater(self, s, a):
        tf = self.tf
        a = tf.convert_to_tensor(a)[:, None]
        return tf.math.count_nonzero(s > a, axis=1, dtype=tf.int64).numpy()

    def count_ties_before(self, s, rows, a, b, split):
        tf = self.tf
        sr = tf.gather(s, rows)
        cols = tf.range(tf.shape(s)[1], dtype=tf.int64)[None, :]
        sel = (sr > tf.convert_to_tensor(b)[:, None]) & ~(sr > tf.convert_to_tensor(a)[:, None]) & (
            cols < tf.convert_to_tensor(split)[:, None])
        return tf.math.count_nonzero(sel, axis=1, dtype=tf.int64).numpy()

    @staticmethod
    def to_numpy(s):
        return s.numpy()

    def gather(self, s, rows, cols):
        return self.tf.gather_nd(s, np.stack([rows, cols], 1)).numpy()


def _blocks(backend: str, q, r):
    return _TFBlocks(q, r) if backend == "tf" else _NumpyBlocks(q, r)


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="block", leave=False)


def _faiss_search(q, r, kmax, chunk):
    faiss = _import_faiss()
    index = faiss.IndexFlatIP(q.shape[1])
    index.add(np.ascontiguousarray(r, dtype=np.float32))
    kk = min(kmax, r.shape[0])
    sims = np.empty((q.shape[0], kk), np.float32)
    idx = np.empty((q.shape[0], kk), np.int64)
    for a in range(0, q.shape[0], chunk):
        sims[a : a + chunk], idx[a : a + chunk] = index.search(np.ascontiguousarray(q[a : a + chunk], np.float32), kk)
    return _stable_order(sims, idx)


def _stable_order(sims, idx):
    """Re-order each FAISS result row by (distance, reference index), our tie rule."""
    order = np.lexsort((idx, distance_from_similarity(sims)), axis=-1)
    return np.take_along_axis(sims, order, 1), np.take_along_axis(idx, order, 1)


def _faiss_ranks(q, r, kmax, targets, chunk):
    """Index-protocol ranks from FAISS top-kmax lists; exact below kmax, censored at kmax."""
    sims, idx = _faiss_search(q, r, kmax, chunk)
    d = distance_from_similarity(sims)
    t = distance_from_similarity(_pair_similarities(q.astype(np.float32), r.astype(np.float32),
                                                    np.arange(q.shape[0]), targets))
    in_list = idx == targets[:, None]
    t = np.where(in_list.any(1), np.where(in_list, d, np.inf).min(1), t).astype(d.dtype)
    closer = (d < t[:, None]) & ~in_list
    ranks = np.count_nonzero(closer, axis=1).astype(np.int64)
    return np.minimum(ranks, idx.shape[1]), idx


def _faiss_radius_ranks(q, r, near, kmax, chunk):
    sims, idx = _faiss_search(q, r, kmax, chunk)
    ranks = np.full(q.shape[0], r.shape[0], dtype=np.int64)
    for row, cand in enumerate(near):
        if cand.size:
            hit = np.nonzero(np.isin(idx[row], cand))[0]
            if hit.size:
                ranks[row] = hit[0]
    return ranks


def distance_from_similarity(s, dtype=None):
    """``2 - 2 s`` in the working dtype (the squared Euclidean distance of unit vectors)."""
    s = np.asarray(s, dtype=dtype or np.asarray(s).dtype)
    two = s.dtype.type(2)
    return two - two * s


def _pair_similarities(q: np.ndarray, r: np.ndarray, qi: np.ndarray, ri: np.ndarray, step: int = 512):
    """<q[qi], r[ri]> for a list of pairs, gathered in small reused buffers (cache-sized, no page faults)."""
    out = np.empty(qi.shape[0], dtype=q.dtype)
    bq = np.empty((min(step, qi.shape[0]), q.shape[1]), dtype=q.dtype)
    br = np.empty_like(bq)
    for a in range(0, qi.shape[0], step):
        m = min(step, qi.shape[0] - a)
        np.take(q, qi[a : a + m], axis=0, out=bq[:m], mode="clip")  # clip: unbuffered
        np.take(r, ri[a : a + m], axis=0, out=br[:m], mode="clip")
        out[a : a + m] = np.einsum("ij,ij->i", bq[:m], br[:m])
    return out
