"""The candidate's profile in one pass over the scores: everything the rules and drift checks need.

Per output column: nulls, NaNs, +inf and -inf counts (``posinf``, ``neginf``), then over the
finite values only: min, max, mean, std, approximate quantiles, counts of configured class values,
and a histogram over the reference's frozen bins (plus, for the KL check, over the reference's
range). So a ±inf score is counted (and blocked by the ``finite`` rule) without making a statistic
inf or NaN. Nothing exact-distinct, nothing collected but a few KB.

One Spark job reads only the output columns: ``mapInArrow`` computes a partial per partition with
numpy in the (already warm) Python workers (:mod:`batchscore.validation._partials`) and the driver merges
them: counts and moments exactly, quantiles from mergeable rank sketches (rank error <= 0.05%).
Without a reference for a column its bins are frozen from this run's quantiles and counted from
the same pass's sketches (each count within 0.1 % of the rows), not from a second pass (why this
shape and not ``percentile_approx``: ``benchmarks/README.md``, "Validation").

Bins are given by their inner cut points ``c0 < c1 < ... < ck-1`` and are ``(-inf, c0)``,
``[c0, c1)``, ..., ``[ck-1, +inf)``; they are stored with the profile so that the next run, which
uses this profile as its reference, counts over exactly the same bins.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from batchscore.validation._partials import Interval, finish, merge, partial, sketch_bin_counts
from batchscore.validation._partials import quantiles as sketch_quantiles

__all__ = ["ColumnPlan", "ColumnProfile", "Histogram", "KLCounts", "Profile", "compute_profile", "plan_key",
           "profile_from_partials"]

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

STANDARD_QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class Histogram:
    """Counts over the frozen bins ``(-inf, c0), [c0, c1), ..., [ck-1, +inf)`` of the inner cuts:
    ``len(counts) == len(cuts) + 1`` (one bin, no cuts, when every finite value was equal)."""

    cuts: tuple[float, ...]
    counts: tuple[int, ...]


@dataclass(frozen=True)
class KLCounts:
    """Counts over the KL partition of the reference (:func:`kl_intervals`): below ``edges[0]``, the
    ``len(edges) - 1`` bins between the edges, above ``edges[-1]``."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class ColumnProfile:
    """One output column: null/NaN/±inf counts over all rows, statistics over the finite values only
    (None where undefined: no finite value, or a moment that overflowed)."""

    nulls: int = 0
    nans: int = 0
    posinf: int = 0
    neginf: int = 0
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    quantiles: dict[str, float | None] = field(default_factory=dict)  # qkey(q) -> value
    classes: dict[str, int] = field(default_factory=dict)  # qkey(class value) -> finite rows equal to it
    hist: Histogram | None = None
    kl: KLCounts | None = None  # only when judged against a reference (its KL partition)

    def finite_rows(self, rows: int) -> int:
        """Rows with a finite value: not null, NaN or ±inf."""
        return int(rows) - self.nulls - self.nans - self.posinf - self.neginf

    def quantile(self, q: float) -> float | None:
        return self.quantiles.get(qkey(q))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in _SCALARS}
        out["quantiles"] = dict(self.quantiles)
        if self.classes:
            out["classes"] = dict(self.classes)
        if self.hist is not None:
            out["hist"] = {"cuts": list(self.hist.cuts), "counts": list(self.hist.counts)}
        if self.kl is not None:
            out["kl"] = {"edges": list(self.kl.edges), "counts": list(self.kl.counts)}
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """Tolerant of older profiles (no ±inf counts: 0) and of keys a newer batchscore adds."""
        hist, kl = data.get("hist"), data.get("kl")
        return cls(
            **{k: data[k] for k in _SCALARS if data.get(k) is not None},
            quantiles=dict(data.get("quantiles") or {}),
            classes={k: int(v) for k, v in (data.get("classes") or {}).items()},
            hist=Histogram(tuple(hist["cuts"]), tuple(int(n) for n in hist["counts"])) if hist else None,
            kl=KLCounts(tuple(kl["edges"]), tuple(int(n) for n in kl["counts"])) if kl else None,
        )


_SCALARS = ("nulls", "nans", "posinf", "neginf", "min", "max", "mean", "std")


@dataclass(frozen=True)
class Profile:
    """The candidate's profile: ``rows`` judged, per output column its :class:`ColumnProfile`, and the
    passes over the scores it took (always 1: Spark's pass, or the scoring tasks' own). Its JSON
    (:meth:`to_json`) is stored in the Delta commit as the next run's drift reference and in
    ``validation.json``."""

    rows: int = 0
    columns: dict[str, ColumnProfile] = field(default_factory=dict)
    passes: int = 1

    def column(self, name: str) -> ColumnProfile | None:
        return self.columns.get(name)

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "columns": {c: p.to_json() for c, p in self.columns.items()},
                "passes": self.passes}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(rows=int(data.get("rows") or 0),
                   columns={c: ColumnProfile.from_json(p) for c, p in (data.get("columns") or {}).items()},
                   passes=int(data.get("passes", 1)))

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> Self:
        return cls.from_json(json.loads(text))


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
) -> Profile:
    """The profile of ``df``'s columns in one pass; see the module docstring."""
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
) -> Profile:
    """The profile from per-partition (or per-task) partials of every column (see the module docstring)."""
    freeze = {c for c, p in plans.items() if p.cuts is None}
    qs = sorted(set(STANDARD_QUANTILES) | set(quantiles) | (set(bin_quantiles(bins)) if freeze else set()))
    ivs = intervals_for(plans)
    rows, columns = 0, {}
    for c, plan in plans.items():
        col_parts = [p[c] for p in parts]
        merged = merge(col_parts, len(ivs[c]), len(plan.classes))
        rows = merged["rows"]
        col = ColumnProfile(
            **finish(merged),
            quantiles={qkey(q): v for q, v in zip(qs, sketch_quantiles(col_parts, qs), strict=True)},
            classes={qkey(v): n for v, n in zip(plan.classes, merged["classes"], strict=True)},
        )
        if plan.cuts is not None:
            counts = merged["bins"]
            if plan.kl_edges:
                col = dataclasses.replace(col, kl=KLCounts(tuple(plan.kl_edges), tuple(counts)))
                counts = [counts[0] + counts[1], *counts[2:-2], counts[-2] + counts[-1]]
            col = dataclasses.replace(col, hist=Histogram(tuple(plan.cuts), tuple(counts)))
        elif c in freeze:
            col = dataclasses.replace(col, hist=_frozen_bins(col_parts, col, bins))
        columns[c] = col
    return Profile(rows=rows, columns=columns, passes=1)


def _frozen_bins(parts: list[dict[str, Any]], col: ColumnProfile, bins: int) -> Histogram:
    """First run for this column: cut points = this run's quantiles, and the counts over them
    from the same pass's sketches (each within 0.1 % of the rows: a reference histogram needs no
    more; no second pass over the scores)."""
    q = col.quantiles
    cuts = sorted({v for b in bin_quantiles(bins) if (v := q[qkey(b)]) is not None})
    return Histogram(tuple(cuts), tuple(sketch_bin_counts(parts, cuts)))
