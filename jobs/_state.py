"""Run state on disk: the JSON reports each step writes, which the next step (and Airflow) reads.

Layout: ``<runtime.report_dir>/<model>/<run_id>/{score,validation,publish,run}.json`` and
``<runtime.report_dir>/<model>/LATEST`` (the last scored run id), on local disk or a store
(``runtime.report_dir: s3://...``, :mod:`batchscore.storage`); each report is written whole.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from batchscore import storage as st
from batchscore.config import ModelConfig
from batchscore.errors import ConfigError, PublishRefusedError
from batchscore.jobs.reports import Report

R = TypeVar("R", bound=Report)

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


def run_dir(cfg: ModelConfig, run_id: str) -> str:
    """The run's report folder: a local path or a URI on the store (``runtime.report_dir``)."""
    return st.join(cfg.runtime.report_dir, cfg.name, check_run_id(run_id))


def report_uri(cfg: ModelConfig, run_id: str, name: str) -> str:
    return st.join(run_dir(cfg, run_id), name)


def staged_path(cfg: ModelConfig, run_id: str) -> str:
    """Where the score step writes a run's Parquet: under the Delta root, invisible until committed."""
    return st.join(cfg.outputs.delta.path, "runs", check_run_id(run_id))


def invalidate(cfg: ModelConfig, run_id: str, *steps: str) -> None:
    """Remove the reports of ``steps`` for ``run_id`` (a re-score voids its earlier judgement)."""
    for step in steps:
        st.delete_file(report_uri(cfg, run_id, f"{step}.json"), cfg.store)


def write_report(cfg: ModelConfig, run_id: str, step: str, report: Report | dict[str, Any]) -> str:
    """Write ``<step>.json`` whole (a rename locally, one PUT on an object store); return where."""
    uri = report_uri(cfg, run_id, f"{step}.json")
    body = report.to_json() if isinstance(report, Report) else report
    st.write_bytes(uri, json.dumps(body, indent=2, sort_keys=True, default=str).encode(), cfg.store)
    if step == "score":
        st.write_bytes(st.join(cfg.runtime.report_dir, cfg.name, "LATEST"), run_id.encode(), cfg.store)
    return uri


def write_file(cfg: ModelConfig, run_id: str, name: str, local: str) -> str:
    """Copy a local file (a histogram PNG) next to the run's reports; return where it is."""
    uri = report_uri(cfg, run_id, name)
    if st.is_local(uri) and os.path.abspath(local) == os.path.abspath(uri):
        return uri
    st.write_bytes(uri, Path(local).read_bytes(), cfg.store)
    return uri


def read_report(cfg: ModelConfig, run_id: str, step: str) -> dict[str, Any] | None:
    """``<step>.json`` of ``run_id`` as written (a JSON object), or None when there is none."""
    uri = report_uri(cfg, run_id, f"{step}.json")
    return json.loads(st.read_bytes(uri, cfg.store)) if st.is_file(uri, cfg.store) else None


def read(cfg: ModelConfig, run_id: str, kind: type[R]) -> R | None:
    """The typed report of ``kind`` (its ``STEP``) for ``run_id``, or None when there is none."""
    raw = read_report(cfg, run_id, kind.STEP)
    return None if raw is None else kind.from_json(raw, where=report_uri(cfg, run_id, f"{kind.STEP}.json"))


def latest_run_id(cfg: ModelConfig) -> str:
    uri = st.join(cfg.runtime.report_dir, cfg.name, "LATEST")
    if not st.is_file(uri, cfg.store):
        raise PublishRefusedError(
            f"no scored run of model '{cfg.name}' under {st.join(cfg.runtime.report_dir, cfg.name)}; run "
            "`batchscore score` first or pass --run-id"
        )
    return st.read_bytes(uri, cfg.store).decode().strip()
