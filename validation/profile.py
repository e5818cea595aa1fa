"""One Spark aggregation over the candidate scores: count, nulls, NaNs, min, max, mean, std."""

from __future__ import annotations

from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def compute_profile(df: DataFrame, columns: list[str]) -> dict[str, Any]:
    """``{"rows": n, "columns": {col: {nulls, nans, min, max, mean, std}}}`` in one Spark job.

    NaNs are counted apart from nulls and excluded from min/max/mean/std (Spark orders NaN above
    every number, so an unfiltered max would just say NaN).
    """
    aggs = [F.count(F.lit(1)).alias("rows")]
    for c in columns:
        col = F.col(c)
        finite = F.when(~F.isnan(col), col)
        aggs += [
            F.sum(col.isNull().cast("long")).alias(f"{c}__nulls"),
            F.sum(F.isnan(col).cast("long")).alias(f"{c}__nans"),
            F.min(finite).alias(f"{c}__min"),
            F.max(finite).alias(f"{c}__max"),
            F.mean(finite).alias(f"{c}__mean"),
            F.stddev_samp(finite).alias(f"{c}__std"),
        ]
    row = df.agg(*aggs).first()
    assert row is not None
    out: dict[str, Any] = {"rows": int(row["rows"]), "columns": {}}
    for c in columns:
        stats = {k: row[f"{c}__{k}"] for k in ("nulls", "nans", "min", "max", "mean", "std")}
        stats["nulls"] = int(stats["nulls"] or 0)
        stats["nans"] = int(stats["nans"] or 0)
        out["columns"][c] = {k: (float(v) if v is not None else None) if k not in ("nulls", "nans") else v for k, v in stats.items()}
    return out
