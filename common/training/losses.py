"""Metric-learning losses shared by the model families (a family's own losses live with it), in keras.ops, computed in float32.

* :func:`soft_margin_triplet` -- the SAFA / GeoDTR weighted soft-margin triplet loss (protocol.md §5,
  geodtr.md §6): D = 2 - 2·A·Gᵀ on unit vectors, both directions, every in-batch negative,
  L = ½ [Σ_{i≠j} softplus(α(D_jj − D_ij)) + Σ_{i≠j} softplus(α(D_ii − D_ij))] / (B(B−1)).
  With ``mask`` (SAFA's CVACT 25 m rule) masked pairs are left out and the normaliser is Σ mask.
  The official code writes log(1 + exp(x)); softplus is the same function computed without the float32
  cancellation, so it lands on the float64 value.
* :func:`utm_far_mask` -- the 25 m mask from positions.
"""

from __future__ import annotations

from keras import ops


def _f32(x):
    return ops.cast(x, "float32")


def soft_margin_triplet(aerial, ground, alpha=10.0, mask=None):
    """Soft-margin triplet loss on unit-norm (B, d) descriptors; aerial row i pairs with ground row i.

    ``mask`` (B, B), optional: 1 where the pair (i, j) may serve as a negative (e.g. more than 25 m apart),
    0 where not. The diagonal is always excluded. Raises nothing for B == 1 itself: the pipeline never lets
    B == 1 reach it (drop-remainder), and the result would be 0/0.
    """
    a = _f32(aerial)
    g = _f32(ground)
    b = ops.shape(a)[0]
    dist = 2.0 - 2.0 * ops.matmul(a, ops.transpose(g))  # rows aerial, columns ground
    diag = ops.diagonal(dist)
    off = 1.0 - ops.eye(b, dtype="float32")
    if mask is not None:
        off = off * _f32(mask)
    # ground query j against aerial i: D_jj - D_ij (column-wise positive); aerial i against ground j: D_ii - D_ij
    g2s = ops.softplus(alpha * (diag[None, :] - dist)) * off
    s2g = ops.softplus(alpha * (diag[:, None] - dist)) * off
    denom = ops.sum(off)
    return 0.5 * (ops.sum(g2s) + ops.sum(s2g)) / denom




def utm_far_mask(positions, radius_m=25.0):
    """(B, B) float mask: 1 where ‖p_i − p_j‖² ≥ radius², SAFA's CVACT rule (positions in metres)."""
    p = _f32(positions)
    d2 = ops.sum(ops.square(p[:, None, :] - p[None, :, :]), axis=-1)
    return ops.cast(d2 >= radius_m * radius_m, "float32")
