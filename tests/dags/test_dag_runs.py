"""DAG runs through real Airflow (``dag.test()``, SQLite) and the job env's real spark-submit.

The applications are stand-in jobs in a temporary repo that record their argv and environment and
exit with a chosen code: this pins the CLI contract (explicit run date and run id, the job env's
Python) and the retry rules (exit 2/3 fail at once, 4 retries) in seconds per run, independent of
the real jobs (test_dag_e2e.py runs those).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import pytest
import yaml
from _lib.dag_factory import safe_run_id
from conftest import task_states, use_dags

STUB = '''
import json, os, sys
from pathlib import Path
here, step = Path(__file__).resolve().parent, Path(__file__).stem
calls = here / "calls"
calls.mkdir(exist_ok=True)
n = len(list(calls.glob(step + "-*.json")))
(calls / f"{step}-{n}.json").write_text(json.dumps({
    "argv": sys.argv[1:], "python": sys.executable,
    "redis_url_set": bool(os.environ.get("BATCHSCORE_REDIS_URL")),
}))
code = here / (step + ".exit")
sys.exit(int(code.read_text()) if code.exists() else 0)
'''


@pytest.fixture
def stub_dag(tmp_path: Path, airflow_db: None, job_env: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A DAG whose jobs are stubs; returns (build, jobs_dir, failures_file)."""
    jobs = tmp_path / "repo" / "jobs"
    jobs.mkdir(parents=True)
    for step in ("score", "validate", "publish", "backfill", "run"):
        (jobs / f"{step}.py").write_text(STUB)
    failures = tmp_path / "failures.jsonl"
    monkeypatch.setenv("BATCHSCORE_TEST_FAILURES", str(failures))
    monkeypatch.setenv("BATCHSCORE_REDIS_URL", "redis://127.0.0.1:9/0")
    monkeypatch.setenv("BATCHSCORE_REPO", str(tmp_path / "repo"))
    monkeypatch.setenv("BATCHSCORE_JOB_ENV", str(job_env))
    name = f"stub_{uuid4().hex[:8]}"  # fresh dag_id: the SQLite DB outlives test sessions
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "scoring": {"device": "cpu"},
                                                       "spark": {"conf": {"spark.ui.enabled": "false"}}}))

    def build(**overrides: object):  # type: ignore[no-untyped-def]
        settings = {"retry_delay_seconds": 1, "execution_timeout_minutes": 10,
                    "on_failure_callback": "failure_probe:record", **overrides}
        return use_dags(monkeypatch, tmp_path, conf_dir=conf, **settings)[f"batchscore_{name}"]

    return build, jobs, failures


def calls(jobs: Path, step: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(p.read_text()) for p in sorted((jobs / "calls").glob(f"{step}-*.json"))]


def arg(call: dict, flag: str) -> str:  # type: ignore[type-arg]
    return call["argv"][call["argv"].index(flag) + 1]


def test_manual_run_without_logical_date_passes_one_explicit_window(stub_dag, job_env: Path) -> None:  # type: ignore[no-untyped-def]
    build, jobs, _ = stub_dag
    run = build().test(logical_date=None)
    assert task_states(run) == {"route": "success", "score": "success", "validate": "success",
                                "publish": "success", "backfill": "skipped"}
    made = [calls(jobs, step) for step in ("score", "validate", "publish")]
    assert [len(c) for c in made] == [1, 1, 1]
    first = made[0][0]
    # No logical date: the run date is the day the run was triggered (run_after), in UTC.
    assert arg(first, "--run-date") == run.run_after.astimezone(UTC).date().isoformat()
    assert arg(first, "--run-id") == safe_run_id(run.run_id)
    assert run.run_id.startswith("manual__")
    for (call,) in made:
        assert call["argv"] == first["argv"]  # every step scores the same window and run
        assert call["python"] == str(job_env / "bin" / "python")
        assert call["redis_url_set"]  # inherited from the worker environment, not templated


