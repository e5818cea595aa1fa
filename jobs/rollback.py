"""``batchscore rollback --to-version N``: Delta restored to version N, Redis pointer moved back.

The Redis version recorded in commit N's metadata is reused when it is still kept and complete
(every bucket present); otherwise a new Redis version is loaded from Delta version N's files (Spark
only then). Same order as a publish: Redis ready -> one Delta commit (``restore``) -> pointer CAS,
under the model's publish lock, so a crash leaves readers on the current version.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batchscore.exit import exit_now
from batchscore import redis_layout as layout
from batchscore.config import ModelConfig, load_model_config
from batchscore.errors import ConfigError
from batchscore.redis_conn import connect
from batchscore.sinks import delta
from batchscore.sinks.redis import RedisVersions, Version
from jobs import entry


def kept_version(store: RedisVersions, number: int | None) -> Version | None:
    """``number`` as a rollback target when Redis still holds all of it, else None."""
    if number is None:
        return None
    meta = store.meta(number)
    if meta.get("state") not in ("loaded", "published", "retired"):
        return None
    buckets = int(meta["buckets"])
    if sum(store.bucket_sizes(number, buckets)) != int(meta["count"]):
        return None
    return Version(number, buckets, meta["state"], store.current())


def rollback(cfg: ModelConfig, *, to_version: int, redis_url: str, master: str | None = None) -> dict[str, Any]:
    table = cfg.outputs.delta.path
    info = delta.commit_info(table, to_version)
    if info is None:
        raise ConfigError(f"{table}: no Delta version {to_version}; `batchscore history --model-config "
                          f"{cfg.source}` lists the published versions")
    rc = cfg.outputs.redis
    store = RedisVersions(connect(redis_url, cluster=rc.cluster), layout.namespace(rc.key_prefix, cfg.name))
    store.lock(run_id=f"rollback-to-{to_version}", ttl_s=rc.lock_ttl_seconds)
    try:
        recorded = info.get("batchscore.redis_version")
        target = kept_version(store, int(recorded) if recorded else None)
        reloaded = target is None
        if target is None:
            target = _reload(cfg, store, to_version, info, redis_url, master)
        current_dv = delta.table_version(table)
        new_dv = current_dv if current_dv == to_version else delta.restore(
            table, to_version, metadata={"redis_version": str(target.number)})
        store.annotate(target.number, delta_version=new_dv)
        store.flip(target, rollback=True)
    finally:
        store.unlock()
    entry.log(f"{store.ns}: Delta restored to {to_version} (new version {new_dv}); pointer -> Redis version "
              f"{target.number} ({'reloaded from Delta' if reloaded else 'kept'}; was {target.previous})")
    return {"delta_version": new_dv, "restored": to_version, "redis_version": target.number,
            "previous_redis_version": target.previous, "reloaded": reloaded}


def _reload(cfg: ModelConfig, store: RedisVersions, to_version: int, info: dict[str, Any], url: str,
            master: str | None) -> Version:
    import pyarrow.parquet as pq

    from jobs.publish import load_and_verify
    from jobs.session import build_session

    paths = delta.files_at(cfg.outputs.delta.path, to_version)
    rows = sum(pq.read_metadata(p).num_rows for p in paths)
    version = store.allocate(run_id=f"rollback-to-{to_version}", rows=rows, columns=cfg.outputs.columns,
                             model_version=str(info.get("batchscore.model_version", "?")),
                             extra={"restored_from_delta": str(to_version)})
    spark = build_session(f"batchscore-rollback-{cfg.name}", master=master or cfg.spark.master, conf=cfg.spark.conf)
    load_and_verify(spark, cfg, paths, url, store, version, rows)
    return Version(version.number, version.buckets, "loaded", version.previous)


def main(argv: Sequence[str] | None = None) -> int:
    p = entry.parser("rollback", __doc__.splitlines()[0])
    p.add_argument("--to-version", type=int, required=True, help="the Delta version to go back to (see `batchscore history`)")
    args = p.parse_args(entry.argv_or_sys(argv))

    def body() -> dict[str, Any]:
        cfg = load_model_config(args.model_config)
        rep = rollback(cfg, to_version=args.to_version, redis_url=cfg.redis_url(), master=args.master)
        entry.summary(f"rollback {cfg.name}", {"restored": rep["restored"], "delta version": rep["delta_version"],
                      "redis version": f"{rep['redis_version']} ({'reloaded' if rep['reloaded'] else 'kept'})"})
        return rep

    return entry.guarded(body)


if __name__ == "__main__":
    exit_now(main())
