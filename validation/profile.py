"""The candidate's profile in one pass over the scores: everything the rules and drift checks need.

Per output column: nulls, NaNs, +inf and -inf counts (``posinf``, ``neginf``), then over the
finite values only: min, max, mean, std, approximate quantiles, counts of configured class values,
and a histogram over the reference's frozen bins (plus, for the KL check, over the reference's
range). So a ±inf score is counted (and blocked by the ``finite`` rule) without making a statistic
inf or NaN. Nothing exact-distinct, nothing collected but a few KB.

One Spark job reads only the output columns: ``mapInArrow`` computes a partial per partition with
numpy in the (already warm) Python workers (:mod:`batchscore.validation.partials`) and the driver merges
them: counts and moments exactly, quantiles from mergeable rank sketches (rank error <= 0.05%).
Without a reference for a column its bins are frozen from this run's quantiles and counted from
the same pass's sketches (each count within 0.1 % of the rows), not from a second pass (why this
shape and not ``percentile_approx``: ``benchmarks/README.md``, "Validation").

Bins are given by their inner cut points ``c0 < c1 < ... < ck-1`` and are ``(-inf, c0)``,
``[c0, c1)``, ..., ``[ck-1, +inf)``; they are stored with the profile so that the next run, which
uses this profile as its reference, counts over exactly the same bins.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame

from batchscore.validation.partials import Interval, finish, merge, partial, sketch_bin_counts
from batchscore.validation.partials import quantiles as sketch_quantiles

STANDARD_QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class ColumnPlan:
    """What to count for one column: the reference's frozen cuts (None: freeze from this run),
    the KL partition edges ``[lo, *cuts, hi]`` when there is a reference, and class values."""

    cuts: tuple[float, ...] | None = None
    kl_edges: tuple[float, ...] | None = None
    classes: tuple[float, ...] = ()


def qkey(q: float) -> str:
    return f"{q:g}"


def cut_intervals(cuts: Sequence[float]) -> list[Interval]:
    if not cuts:
        return [(None, False, None, False)]
    out: list[Interval] = [(None, False, cuts[0], False)]
    out += [(a, True, b, False) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    return out + [(cuts[-1], True, None, False)]


def kl_intervals(edges: Sequence[float]) -> list[Interval]:
    """below ``edges[0]``, the bins between edges (the last one closed), above ``edges[-1]``."""
    inner: list[Interval] = [(a, True, b, False) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    inner[-1] = (edges[-2], True, edges[-1], True)
    return [(None, False, edges[0], False), *inner, (edges[-1], False, None, False)]


def bin_quantiles(bins: int) -> tuple[float, ...]:
    return tuple(round(i / bins, 6) for i in range(1, bins))


def _intervals(plan: ColumnPlan) -> list[Interval]:
    if plan.cuts is None:
        return []
    return kl_intervals(plan.kl_edges) if plan.kl_edges else cut_intervals(plan.cuts)


def _partition_partials(batches: Iterator[Any], *, columns: list[str], intervals: dict[str, list[Interval]],
                        classes: dict[str, tuple[float, ...]]) -> Iterator[Any]:
    """Executor side: one JSON partial (every column) per partition."""
    import numpy as np
    import pyarrow as pa

    chunks: dict[str, list[Any]] = {c: [] for c in columns}
    nulls = dict.fromkeys(columns, 0)
    seen = False
    for batch in batches:
        seen = True
        for i, c in enumerate(columns):
            arr = batch.column(i)
            if arr.null_count:
                nulls[c] += arr.null_count
                arr = arr.drop_null()
            chunks[c].append(arr.cast(pa.float64()).to_numpy(zero_copy_only=False))
    if not seen:
        return
    out = {c: partial(np.concatenate(chunks[c]) if chunks[c] else np.zeros(0), nulls[c], intervals[c], classes[c])
           for c in columns}
    yield pa.RecordBatch.from_pydict({"partial": [json.dumps(out)]})


def _partials(
    df: DataFrame, intervals: dict[str, list[Interval]], classes: dict[str, tuple[float, ...]]
) -> list[dict[str, Any]]:
    columns = list(intervals)
    fn = functools.partial(_partition_partials, columns=columns, intervals=intervals, classes=classes)
    rows = df.select(*columns).mapInArrow(fn, "partial string").collect()
    return [json.loads(r["partial"]) for r in rows]


def compute_profile(
    df: DataFrame, plans: dict[str, ColumnPlan], *, quantiles: Sequence[float] = (), bins: int = 20
) -> dict[str, Any]:
    """``{"rows": n, "columns": {col: {...}}, "passes": 1}``; see the module docstring."""
    ivs = {c: _intervals(p) for c, p in plans.items()}
    parts = _partials(df, ivs, {c: p.classes for c, p in plans.items()})
    return profile_from_partials(parts, plans, quantiles=quantiles, bins=bins)


def intervals_for(plans: dict[str, ColumnPlan]) -> dict[str, list[Interval]]:
    """What each column's partial counts over (the scoring tasks compute partials with these)."""
    return {c: _intervals(p) for c, p in plans.items()}


def plan_key(plans: dict[str, ColumnPlan]) -> str:
    """A stable text of ``plans``: partials computed for other plans cannot be merged into this profile."""
    return json.dumps({c: [p.cuts, p.kl_edges, p.classes] for c, p in sorted(plans.items())})


def profile_from_partials(
    parts: list[dict[str, Any]], plans: dict[str, ColumnPlan], *, quantiles: Sequence[float] = (), bins: int = 20
) -> dict[str, Any]:
    """The profile from per-partition (or per-task) partials of every column (see the module docstring)."""
    freeze = [c for c, p in plans.items() if p.cuts is None]
    qs = sorted(set(STANDARD_QUANTILES) | set(quantiles) | (set(bin_quantiles(bins)) if freeze else set()))
    ivs = intervals_for(plans)
    out: dict[str, Any] = {"rows": 0, "columns": {}, "passes": 1}
    for c, plan in plans.items():
        col_parts = [p[c] for p in parts]
        merged = merge(col_parts, len(ivs[c]), len(plan.classes))
        out["rows"] = merged["rows"]
        s = finish(merged)
        s["quantiles"] = {qkey(q): v for q, v in zip(qs, sketch_quantiles(col_parts, qs), strict=True)}
        if plan.classes:
            s["classes"] = {qkey(v): n for v, n in zip(plan.classes, merged["classes"], strict=True)}
        if plan.cuts is not None:
            counts = merged["bins"]
            if plan.kl_edges:
                s["kl"] = {"edges": list(plan.kl_edges), "counts": counts}
                counts = [counts[0] + counts[1], *counts[2:-2], counts[-2] + counts[-1]]
            s["hist"] = {"cuts": list(plan.cuts), "counts": counts}
        out["columns"][c] = s
    if freeze:
        _freeze_bins(parts, out, freeze, bins)
    return out


def _freeze_bins(parts: list[dict[str, Any]], profile: dict[str, Any], columns: list[str], bins: int) -> None:
    """First run for these columns: cut points = this run's quantiles, and the counts over them
    from the same pass's sketches (each within 0.1 % of the rows: a reference histogram needs no
    more; no second pass over the scores)."""
    for c in columns:
        q = profile["columns"][c]["quantiles"]
        cuts = sorted({q[qkey(b)] for b in bin_quantiles(bins) if q[qkey(b)] is not None})
        profile["columns"][c]["hist"] = {"cuts": cuts, "counts": sketch_bin_counts([p[c] for p in parts], cuts)}
