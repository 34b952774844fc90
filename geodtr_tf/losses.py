"""GeoDTR's counterfactual loss (paper Sec. 3.4, geodtr.md §6): the factual descriptor f should be far from
its counterfactual f̂ (computed from randomly perturbed layout descriptors):

    L_cf = mean_i softplus(β (2⟨f_i, f̂_i⟩ − 2))   on unit vectors, β = 5.

The soft-margin triplet loss it is added to is shared with SAFA (:mod:`common.training.losses`).
"""

from __future__ import annotations

from keras import ops

from common.training.losses import _f32


def counterfactual_loss(f, f_hat, beta=5.0):
    """GeoDTR counterfactual loss: mean_i softplus(β(2⟨f_i, f̂_i⟩ − 2)) on unit vectors."""
    f = _f32(f)
    f_hat = _f32(f_hat)
    return ops.mean(ops.softplus(beta * (2.0 * ops.sum(f * f_hat, axis=-1) - 2.0)))
