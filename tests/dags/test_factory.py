"""The DAG factory's pure parts: settings, run date/run id templates, retry decisions."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from _lib.dag_factory import build_all, build_dag, run_date_filter, safe_run_id
from _lib.retry import ExitCodeRetryPolicy, exit_code
from _lib.settings import DagSettings, SettingsError, load_settings
from airflow.sdk import RetryAction

RUN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


@pytest.mark.parametrize("run_id", [
    "scheduled__2026-11-23T03:00:00+00:00", "manual__2026-11-23T02:17:39.709961+00:00",
    "backfill__2026-01-01T00:00:00+00:00", "asset_triggered__2026-11-23T03:00:00.123+00:00",
    "a custom id: ünïcode/slashes?", "x" * 300, "::",
])
def test_run_ids_become_valid_job_run_ids(run_id: str) -> None:
    safe = safe_run_id(run_id)
    assert RUN_ID.match(safe), safe
    assert safe_run_id(run_id) == safe  # deterministic: retries and every task share it


def test_run_date_is_the_logical_date_in_the_schedule_timezone_minus_the_offset() -> None:
    utc_late = datetime(2026, 11, 22, 23, 30, tzinfo=UTC)
    assert run_date_filter("UTC", 0)(utc_late) == "2026-11-22"
    assert run_date_filter("Europe/Berlin", 0)(utc_late) == "2026-11-23"
    assert run_date_filter("Europe/Berlin", 1)(utc_late) == "2026-11-22"
    assert run_date_filter("UTC", 1)(datetime(2026, 3, 1, 3, tzinfo=UTC)) == "2026-02-28"


@pytest.mark.parametrize(("message", "code", "action"), [
    ("Cannot execute: spark-submit --master local[2] ... Error code is: 3.", 3, RetryAction.FAIL),
    ("Cannot execute: ... Error code is: 2.\nLast spark-submit output:\n...", 2, RetryAction.FAIL),
    ("Cannot execute: ... Error code is: 4.", 4, RetryAction.RETRY),
    ("Cannot execute: ... Error code is: 1.", 1, RetryAction.DEFAULT),
    ("Cannot execute: ... Error code is: 0. Kubernetes spark exit code is: 3", 3, RetryAction.FAIL),
    ("some other failure", None, RetryAction.DEFAULT),
])
def test_retry_policy_follows_the_exit_code(message: str, code: int | None, action: RetryAction) -> None:
    from airflow.sdk.exceptions import AirflowException

    exc = AirflowException(message)
    assert exit_code(exc) == code
    decision = ExitCodeRetryPolicy().evaluate(exc, try_number=1, max_tries=3)
    assert decision.action == action
    if action is RetryAction.FAIL:
        assert f"exited {code}" in (decision.reason or "")


def test_settings_reject_unknown_keys_and_apply_env_paths(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("retires: 3\n")
    with pytest.raises(SettingsError, match=r"unknown keys \['retires'\]"):
        load_settings(bad, environ={})
    good = tmp_path / "good.yaml"
    good.write_text("retries: 5\nrepo: null\n")
    s = load_settings(good, environ={"BATCHSCORE_JOB_ENV": str(tmp_path / "env")})
    assert s.retries == 5
    assert s.spark_submit == tmp_path / "env" / "bin" / "spark-submit"
    assert s.models_dir == s.repo / "conf" / "models"
    assert (s.repo / "jobs" / "score.py").exists()


def test_the_shipped_settings_load() -> None:
    s = load_settings(environ={})
    assert s.gpu_pool == "batchscore_gpu" and s.gc is False and s.on_failure_callback is None


def _model(tmp_path: Path, name: str, **extra: object) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **extra}))
    return path


def test_per_model_overrides_gc_and_callback(tmp_path: Path) -> None:
    cfg = _model(tmp_path, "m1", scoring={"device": "cpu"}, spark={"conf": {"spark.executor.memory": "4g"}})
    settings = DagSettings(conf_dir=tmp_path, spark_conf={"spark.executor.memory": "1g", "spark.x": 1},
                           on_failure_callback="_lib.callbacks:log_failure",
                           models={"m1": {"schedule": None, "gc": True, "retries": 0}})
    dag = build_dag(cfg, settings)
    assert type(dag.timetable).__name__ == "NullTimetable"  # schedule: null = manual runs only
    online = [t.task_id for t in dag.topological_sort() if t.task_id not in ("route", "backfill")]
    assert online == ["score", "validate", "publish", "gc"]
    assert dag.get_task("route").downstream_task_ids == {"score", "backfill"}
    gc = dag.get_task("gc")
    assert gc.application_args == ["--model-config", str(cfg.resolve())]
    assert gc.application.endswith("jobs/gc.py")
    score = dag.get_task("score")
    assert score.pool == "default_pool"  # device: cpu takes no GPU slot
    assert score.conf["spark.executor.memory"] == "4g" and score.conf["spark.x"] == "1"
    assert score.retries == 0
    from _lib.callbacks import log_failure

    assert log_failure in score.on_failure_callback
    pooled = build_dag(cfg, DagSettings(conf_dir=tmp_path, models={"m1": {"pool": "big_gpus"}}))
    assert {t.task_id: t.pool for t in pooled.tasks} == {
        "route": "default_pool", "score": "big_gpus", "backfill": "big_gpus",
        "validate": "default_pool", "publish": "default_pool"}


def test_one_application_mode_is_one_run_task_with_the_same_contract(tmp_path: Path) -> None:
    from _lib.retry import ExitCodeRetryPolicy

    cfg = _model(tmp_path, "m1")  # scoring.device defaults to auto: the run task scores, so the GPU pool
    dag = build_dag(cfg, DagSettings(conf_dir=tmp_path), one_application=True)
    assert {t.task_id for t in dag.tasks} == {"route", "run", "backfill"}
    assert dag.get_task("route").downstream_task_ids == {"run", "backfill"}
    run = dag.get_task("run")
    assert run.application.endswith("jobs/run.py") and Path(run.application).exists()
    assert run.application_args[:2] == ["--model-config", str(cfg.resolve())]
    assert "params.run_date" in run.application_args[run.application_args.index("--run-date") + 1]
    assert "batchscore_run_id" in run.application_args[run.application_args.index("--run-id") + 1]
    assert run.pool == "batchscore_gpu" and run.retries == 2 and isinstance(run.retry_policy, ExitCodeRetryPolicy)
    assert run.name == "batchscore-run-m1"
    # The setting, per model, with gc after the run; the factory argument wins over it.
    settings = DagSettings(conf_dir=tmp_path, models={"m1": {"one_application": True, "gc": True}})
    dag = build_dag(cfg, settings)
    assert [t.task_id for t in dag.topological_sort() if t.task_id not in ("route", "backfill")] == ["run", "gc"]
    assert {t.task_id for t in build_dag(cfg, settings, one_application=False).tasks} == {
        "route", "score", "validate", "publish", "gc", "backfill"}


def test_gpu_pool_only_for_models_that_may_use_a_gpu(tmp_path: Path) -> None:
    pools = {}
    for device in ("cpu", "auto", "cuda"):
        cfg = _model(tmp_path, f"m_{device}", scoring={"device": device})
        for gpu_pool in ("batchscore_gpu", None):
            dag = build_dag(cfg, DagSettings(conf_dir=tmp_path, gpu_pool=gpu_pool))
            pools[device, gpu_pool] = {t.task_id: t.pool for t in dag.tasks if t.pool != "default_pool"}
    gpu = {"score": "batchscore_gpu", "backfill": "batchscore_gpu"}
    assert pools == {("cpu", "batchscore_gpu"): {}, ("auto", "batchscore_gpu"): gpu, ("cuda", "batchscore_gpu"): gpu,
                     ("cpu", None): {}, ("auto", None): {}, ("cuda", None): {}}


def test_quiet_spark_logs_and_who_wins_in_the_spark_conf(tmp_path: Path) -> None:
    from _lib.settings import SPARK_LOG_CONFIG

    cfg = _model(tmp_path, "m1", spark={"conf": {"spark.ui.showConsoleProgress": True,
                                                 "spark.driver.extraJavaOptions": "-Dmodel=1"}})
    quiet = f"-Dlog4j2.configurationFile=file:{SPARK_LOG_CONFIG}"
    score = build_dag(cfg, DagSettings(conf_dir=tmp_path, spark_conf={
        "spark.driver.extraJavaOptions": "-Dsettings=1"})).get_task("score")
    assert score.conf["spark.ui.showConsoleProgress"] == "True"  # the model's own conf wins
    assert score.conf["spark.driver.extraJavaOptions"] == f"{quiet} -Dsettings=1 -Dmodel=1"
    plain = build_dag(_model(tmp_path, "m2"), DagSettings(conf_dir=tmp_path)).get_task("publish")
    assert plain.conf["spark.ui.showConsoleProgress"] == "false"
    assert plain.conf["spark.driver.extraJavaOptions"] == quiet
    loud = build_dag(_model(tmp_path, "m3"), DagSettings(conf_dir=tmp_path, quiet_spark_logs=False)).get_task("score")
    assert set(loud.conf) == {"spark.pyspark.python"}
    with pytest.raises(SettingsError, match="one_application: expected true or false, got 'yes'"):
        DagSettings(one_application="yes")  # type: ignore[arg-type]


def test_unknown_per_model_keys_and_duplicate_names_fail_loudly(tmp_path: Path) -> None:
    _model(tmp_path, "a")
    with pytest.raises(SettingsError, match="models.a: unknown keys"):
        build_all(DagSettings(conf_dir=tmp_path, models={"a": {"shedule": "@daily"}}))
    (tmp_path / "b.yaml").write_text("name: a\n")
    with pytest.raises(ValueError, match="both define batchscore_a"):
        build_all(DagSettings(conf_dir=tmp_path))
    (tmp_path / "b.yaml").write_text("model: {}\n")
    with pytest.raises(ValueError, match="needs a top-level string `name`"):
        build_all(DagSettings(conf_dir=tmp_path))


def test_doctests() -> None:
    import doctest

    from _lib import dag_factory, retry

    for module in (dag_factory, retry):  # dag_factory.scoring_pool's examples too
        assert doctest.testmod(module).failed == 0, module.__name__
