"""The validation gate on real local Spark, a real redis-server and a real Delta table.

Candidates are staged Parquet written by the tests (``conftest.stage``) so each controls the
score distribution; the reference is whatever ``batchscore.jobs.publish.publish`` committed last.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from conftest import N, scores, stage
from deltalake import DeltaTable

from batchscore import redis_layout as layout
from batchscore.errors import EXIT_REJECTED, ValidationRejectedError
from batchscore.jobs import _state as state
from batchscore.jobs.publish import publish
from batchscore.jobs.reports import ValidationReport
from batchscore.jobs.validate import validate

pytestmark = [pytest.mark.spark]

TIGHT = {"range": {"min": 0.0, "max": 1.0}, "drift": {"psi": {"warn": 0.02, "block": 0.05}}}


def _rule(report: ValidationReport, rule: str, level: str) -> dict[str, Any]:
    return next(r for r in report.rules if r["rule"] == rule and r["level"] == level)


def _rejected(spark: Any, cfg: Any, run_id: str) -> ValidationReport:
    with pytest.raises(ValidationRejectedError) as err:
        validate(spark, cfg, run_id=run_id)
    assert err.value.exit_code == EXIT_REJECTED and run_id in str(err.value)
    report = state.read(cfg, run_id, ValidationReport)  # what the rejected run wrote
    assert report is not None and report.passed is False
    return report


def _png_size(path: str) -> tuple[int, int]:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_first_run_passes_on_absolute_rules_and_freezes_bins(spark: Any, vconfig: Any) -> None:
    cfg = vconfig(TIGHT)
    stage(cfg, "a", scores(1))
    rep = validate(spark, cfg, run_id="a")
    assert rep.passed and rep.mode == "absolute-only" and rep.reference is None
    assert rep.mode_reason.startswith("first run")
    drift = [r for r in rep.rules if r["rule"] in ("psi", "kl")]
    assert len(drift) == 4 and all(r["skipped"] == "no reference" for r in drift)
    col = rep.profile.to_json()["columns"]["score"]
    x = scores(1).astype(np.float64)
    assert rep.profile.rows == N and col["nulls"] == col["nans"] == 0
    assert col["min"] == pytest.approx(x.min()) and col["max"] == pytest.approx(x.max())
    assert col["mean"] == pytest.approx(x.mean(), rel=1e-6) and col["std"] == pytest.approx(x.std(ddof=1), rel=1e-6)
    assert col["quantiles"]["0.5"] == pytest.approx(np.quantile(x, 0.5), abs=2e-3)
    # 20 bins frozen from this run's quantiles, each holding about 5% of the rows, counted from
    # the same pass's sketches: within 2 * N / 2000 of the exact counts
    cuts = col["hist"]["cuts"]
    assert len(cuts) == 19 and sum(col["hist"]["counts"]) == N
    assert all(abs(n / N - 0.05) < 0.005 for n in col["hist"]["counts"])
    exact = np.histogram(x, bins=[-np.inf, *cuts, np.inf])[0]
    assert np.abs(np.asarray(col["hist"]["counts"]) - exact).max() <= 2 * N / 2000
    assert rep.profile.passes == 1
    assert _png_size(rep.histogram_png)[0] > 300


@pytest.mark.integration
def test_stable_passes_shifted_is_blocked_and_the_reference_stays_the_last_published(
        spark: Any, vconfig: Any, redis_url: str) -> None:
    cfg = vconfig(TIGHT)
    table = cfg.outputs.delta.path
    stage(cfg, "a", scores(1))
    validate(spark, cfg, run_id="a")
    publish(spark, cfg, run_id="a", redis_url=redis_url)
    published = json.loads(DeltaTable(table).history()[0]["batchscore.profile"])

    # a stable candidate (same distribution, other rows) passes, judged against run a in one pass
    stage(cfg, "b", scores(2))
    rep = validate(spark, cfg, run_id="b")
    assert rep.passed and rep.mode == "drift" and rep.reference["run_id"] == "a"
    assert rep.profile.passes == 1
    assert list(rep.profile.columns["score"].hist.cuts) == published["columns"]["score"]["hist"]["cuts"]  # type: ignore[union-attr]
    assert _rule(rep, "psi", "block")["observed"] < 0.02 and _rule(rep, "kl", "block")["passed"]

    # the mean moved by 0.3 sigma: PSI above the block threshold, rejected, nothing published
    stage(cfg, "shifted", scores(3, shift_sigmas=0.3))
    rej = _rejected(spark, cfg, "shifted")
    psi = _rule(rej, "psi", "block")
    assert psi["observed"] > 0.05 and psi["passed"] is False and psi["expected"] == "<= 0.05"
    assert any("psi score" in b for b in rej.blocking)
    assert DeltaTable(table).version() == 0  # still run a

    # the next good run is compared with run a (the last published), not with the rejected one
    stage(cfg, "c", scores(4))
    rep_c = validate(spark, cfg, run_id="c")
    assert rep_c.passed and rep_c.reference == {"delta_version": 0, "publication": 1, "run_id": "a",
                                                      "model_version": "v1"}
    publish(spark, cfg, run_id="c", redis_url=redis_url)
    assert DeltaTable(table).version() == 1
    assert json.loads(DeltaTable(table).history()[0]["batchscore.profile"]) == rep_c.profile.to_json()


@pytest.mark.integration
def test_constant_scores_are_blocked_with_default_thresholds_and_the_png_shows_both(
        spark: Any, vconfig: Any, redis_url: str) -> None:
    cfg = vconfig({"range": {"min": 0.0, "max": 1.0}})  # default PSI 0.1 / 0.25, KL 0.05 / 0.125
    stage(cfg, "a", scores(1))
    validate(spark, cfg, run_id="a")
    publish(spark, cfg, run_id="a", redis_url=redis_url)
    live = state.read_report(cfg, "a", "publish")["redis_version"]  # type: ignore[index]
    pointer = layout.pointer_key(layout.namespace(cfg.outputs.redis.key_prefix, cfg.name))

    stage(cfg, "zeros", np.zeros(N, np.float32))  # an upstream column went null -> every score 0.0
    rej = _rejected(spark, cfg, "zeros")
    assert _rule(rej, "range_min", "block")["passed"]  # 0.0 is inside the range: only drift catches it
    assert _rule(rej, "psi", "block")["observed"] > 0.25
    kl = _rule(rej, "kl", "block")
    assert kl["observed"] is not None and kl["observed"] > 0.125 and not kl["passed"]  # finite: tail holdout
    assert DeltaTable(cfg.outputs.delta.path).version() == 0
    assert redis.Redis.from_url(redis_url).get(pointer).decode() == live  # readers still see run a

    png = rej.histogram_png
    assert Path(png).parent == Path(state.run_dir(cfg, "zeros"))
    w, h = _png_size(png)
    assert (w, h) == (720, 288)
    import matplotlib.image as mpimg

    img = mpimg.imread(png)[..., :3]
    red = (img[..., 0] > 0.7) & (img[..., 1] < 0.3) & (img[..., 2] < 0.3)  # the candidate's line
    blue = (img[..., 2] > img[..., 0] + 0.2) & (img[..., 2] > 0.6)  # the reference's filled bars
    assert red.sum() > 100 and blue.sum() > 1000


def test_nan_scores_are_blocked(spark: Any, vconfig: Any) -> None:
    cfg = vconfig(TIGHT)
    x = scores(5)
    x[::100] = np.nan  # 1% NaN
    stage(cfg, "nans", x)
    rej = _rejected(spark, cfg, "nans")
    nr = _rule(rej, "null_rate", "block")
    assert nr["observed"] == pytest.approx(0.01) and not nr["passed"]
    assert rej.profile.columns["score"].nans == N // 100
    # NaN never leaks into the statistics
    assert rej.profile.columns["score"].max == pytest.approx(float(np.nanmax(x)))


def test_band_rules_and_a_warn_level_failure_do_not_block(spark: Any, vconfig: Any) -> None:
    cfg = vconfig({
        "range": {"min": 0.0, "max": 1.0},
        "mean": {"min": 0.5, "level": "warn"},  # Beta(2,5) mean 0.286: fails, but only warns
        "std": {"min": 0.1, "max": 0.2},
        "quantiles": {"bands": [{"q": 0.5, "min": 0.2, "max": 0.35}, {"q": 0.99, "max": 0.9}]},
        "class_share": {"shares": {0.0: {"max": 0.0}}},
    })
    stage(cfg, "w", scores(6))
    rep = validate(spark, cfg, run_id="w")
    assert rep.passed and len(rep.warnings) == 1 and rep.warnings[0].startswith("mean score")
    assert not _rule(rep, "mean", "warn")["passed"]
    assert {r["rule"] for r in rep.rules if r["passed"] and not r.get("skipped")} >= {
        "std", "quantile_0.5", "quantile_0.99", "class_share_0"}


def _no_nonfinite_json(path: Path) -> dict[str, Any]:
    """The report parsed strictly: Infinity / NaN tokens are not JSON and are refused."""
    def refuse(token: str) -> Any:
        raise AssertionError(f"{path} holds the non-JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_inf_scores_are_rejected_by_the_gate_with_exit_3_not_a_crash(
        spark: Any, vconfig: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from batchscore.jobs import validate as validate_job

    cfg = vconfig(TIGHT)
    x = scores(7)
    x[3::1000] = np.inf  # 20 of 20,000
    x[7::2000] = -np.inf  # 10 of 20,000
    stage(cfg, "infs", x)
    # behind the CLI: exit 3 (rejected, not retried), not 1 (an unexpected error, which orchestrators retry)
    assert validate_job.main(["--model-config", cfg.source, "--run-id", "infs"]) == EXIT_REJECTED
    out, err = capsys.readouterr()
    assert "finite" in out and "FAIL" in out and "Traceback" not in err
    assert "batchscore: error: run infs of 'vm' rejected: finite score: 30 of 20,000 scores are ±inf" in err
    rej = _rejected(spark, cfg, "infs")  # and jobs.validate.validate raises ValidationRejectedError
    fin = _rule(rej, "finite", "block")
    assert fin["column"] == "score" and fin["passed"] is False and fin["observed"] == 30
    assert any(b.startswith("finite score: 30 of 20,000 scores are ±inf") for b in rej.blocking), rej.blocking
    strict = _no_nonfinite_json(Path(state.run_dir(cfg, "infs")) / "validation.json")
    col = strict["profile"]["columns"]["score"]
    finite = x[np.isfinite(x)].astype(np.float64)
    assert (col["posinf"], col["neginf"], col["nans"]) == (20, 10, 0)
    assert col["min"] == pytest.approx(finite.min()) and col["max"] == pytest.approx(finite.max())
    assert (col["mean"] == pytest.approx(finite.mean(), rel=1e-6)
            and col["std"] == pytest.approx(finite.std(ddof=1), rel=1e-6))
    assert all(np.isfinite(col["hist"]["cuts"])) and sum(col["hist"]["counts"]) == len(finite)
    assert _png_size(rej.histogram_png)[0] > 300


def test_spark_profile_counts_inf_per_column_and_computes_every_statistic_over_finite_values(spark: Any) -> None:
    from batchscore.validation._drift import kl_edges
    from batchscore.validation.gate import decision, evaluate
    from batchscore.validation.profile import ColumnPlan, ColumnProfile, compute_profile
    from batchscore.validation.rules import NullRate, RowCount, Rules, ValueRange

    n = 4000
    bad, good = scores(8, n).astype(np.float64), scores(9, n).astype(np.float64)
    bad[::400], bad[5::1000], bad[9::500] = np.inf, -np.inf, np.nan  # 10 +inf, 4 -inf, 8 NaN
    df = spark.createDataFrame([(float(a), float(b)) for a, b in zip(bad, good, strict=True)],
                               "bad double, good double")
    df = df.repartition(3)
    ref_col = {"min": 0.0, "max": 1.0, "hist": {"cuts": [0.2, 0.4], "counts": [1, 1, 1]}}
    edges = kl_edges(ColumnProfile.from_json(ref_col))
    plans = {"bad": ColumnPlan(), "good": ColumnPlan(cuts=(0.2, 0.4), kl_edges=edges)}
    prof = compute_profile(df, plans, bins=10)
    pj = prof.to_json()
    json.dumps(pj, allow_nan=False)  # plain JSON: no inf or NaN anywhere
    b, g = pj["columns"]["bad"], pj["columns"]["good"]
    fin = bad[np.isfinite(bad)]
    assert prof.rows == n and (b["posinf"], b["neginf"], b["nans"]) == (10, 4, 8)
    assert (g["posinf"], g["neginf"], g["nans"]) == (0, 0, 0)
    assert b["min"] == pytest.approx(fin.min()) and b["max"] == pytest.approx(fin.max())
    assert b["mean"] == pytest.approx(fin.mean()) and b["std"] == pytest.approx(fin.std(ddof=1))
    assert all(np.isfinite(list(b["quantiles"].values()))) and len(b["hist"]["cuts"]) == 9
    assert sum(b["hist"]["counts"]) == len(fin) and sum(g["hist"]["counts"]) == n

    rules = Rules(RowCount(n), NullRate(0.01, columns=("bad", "good")), ValueRange(0.0, 1.0, columns=("bad", "good")))
    results = evaluate(prof, rules, None)
    passed, blocks, _ = decision(results)
    assert not passed and [(r.rule, r.column, r.observed) for r in blocks] == [("finite", "bad", 14)]
    assert blocks[0].describe().startswith("finite bad: 14 of 4,000 scores are ±inf")
