"""The gate inside the whole pipeline (``batchscore.jobs.run.run``) and behind the ``batchscore validate`` CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import stage
from deltalake import DeltaTable

from batchscore.config import load_model_config
from batchscore.errors import EXIT_REJECTED
from batchscore.jobs import _state as state
from batchscore.jobs import run as run_job
from batchscore.jobs import validate as validate_job

pytestmark = [pytest.mark.spark, pytest.mark.integration]


def test_warn_failure_publishes_and_is_reported_then_the_cli_rejects_a_block_failure(
        spark: Any, make_config: Any, redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_config(rows=2000, validation={"range": {"min": 0.0, "max": 1.0},
                                              "mean": {"max": 0.01, "level": "warn"},
                                              "drift": {"min_rows": 500}})
    cfg = load_model_config(path)
    first = run_job.run(spark, cfg, run_id="r1", run_date="2026-11-22", redis_url=redis_url)
    assert first.delta_version == 0 and first.warnings and first.warnings[0].startswith("mean score")
    v1 = state.read_report(cfg, "r1", "validation")
    assert v1 is not None and v1["passed"] and v1["mode"] == "absolute-only"
    mean = next(r for r in v1["rules"] if r["rule"] == "mean")
    assert mean["level"] == "warn" and not mean["passed"] and mean["observed"] > 0.01
    committed = DeltaTable(cfg.outputs.delta.path).history()[0]
    assert json.loads(committed["batchscore.profile"]) == v1["profile"]

    capsys.readouterr()

    # `batchscore validate` on a collapsed candidate: exit 3, the table, and where the report is
    stage(cfg, "bad", np.full(2000, 0.5, np.float32))
    code = validate_job.main(["--model-config", str(path), "--run-id", "bad"])
    out, err = capsys.readouterr()
    assert code == EXIT_REJECTED
    assert "judged against published run r1 (Delta version 0)" in out
    assert "psi" in out and "FAIL" in out
    report_path = Path(state.run_dir(cfg, "bad")) / "validation.json"
    assert f"report: {report_path}" in out and f"histogram: {report_path.with_suffix('.png')}" in out
    assert "batchscore: error: run bad of 'm' rejected: psi score" in err
    assert DeltaTable(cfg.outputs.delta.path).version() == 0
