"""Example failure callback for the batchscore DAGs (``on_failure_callback`` in dag_settings.yaml).

A callback is any importable ``module:function`` taking the task context; it runs in the task's
worker process after the final failure (not after a failure that will be retried). Keep it
light and never let it raise: put paging/chat integrations behind it. Stdlib only.
"""

from __future__ import annotations

import logging
from typing import Any

from _lib.retry import EXIT_MEANING, exit_code

log = logging.getLogger("batchscore.dags")


def describe_failure(context: Any) -> str:
    """One line naming the DAG, task, run, try and the job's exit code with its meaning."""
    ti = context["ti"]
    exc = context.get("exception")
    code = exit_code(exc) if exc is not None else None
    meaning = EXIT_MEANING.get(code, "no exit code") if code is not None else "no exit code"
    return (
        f"batchscore task failed: dag={ti.dag_id} task={ti.task_id} run={ti.run_id} "
        f"try={ti.try_number} exit={code} ({meaning})"
    )


def log_failure(context: Any) -> None:
    """Log :func:`describe_failure` at ERROR level (a starting point for alerting)."""
    try:
        log.error(describe_failure(context))
    except Exception:  # a broken callback must not hide the task's own failure
        log.exception("batchscore failure callback could not describe the failure")
