"""Garbage collection of old Redis versions: keep the current one and the ``keep`` newest others.

A replaced version is deleted only once it has been out of service for ``grace_s`` seconds (it
was retired, or it never got published and was created that long ago): a reader may still hold a
cached pointer to it, so the grace period must exceed the readers' pointer cache TTL plus the
longest request. Never-published versions are orphans of crashed publishes (a rerun of their run
reuses them while they exist). Call it while holding the model's publish lock, so no load is in
progress. Buckets are removed with ``UNLINK`` from the counts in their metadata, never ``SCAN``.
"""

from __future__ import annotations

import time

from batchscore.sinks.redis import RedisVersions


def _out_of_service_since(meta: dict[str, str]) -> float:
    if meta.get("state") == "retired":
        return float(meta.get("retired_at", 0))
    return float(meta.get("created_at", 0))


def collect(store: RedisVersions, *, keep: int, grace_s: float, now: float | None = None) -> list[int]:
    """Delete collectable versions of ``store``; return their numbers (oldest first)."""
    now = time.time() if now is None else now
    current = store.current()
    others = [v for v in reversed(store.known_versions()) if v != current]  # newest first
    metas = {v: store.meta(v) for v in others}
    published = [v for v in others if metas[v].get("state") == "retired"]
    kept = set(published[:keep])  # rollback targets
    doomed = [v for v in others if v not in kept and now - _out_of_service_since(metas[v]) >= grace_s]
    for v in sorted(doomed):
        store.delete(v, metas[v])
    return sorted(doomed)
