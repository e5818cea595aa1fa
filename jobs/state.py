"""Run state on disk: the JSON reports each step writes, which the next step (and Airflow) reads.

Layout: ``<runtime.report_dir>/<model>/<run_id>/{score,validation,publish,run}.json`` and
``<runtime.report_dir>/<model>/LATEST`` (the last scored run id).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batchscore.config import ModelConfig
from batchscore.errors import ConfigError, PublishRefusedError

# A run id is a path segment and part of Redis keys: no "." or "..", no leading dot or dash.
_RUN_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def new_run_id(run_date: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{run_date}_{stamp}_{secrets.token_hex(2)}"


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id):
        raise ConfigError(f"--run-id {run_id!r}: use 1-128 characters from [A-Za-z0-9_.-], starting with a "
                          "letter, digit or underscore")
    return run_id


def run_dir(cfg: ModelConfig, run_id: str) -> Path:
    return Path(cfg.runtime.report_dir) / cfg.name / check_run_id(run_id)


def staged_path(cfg: ModelConfig, run_id: str) -> str:
    """Where the score step writes a run's Parquet: under the Delta root, invisible until committed."""
    return f"{cfg.outputs.delta.path.rstrip('/')}/runs/{check_run_id(run_id)}"


def invalidate(cfg: ModelConfig, run_id: str, *steps: str) -> None:
    """Remove the reports of ``steps`` for ``run_id`` (a re-score voids its earlier judgement)."""
    for step in steps:
        (run_dir(cfg, run_id) / f"{step}.json").unlink(missing_ok=True)


def write_report(cfg: ModelConfig, run_id: str, step: str, report: dict[str, Any]) -> Path:
    d = run_dir(cfg, run_id)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{step}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
    if step == "score":
        (d.parent / "LATEST").write_text(run_id)
    return path


def read_report(cfg: ModelConfig, run_id: str, step: str) -> dict[str, Any] | None:
    path = run_dir(cfg, run_id) / f"{step}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def latest_run_id(cfg: ModelConfig) -> str:
    path = Path(cfg.runtime.report_dir) / cfg.name / "LATEST"
    if not path.is_file():
        raise PublishRefusedError(
            f"no scored run of model '{cfg.name}' under {path.parent}; run `batchscore score` first "
            "or pass --run-id"
        )
    return path.read_text().strip()
