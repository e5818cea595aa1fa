"""±inf scores: counted by the partials but kept out of every statistic, and blocked by the
always-on ``finite`` rule (no Spark: partials, merge and the GX gate over hand-made profiles)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from batchscore.validation._partials import (
    finish,
    merge,
    partial,
    quantiles,
    sketch_bin_counts,
)
from batchscore.validation.gate import decision, evaluate
from batchscore.validation.profile import Profile, cut_intervals
from batchscore.validation.report import format_table, plot_histograms
from batchscore.validation.rules import Finite, NullRate, RowCount, Rules, ValueRange


def _strict_json(obj: Any) -> Any:
    """``json.dumps`` refusing inf/NaN (which would write the non-JSON tokens Infinity/NaN)."""
    return json.loads(json.dumps(obj, allow_nan=False))


def test_partials_count_inf_and_keep_it_out_of_every_statistic() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.beta(2, 5, 3000), rng.beta(2, 5, 50)  # one partition sketched, one exact
    a[::100] = np.inf
    a[1::300] = -np.inf
    b[:3] = [np.inf, -np.inf, np.nan]
    cuts = [0.1, 0.3, 0.5]
    ivs = cut_intervals(cuts)
    parts = [partial(a, 2, ivs, [0.0]), partial(b, 0, ivs, [0.0])]
    assert (parts[0]["posinf"], parts[0]["neginf"], parts[0]["nans"]) == (30, 10, 0)
    assert (parts[1]["posinf"], parts[1]["neginf"], parts[1]["nans"]) == (1, 1, 1)
    _strict_json(parts)  # what the executors send the driver

    x = np.concatenate([a, b])
    fin = x[np.isfinite(x)]
    merged = merge(parts, len(ivs), 1)
    assert (merged["rows"], merged["nulls"], merged["nans"]) == (3052, 2, 1)
    assert (merged["posinf"], merged["neginf"], merged["n"]) == (31, 11, len(fin))
    assert sum(merged["bins"]) == len(fin) and merged["bins"] == np.histogram(fin, [-np.inf, *cuts, np.inf])[0].tolist()
    s = _strict_json(finish(merged))
    assert (s["posinf"], s["neginf"]) == (31, 11)
    assert s["min"] == fin.min() and s["max"] == fin.max()
    assert s["mean"] == pytest.approx(fin.mean()) and s["std"] == pytest.approx(fin.std(ddof=1))
    qs = quantiles(parts, [0.0, 0.5, 1.0])
    assert all(math.isfinite(q) for q in qs) and qs[0] >= fin.min() and qs[-1] <= fin.max()
    assert sum(sketch_bin_counts(parts, cuts)) == len(fin)


def test_only_inf_values_give_no_statistics_rather_than_inf() -> None:
    s = finish(merge([partial(np.array([np.inf, -np.inf, np.inf]), 0, cut_intervals([0.5]), [])], 2, 0))
    assert s == {"nulls": 0, "nans": 0, "posinf": 2, "neginf": 1, "min": None, "max": None, "mean": None, "std": None}
    assert quantiles([partial(np.array([np.inf]), 0, [], [])], [0.5]) == [None]


def test_moments_that_overflow_are_undefined_not_inf() -> None:
    s = finish(merge([partial(np.array([-1e308, 1e308, 1e308]), 0, [], [])], 0, 0))
    assert s["min"] == -1e308 and s["std"] is None  # the squares overflow; the mean may not
    _strict_json(s)


def _col(x: np.ndarray) -> dict[str, Any]:
    fin = x[np.isfinite(x)]
    return {"nulls": 0, "nans": int(np.isnan(x).sum()), "posinf": int(np.isposinf(x).sum()),
            "neginf": int(np.isneginf(x).sum()), "min": float(fin.min()), "max": float(fin.max()),
            "mean": float(fin.mean()), "std": float(fin.std(ddof=1)), "quantiles": {},
            "hist": {"cuts": [0.25, 0.5], "counts": np.histogram(fin, [-np.inf, 0.25, 0.5, np.inf])[0].tolist()}}


def _rules(n: int, columns: tuple[str, ...] = ("score",)) -> Rules:
    return Rules(RowCount(n), NullRate(0.0, columns=columns), ValueRange(0.0, 1.0, columns=columns))


def test_inf_scores_block_with_one_finite_result_per_column_and_a_clear_description(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    bad, good = rng.beta(2, 5, 2000), rng.beta(2, 5, 2000)
    bad[:8], bad[8:12] = np.inf, -np.inf
    profile = Profile.from_json({"rows": 2000, "columns": {"score": _col(bad), "other": _col(good)}})
    results = evaluate(profile, _rules(2000, ("score", "other")), None)
    fin = {r.column: r for r in results if r.rule == "finite"}
    assert set(fin) == {"score", "other"}  # always on, every output column, without being configured
    assert fin["score"].level == "block" and not fin["score"].passed and fin["score"].observed == 12
    assert fin["other"].passed and fin["other"].observed == 0 and fin["other"].expected == "0"
    passed, blocks, warns = decision(results)
    assert not passed and not warns and blocks == [fin["score"]]  # the other rules pass on the finite values
    assert blocks[0].describe() == ("finite score: 12 of 2,000 scores are ±inf (0.60%: 8 +inf, 4 -inf); "
                                    "expected 0 (block)")
    as_json = [r for r in _strict_json([r.as_dict() for r in results]) if r["rule"] == "finite"]
    assert as_json[0]["detail"].startswith("12 of 2,000 scores are ±inf") and as_json[0]["observed"] == 12
    assert "finite" in format_table(results) and "FAIL" in format_table(results)
    png = plot_histograms(tmp_path / "v.png", profile, None, {}, title="t", thresholds="-")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_finite_rule_passes_on_finite_scores_and_on_profiles_without_the_counts() -> None:
    x = np.random.default_rng(2).beta(2, 5, 1000)
    col = _col(x)
    del col["posinf"], col["neginf"]  # a reference published before the counts existed
    results = evaluate(Profile.from_json({"rows": 1000, "columns": {"score": col}}), _rules(1000), None)
    assert decision(results)[0]
    fin = next(r for r in results if r.rule == "finite")
    assert fin.passed and fin.observed == 0 and fin.detail == "0 of 1,000 scores are ±inf"


def test_finite_rule_can_name_columns_and_drift_counts_only_finite_rows() -> None:
    x = np.full(10, 0.5)
    x[:3] = np.inf
    profile = Profile.from_json({"rows": 10, "columns": {"score": _col(x), "other": _col(x)}})
    rules = Rules(RowCount(10), NullRate(0.0), finite=Finite(columns=("other",)))
    assert [(r.column, r.passed) for r in evaluate(profile, rules, None) if r.rule == "finite"] == [("other", False)]
    assert profile.columns["score"].finite_rows(10) == 7


def test_the_plot_does_not_crash_on_inf_in_a_profile(tmp_path: Path) -> None:
    x = np.random.default_rng(3).beta(2, 5, 500)
    ok = _col(x)
    odd = {**_col(x), "min": -math.inf, "max": math.inf}  # as an unfixed profile held them
    inf_cuts = {**_col(x), "hist": {"cuts": [0.2, math.inf], "counts": [1, 2, 3]}}
    profile = Profile.from_json({"rows": 500, "columns": {"a": odd, "b": inf_cuts, "c": ok}})
    ref = Profile.from_json({"rows": 500, "columns": {"a": odd}})
    png = plot_histograms(tmp_path / "v.png", profile, ref, {"a": 0.1},
                          title="t", thresholds="-")
    assert png.stat().st_size > 1000
