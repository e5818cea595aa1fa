"""Builds one Airflow DAG per model config: score -> validate -> publish (-> gc).

Imports only the Airflow Task SDK, the Spark provider, PyYAML and the stdlib: DAG files are parsed
often and must stay light (no pyspark, pandas, Great Expectations or batchscore imports). Each
task is a ``spark-submit`` of ``jobs/<step>.py`` with the job environment's own spark-submit and
Python; they meet batchscore only through CLI arguments and exit codes:
0 ok, 2 bad input and 3 validation rejected fail at once (no retry), 4 infrastructure retries.
"""

from __future__ import annotations

import importlib
import os
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, CronTriggerTimetable, Param
from airflow.sdk.exceptions import AirflowFailException

REPO = Path(__file__).resolve().parents[2]
NO_RETRY = {2: "bad input", 3: "validation rejected"}
# Explicit run window: the run_date param when given, else the run's logical date (a manual run
# with no logical date uses run_after). Never the data interval, which is empty under Airflow 3's
# trigger timetables.
RUN_DATE = (
    "{{ params.run_date if params.run_date else "
    "(logical_date or dag_run.run_after).strftime('%Y-%m-%d') }}"
)
RUN_ID = "{{ run_id | replace(':', '') | replace('+', '_') | replace(' ', '_') }}"


class BatchscoreSubmitOperator(SparkSubmitOperator):
    """spark-submit that fails fast (no retry) on batchscore's bad-input and rejection codes."""

    def execute(self, context: Any) -> Any:
        try:
            return super().execute(context)
        except AirflowFailException:
            raise
        except Exception as exc:
            match = re.search(r"Error code is: (\d+)", str(exc))
            code = int(match.group(1)) if match else None
            if code in NO_RETRY:
                raise AirflowFailException(
                    f"batchscore exited {code} ({NO_RETRY[code]}): not retrying; see the task log and the run report"
                ) from exc
            raise


def load_settings(path: Path | None = None) -> dict[str, Any]:
    settings = yaml.safe_load((path or Path(__file__).parents[1] / "dag_settings.yaml").read_text()) or {}
    settings["job_env"] = os.environ.get("BATCHSCORE_JOB_ENV") or str(REPO / ".venv")
    settings["conf_dir"] = os.environ.get("BATCHSCORE_CONF_DIR") or str(REPO / "conf" / "models")
    return settings


def _callback(path: str | None) -> Any:
    if not path:
        return None
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def build_dag(config_path: Path, settings: dict[str, Any]) -> DAG:
    model = yaml.safe_load(config_path.read_text())
    name = model["name"]
    spark = model.get("spark") or {}
    device = (model.get("scoring") or {}).get("device", "auto")
    job_env = Path(settings["job_env"])
    python = str(job_env / "bin" / "python")
    conf = {"spark.pyspark.python": python, **{k: str(v) for k, v in (spark.get("conf") or {}).items()}}
    args = ["--model-config", str(config_path.resolve()), "--run-date", RUN_DATE, "--run-id", RUN_ID]
    default_args = {
        "retries": int(settings.get("retries", 2)),
        "retry_delay": timedelta(seconds=int(settings.get("retry_delay_seconds", 300))),
        "on_failure_callback": _callback(settings.get("on_failure_callback")),
    }
    with DAG(
        dag_id=f"batchscore_{name}",
        schedule=CronTriggerTimetable(settings.get("schedule", "0 3 * * *"), timezone=settings.get("timezone", "UTC")),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args=default_args,
        params={"run_date": Param("", type="string", description="YYYY-MM-DD; empty = the run's logical date")},
        tags=["batchscore", name],
        doc_md=f"Scores `{name}` ({config_path.name}) and publishes it to Delta and Redis.",
    ) as dag:
        steps = ["score", "validate", "publish"] + (["gc"] if settings.get("gc") else [])
        tasks = []
        for step in steps:
            tasks.append(
                BatchscoreSubmitOperator(
                    task_id=step,
                    name=f"batchscore-{step}-{name}",
                    application=str(REPO / "jobs" / f"{step}.py"),
                    application_args=args if step != "gc" else ["--model-config", str(config_path.resolve())],
                    conf=conf,
                    conn_id=settings.get("spark_conn_id", "spark_default"),
                    spark_binary=str(job_env / "bin" / "spark-submit"),
                    env_vars={"PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python},
                    pool=settings["gpu_pool"] if step == "score" and device != "cpu" else "default_pool",
                    durable=False,
                )
            )
        for upstream, downstream in zip(tasks, tasks[1:]):
            upstream >> downstream
    return dag


def build_all(settings: dict[str, Any] | None = None) -> dict[str, DAG]:
    settings = settings or load_settings()
    return {
        f"batchscore_{p.stem}": build_dag(p, settings)
        for p in sorted(Path(settings["conf_dir"]).glob("*.yaml"))
    }
