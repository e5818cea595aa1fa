"""Blue/green publish of a model's scores in Redis (driver side).

A run loads a new immutable version under its own namespace, verifies every bucket's count, and
only then a Lua compare-and-set moves the model's pointer to it: readers see the old version or
the new one, never a mix, and a stale retry can never move the pointer backwards. See
:mod:`batchscore.redis_layout` for the keys.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import redis

from batchscore import redis_layout as layout
from batchscore.errors import InfrastructureError, PublishRefusedError

# KEYS: pointer, meta of the new version. ARGV: expected current ('' = none), new, now.
_FLIP = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[2] then return 1 end
if (cur == false and ARGV[1] == '') or cur == ARGV[1] then
  if redis.call('HGET', KEYS[2], 'state') ~= 'loaded' then return -1 end
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('HSET', KEYS[2], 'state', 'published', 'published_at', ARGV[3])
  return 1
end
return 0
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Version:
    number: int
    buckets: int
    state: str
    previous: int | None  # the pointer when this publish began (the CAS's expected value)


class RedisVersions:
    def __init__(self, client: redis.Redis, ns: str) -> None:
        self.r = client
        self.ns = ns

    def current(self) -> int | None:
        raw = self.r.get(layout.pointer_key(self.ns))
        return int(raw) if raw is not None else None

    def begin(self, *, run_id: str, rows: int, columns: list[str], model_version: str) -> Version:
        """The version this run loads into: a new one, or the one an earlier try of it began."""
        existing = self.r.get(layout.run_key(self.ns, run_id))
        previous = self.current()
        if existing is not None:
            n = int(existing)
            meta = {k.decode(): v.decode() for k, v in self.r.hgetall(layout.meta_key(self.ns, n)).items()}
            if meta and int(meta["count"]) == rows:
                return Version(n, int(meta["buckets"]), meta["state"], previous)
        n = int(self.r.incr(layout.seq_key(self.ns)))
        buckets = layout.bucket_count(rows)
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(
            layout.meta_key(self.ns, n),
            mapping={
                "state": "loading", "count": rows, "buckets": buckets, "columns": ",".join(columns),
                "model_version": model_version, "run_id": run_id, "created_at": time.time(),
            },
        )
        pipe.set(layout.run_key(self.ns, run_id), n)
        pipe.zadd(layout.versions_key(self.ns), {str(n): n})
        pipe.execute()
        return Version(n, buckets, "loading", previous)

    def verify(self, version: Version, expected: dict[int, int]) -> None:
        """Every bucket holds exactly the expected number of entities (absent = 0)."""
        pipe = self.r.pipeline(transaction=False)
        for b in range(version.buckets):
            pipe.hlen(layout.data_key(self.ns, version.number, b))
        got = pipe.execute()
        bad = [(b, n, expected.get(b, 0)) for b, n in enumerate(got) if n != expected.get(b, 0)]
        if bad:
            b, n, want = bad[0]
            raise InfrastructureError(
                f"Redis version {version.number} of {self.ns}: bucket {b} holds {n} entities, "
                f"expected {want} ({len(bad)} bucket(s) differ); rerun the publish to reload it"
            )
        self.r.hset(layout.meta_key(self.ns, version.number), "state", "loaded")

    def record_delta_version(self, version: Version, delta_version: int) -> None:
        self.r.hset(layout.meta_key(self.ns, version.number), "delta_version", delta_version)

    def flip(self, version: Version) -> None:
        """Compare-and-set the pointer from ``version.previous`` to ``version.number``."""
        expected = "" if version.previous is None else str(version.previous)
        ok = self.r.eval(
            _FLIP, 2, layout.pointer_key(self.ns), layout.meta_key(self.ns, version.number),
            expected, str(version.number), str(time.time()),
        )
        if ok == -1:
            raise InfrastructureError(f"{self.ns}: version {version.number} is not fully loaded; rerun the publish")
        if ok != 1:
            raise PublishRefusedError(
                f"{self.ns}: the pointer moved to {self.current()} while this run loaded version "
                f"{version.number}; not flipping over a newer publish"
            )
        self.r.publish(layout.channel(self.ns), str(version.number))

    def gc(self, *, keep: int) -> list[int]:
        """Drop versions older than the current one beyond the ``keep`` most recent; return them.

        Versions newer than the pointer (a publish in progress) are never touched. Buckets are
        deleted with UNLINK from the count recorded in their metadata (no SCAN).
        """
        cur = self.current()
        if cur is None:
            return []
        older = [int(v) for v in self.r.zrangebyscore(layout.versions_key(self.ns), "-inf", f"({cur}")]
        doomed = sorted(older)[: max(0, len(older) - keep)]
        for n in doomed:
            meta = {k.decode(): v.decode() for k, v in self.r.hgetall(layout.meta_key(self.ns, n)).items()}
            keys = [layout.data_key(self.ns, n, b) for b in range(int(meta.get("buckets", 0)))]
            for i in range(0, len(keys), 1000):
                self.r.unlink(*keys[i : i + 1000])
            pipe = self.r.pipeline(transaction=False)
            pipe.unlink(layout.meta_key(self.ns, n))
            if meta.get("run_id"):
                pipe.unlink(layout.run_key(self.ns, meta["run_id"]))
            pipe.zrem(layout.versions_key(self.ns), str(n))
            pipe.execute()
        return doomed

    def lock(self, *, run_id: str, ttl_s: int = 3600) -> str:
        """Take the model's publish lock (one publish at a time) or refuse clearly.

        A retry of the same run takes over its own lock (the earlier try crashed holding it).
        """
        key = layout.lock_key(self.ns)
        token = f"{run_id}:{uuid.uuid4().hex}"
        if self.r.set(key, token, nx=True, ex=ttl_s):
            return token
        holder = (self.r.get(key) or b"").decode()
        if holder.startswith(f"{run_id}:") and self.r.set(key, token, xx=True, ex=ttl_s):
            return token
        raise InfrastructureError(
            f"{self.ns}: run {holder.split(':')[0] or '?'} is publishing (lock expires in "
            f"{self.r.ttl(key)}s); wait for it to finish"
        )

    def unlock(self, token: str) -> None:
        self.r.eval(_UNLOCK, 1, layout.lock_key(self.ns), token)
