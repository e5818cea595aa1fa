"""How batchscore processes end: the exit code is the contract with orchestrators.

delta-rs (the ``deltalake`` package) can abort a process that already finished its work, at
interpreter teardown, with ``terminate called without an active exception`` (SIGABRT, exit 134;
delta-io/delta-rs#2184, seen here after reading a table). An orchestrator would read a successful
publish as a failure and retry it. So entry points flush their output, stop an active Spark
session, and leave with ``os._exit`` instead of running the interpreter's teardown.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn


def exit_now(code: int) -> NoReturn:
    """Flush stdout/stderr and logging, stop the active Spark session if any, exit with ``code``."""
    sql = sys.modules.get("pyspark.sql")
    if sql is not None:
        try:
            session = sql.SparkSession.getActiveSession()
            if session is not None:
                session.stop()
        except Exception:  # noqa: BLE001 - the exit code matters more than a clean Spark stop
            pass
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe must not change the exit code
            pass
    os._exit(code)
