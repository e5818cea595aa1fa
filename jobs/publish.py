"""``batchscore publish``: pre-flight -> load Redis version (invisible) -> verify -> Delta commit -> flip.

Any crash leaves readers on the previous version; rerunning the same run id resumes and converges:
the Redis version of the run is reused (reloaded if it was not verified), the Delta commit is
skipped when its app transaction is recorded, and the pointer flip is a compare-and-set that only
moves forward. One publish per model at a time (a Redis lock with a TTL, renewed while running).
Also runnable as ``spark-submit jobs/publish.py ...``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyspark.sql import SparkSession

from batchscore.exit import exit_now
from batchscore import redis_layout as layout
from batchscore.config import ModelConfig, load_model_config
from batchscore.errors import PublishRefusedError
from batchscore.redis_conn import connect, memory_of, primaries
from batchscore.sinks import crashpoint, delta, redis_preflight
from batchscore.sinks.redis import RedisVersions, Version
from batchscore.sinks.redis_gc import collect
from batchscore.sinks.redis_load import make_loader
from jobs import entry, state
from jobs.session import build_session
from udfs.file_scan import fragment_frame, plan_fragments, read_fragments


def load_version(spark: SparkSession, cfg: ModelConfig, paths: list[str], url: str, store: RedisVersions,
                 version: Version) -> dict[int, int]:
    """Load the Parquet ``paths`` (files or directories) into Redis ``version`` from the executors;
    return bucket counts. Each task reads its share of the files with pyarrow (one fragment per
    core, :mod:`udfs.file_scan`) and hashes keys to buckets in numpy: no rows through the JVM,
    no shuffle (the staged files are on storage every node mounts, as for the Delta commit)."""
    key, cols = cfg.input.key, list(cfg.outputs.columns)
    loader = make_loader(url, store.ns, version.number, version.buckets, cols, cluster=cfg.outputs.redis.cluster)

    def load(descriptors: Iterator[Any]) -> Iterator[Any]:
        yield from loader(read_fragments(descriptors, [key, *cols]))

    frags = plan_fragments(parquet_files(paths), parallelism=spark.sparkContext.defaultParallelism)
    try:
        rows = fragment_frame(spark, frags).mapInArrow(load, "b long, n long").collect()
    except Exception as exc:
        known = entry.executor_error(exc)
        if known is not None:
            raise known from None
        raise
    counts: dict[int, int] = {}
    for r in rows:
        counts[int(r["b"])] = counts.get(int(r["b"]), 0) + int(r["n"])
    return counts


def parquet_files(paths: list[str]) -> list[str]:
    """The Parquet files of ``paths``: files as given, directories searched recursively (skipping
    ``_``/``.``-prefixed names, like Spark)."""
    out: list[str] = []
    for p in paths:
        path = Path(p.removeprefix("file://"))
        if path.is_file():
            out.append(str(path))
            continue
        found = sorted(f for f in path.rglob("*.parquet")
                       if not any(part.startswith(("_", ".")) for part in f.relative_to(path).parts))
        if not found:
            raise PublishRefusedError(f"no Parquet files under {path}; nothing to load into Redis")
        out.extend(str(f) for f in found)
    return out


def used_memory(client: Any) -> int:
    return sum(memory_of(node)["used"] for node in primaries(client))


def load_and_verify(spark: SparkSession, cfg: ModelConfig, paths: list[str], url: str, store: RedisVersions,
                    version: Version, rows: int) -> None:
    """Load, verify every bucket against ``rows``, and record the measured bytes per entity."""
    entry.log(f"{store.ns}: loading {rows:,} entities into Redis version {version.number} ({version.buckets} buckets)")
    before = used_memory(store.r)
    counts = load_version(spark, cfg, paths, url, store, version)
    store.verify(version, counts, rows=rows)
    grown = used_memory(store.r) - before
    if rows and grown > 0:
        store.annotate(version.number, bytes_per_entity=round(grown / rows, 1))


def preflight(cfg: ModelConfig, store: RedisVersions, staged: delta.StagedRun) -> None:
    """Refuse before writing anything when the new version would not fit; log warnings."""
    current = store.current()
    measured = store.meta(current).get("bytes_per_entity") if current is not None else None
    est = redis_preflight.estimate(float(measured) if measured else None, _avg_key_len(cfg, staged),
                                   len(cfg.outputs.columns))
    redis_preflight.check(store.r, ns=store.ns, rows=staged.total_rows, est=est,
                          fraction=cfg.outputs.redis.max_memory_fraction, warn=lambda w: entry.log(f"warning: {w}"))


def _avg_key_len(cfg: ModelConfig, staged: delta.StagedRun) -> float:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    first = pq.ParquetFile(Path(staged.run_path).parent.parent / staged.relative_files[0])
    if first.metadata.num_row_groups == 0:
        return 8.0
    keys = first.read_row_group(0, columns=[cfg.input.key]).column(0).cast("string")
    return float(pc.mean(pc.utf8_length(keys)).as_py() or 8.0)


def _require_validated(cfg: ModelConfig, run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    scored = state.read_report(cfg, run_id, "score")
    validated = state.read_report(cfg, run_id, "validation")
    if scored is None or validated is None or not validated.get("passed"):
        why = "was not scored" if scored is None else "was not validated" if validated is None else "failed validation"
        raise PublishRefusedError(
            f"run {run_id} of '{cfg.name}' {why}; run `batchscore validate --run-id {run_id}` and fix what it "
            "reports; nothing was published"
        )
    return scored, validated


def publish(spark: SparkSession, cfg: ModelConfig, *, run_id: str, redis_url: str) -> dict[str, Any]:
    started = time.perf_counter()
    scored, validated = _require_validated(cfg, run_id)
    table = cfg.outputs.delta.path
    staged = delta.stage(table, run_id)
    if staged.total_rows != int(scored["input_rows"]):
        raise PublishRefusedError(f"{staged.run_path}: {staged.total_rows} staged rows but {scored['input_rows']} scored; re-score the run")
    rc = cfg.outputs.redis
    store = RedisVersions(connect(redis_url, cluster=rc.cluster), layout.namespace(rc.key_prefix, cfg.name))
    store.lock(run_id=run_id, ttl_s=rc.lock_ttl_seconds)
    try:
        version = store.resume(run_id=run_id, rows=staged.total_rows, columns=cfg.outputs.columns)
        if version is not None and version.state in ("published", "retired"):
            return _already_published(cfg, store, version, run_id, started)
        if version is None:
            preflight(cfg, store, staged)
            version = store.allocate(run_id=run_id, rows=staged.total_rows, columns=cfg.outputs.columns,
                                     model_version=cfg.model.version)
        if version.state == "loading":
            load_and_verify(spark, cfg, [staged.run_path], redis_url, store, version, staged.total_rows)
        else:
            entry.log(f"{store.ns}: Redis version {version.number} already loaded by an earlier try; reusing it")
        crashpoint.reached("after_redis_load")
        dv = delta.committed_version(table, cfg.name, run_id)
        if dv is None:
            dv = delta.commit(table, staged, model=cfg.name, run_id=run_id, metadata={
                "model": cfg.name, "model_version": cfg.model.version, "redis_version": str(version.number),
                "rows": str(staged.total_rows),
                # the validated profile travels with the version: the next run's drift reference
                "profile": json.dumps(validated.get("profile", {}), sort_keys=True)})
            entry.log(f"{store.ns}: committed Delta version {dv} at {table}")
        store.annotate(version.number, delta_version=dv)
        crashpoint.reached("after_delta_commit")
        store.flip(version)
        dropped = collect(store, keep=rc.keep_versions, grace_s=rc.gc_grace_seconds)
    finally:
        store.unlock()
    report = {
        "model": cfg.name, "run_id": run_id, "rows": staged.total_rows, "delta_version": dv,
        "redis_version": version.number, "previous_redis_version": version.previous,
        "gc_versions": dropped, "seconds": round(time.perf_counter() - started, 2),
    }
    state.write_report(cfg, run_id, "publish", report)
    entry.log(f"{store.ns}: pointer -> version {version.number} (was {version.previous})")
    return report


def _already_published(cfg: ModelConfig, store: RedisVersions, version: Version, run_id: str,
                       started: float) -> dict[str, Any]:
    """A rerun of a run that was published already: change nothing (never move the pointer back)."""
    meta = store.meta(version.number)
    current = store.current()
    if current == version.number:
        entry.log(f"{store.ns}: run {run_id} is already published as Redis version {version.number}; nothing to do")
    else:
        entry.log(f"{store.ns}: run {run_id} was published as version {version.number} and since replaced by "
                  f"{current}; not republishing it (use `batchscore rollback` to go back)")
    return {"model": cfg.name, "run_id": run_id, "rows": int(meta["count"]),
            "delta_version": int(meta["delta_version"]) if meta.get("delta_version") else None,
            "redis_version": version.number, "previous_redis_version": current, "gc_versions": [],
            "already_published": True, "seconds": round(time.perf_counter() - started, 2)}


def main(argv: Sequence[str] | None = None) -> int:
    args = entry.parser("publish", __doc__.splitlines()[0]).parse_args(entry.argv_or_sys(argv))

    def body() -> dict[str, Any]:
        cfg = load_model_config(args.model_config)
        run_id = state.check_run_id(args.run_id or state.latest_run_id(cfg))
        url = cfg.redis_url()
        _require_validated(cfg, run_id)  # fail fast, before starting Spark
        connect(url, cluster=cfg.outputs.redis.cluster).close()
        spark = build_session(f"batchscore-publish-{cfg.name}", master=args.master or cfg.spark.master, conf=cfg.spark.conf)
        rep = publish(spark, cfg, run_id=run_id, redis_url=url)
        entry.summary(f"publish {cfg.name}", {"run id": run_id, "rows": f"{rep['rows']:,}", "delta version": rep["delta_version"],
                      "redis version": rep["redis_version"], "time": f"{rep['seconds']} s"})
        return rep

    return entry.guarded(body)


if __name__ == "__main__":
    exit_now(main())
