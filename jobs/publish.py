"""``batchscore publish``: load Redis version (invisible) -> verify -> Delta commit -> flip pointer.

Any crash leaves readers on the previous version; rerunning the same run id resumes and converges
(the Redis version is reused, the Delta commit is skipped if its app transaction is recorded, and
the pointer flip is a compare-and-set). Also runnable as ``spark-submit jobs/publish.py ...``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from batchscore import redis_layout as layout
from batchscore.config import ModelConfig, load_model_config
from batchscore.errors import PublishRefusedError
from batchscore.redis_conn import connect
from batchscore.sinks import delta
from batchscore.sinks.redis import RedisVersions, Version
from batchscore.sinks.redis_load import make_loader
from jobs import entry, state
from jobs.session import build_session


def _load_redis(spark: SparkSession, cfg: ModelConfig, staged: str, url: str, ns: str, version: Version) -> dict[int, int]:
    cols = cfg.outputs.columns
    df = spark.read.parquet(staged).select(F.col(cfg.input.key).cast("string").alias("k"), *cols)
    df = df.withColumn("b", F.pmod(F.crc32(F.col("k")), F.lit(version.buckets)))
    parts = max(1, min(version.buckets, spark.sparkContext.defaultParallelism * 2))
    loader = make_loader(url, ns, version.number, cols)
    try:
        rows = df.repartition(parts, "b").mapInPandas(loader, "b long, n long").collect()
    except Exception as exc:
        known = entry.executor_error(exc)
        if known is not None:
            raise known from None
        raise
    counts: dict[int, int] = {}
    for r in rows:
        counts[int(r["b"])] = counts.get(int(r["b"]), 0) + int(r["n"])
    return counts


def publish(spark: SparkSession, cfg: ModelConfig, *, run_id: str, redis_url: str) -> dict[str, Any]:
    started = time.perf_counter()
    scored = state.read_report(cfg, run_id, "score")
    validated = state.read_report(cfg, run_id, "validation")
    if scored is None or validated is None or not validated.get("passed"):
        why = "was not validated" if validated is None else "failed validation"
        raise PublishRefusedError(
            f"run {run_id} of '{cfg.name}' {why}; run `batchscore validate --run-id {run_id}` and fix what it reports"
        )
    table = cfg.outputs.delta.path
    staged = delta.stage(table, run_id)
    if staged.total_rows != int(scored["input_rows"]):
        raise PublishRefusedError(f"{staged.run_path}: {staged.total_rows} staged rows but {scored['input_rows']} scored; re-score the run")
    ns = layout.namespace(cfg.outputs.redis.key_prefix, cfg.name)
    store = RedisVersions(connect(redis_url), ns)
    token = store.lock(run_id=run_id)
    try:
        version = store.begin(run_id=run_id, rows=staged.total_rows, columns=cfg.outputs.columns, model_version=cfg.model.version)
        if version.state == "loading":
            entry.log(f"publish {cfg.name}: loading {staged.total_rows:,} entities into Redis version {version.number} ({version.buckets} buckets)")
            counts = _load_redis(spark, cfg, staged.run_path, redis_url, ns, version)
            store.verify(version, counts)
        else:
            entry.log(f"publish {cfg.name}: Redis version {version.number} already loaded by an earlier try; reusing it")
        dv = delta.committed_version(table, cfg.name, run_id)
        if dv is None:
            dv = delta.commit(table, staged, model=cfg.name, run_id=run_id, metadata={
                "model": cfg.name, "model_version": cfg.model.version, "redis_version": str(version.number),
                "rows": str(staged.total_rows),
                # the validated profile travels with the version: the next run's drift reference
                "profile": json.dumps(validated.get("profile", {}), sort_keys=True)})
            entry.log(f"publish {cfg.name}: committed Delta version {dv} at {table}")
        store.record_delta_version(version, dv)
        store.flip(version)
        dropped = store.gc(keep=cfg.outputs.redis.keep_versions)
    finally:
        store.unlock(token)
    report = {
        "model": cfg.name, "run_id": run_id, "rows": staged.total_rows, "delta_version": dv,
        "redis_version": version.number, "previous_redis_version": version.previous,
        "gc_versions": dropped, "seconds": round(time.perf_counter() - started, 2),
    }
    state.write_report(cfg, run_id, "publish", report)
    entry.log(f"publish {cfg.name}: pointer {ns} -> version {version.number} (was {version.previous})")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = entry.parser("publish", __doc__.splitlines()[0]).parse_args(entry.argv_or_sys(argv))

    def body() -> dict[str, Any]:
        cfg = load_model_config(args.model_config)
        run_id = state.check_run_id(args.run_id or state.latest_run_id(cfg))
        url = cfg.redis_url()
        spark = build_session(f"batchscore-publish-{cfg.name}", master=args.master or cfg.spark.master, conf=cfg.spark.conf)
        rep = publish(spark, cfg, run_id=run_id, redis_url=url)
        entry.summary(f"publish {cfg.name}", {"run id": run_id, "rows": f"{rep['rows']:,}", "delta version": rep["delta_version"],
                      "redis version": rep["redis_version"], "time": f"{rep['seconds']} s"})
        return rep

    return entry.guarded(body)


if __name__ == "__main__":
    sys.exit(main())
