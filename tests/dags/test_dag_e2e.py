"""End to end: ``dag.test()`` of the demo DAG runs the real jobs through the job environment's
real spark-submit (local Spark), publishing to a real redis-server; the published scores are read
back with the job environment's ``batchscore lookup`` and compared with the model run directly.

The demo config is copied with its paths moved into a temporary directory (so the test never
touches .batchscore/demo) and served to the real DAG file through BATCHSCORE_CONF_DIR.
"""

from __future__ import annotations

import json
import math
from datetime import UTC
from pathlib import Path

import pytest
import yaml
from _lib.dag_factory import safe_run_id
from conftest import REDIS_PASSWORD, REPO, run_job_env, task_states, use_dags

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]
ROWS = 2000
KEYS = ["0", "1", "42", "1234", str(ROWS - 1)]


def demo_config(tmp_path: Path, job_env: Path, **validation: object) -> Path:
    """conf/models/demo.yaml with every path under tmp_path; model and features generated there."""
    cfg = yaml.safe_load((REPO / "conf" / "models" / "demo.yaml").read_text())
    cfg["model"]["uri"] = str(tmp_path / "demo" / "model.onnx")
    cfg["input"]["path"] = str(tmp_path / "demo" / "features.parquet")
    cfg["outputs"]["delta"]["path"] = str(tmp_path / "demo" / "predictions")
    cfg["outputs"]["redis"]["key_prefix"] = "dagtest"
    cfg["runtime"] = {"report_dir": str(tmp_path / "runs")}
    cfg["spark"] = {**(cfg.get("spark") or {}), "conf": {"spark.sql.shuffle.partitions": 2}}
    cfg["validation"].update(validation)
    path = tmp_path / "conf" / "demo.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    run_job_env(str(job_env / "bin" / "python"), "-m", "batchscore.jobs.demo", "--model-config", str(path),
                "--rows", str(ROWS), "--setup-only")
    return path


def lookup(job_env: Path, config: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    out = run_job_env(str(job_env / "bin" / "batchscore"), "lookup", "--json", "--model-config", str(config), *KEYS)
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {str(r["key"]): r for r in rows}


def test_demo_dag_scores_validates_and_publishes(
    tmp_path: Path, redis_url: str, airflow_db: None, job_env: Path,
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
) -> None:
    config = demo_config(tmp_path, job_env)
    dag = use_dags(monkeypatch, tmp_path, conf_dir=config.parent, execution_timeout_minutes=20)["batchscore_demo"]
    run = dag.test(logical_date=None)
    assert task_states(run) == {"route": "success", "score": "success", "validate": "success",
                                "publish": "success", "backfill": "skipped"}

    got = lookup(job_env, config)
    want = json.loads(run_job_env(str(job_env / "bin" / "python"), "tests/dags/expected_scores.py", str(config), *KEYS))
    for key in KEYS:
        values = list(got[key]["values"].values())
        assert len(values) == len(want[key]) == 1, (key, got[key])
        assert math.isclose(values[0], want[key][0], rel_tol=1e-6, abs_tol=1e-7), (key, values, want[key])

    # The window reached the jobs explicitly: the run's own date and its sanitized run id.
    run_id = safe_run_id(run.run_id)
    report = json.loads((tmp_path / "runs" / "demo" / run_id / "score.json").read_text())
    assert report["run_id"] == run_id
    assert report["run_date"] == run.run_after.astimezone(UTC).date().isoformat()
    # The Redis password never reaches the task output (spark-submit's command line, the jobs' logs).
    out, err = capfd.readouterr()
    assert "spark-submit" in out + err or "Spark-Submit" in out + err
    assert REDIS_PASSWORD in redis_url and REDIS_PASSWORD not in out + err


def test_validation_rejection_fails_fast_and_publishes_nothing(
    tmp_path: Path, redis_url: str, airflow_db: None, job_env: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = demo_config(tmp_path, job_env, range={"min": 0.0, "max": 0.05, "level": "block"})
    dag = use_dags(monkeypatch, tmp_path, conf_dir=config.parent, execution_timeout_minutes=20,
                   retries=2, retry_delay_seconds=1)["batchscore_demo"]
    run = dag.test(logical_date=None)
    assert task_states(run) == {"route": "success", "score": "success", "validate": "failed",
                                "publish": "upstream_failed", "backfill": "skipped"}
    validate = next(ti for ti in run.get_task_instances() if ti.task_id == "validate")
    assert validate.try_number == 1  # exit 3: no retry despite retries=2
    assert all(row["values"] is None for row in lookup(job_env, config).values())


def test_backfill_run_scores_its_date_into_the_history_table_and_leaves_redis_alone(
    tmp_path: Path, redis_url: str, airflow_db: None, job_env: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = demo_config(tmp_path, job_env)
    dag = use_dags(monkeypatch, tmp_path, conf_dir=config.parent, execution_timeout_minutes=20)["batchscore_demo"]
    run = dag.test(logical_date=None, run_conf={"mode": "backfill", "run_date": "2026-11-05"})
    assert task_states(run)["backfill"] == "success" and task_states(run)["publish"] == "skipped"

    py = str(job_env / "bin" / "python")
    got = json.loads(run_job_env(py, "tests/dags/history_scores.py", str(config), *KEYS))
    want = json.loads(run_job_env(py, "tests/dags/expected_scores.py", str(config), *KEYS))
    assert got["dates"] == ["2026-11-05"] and got["rows"] == ROWS
    for key in KEYS:
        (value,) = got["scores"]["2026-11-05"][key]
        assert math.isclose(value, want[key][0], rel_tol=1e-6, abs_tol=1e-7), (key, value, want[key])
    assert all(row["values"] is None for row in lookup(job_env, config).values())  # pointer never set
