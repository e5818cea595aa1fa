"""Test hooks for the fault-injection tests: crash or pause the publish at a named point.

Only active when the environment says so; never set these variables in production.

* ``BATCHSCORE_CRASH_AT=<point>``: SIGKILL at ``point``. Driver points kill the driver process
  (its JVM exits when the driver's pipe closes); ``during_redis_load`` (an executor point) kills
  the process group of the session leader, i.e. the job the test started with
  ``start_new_session=True`` (driver + JVM; the Python workers exit with the JVM).
* ``BATCHSCORE_PAUSE_AT=<point>:<seconds>``: sleep there (e.g. to restart Redis mid-load).
* ``BATCHSCORE_KILL_TASK_ONCE=<point>:<marker file>``: SIGKILL only this process (a Python worker
  of a Spark task) at ``point``, once across processes (the marker file records it), so Spark
  retries the task and the retry runs through.

Points: ``during_redis_load`` (after a task's first pipelined batch), ``after_redis_load``,
``after_delta_commit`` (before the pointer flip), ``after_flip`` (before GC), ``during_gc``
(after a version's buckets are unlinked, before its control keys), ``rollback_after_restore``
(between a rollback's Delta restore and its flip), ``after_staged_write`` (an executor point: a
scoring task's Parquet file is written, its result not yet returned), ``backfill_after_write`` (a date's Parquet
written, not committed).
"""

from __future__ import annotations

import os
import signal
import time

_passed: set[str] = set()


def reached(point: str, *, whole_group: bool = False) -> None:
    """Crash or pause here (once per process) when the test hooks ask for ``point``."""
    once = os.environ.get("BATCHSCORE_KILL_TASK_ONCE", "")
    if once.partition(":")[0] == point:
        marker = once.partition(":")[2]
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
    if point in _passed:
        return
    _passed.add(point)
    pause = os.environ.get("BATCHSCORE_PAUSE_AT", "")
    if pause.partition(":")[0] == point:
        time.sleep(float(pause.partition(":")[2] or 1))
    if os.environ.get("BATCHSCORE_CRASH_AT") == point:
        if whole_group:
            os.killpg(os.getsid(0), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
