"""Per-partition profile partials (numpy, executor side) and their exact merge (driver side).

A partial of one column over one partition holds: rows, nulls, NaNs, +inf and -inf counts, then
over the *finite* values only (``n`` of them): min, max, count/mean/M2 (merged with Chan's
parallel formula, so the std is numerically stable), counts over the given intervals, counts of
class values, and a quantile sketch: the partition's sorted finite values taken at
``SKETCH_POINTS`` evenly spaced ranks, each standing for ``m / SKETCH_POINTS`` values. A ±inf
score is counted (the ``finite`` rule blocks on it) but never enters a statistic, so none becomes
inf or NaN and the profile stays plain JSON.
Merged, a quantile's rank is off by at most ``rows / SKETCH_POINTS`` (0.05%), the same
guarantee as ``percentile_approx(accuracy=2000)``; so are the bin counts of a first run, whose
bins are cut at its own quantiles (:func:`sketch_bin_counts`). Everything else is exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SKETCH_POINTS = 2000

# (lo, lo_closed, hi, hi_closed); None = unbounded
Interval = tuple[float | None, bool, float | None, bool]


def in_interval(x: np.ndarray, iv: Interval) -> np.ndarray:
    lo, lo_closed, hi, hi_closed = iv
    mask = np.ones(len(x), dtype=bool)
    if lo is not None:
        mask &= (x >= lo) if lo_closed else (x > lo)
    if hi is not None:
        mask &= (x <= hi) if hi_closed else (x < hi)
    return mask


def partial(values: np.ndarray, nulls: int, intervals: Sequence[Interval], classes: Sequence[float]) -> dict[str, Any]:
    """The partial of one column's values (float64, nulls already removed) over one partition."""
    nan, posinf, neginf = np.isnan(values), np.isposinf(values), np.isneginf(values)
    x = np.sort(values[~(nan | posinf | neginf)])
    m = len(x)
    if m > SKETCH_POINTS:
        idx = ((np.arange(SKETCH_POINTS) + 0.5) * (m / SKETCH_POINTS)).astype(np.int64)
        sketch, weight = x[idx], m / SKETCH_POINTS
    else:
        sketch, weight = x, 1.0
    with np.errstate(over="ignore", invalid="ignore"):  # finite scores near 1e308: finish() reports no moment
        mean = float(x.mean()) if m else 0.0
        m2 = float(((x - mean) ** 2).sum()) if m else 0.0
    return {
        "rows": int(len(values) + nulls), "nulls": int(nulls), "nans": int(nan.sum()),
        "posinf": int(posinf.sum()), "neginf": int(neginf.sum()), "n": m,
        "min": float(x[0]) if m else None, "max": float(x[-1]) if m else None,
        "mean": mean, "m2": m2,
        "bins": [int(in_interval(x, iv).sum()) for iv in intervals],
        "classes": [int((x == v).sum()) for v in classes],
        "sketch": sketch.tolist(), "weight": weight,
    }


def merge(parts: list[dict[str, Any]], n_bins: int, n_classes: int) -> dict[str, Any]:
    """Merge one column's partials: exact counts and moments, approximate quantile sketch."""
    out: dict[str, Any] = {"rows": 0, "nulls": 0, "nans": 0, "posinf": 0, "neginf": 0, "n": 0, "min": None, "max": None,
                           "mean": 0.0, "m2": 0.0, "bins": [0] * n_bins, "classes": [0] * n_classes}
    for p in parts:
        for k in ("rows", "nulls", "nans", "posinf", "neginf"):
            out[k] += p.get(k, 0)
        out["bins"] = [a + b for a, b in zip(out["bins"], p["bins"], strict=True)]
        out["classes"] = [a + b for a, b in zip(out["classes"], p["classes"], strict=True)]
        if not p["n"]:
            continue
        out["min"] = p["min"] if out["min"] is None else min(out["min"], p["min"])
        out["max"] = p["max"] if out["max"] is None else max(out["max"], p["max"])
        n_a, n_b = out["n"], p["n"]
        delta = p["mean"] - out["mean"]
        out["mean"] += delta * n_b / (n_a + n_b)
        out["m2"] += p["m2"] + delta * delta * n_a * n_b / (n_a + n_b)
        out["n"] = n_a + n_b
    return out


