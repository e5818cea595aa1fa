"""Builds one Airflow DAG per model config: route -> score -> validate -> publish (-> gc),
or route -> backfill for Airflow backfill runs (``airflow backfill create``) and ``mode: backfill``.
With ``one_application`` (a setting, per model too, or ``build_dag``'s argument) the online chain is
one ``run`` task: ``jobs/run.py`` scores, validates and publishes in one spark-submit.

Imports only the Airflow Task SDK, the Spark provider, PyYAML and the stdlib: DAG files are parsed
often and must stay light (no pyspark, pandas, Great Expectations or batchscore imports). Each
task is a ``spark-submit`` of ``<repo>/jobs/<step>.py`` with the job environment's own
spark-submit and Python; DAGs and jobs meet only through CLI arguments and exit codes
(see ``_lib/retry.py``). The run window is explicit: every task gets the same ``--run-date`` and
``--run-id``, rendered once per DAG run.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, CronTriggerTimetable, Param, chain, task

from _lib.retry import ExitCodeRetryPolicy
from _lib.settings import SPARK_LOG_CONFIG, DagSettings, load_settings

STEPS = ("score", "validate", "publish")
ONE_APPLICATION = ("run",)  # jobs/run.py: the three steps in one Spark application
SCORING = frozenset({"score", "run", "backfill"})  # the tasks that load the model (and may hold a GPU)
MODES = ("online", "backfill")
# run_date: the run_date param when given, else the run's logical date in the settings' timezone
# minus run_date_offset_days; a manual or asset-triggered run without a logical date uses its
# run_after. Read from dag_run: a bare `logical_date` is *undefined* (not None) in such runs and
# fails the render. Never the data interval: Airflow 3's CronTriggerTimetable makes it empty.
RUN_DATE = "{{ params.run_date or ((dag_run.logical_date or dag_run.run_after) | batchscore_run_date) }}"
RUN_ID = "{{ run_id | batchscore_run_id }}"
RUN_DATE_PATTERN = r"^(\d{4}-\d{2}-\d{2})?$"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_run_id(value: str) -> str:
    """Airflow's run id in batchscore's alphabet ``[A-Za-z0-9_.-]`` (1-128 chars), deterministically.

    >>> safe_run_id("scheduled__2026-11-23T03:00:00+00:00")
    'scheduled__2026-11-23T030000_0000'
    >>> safe_run_id("my run #7")
    'my_run_7'
    """
    safe = _UNSAFE.sub("_", value.replace(":", "")).strip("_") or "run"
    return safe[:128]


def run_date_filter(timezone: str, offset_days: int) -> Callable[[datetime], str]:
    """A Jinja filter: a run's timestamp -> its run date (YYYY-MM-DD) in ``timezone``, shifted back.

    >>> f = run_date_filter("Europe/Berlin", 1)
    >>> f(datetime(2026, 11, 22, 23, 30, tzinfo=UTC))  # 00:30 on the 23rd in Berlin
    '2026-11-22'
    """
    zone = ZoneInfo(timezone)

    def run_date(moment: datetime) -> str:
        return (moment.astimezone(zone).date() - timedelta(days=offset_days)).isoformat()

    return run_date


def read_model(config_path: Path) -> dict[str, Any]:
    """The model YAML as a dict; only ``name``, ``spark.conf`` and ``scoring.device`` are used."""
    model = yaml.safe_load(config_path.read_text())
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise ValueError(f"{config_path}: a model config needs a top-level string `name`")
    return model


def choose_path(run_type: object, mode: str | None, online: str = "score") -> str:
    """The first task of a run: ``backfill`` for Airflow backfill runs (or ``mode: backfill``),
    else ``online``, the head of the online chain (``score``, or ``run`` in one-application mode).

    >>> choose_path("backfill", "online"), choose_path("scheduled", None), choose_path("manual", "backfill")
    ('backfill', 'score', 'backfill')
    >>> choose_path("manual", "online", online="run")
    'run'
    """
    kind = str(getattr(run_type, "value", run_type))
    return "backfill" if kind == "backfill" or mode == "backfill" else online


@task.branch(task_id="route")
def _route(online: str = "score", **context: Any) -> str:
    """Runs in the Airflow worker (stdlib only): picks the online chain or the history backfill."""
    return choose_path(context["dag_run"].run_type, (context.get("params") or {}).get("mode"), online)


def _callback(path: str | None) -> Callable[..., Any] | None:
    if not path:
        return None
    module, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"on_failure_callback {path!r}: expected 'package.module:function'")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


def _default_args(s: DagSettings) -> dict[str, Any]:
    timeout = s.execution_timeout_minutes
    return {
        "retries": s.retries,
        "retry_delay": timedelta(seconds=s.retry_delay_seconds),
        "retry_policy": ExitCodeRetryPolicy(),
        "execution_timeout": timedelta(minutes=timeout) if timeout else None,
        "on_failure_callback": _callback(s.on_failure_callback),
    }


def scoring_pool(model: dict[str, Any], s: DagSettings) -> str:
    """The pool of the tasks that score: a per-model ``pool`` setting; else ``gpu_pool`` for models
    that may use a GPU (``scoring.device`` ``cuda`` or ``auto``, the default); else ``default_pool``.

    >>> scoring_pool({"scoring": {"device": "cpu"}}, DagSettings())
    'default_pool'
    >>> scoring_pool({"scoring": {"device": "auto"}}, DagSettings()), scoring_pool({}, DagSettings(gpu_pool=None))
    ('batchscore_gpu', 'default_pool')
    """
    device = (model.get("scoring") or {}).get("device", "auto")
    return s.pool or (s.gpu_pool if device != "cpu" and s.gpu_pool else "default_pool")


def spark_conf(model: dict[str, Any], s: DagSettings) -> dict[str, str]:
    """The task's ``--conf``: the job env's Python, quiet logs (unless ``quiet_spark_logs: false``),
    then the settings' ``spark_conf``, then the model's ``spark.conf`` (each wins over the one
    before; ``spark.driver.extraJavaOptions`` of either is appended to the log config option)."""
    model_conf = (model.get("spark") or {}).get("conf") or {}
    conf: dict[str, Any] = {"spark.pyspark.python": str(s.job_python)}
    quiet = f"-Dlog4j2.configurationFile=file:{SPARK_LOG_CONFIG}"
    if s.quiet_spark_logs:  # task logs without progress bars and INFO lines
        conf.update({"spark.ui.showConsoleProgress": "false", "spark.driver.extraJavaOptions": quiet})
    for extra in (s.spark_conf, model_conf):
        for key, value in extra.items():
            if key == "spark.driver.extraJavaOptions" and s.quiet_spark_logs:
                value = f"{conf[key]} {value}"  # later -D options win: a config file of their own too
            conf[key] = value
    return {k: str(v) for k, v in conf.items()}


def _submit(step: str, config_path: Path, model: dict[str, Any], s: DagSettings) -> SparkSubmitOperator:
    name, python = model["name"], str(s.job_python)
    args = ["--model-config", str(config_path)]
    if step == "backfill":  # one date into the history table; never moves the online pointer
        args += ["--from", RUN_DATE, "--to", RUN_DATE]
    elif step != "gc":
        args += ["--run-date", RUN_DATE, "--run-id", RUN_ID]
    # Only scoring may hold a GPU; validate, publish and gc always run in the default pool.
    pool = scoring_pool(model, s) if step in SCORING else "default_pool"
    return SparkSubmitOperator(
        task_id=step,
        name=f"batchscore-{step}-{name}",
        application=str(s.repo / "jobs" / f"{step}.py"),
        application_args=args,
        conf=spark_conf(model, s),
        conn_id=s.spark_conn_id,
        # The operator argument may be any path (the connection's `spark-binary` extra only takes
        # names looked up on PATH): the job environment's spark-submit, whatever the worker's PATH.
        spark_binary=str(s.spark_submit),
        # Client mode: added to the worker's environment (BATCHSCORE_REDIS_URL is inherited from
        # it; never put secrets here, rendered env_vars are stored and shown unmasked).
        env_vars={"PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python},
        pool=pool,
        # No app id to reconnect to in client mode; durable=True breaks YARN cluster mode.
        durable=False,
    )


def build_dag(config_path: Path, settings: DagSettings, *, one_application: bool | None = None) -> DAG:
    """The DAG of one model config; ``one_application`` (default: the settings') makes the online
    chain one ``run`` task (see dags/README.md for the trade-off)."""
    config_path = config_path.resolve()
    model = read_model(config_path)
    name = model["name"]
    s = settings.for_model(name)
    if one_application is not None:
        s = replace(s, one_application=one_application)
    with DAG(
        dag_id=f"batchscore_{name}",
        schedule=CronTriggerTimetable(s.schedule, timezone=s.timezone) if s.schedule else None,
        start_date=datetime(s.start_date.year, s.start_date.month, s.start_date.day, tzinfo=UTC),
        catchup=False,
        max_active_runs=s.max_active_runs,
        default_args=_default_args(s),
        params={"run_date": Param("", type="string", pattern=RUN_DATE_PATTERN,
                                  description="YYYY-MM-DD to score; empty: the run's logical date"),
                "mode": Param("online", type="string", enum=list(MODES),
                              description="online: score -> validate -> publish; backfill: score "
                                          "run_date into the history table only (backfill runs "
                                          "of `airflow backfill create` always do this)")},
        user_defined_filters={"batchscore_run_id": safe_run_id,
                              "batchscore_run_date": run_date_filter(s.timezone, s.run_date_offset_days)},
        tags=["batchscore", name],
        doc_md=f"Scores `{name}` ({config_path}) and publishes it to Delta and Redis"
               f"{' in one Spark application (`run`)' if s.one_application else ''}. See dags/README.md.",
    ) as dag:
        steps = ONE_APPLICATION if s.one_application else STEPS
        steps = (*steps, "gc") if s.gc else steps
        online = [_submit(step, config_path, model, s) for step in steps]
        chain(*online)
        _route(online=online[0].task_id) >> [online[0], _submit("backfill", config_path, model, s)]
    return dag


def build_all(settings: DagSettings | None = None) -> dict[str, DAG]:
    """One DAG per ``*.yaml`` in the settings' model directory, keyed by dag_id."""
    settings = settings or load_settings()
    dags: dict[str, DAG] = {}
    sources: dict[str, Path] = {}
    for path in sorted(settings.models_dir.glob("*.yaml")):
        dag = build_dag(path, settings)
        if dag.dag_id in dags:
            raise ValueError(f"{path} and {sources[dag.dag_id]} both define {dag.dag_id}: model names must differ")
        dags[dag.dag_id], sources[dag.dag_id] = dag, path
    return dags
