"""Garbage collection of old Redis versions, and of orphan data keys of unknown versions.

:func:`collect` keeps the served version and the ``keep`` newest retired ones (rollback targets).
A replaced version is deleted only once it has been out of service for ``grace_s`` seconds (it
was retired, or it never got published and was created that long ago): a reader may still hold a
cached pointer to it, so the grace period must exceed the readers' pointer cache TTL plus the
longest request. Buckets are removed with ``UNLINK`` from the counts in their metadata, never
``SCAN``. :func:`orphans` is the one bounded ``SCAN``: data keys whose version identity is not in
the versions set (left by a server restarted during a load, or a fenced-out loader). Both run
under the model's publish lock and every delete is fenced by its token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from batchscore import redis_layout as layout
from batchscore.redis_conn import primaries
from batchscore.sinks.redis import RedisVersions


def _out_of_service_since(meta: dict[str, str]) -> float:
    if meta.get("state") == "retired":
        return float(meta.get("retired_at", 0))
    return float(meta.get("created_at", 0))


def collect(store: RedisVersions, *, keep: int, grace_s: float, now: float | None = None) -> list[str]:
    """Delete collectable versions of ``store``; return their identities (oldest first)."""
    now = time.time() if now is None else now
    current = store.current()
    others = [v for v in reversed(store.known_versions()) if v != current]  # newest first
    metas = {v: store.meta(v) for v in others}
    retired = [v for v in others if metas[v].get("state") == "retired"]
    kept = set(retired[:keep])  # rollback targets
    doomed = [v for v in others if v not in kept and now - _out_of_service_since(metas[v]) >= grace_s]
    for v in reversed(doomed):  # oldest first
        store.delete(v, metas[v])
    return list(reversed(doomed))


@dataclass(frozen=True)
class OrphanReport:
    scanned: int
    deleted: int
    identities: list[str]
    complete: bool  # False when the scan stopped at its key or time budget


def orphans(store: RedisVersions, *, max_keys: int = 1_000_000, max_seconds: float = 60.0,
            count: int = 1000) -> OrphanReport:
    """Find and delete data keys of ``store.ns`` whose version is unknown (bounded ``SCAN``)."""
    known = set(store.known_versions())
    if (cur := store.current()) is not None:
        known.add(cur)
    prefix = f"{store.ns}:v"
    started, scanned, deleted = time.monotonic(), 0, 0
    found: set[str] = set()
    complete = True
    for node in primaries(store.r):
        cursor = 0
        while True:
            cursor, keys = node.scan(cursor=cursor, match=layout.data_pattern(store.ns), count=count)
            scanned += len(keys)
            doomed = []
            for raw in keys:
                key = raw.decode() if isinstance(raw, bytes) else str(raw)
                vid = key[len(prefix) :].rpartition(":b")[0]
                if vid not in known:
                    doomed.append(key)
                    found.add(vid)
            if doomed:
                deleted += store.unlink(doomed, what="delete orphan data keys")
            if cursor == 0:
                break
            if scanned >= max_keys or time.monotonic() - started > max_seconds:
                complete = False
                break
    return OrphanReport(scanned, deleted, sorted(found), complete)
