"""Publish code: the Delta commit (``delta``; ``history`` for backfills), the Redis versions and
pointer flip (``redis``), the executor load (``redis_load``), memory pre-flight
(``redis_preflight``), garbage collection (``redis_gc``) and the fault-test hooks
(``crashpoint``). Used by ``jobs``; never imports ``jobs``."""