def _merged_sketch(parts: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """The partitions' sketch points sorted, and their cumulative weights (``cum[i]`` = weight of
    the first ``i`` points; ``cum[-1]`` = finite values in all)."""
    values = np.concatenate([np.asarray(p["sketch"], float) for p in parts] or [np.zeros(0)])
    weights = np.concatenate([np.full(len(p["sketch"]), p["weight"]) for p in parts] or [np.zeros(0)])
    order = np.argsort(values, kind="stable")
    return values[order], np.concatenate([[0.0], np.cumsum(weights[order])])


def quantiles(parts: list[dict[str, Any]], qs: Sequence[float]) -> list[float | None]:
    """Quantiles from the partitions' sketches (the smallest value whose rank reaches ``q * n``)."""
    values, cum = _merged_sketch(parts)
    if not len(values):
        return [None] * len(qs)
    picks = np.searchsorted(cum[1:], np.asarray(qs) * cum[-1], side="left")
    return [float(values[min(i, len(values) - 1)]) for i in picks]


def sketch_bin_counts(parts: list[dict[str, Any]], cuts: Sequence[float]) -> list[int]:
    """Counts over the bins ``(-inf, c0), [c0, c1), ..., [ck-1, +inf)`` from the partitions'
    sketches: each count is off by at most ``2 * n / SKETCH_POINTS`` (the rank error at its two
    edges) and exact where every partition held at most ``SKETCH_POINTS`` values; they sum to n."""
    values, cum = _merged_sketch(parts)
    below = cum[np.searchsorted(values, np.asarray(cuts, float), side="left")]  # weight < each cut
    n = sum(int(p["n"]) for p in parts)
    edges = np.rint(np.concatenate([[0.0], below, [cum[-1]]]) * (n / cum[-1] if cum[-1] else 0.0)).astype(np.int64)
    return np.diff(edges).tolist()


def finish(merged: dict[str, Any]) -> dict[str, Any]:
    """The column's statistics as the profile stores them (None where undefined)."""
    n = merged["n"]
    std = math.sqrt(merged["m2"] / (n - 1)) if n > 1 else None
    return {
        "nulls": merged["nulls"],
        "nans": merged["nans"],
        "posinf": merged["posinf"],
        "neginf": merged["neginf"],
        "min": merged["min"],
        "max": merged["max"],
        "mean": _finite(merged["mean"]) if n else None,
        "std": _finite(std),
    }


def _finite(v: float | None) -> float | None:
    """None for a moment that overflowed (finite scores near 1e308 squared): undefined, so it fails
    its rule as a missing metric, and JSON has no inf."""
    return v if v is None or math.isfinite(v) else None


@dataclass(frozen=True)
class TaskProfiler:
    """The validation profile's partial of the rows one scoring task writes, computed as it writes
    them (the task's :class:`batchscore.udfs._staged_write.StagedWriter` calls it with the output
    columns' Arrow arrays), so ``validate`` needs no pass over the staged scores when its plan is
    still ``plan_key``. ``intervals``/``classes``: per output column."""

    columns: tuple[str, ...]
    intervals: dict[str, list[Interval]]
    classes: dict[str, tuple[float, ...]]
    plan_key: str

    def __call__(self, chunks: dict[str, list[Any]]) -> str:
        import json

        import pyarrow as pa

        out = {}
        for c in self.columns:
            arrays = chunks.get(c) or []
            nulls = sum(a.null_count for a in arrays)
            values = [a.drop_null().cast(pa.float64()).to_numpy(zero_copy_only=False) for a in arrays]
            out[c] = partial(np.concatenate(values) if values else np.zeros(0), nulls, self.intervals[c],
                             self.classes[c])
        return json.dumps(out)
