"""``batchscore publish``: publish a validated run (load Redis -> verify -> Delta commit -> flip).

The protocol (fencing, content binding, forward-only publications, reconcile) is
:mod:`batchscore.sinks.publication`; this job checks the run's reports, builds the Spark loader
and calls it. Rerunning the same run id resumes and converges; a run that was superseded is
refused (exit 2). Also runnable as ``spark-submit jobs/publish.py ...``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from pyspark.sql import SparkSession

from batchscore import redis_layout as layout
from batchscore import storage as st
from batchscore.config import ModelConfig, load_model_config
from batchscore.errors import PublishRefusedError
from batchscore.exit import exit_now
from batchscore.jobs import _entry as entry
from batchscore.jobs import _state as state
from batchscore.jobs import redis_patch
from batchscore.jobs._session import session_for
from batchscore.jobs.reports import PublishReport, ScoreReport, ValidationReport
from batchscore.jobs.targets import store_of, target_of
from batchscore.redis_conn import connect
from batchscore.registry import check_alias_unchanged, commit_metadata
from batchscore.sinks import delta, publication, redis_preflight
from batchscore.sinks.redis import RedisVersions, Version
from batchscore.storage import DEFAULT, Storage
from batchscore.udfs._fragments import fragment_frame, plan_fragments, read_fragments
from batchscore.udfs._redis_load import make_loader

log = logging.getLogger(__name__)


def load_version(spark: SparkSession, cfg: ModelConfig, paths: list[str], url: str, version: Version,
                 fence: tuple[str, str]) -> dict[int, int]:
    """Load the Parquet ``paths`` (files or directories) into Redis ``version`` from the executors;
    return bucket counts. Each task reads its share of the files with pyarrow (one fragment per
    core, :mod:`batchscore.udfs.file_scan`) and hashes keys to buckets in numpy: no rows through the JVM,
    no shuffle (the tasks read the staged files from the store themselves: local disk or s3://...).
    Every task checks the publish lock's token (``fence``) before each pipelined round."""
    key, cols = cfg.input.key, list(cfg.outputs.columns)
    loader = make_loader(url, layout.namespace(cfg.outputs.redis.key_prefix, cfg.name), version.vid,
                         version.buckets, cols, cluster=cfg.outputs.redis.cluster, fence=fence)

    store = cfg.store

    def load(descriptors: Iterator[Any]) -> Iterator[Any]:
        yield from loader(read_fragments(descriptors, [key, *cols], storage=store))

    frags = plan_fragments(
        parquet_files(paths, store), parallelism=spark.sparkContext.defaultParallelism, storage=store
    )
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


def publish_target(cfg: ModelConfig) -> publication.Target:
    """What publish, rollback, reconcile and gc act on: :func:`target_of` with the Redis age limit
    (``outputs.redis.ttl_seconds``)."""
    return target_of(cfg)


def spark_loader(spark: SparkSession, cfg: ModelConfig, url: str) -> publication.Loader:
    """The protocol's loader: :func:`load_version` on ``spark``'s executors."""
    return lambda paths, version, fence: load_version(spark, cfg, paths, url, version, fence)


class PatchingLoader:
    """:func:`spark_loader`, but a version that differs from the served one in few entities is
    built as a patch of it (:mod:`batchscore.jobs.redis_patch`, ``outputs.redis.load: auto``);
    ``how`` says what the last load did (the publish report's ``redis_load``)."""

    def __init__(self, spark: SparkSession, cfg: ModelConfig, url: str, store: RedisVersions,
                 target: publication.Target) -> None:
        self.spark, self.cfg, self.url, self.store, self.target = spark, cfg, url, store, target
        self.how = "reused"

    def __call__(self, paths: list[str], version: Version, fence: tuple[str, str]) -> dict[int, int]:
        cfg, store = self.cfg, self.store
        found = redis_patch.patch_base(store, self.target, version) if cfg.outputs.redis.load == "auto" else None
        if found is not None:
            started = time.perf_counter()
            patch = redis_patch.patch_load(store, self.target, version, found, parquet_files(paths, cfg.store),
                                           url=self.url)
            if patch is not None:
                self.how = f"patch of {patch.base}: {patch.written} written, {patch.removed} removed"
                entry.log(f"{store.ns}: version {version.vid} is version {patch.base} patched: {patch.written:,} "
                          f"entities written, {patch.removed:,} removed ({time.perf_counter() - started:.2f} s)")
                return patch.counts
        if store.meta(version.vid).get("patch_of"):
            redis_patch.clear(store, version)  # a patch began it: what it copied must not survive the full load
        self.how = "full"
        return load_version(self.spark, cfg, paths, self.url, version, fence)


def lazy_loader(cfg: ModelConfig, url: str, master: str | None = None) -> publication.Loader:
    """A Spark loader that starts its session only when a load is needed (a rollback to a kept
    version, a reconcile or a gc need no Spark)."""

    def load(paths: list[str], version: Version, fence: tuple[str, str]) -> dict[int, int]:
        from batchscore.jobs._session import session_for

        spark = session_for(cfg, "load", master=master)
        return load_version(spark, cfg, paths, url, version, fence)

    return load


def parquet_files(paths: list[str], storage: Storage = DEFAULT) -> list[str]:
    """The Parquet files of ``paths`` (local paths or store URIs): files as given, folders searched
    recursively (skipping ``_``/``.``-prefixed names, like Spark)."""
    out: list[str] = []
    for p in paths:
        if st.is_file(p, storage):
            out.append(st.normalize(p))
            continue
        found = [u for u, _ in st.list_files(p, storage, suffix=".parquet")]
        if not found:
            raise PublishRefusedError(f"no Parquet files under {p}; nothing to load into Redis")
        out.extend(found)
    return out


def preflight(cfg: ModelConfig, store: RedisVersions, staged: delta.StagedRun) -> None:
    """Refuse before writing anything when the new version would not fit; log warnings."""
    rc = cfg.outputs.redis
    est = redis_preflight.estimate(
        store.r, rows=staged.total_rows, avg_key_len=_avg_key_len(cfg, staged), columns=len(cfg.outputs.columns)
    )
    redis_preflight.check(
        store.r,
        ns=store.ns,
        rows=staged.total_rows,
        est=est,
        fraction=rc.max_memory_fraction,
        allow_evicting_policy=rc.allow_evicting_policy,
        warn=lambda w: log.info(f"warning: {w}"),
    )


def _avg_key_len(cfg: ModelConfig, staged: delta.StagedRun) -> float:
    import pyarrow.compute as pc

    first = st.parquet_file(staged.uris()[0], cfg.store)
    if first.metadata.num_row_groups == 0:
        return 8.0
    keys = first.read_row_group(0, columns=[cfg.input.key]).column(0).cast("string")
    return float(pc.mean(pc.utf8_length(keys)).as_py() or 8.0)


def _require_validated(cfg: ModelConfig, run_id: str) -> tuple[ScoreReport, ValidationReport]:
    scored = state.read(cfg, run_id, ScoreReport)
    validated = state.read(cfg, run_id, ValidationReport)
    if scored is None or validated is None or not validated.passed or not validated.digest:
        why = (
            "was not scored"
            if scored is None
            else "was not validated since it was scored"
            if validated is None
            else "failed validation"
            if not validated.passed
            else "was validated without a content digest"
        )
        raise PublishRefusedError(
            f"run {run_id} of '{cfg.name}' {why}; run `batchscore validate --run-id {run_id}` and fix what it "
            "reports; nothing was published"
        )
    return scored, validated


def publish(
    spark: SparkSession, cfg: ModelConfig, *, run_id: str, redis_url: str, allow_older: bool = False,
    kind: str = "publish",
) -> PublishReport:
    """Publish a scored and validated run through :func:`publication.publish`; write the report.
    ``kind``: the publication record's kind (``promote`` for :mod:`batchscore.jobs.promote`)."""
    started = time.perf_counter()
    run_id = state.check_run_id(run_id)
    scored, validated = _require_validated(cfg, run_id)
    if delta.committed_version(cfg.outputs.delta.path, cfg.name, run_id, cfg.store) is None:
        # A registry alias that moved since scoring (or a changed model.uri) is refused before any side
        # effect; a run already committed (a retry after a crash) converges whatever the alias says now.
        check_alias_unchanged(cfg, scored.to_json())
    staged = delta.stage(cfg.outputs.delta.path, run_id, cfg.store)
    kept = int(scored.input_rows) - int(scored.quarantined_rows)  # the rows quarantined are left out
    if staged.total_rows != kept:
        raise PublishRefusedError(
            f"{staged.run_path}: {staged.total_rows} staged rows but {kept} scored; re-score the run"
        )
    store = store_of(cfg, redis_url)
    target = publish_target(cfg)
    out = publication.publish(
        store,
        target,
        staged,
        run_id=run_id,
        run_date=scored.run_date,
        validated_digest=str(validated.digest),
        loader=(loader := PatchingLoader(spark, cfg, redis_url, store, target)),
        preflight=lambda: preflight(cfg, store, staged),
        allow_older=allow_older,
        log=entry.log,
        scored_at=scored.scored_at,
        kind=kind,
        metadata={
            "model": cfg.name,
            "model_version": cfg.model.version,
            **commit_metadata(scored.to_json()),  # batchscore.model_registry: name, version, alias, run id, sha256
            # the validated profile travels with the version: the next run's drift reference
            "profile": validated.profile.dumps(),
        },
    )
    pub = out.publication
    assert pub is not None
    report = PublishReport(
        model=cfg.name,
        run_id=run_id,
        rows=staged.total_rows,
        delta_version=pub.delta_version,
        publication=pub.seq,
        digest=staged.digest,
        redis_version=pub.redis_version,
        previous_redis_version=out.previous_redis_version,
        gc_versions=list(out.collected),
        already_published=out.action == "already-published",
        seconds=round(time.perf_counter() - started, 2),
        redis_load=loader.how,
    )
    log.info(
        f"{store.ns}: serving publication {pub.seq}: Redis version {pub.redis_version} "
        f"(was {out.previous_redis_version})"
    )
    if cfg.challengers:  # the ones that passed, each in its own namespace, after the champion (jobs.shadow)
        from batchscore.jobs import shadow

        report = replace(report, challengers=shadow.publish_passing(spark, cfg, run_id, redis_url))
    state.write_report(cfg, run_id, "publish", report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = entry.parser("publish", __doc__.splitlines()[0])
    p.add_argument(
        "--allow-older", action="store_true", help="publish even when the run's date is older than the published run's"
    )
    args = p.parse_args(entry.argv_or_sys(argv))

    def body() -> PublishReport:
        cfg = load_model_config(args.model_config)
        run_id = state.check_run_id(args.run_id or state.latest_run_id(cfg))
        url = cfg.redis_url()
        _require_validated(cfg, run_id)  # fail fast, before starting Spark
        connect(url, cluster=cfg.outputs.redis.cluster).close()
        spark = session_for(cfg, "publish", master=args.master, verbose=args.verbose)
        rep = publish(spark, cfg, run_id=run_id, redis_url=url, allow_older=args.allow_older)
        entry.summary(
            f"publish {cfg.name}",
            {
                "run id": run_id,
                "rows": f"{rep.rows:,}",
                "delta version": rep.delta_version,
                "publication": rep.publication,
                "redis version": rep.redis_version,
                "time": f"{rep.seconds} s",
                **{f"challenger {k}": v for k, v in rep.challengers.items()},
            },
        )
        return rep

    return entry.guarded(body, verbose=args.verbose)


if __name__ == "__main__":
    exit_now(main())
