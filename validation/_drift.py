"""Drift against the reference profile: PSI over the frozen bins and the inputs of GX's KL check.

Everything here works on two column profiles (:class:`~batchscore.validation.profile.ColumnProfile`),
never on the data: the candidate's histogram was counted over the reference's bins in the profile
pass (:mod:`batchscore.validation.profile`).

KL uses Great Expectations' ``ExpectColumnKLDivergenceToBeLessThan`` with a continuous partition
built from the reference: the frozen bins bounded by the reference's own min and max (so the outer
bins hold exactly the reference's tail mass), a tail holdout for candidate values outside that
range and an internal holdout for empty reference bins, so neither makes the divergence infinite.
GX needs a column to histogram: :func:`kl_sample` is the candidate's binned counts as points (one
per row, at a point inside its bin), which gives GX exactly the candidate's binned distribution
without collecting the data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from batchscore.validation.profile import ColumnProfile

PSI_EPSILON = 1e-4  # floor for empty-bin proportions (as Evidently does)
SAMPLE_CAP = 200_000  # largest KL sample; larger candidates are scaled down (error < 1/SAMPLE_CAP per bin)


def kl_edges(ref_col: ColumnProfile) -> tuple[float, ...] | None:
    """``[lo, *cuts, hi]`` for the KL partition: the frozen bins closed at the reference's range."""
    cuts = ref_col.hist.cuts if ref_col.hist is not None else ()
    lo_v, hi_v = ref_col.min, ref_col.max
    if not cuts or lo_v is None or hi_v is None:
        return None
    delta = max(abs(cuts[-1] - cuts[0]), abs(cuts[0]), abs(cuts[-1]), 1.0) * 1e-6
    lo = lo_v if lo_v < cuts[0] else cuts[0] - delta
    hi = hi_v if hi_v > cuts[-1] else cuts[-1] + delta
    return (float(lo), *map(float, cuts), float(hi))


def psi(ref_counts: Sequence[int], cand_counts: Sequence[int]) -> float | None:
    """Population stability index over the same bins; None when either side has no data."""
    if len(ref_counts) != len(cand_counts):
        raise ValueError(f"PSI bins differ: {len(ref_counts)} reference vs {len(cand_counts)} candidate")
    e_tot, a_tot = sum(ref_counts), sum(cand_counts)
    if not e_tot or not a_tot:
        return None
    e = np.maximum(np.asarray(ref_counts, float) / e_tot, PSI_EPSILON)
    a = np.maximum(np.asarray(cand_counts, float) / a_tot, PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def kl_partition(ref_col: ColumnProfile, edges: tuple[float, ...]) -> dict[str, list[float]]:
    """GX continuous partition object: ``bins`` (the edges) and the reference's bin weights."""
    if ref_col.hist is None:
        raise ValueError("the reference column has no histogram")
    counts = np.asarray(ref_col.hist.counts, float)
    if len(counts) != len(edges) - 1:
        raise ValueError(f"reference has {len(counts)} bins but {len(edges) - 1} KL bins")
    weights = counts / counts.sum()
    return {"bins": list(edges), "weights": weights.tolist()}


def kl_sample(cand_col: ColumnProfile, cap: int = SAMPLE_CAP) -> np.ndarray:
    """The candidate's KL-binned counts as points: below -> its min, above -> its max, bins -> midpoints."""
    if cand_col.kl is None:
        raise ValueError("the candidate column was not counted over a KL partition")
    edges, counts = cand_col.kl.edges, np.asarray(cand_col.kl.counts, dtype=np.int64)
    mids = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
    lo = cand_col.min if cand_col.min is not None else edges[0] - 1.0
    hi = cand_col.max if cand_col.max is not None else edges[-1] + 1.0
    points = np.asarray([min(lo, edges[0] - 1e-9), *mids, max(hi, edges[-1] + 1e-9)], float)
    total = int(counts.sum())
    if total > cap:
        counts = _scale(counts, cap)
    return np.repeat(points, counts)


def _scale(counts: np.ndarray, cap: int) -> np.ndarray:
    """Largest-remainder rounding of ``counts`` to ``cap`` in total; non-empty bins stay non-empty."""
    exact = counts * (cap / counts.sum())
    out = np.floor(exact).astype(np.int64)
    out[(counts > 0) & (out == 0)] = 1
    short = cap - int(out.sum())
    if short > 0:
        order = np.argsort(-(exact - np.floor(exact)))
        out[order[:short]] += 1
    return out


def has_zero_bins(partition: dict[str, list[float]]) -> bool:
    return any(w == 0 for w in partition["weights"])


def mean_shift(cand: ColumnProfile, ref: ColumnProfile) -> float | None:
    """|candidate mean - reference mean| in reference standard deviations."""
    m, rm, rs = cand.mean, ref.mean, ref.std
    if m is None or rm is None:
        return None
    if not rs:
        return 0.0 if m == rm else math.inf
    return abs(m - rm) / rs


def std_change(cand: ColumnProfile, ref: ColumnProfile) -> float | None:
    """|candidate std / reference std - 1|."""
    s, rs = cand.std, ref.std
    if s is None or rs is None:
        return None
    if not rs:
        return 0.0 if not s else math.inf
    return abs(s / rs - 1.0)
