"""Driver-side publish code: the Delta commit (``delta``; ``history`` for backfills), the Redis
versions and pointer flip (``redis``), the publication record and its protocol (``publication``),
memory pre-flight (``redis_preflight``) and garbage collection (``redis_gc``). Used by
``batchscore.jobs``; never imports it. The executor side of the Redis load is
:mod:`batchscore.udfs._redis_load`."""

__all__ = ["delta", "history", "publication", "redis", "redis_gc", "redis_preflight"]
