"""The validation gate on real local Spark, a real redis-server and a real Delta table.

Candidates are staged Parquet written by the tests (``conftest.stage``) so each controls the
score distribution; the reference is whatever ``jobs.publish.publish`` committed last.
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
from jobs import state
from jobs.publish import publish
from jobs.validate import validate

pytestmark = [pytest.mark.spark]

TIGHT = {"range": {"min": 0.0, "max": 1.0}, "drift": {"psi": {"warn": 0.02, "block": 0.05}}}


def _rule(report: dict[str, Any], rule: str, level: str) -> dict[str, Any]:
    return next(r for r in report["rules"] if r["rule"] == rule and r["level"] == level)


def _rejected(spark: Any, cfg: Any, run_id: str) -> dict[str, Any]:
    with pytest.raises(ValidationRejectedError) as err:
        validate(spark, cfg, run_id=run_id)
    assert err.value.exit_code == EXIT_REJECTED and run_id in str(err.value)
    report = state.read_report(cfg, run_id, "validation")
    assert report is not None and report["passed"] is False
    return report


def _png_size(path: str) -> tuple[int, int]:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_first_run_passes_on_absolute_rules_and_freezes_bins(spark: Any, vconfig: Any) -> None:
    cfg = vconfig(TIGHT)
    stage(cfg, "a", scores(1))
    rep = validate(spark, cfg, run_id="a")
    assert rep["passed"] and rep["mode"] == "absolute-only" and rep["reference"] is None
    assert rep["mode_reason"].startswith("first run")
    drift = [r for r in rep["rules"] if r["rule"] in ("psi", "kl")]
    assert len(drift) == 4 and all(r["skipped"] == "no reference" for r in drift)
    col = rep["profile"]["columns"]["score"]
    x = scores(1).astype(np.float64)
    assert rep["profile"]["rows"] == N and col["nulls"] == col["nans"] == 0
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
    assert rep["profile"]["passes"] == 1
    assert _png_size(rep["histogram_png"])[0] > 300


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
    assert rep["passed"] and rep["mode"] == "drift" and rep["reference"]["run_id"] == "a"
    assert rep["profile"]["passes"] == 1
    assert rep["profile"]["columns"]["score"]["hist"]["cuts"] == published["columns"]["score"]["hist"]["cuts"]
    assert _rule(rep, "psi", "block")["observed"] < 0.02 and _rule(rep, "kl", "block")["passed"]

    # the mean moved by 0.3 sigma: PSI above the block threshold, rejected, nothing published
    stage(cfg, "shifted", scores(3, shift_sigmas=0.3))
    rej = _rejected(spark, cfg, "shifted")
    psi = _rule(rej, "psi", "block")
    assert psi["observed"] > 0.05 and psi["passed"] is False and psi["expected"] == "<= 0.05"
    assert any("psi score" in b for b in rej["blocking"])
    assert DeltaTable(table).version() == 0  # still run a

    # the next good run is compared with run a (the last published), not with the rejected one
    stage(cfg, "c", scores(4))
    rep_c = validate(spark, cfg, run_id="c")
    assert rep_c["passed"] and rep_c["reference"] == {"delta_version": 0, "run_id": "a", "model_version": "v1"}
    publish(spark, cfg, run_id="c", redis_url=redis_url)
    assert DeltaTable(table).version() == 1
    assert json.loads(DeltaTable(table).history()[0]["batchscore.profile"]) == rep_c["profile"]


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
    assert int(redis.Redis.from_url(redis_url).get(pointer)) == live  # readers still see run a

    png = rej["histogram_png"]
    assert Path(png).parent == state.run_dir(cfg, "zeros")
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
    assert rej["profile"]["columns"]["score"]["nans"] == N // 100
    # NaN never leaks into the statistics
    assert rej["profile"]["columns"]["score"]["max"] == pytest.approx(float(np.nanmax(x)))


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
    assert rep["passed"] and len(rep["warnings"]) == 1 and rep["warnings"][0].startswith("mean score")
    assert not _rule(rep, "mean", "warn")["passed"]
    assert {r["rule"] for r in rep["rules"] if r["passed"] and not r.get("skipped")} >= {
        "std", "quantile_0.5", "quantile_0.99", "class_share_0"}
