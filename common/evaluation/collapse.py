"""Collapse guard: is a set of descriptors degenerate, and does the retrieval score rest on ties?

A model whose descriptors are all alike (the collapsed start of a triplet-trained network, a dead tower, all
zeros) can still score perfectly under the official index protocol, because ties favour the query
(``recall_at_k(np.ones((50, 8)), np.ones((50, 8)))`` is R@1 = 100). Evaluation and training therefore report,
beside the official R@K, the **pessimistic** R@K (every reference exactly as close as the true match counts
against the query) and the spread of the descriptors, and call the result **collapsed** when

* the optimistic and pessimistic R@1 differ by more than ``TIE_GAP_POINTS`` (0.5 points), or
* either view's descriptors have a relative spread below ``MIN_SPREAD`` (0.05), where
  ``spread = sqrt(mean_i |x_i - mean(x)|^2 / mean_i |x_i|^2)`` (0 when all descriptors are equal or all
  zero; for unit vectors ``sqrt(1 - |mean(x)|^2)``, so 0.05 is a mean pairwise cosine above 0.9975), or
* half or more of either view's descriptors are all-zero.

Also reported, not judged: the mean pairwise cosine and the effective rank (``exp`` of the entropy of the
normalised squared singular values of the centred descriptors, on at most ``RANK_ROWS`` evenly spaced rows).
"""

from __future__ import annotations

import math

import numpy as np

TIE_GAP_POINTS = 0.5
MIN_SPREAD = 0.05
MAX_ZERO_FRACTION = 0.5
RANK_ROWS = 1024

ADVICE = ("lower train.optimizer.learning_rate, add a warm-up (train.schedule: {name: warmup_cosine}), "
          "weaken the augmentation, or start from pretrained weights")


def descriptor_stats(x) -> dict:
    """Spread, mean pairwise cosine, effective rank and all-zero rows of (N, d) descriptors."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"descriptors must be a non-empty (N, d) matrix, got shape {x.shape}")
    n = x.shape[0]
    norms = np.linalg.norm(x, axis=1)
    zero = norms == 0
    mean = x.mean(axis=0)
    power = float(np.mean(norms ** 2))
    centred = float(np.mean(np.sum((x - mean) ** 2, axis=1)))
    spread = math.sqrt(centred / power) if power > 0 else 0.0
    unit = x[~zero] / norms[~zero, None]
    if unit.shape[0] > 1:
        s = unit.sum(axis=0)
        mean_cos = float((s @ s - unit.shape[0]) / (unit.shape[0] * (unit.shape[0] - 1)))
    else:
        mean_cos = 1.0
    rows = x[np.linspace(0, n - 1, min(n, RANK_ROWS)).astype(int)]
    sv = np.linalg.svd(rows - rows.mean(axis=0), compute_uv=False) ** 2
    total = sv.sum()
    if total > 0:
        p = sv[sv > 0] / total
        eff_rank = float(np.exp(-(p * np.log(p)).sum()))
    else:
        eff_rank = 0.0
    return {"spread": round(spread, 6), "mean_cosine": round(mean_cos, 6), "effective_rank": round(eff_rank, 3),
            "zero_rows": int(zero.sum()), "N": int(n), "dim": int(x.shape[1])}


def collapse_verdict(r1: float, r1_pessimistic, query_stats: dict, reference_stats: dict) -> list:
    """The reasons (one short phrase each) why a result counts as collapsed; an empty list when it does not."""
    reasons = []
    if r1_pessimistic is not None and r1 - r1_pessimistic > TIE_GAP_POINTS:
        reasons.append(f"R@1 {r1:.2f} rests on ties (pessimistic R@1 {r1_pessimistic:.2f})")
    for name, st in (("query", query_stats), ("reference", reference_stats)):
        if st["zero_rows"] >= MAX_ZERO_FRACTION * st["N"]:
            reasons.append(f"{st['zero_rows']} of {st['N']} {name} descriptors are all zero")
        elif st["spread"] < MIN_SPREAD:
            reasons.append(f"{name} descriptors are all alike (spread {st['spread']:.4f} < {MIN_SPREAD}, "
                           f"mean cosine {st['mean_cosine']:.4f})")
    return reasons


def collapse_line(reasons: list, where: str = "") -> str:
    """The one loud line printed for a collapsed result."""
    return (f"COLLAPSED{f' ({where})' if where else ''}: " + "; ".join(reasons)
            + f". The descriptors do not tell places apart; try: {ADVICE}")
