"""Settings of the batchscore DAGs: ``dags/dag_settings.yaml`` plus a few environment overrides.

Model configs (``conf/models/*.yaml``) hold no Airflow keys (the job's config loader rejects
unknown keys), so schedules, pools, retries and callbacks live here, with per-model overrides.
Imports only the stdlib and PyYAML: this runs at every DAG parse.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from datetime import date
from pathlib import Path
from typing import Any

import yaml

DAGS_DIR = Path(__file__).resolve().parents[1]
SETTINGS_FILE = DAGS_DIR / "dag_settings.yaml"
SPARK_LOG_CONFIG = DAGS_DIR / "spark-log4j2.properties"
# Paths that differ per deployment, overridable without editing the YAML.
ENV_OVERRIDES = {
    "repo": "BATCHSCORE_REPO",
    "job_env": "BATCHSCORE_JOB_ENV",
    "conf_dir": "BATCHSCORE_CONF_DIR",
}


class SettingsError(ValueError):
    """dag_settings.yaml (or a per-model override) is invalid; the message names the file and key."""


@dataclass(frozen=True)
class DagSettings:
    """Everything the DAG factory needs besides the model config itself."""

    repo: Path = DAGS_DIR.parent
    job_env: Path | None = None  # default: <repo>/.venv
    conf_dir: Path | None = None  # default: <repo>/conf/models
    schedule: str | None = "0 3 * * *"
    timezone: str = "UTC"
    run_date_offset_days: int = 0
    start_date: date = date(2026, 1, 1)
    max_active_runs: int = 1
    retries: int = 2
    retry_delay_seconds: int = 300
    execution_timeout_minutes: int | None = 240
    gpu_pool: str | None = "batchscore_gpu"  # None: no GPU pool (CPU-only deployments)
    pool: str | None = None  # the scoring task's pool (default: gpu_pool unless scoring.device is cpu)
    spark_conn_id: str = "spark_default"
    spark_conf: dict[str, Any] = field(default_factory=dict)
    quiet_spark_logs: bool = True  # no progress bars, Spark logs at WARN (dags/spark-log4j2.properties)
    one_application: bool = False  # one `run` task: score, validate and publish in one spark-submit
    gc: bool = False
    on_failure_callback: str | None = None
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in fields(self):  # switches are booleans: a YAML "no" string would read as true
            if isinstance(f.default, bool) and not isinstance(getattr(self, f.name), bool):
                raise SettingsError(f"{f.name}: expected true or false, got {getattr(self, f.name)!r}")

    @property
    def job_python(self) -> Path:
        return self.env_dir / "bin" / "python"

    @property
    def spark_submit(self) -> Path:
        return self.env_dir / "bin" / "spark-submit"

    @property
    def env_dir(self) -> Path:
        return self.job_env or self.repo / ".venv"

    @property
    def models_dir(self) -> Path:
        return self.conf_dir or self.repo / "conf" / "models"

    def for_model(self, name: str) -> DagSettings:
        """These settings with ``models.<name>`` applied on top."""
        override = self.models.get(name) or {}
        bad = sorted(set(override) - _model_keys())
        if bad:
            raise SettingsError(f"models.{name}: unknown keys {bad}; allowed: {sorted(_model_keys())}")
        return replace(self, **override)


def _model_keys() -> set[str]:
    return {f.name for f in fields(DagSettings)} - {"repo", "job_env", "conf_dir", "models"}


def load_settings(path: Path | None = None, environ: dict[str, str] | None = None) -> DagSettings:
    """Read ``path`` (default ``dags/dag_settings.yaml``), then apply ``BATCHSCORE_*`` path overrides."""
    path = path or Path(os.environ.get("BATCHSCORE_DAG_SETTINGS") or SETTINGS_FILE)
    environ = os.environ if environ is None else environ
    raw = yaml.safe_load(path.read_text()) or {}
    known = {f.name for f in fields(DagSettings)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SettingsError(f"{path}: unknown keys {unknown}; allowed: {sorted(known)}")
    for key, var in ENV_OVERRIDES.items():
        if environ.get(var):
            raw[key] = environ[var]
    for key in ENV_OVERRIDES:
        value = raw.pop(key, None)
        if value is not None:  # null keeps the default (relative to this checkout)
            raw[key] = Path(value).expanduser().resolve()
    return DagSettings(**raw)
