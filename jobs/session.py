"""The only place a SparkSession is built."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
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


def build_session(
    app_name: str, *, master: str | None = None, conf: Mapping[str, Any] | None = None
) -> SparkSession:
    # Executors' Python must be this interpreter (the job environment), not whatever `python3` is.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master and not launched_by_spark_submit():
        builder = builder.master(master)
    for key, value in {**BASE_CONF, **{k: str(v) for k, v in (conf or {}).items()}}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark
