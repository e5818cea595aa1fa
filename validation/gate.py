"""Judge a profile against the rules with Great Expectations 1.x (ephemeral context, in code).

The expensive part, the profile, is one Spark aggregation (:mod:`validation.profile`); GX asserts
the rules over a small metrics table built from it (one row per output column) and reports each
expectation, which keeps the gate cheap whatever the batch size.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from validation.rules import RuleResult, Rules


def metrics_frame(profile: dict[str, Any]) -> Any:
    import pandas as pd

    rows = profile["rows"]
    records = []
    for col, s in profile["columns"].items():
        bad = s["nulls"] + s["nans"]
        records.append(
            {
                "column": col,
                "rows": rows,
                "null_rate": (bad / rows) if rows else 0.0,
                "min": s["min"] if s["min"] is not None else math.nan,
                "max": s["max"] if s["max"] is not None else math.nan,
            }
        )
    return pd.DataFrame.from_records(records)


def _expectations(rules: Rules) -> list[tuple[str, str, str, Any, str]]:
    """(rule, metric column, level, GX expectation, human-readable expectation)."""
    import great_expectations.expectations as gxe

    rc = rules.row_count
    lo = math.floor(rc.expected * (1 - rc.tolerance))
    hi = math.ceil(rc.expected * (1 + rc.tolerance))
    out: list[tuple[str, str, str, Any, str]] = [
        ("row_count", "rows", rc.level, gxe.ExpectColumnValuesToBeBetween(column="rows", min_value=lo, max_value=hi),
         f"between {lo} and {hi} (input rows {rc.expected}, tolerance {rc.tolerance})"),
        ("null_rate", "null_rate", rules.null_rate.level,
         gxe.ExpectColumnValuesToBeBetween(column="null_rate", min_value=0, max_value=rules.null_rate.max),
         f"null+NaN rate <= {rules.null_rate.max}"),
    ]
    rg = rules.range
    if rg is not None and rg.min is not None:
        out.append(("range_min", "min", rg.level,
                    gxe.ExpectColumnValuesToBeBetween(column="min", min_value=rg.min, mostly=1.0),
                    f"min >= {rg.min}"))
    if rg is not None and rg.max is not None:
        out.append(("range_max", "max", rg.level,
                    gxe.ExpectColumnValuesToBeBetween(column="max", max_value=rg.max, mostly=1.0),
                    f"max <= {rg.max}"))
    return out


def evaluate(profile: dict[str, Any], rules: Rules) -> list[RuleResult]:
    """Every rule's result, one per (rule, output column)."""
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    import great_expectations as gx

    from great_expectations.data_context.types.base import ProgressBarsConfig

    frame = metrics_frame(profile)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        ctx.data_sources.add_pandas("batchscore")
        .add_dataframe_asset("profile")
        .add_batch_definition_whole_dataframe("run")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    specs = _expectations(rules)
    suite = gx.ExpectationSuite(name="batchscore_gate", expectations=[s[3] for s in specs])
    outcome = batch.validate(suite, result_format="COMPLETE")
    results: list[RuleResult] = []
    for (rule, metric, level, _, expected), res in zip(specs, outcome.results, strict=True):
        if res.exception_info and res.exception_info.get("raised_exception"):
            raise RuntimeError(f"validation rule {rule} errored: {res.exception_info.get('exception_message')}")
        failed_idx = set(res.result.get("unexpected_index_list") or [])
        for i, col in enumerate(frame["column"]):
            observed = frame[metric].iloc[i]
            observed = None if isinstance(observed, float) and math.isnan(observed) else observed
            # A missing metric (e.g. every score NaN, so no min) is a failure, never a pass.
            passed = observed is not None and (bool(res.success) or i not in failed_idx)
            results.append(RuleResult(rule, col, level, passed, _plain(observed), expected))
    return results


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def decision(results: list[RuleResult]) -> tuple[bool, list[RuleResult], list[RuleResult]]:
    """(passed, blocking failures, warnings): any ``block`` failure rejects the candidate."""
    blocks = [r for r in results if not r.passed and r.level == "block"]
    warns = [r for r in results if not r.passed and r.level == "warn"]
    return (not blocks, blocks, warns)
