"""The only place a SparkSession is built (:func:`session_for` for a job step of a model config)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

BASE_CONF: dict[str, str] = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.python.worker.reuse": "true",
    # Arrow transfer unit between the JVM and Python workers (Spark's default, made explicit):
    # the scoring UDFs re-cut rows to scoring.batch_size themselves, so this only trades per-batch
    # overhead against worker memory (~10,000 x features x 4 bytes per batch in flight).
    "spark.sql.execution.arrow.maxRecordsPerBatch": "10000",
    "spark.sql.shuffle.partitions": "8",
    # Delta wants TIMESTAMP_MICROS, not Spark's legacy INT96.
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.showConsoleProgress": "true",
    "spark.ui.enabled": "false",
    "spark.driver.memory": "2g",
}


def launched_by_spark_submit() -> bool:
    """True inside ``spark-submit`` (the JVM already exists and owns the master setting)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def _submitted_keys() -> set[str]:
    """The Spark conf keys spark-submit set (none outside spark-submit)."""
    if not launched_by_spark_submit():
        return set()
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # the JVM spark-submit started: its system properties
    return {key for key, _ in SparkConf().getAll()}


_LOG4J = """\
rootLogger.level = warn
rootLogger.appenderRef.file.ref = file
appender.file.type = File
appender.file.name = file
appender.file.fileName = {path}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d{{yy/MM/dd HH:mm:ss}} %p %c{{1}}: %m%n
"""


#: Spark log files kept in the log folder (the oldest beyond these are deleted when a job starts).
KEEP_LOG_FILES = 50


def spark_log_file(app: str) -> str:
    """Where Spark's own log lines go unless ``--verbose``: ``$BATCHSCORE_LOG_DIR`` (default the
    temp dir's ``batchscore-logs``), one file per job; only the newest :data:`KEEP_LOG_FILES` stay."""
    import tempfile
    import time

    d = Path(os.environ.get("BATCHSCORE_LOG_DIR") or Path(tempfile.gettempdir()) / "batchscore-logs")
    d.mkdir(parents=True, exist_ok=True)
    old = sorted(d.glob("batchscore-*.log"), key=lambda p: p.stat().st_mtime, reverse=True)[KEEP_LOG_FILES - 1:]
    for stale in old:
        try:
            stale.unlink()
        except OSError:  # another job's file, or gone already: not ours to insist on
            pass
    return str(d / f"{app}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")


def session_for(cfg: Any, verb: str, *, master: str | None = None, verbose: bool = False) -> SparkSession:
    """The session of one job step for model config ``cfg``: its app name, the config's master
    (unless ``master`` or spark-submit says otherwise) and ``spark.conf``; unless ``verbose``,
    Spark's own log lines go to a file (named in the job's log) and no progress bars are drawn."""
    app = f"batchscore-{verb}-{cfg.name}"
    log_file = None if verbose else spark_log_file(app)
    return build_session(app, master=master or cfg.spark.master, conf=cfg.spark.conf, log_file=log_file)


def build_session(
    app_name: str, *, master: str | None = None, conf: Mapping[str, Any] | None = None,
    log_file: str | None = None,
) -> SparkSession:
    # Executors' Python must be this interpreter (the job environment), not whatever `python3` is.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master and not launched_by_spark_submit():
        builder = builder.master(master)
    # What spark-submit was given (--conf, spark-defaults.conf) wins over these defaults, as it does
    # over Spark's own: e.g. the DAGs' spark.ui.showConsoleProgress=false. The config's spark.conf
    # still wins over both.
    submitted = _submitted_keys()
    base = {k: v for k, v in BASE_CONF.items() if k not in submitted}
    user = {k: str(v) for k, v in (conf or {}).items()}
    if log_file and not launched_by_spark_submit() and SparkSession.getActiveSession() is None:
        props = Path(log_file).with_suffix(".log4j2.properties")
        props.write_text(_LOG4J.format(path=log_file))
        java = f"-Dlog4j2.configurationFile=file:{props}"
        extra = user.get("spark.driver.extraJavaOptions")
        user["spark.driver.extraJavaOptions"] = f"{java} {extra}" if extra else java
        base["spark.ui.showConsoleProgress"] = "false"
        logging.getLogger(__name__).info("Spark's log: %s (--verbose: on the console)", log_file)
    for key, value in {**base, **user}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark
