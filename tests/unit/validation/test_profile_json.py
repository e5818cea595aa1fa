"""The validation profile is typed (``Profile``/``ColumnProfile``) and round-trips through the JSON that
``validation.json`` and the Delta commit carry, including profiles published by earlier versions."""

from __future__ import annotations

import json

import numpy as np

from batchscore.jobs.reports import ValidationReport
from batchscore.validation._partials import partial
from batchscore.validation.profile import (
    ColumnPlan,
    ColumnProfile,
    Histogram,
    KLCounts,
    Profile,
    cut_intervals,
    kl_intervals,
    profile_from_partials,
)


def _profile() -> Profile:
    rng = np.random.default_rng(7)
    x = rng.normal(size=5000)
    x[::100] = np.inf
    cuts = (-1.0, 0.0, 1.0)
    edges = (float(x[np.isfinite(x)].min()), *cuts, 9.0)
    plans = {"a": ColumnPlan(cuts=cuts, kl_edges=edges, classes=(0.0,)), "b": ColumnPlan()}
    parts = [{"a": partial(x[i::2], 1, kl_intervals(edges), (0.0,)),
              "b": partial(np.round(x[i::2]), 1, [], ())} for i in range(2)]
    return profile_from_partials(parts, plans, bins=10)


def test_profile_is_typed_and_round_trips_through_plain_json() -> None:
    prof = _profile()
    a, b = prof.columns["a"], prof.columns["b"]
    assert prof.rows == 5002 and a.posinf == 50 and a.nulls == b.nulls == 2
    assert a.finite_rows(prof.rows) == 5002 - 2 - 50 == sum(a.hist.counts)  # type: ignore[union-attr]
    assert isinstance(a.hist, Histogram) and isinstance(a.kl, KLCounts) and len(a.hist.counts) == 4
    assert sum(a.kl.counts) == sum(a.hist.counts) and b.kl is None and len(b.hist.cuts) >= 1  # type: ignore[union-attr]
    assert a.quantile(0.5) == a.quantiles["0.5"] and "0" in a.classes
    text = json.dumps(prof.to_json(), allow_nan=False)
    assert Profile.loads(text) == prof and Profile.loads(prof.dumps()) == prof


def test_a_profile_published_before_the_inf_counts_and_with_unknown_keys_still_reads() -> None:
    old = {"rows": 10, "passes": 1, "columns": {"score": {
        "nulls": 1, "nans": 2, "min": 0.1, "max": 0.9, "mean": 0.5, "std": 0.2, "quantiles": {"0.5": 0.5},
        "hist": {"cuts": [0.5], "counts": [3, 4]}, "added_by_a_newer_version": 1}}}
    col = Profile.from_json(old).columns["score"]
    assert (col.posinf, col.neginf, col.finite_rows(10)) == (0, 0, 7)
    assert col.hist == Histogram((0.5,), (3, 4)) and col.kl is None and col.classes == {}
    assert ColumnProfile.from_json(col.to_json()) == col


def test_validation_report_carries_the_profile_typed_and_writes_it_as_json() -> None:
    prof = _profile()
    rep = ValidationReport(passed=True, digest="d", profile=prof)
    data = json.loads(json.dumps(rep.to_json()))
    assert data["profile"] == prof.to_json() and data["profile"]["columns"]["a"]["hist"]["cuts"] == [-1.0, 0.0, 1.0]
    assert ValidationReport.from_json(data).profile == prof
    assert ValidationReport.from_json({"passed": True, "digest": "d", "profile": {"columns": {}}}).profile == Profile()
    assert cut_intervals(prof.columns["a"].hist.cuts)  # type: ignore[union-attr]
