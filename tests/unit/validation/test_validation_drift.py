"""Drift math and the GX gate over hand-made profiles (no Spark): PSI, KL with holdouts, decisions."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy.stats import entropy

from batchscore.validation import _drift as D
from batchscore.validation.gate import decision, evaluate
from batchscore.validation.profile import ColumnProfile, Profile, cut_intervals, kl_intervals
from batchscore.validation.rules import Drift, NullRate, RowCount, Rules, ValueRange


def _col(values: np.ndarray, cuts: list[float], ref: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the Spark profile computes for ``values`` (the same interval semantics, in numpy)."""
    x = values[~np.isnan(values)]

    def count(ivs: list[Any]) -> list[int]:
        out = []
        for lo, lo_c, hi, hi_c in ivs:
            m = np.ones(len(x), bool)
            if lo is not None:
                m &= (x >= lo) if lo_c else (x > lo)
            if hi is not None:
                m &= (x <= hi) if hi_c else (x < hi)
            out.append(int(m.sum()))
        return out

    col = {"nulls": 0, "nans": int(np.isnan(values).sum()), "min": float(x.min()) if len(x) else None,
           "max": float(x.max()) if len(x) else None, "mean": float(x.mean()) if len(x) else None,
           "std": float(x.std(ddof=1)) if len(x) > 1 else None, "quantiles": {},
           "hist": {"cuts": cuts, "counts": count(cut_intervals(cuts))}}
    if ref is not None:
        edges = D.kl_edges(ColumnProfile.from_json(ref))
        assert edges is not None
        col["kl"] = {"edges": list(edges), "counts": count(kl_intervals(edges))}
    return col


def _profiles(ref_x: np.ndarray, cand_x: np.ndarray) -> tuple[Profile, Profile]:
    cuts = sorted(set(np.quantile(ref_x, np.arange(1, 20) / 20).tolist()))
    ref = {"rows": len(ref_x), "columns": {"score": _col(ref_x, cuts)}}
    cand = {"rows": len(cand_x), "columns": {"score": _col(cand_x, cuts, ref["columns"]["score"])}}
    return Profile.from_json(ref), Profile.from_json(cand)


def _rules(n: int, **drift: Any) -> Rules:
    return Rules(RowCount(n), NullRate(0.0, columns=("score",)), ValueRange(0.0, 1.0, columns=("score",)),
                 drift=Drift(columns=("score",), **drift))


def test_psi_is_zero_for_equal_bins_and_matches_the_formula() -> None:
    assert D.psi([10, 20, 70], [1, 2, 7]) == pytest.approx(0.0)
    a, e = np.array([0.2, 0.3, 0.5]), np.array([0.3, 0.3, 0.4])
    assert D.psi([30, 30, 40], [20, 30, 50]) == pytest.approx(float(np.sum((a - e) * np.log(a / e))))
    assert D.psi([0, 10], [0, 0]) is None


def test_kl_sample_reproduces_the_candidates_binned_counts() -> None:
    rng = np.random.default_rng(0)
    ref_x, cand_x = rng.beta(2, 5, 5000), rng.beta(2, 5, 3000) * 1.3  # some candidate values above ref max
    _, cand = _profiles(ref_x, cand_x)
    col = cand.columns["score"]
    sample = D.kl_sample(col)
    assert col.kl is not None
    edges = col.kl.edges
    got = [int((sample < edges[0]).sum()), *np.histogram(sample, edges)[0].tolist(), int((sample > edges[-1]).sum())]
    assert got == list(col.kl.counts) and col.kl.counts[-1] > 0
    scaled = D.kl_sample(col, cap=1000)
    assert len(scaled) == 1000


def test_stable_candidate_passes_and_kl_equals_scipy_with_the_tail_holdout() -> None:
    rng = np.random.default_rng(1)
    ref, cand = _profiles(rng.beta(2, 5, 20_000), rng.beta(2, 5, 20_000))
    results = evaluate(cand, _rules(20_000), ref)
    passed, blocks, warns = decision(results)
    assert passed and not warns, [r.describe() for r in results]
    kl = [r for r in results if r.rule == "kl"]
    assert {r.level for r in kl} == {"warn", "block"}
    # KL(candidate || reference) over [below, bins, above], reference weights scaled by (1 - h), tails h/2
    h = 0.005
    c = cand.columns["score"].kl.counts  # type: ignore[union-attr]
    w = np.asarray(ref.columns["score"].hist.counts, float)  # type: ignore[union-attr]
    expected = np.concatenate([[h / 2], w / w.sum() * (1 - h), [h / 2]])
    want = entropy(np.asarray(c, float) / sum(c), expected)
    assert kl[0].observed == pytest.approx(want, rel=1e-4)
    psi = next(r for r in results if r.rule == "psi")
    assert 0 <= psi.observed < 0.02


def test_constant_candidate_is_blocked_by_psi_and_a_finite_kl() -> None:
    rng = np.random.default_rng(2)
    ref, cand = _profiles(rng.beta(2, 5, 20_000), np.full(20_000, 0.0))  # upstream went null -> 0.0
    results = evaluate(cand, _rules(20_000), ref)
    passed, blocks, _ = decision(results)
    assert not passed
    by = {(r.rule, r.level): r for r in results}
    assert by[("psi", "block")].observed > 0.25 and not by[("psi", "block")].passed
    kl = by[("kl", "block")]
    assert kl.observed is not None and math.isfinite(kl.observed) and kl.observed > 0.125 and not kl.passed


def test_all_nan_scores_fail_every_absolute_rule_instead_of_passing_vacuously() -> None:
    x = np.full(5000, np.nan)
    cand = Profile.from_json({"rows": 5000, "columns": {"score": {**_col(x, []), "hist": {"cuts": [], "counts": [0]}}}})
    results = evaluate(cand, _rules(5000), None)
    passed, blocks, _ = decision(results)
    assert not passed
    assert {r.rule for r in blocks} >= {"null_rate", "range_min", "range_max"}
    assert next(r for r in results if r.rule == "null_rate").observed == 1.0
    assert all(r.skipped == "no reference" for r in results if r.rule in ("psi", "kl"))


def test_drift_below_min_rows_is_not_judged_and_says_why() -> None:
    rng = np.random.default_rng(3)
    ref, cand = _profiles(rng.beta(2, 5, 800), np.full(800, 0.9))
    results = evaluate(cand, _rules(800, min_rows=1000), ref)
    drift = [r for r in results if r.rule in ("psi", "kl")]
    assert drift and all(r.passed and r.skipped and "min_rows=1000" in r.skipped for r in drift)