def test_logical_date_offset_and_the_run_date_param(stub_dag) -> None:  # type: ignore[no-untyped-def]
    build, jobs, _ = stub_dag
    dag = build(run_date_offset_days=1, timezone="Europe/Berlin")
    run = dag.test(logical_date=datetime(2026, 11, 22, 23, 30, tzinfo=UTC))  # 00:30 on the 23rd in Berlin
    assert task_states(run)["publish"] == "success"
    assert arg(calls(jobs, "score")[0], "--run-date") == "2026-11-22"
    run = dag.test(logical_date=None, run_conf={"run_date": "2026-01-31"})
    assert task_states(run)["publish"] == "success"
    assert arg(calls(jobs, "score")[1], "--run-date") == "2026-01-31"
    assert arg(calls(jobs, "publish")[1], "--run-date") == "2026-01-31"


@pytest.mark.parametrize(("code", "tries"), [(3, 1), (2, 1), (4, 3), (1, 3)])
def test_exit_code_decides_retries(stub_dag, code: int, tries: int) -> None:  # type: ignore[no-untyped-def]
    """Validation rejected (3) and bad input (2) fail at once despite retries=2; 4 and 1 retry."""
    build, jobs, failures = stub_dag
    (jobs / "validate.exit").write_text(str(code))
    run = build(retries=2).test(logical_date=None)
    assert task_states(run) == {"route": "success", "score": "success", "validate": "failed",
                                "publish": "upstream_failed", "backfill": "skipped"}
    assert len(calls(jobs, "validate")) == tries
    assert calls(jobs, "publish") == []
    # The failure callback ran once, after the final try, and saw the exit code.
    recorded = [json.loads(line) for line in failures.read_text().splitlines()]
    assert len(recorded) == 1, recorded
    assert recorded[0]["task"] == "validate" and recorded[0]["exit"] == code
    assert recorded[0]["try"] == tries


def test_backfill_mode_runs_only_the_history_backfill_for_the_run_date(stub_dag) -> None:  # type: ignore[no-untyped-def]
    """mode=backfill (what `airflow backfill create` runs get from their run type) scores one date
    into the history table: the online chain is skipped, so the Redis pointer cannot move."""
    build, jobs, _ = stub_dag
    run = build().test(logical_date=None, run_conf={"mode": "backfill", "run_date": "2026-11-05"})
    assert task_states(run) == {"route": "success", "backfill": "success", "score": "skipped",
                                "validate": "skipped", "publish": "skipped"}
    (call,) = calls(jobs, "backfill")
    assert arg(call, "--from") == arg(call, "--to") == "2026-11-05"
    assert "--publish-online" not in call["argv"]
    assert calls(jobs, "score") == calls(jobs, "publish") == []


def test_airflow_backfill_runs_take_the_backfill_path() -> None:
    """Runs created by `airflow backfill create` have run_type "backfill" (an enum in the worker)."""
    from _lib.dag_factory import choose_path
    from airflow.utils.types import DagRunType

    assert choose_path(DagRunType.BACKFILL_JOB, "online") == "backfill"
    assert choose_path("backfill", None) == "backfill"
    assert choose_path(DagRunType.SCHEDULED, "online") == "score"
    assert choose_path(DagRunType.MANUAL, None) == "score"


@pytest.mark.parametrize(("code", "state", "tries"), [(0, "success", 1), (3, "failed", 1)])
def test_one_application_runs_jobs_run_py_once_with_the_window(stub_dag, code: int, state: str, tries: int) -> None:  # type: ignore[no-untyped-def]
    """one_application: score, validate and publish in one spark-submit of jobs/run.py, one task;
    its exit code decides retries as for the steps (3: validation rejected, no retry)."""
    build, jobs, _ = stub_dag
    (jobs / "run.exit").write_text(str(code))
    run = build(one_application=True, retries=2).test(logical_date=None)
    assert task_states(run) == {"route": "success", "run": state, "backfill": "skipped"}
    made = calls(jobs, "run")
    assert len(made) == tries
    assert arg(made[0], "--run-date") == run.run_after.astimezone(UTC).date().isoformat()
    assert arg(made[0], "--run-id") == safe_run_id(run.run_id)
    assert calls(jobs, "score") == calls(jobs, "validate") == calls(jobs, "publish") == []
