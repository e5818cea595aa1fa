"""A model config's publish targets, built in one place: the Delta/Redis target the publication
protocol acts on and the model's Redis versions store (used by publish, rollback, gc, reconcile,
history and validate's reference lookup)."""

from __future__ import annotations

from batchscore import redis_layout as layout
from batchscore.config import ModelConfig
from batchscore.redis_conn import connect
from batchscore.sinks import publication
from batchscore.sinks.redis import RedisVersions

__all__ = ["store_of", "target_of"]


def target_of(cfg: ModelConfig) -> publication.Target:
    """What the publish protocol acts on for ``cfg``: its Delta table, key, columns and Redis policy."""
    rc = cfg.outputs.redis
    return publication.Target(
        model=cfg.name,
        table=cfg.outputs.delta.path,
        key=cfg.input.key,
        columns=list(cfg.outputs.columns),
        model_version=cfg.model.version,
        keep_versions=rc.keep_versions,
        gc_grace_seconds=rc.gc_grace_seconds,
        lock_ttl_seconds=rc.lock_ttl_seconds,
        storage=cfg.store,
        ttl_seconds=rc.ttl_seconds,
    )


def store_of(cfg: ModelConfig, url: str | None = None) -> RedisVersions:
    """The one way to reach a model's Redis versions: its namespace on the server at ``url``
    (default: the config's ``outputs.redis.url_env``), standalone or Cluster as configured."""
    rc = cfg.outputs.redis
    return RedisVersions(connect(url or cfg.redis_url(), cluster=rc.cluster), layout.namespace(rc.key_prefix, cfg.name))
