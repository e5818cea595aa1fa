"""Blue/green versions of a model's scores in Redis (driver side): allocate, verify, flip, lock.

A run loads a new immutable version under its own namespace, verifies every bucket's count, and
only then a Lua compare-and-set moves the model's pointer to it: readers see the old version or
the new one, never a mix. A publish flip only ever moves the pointer *forward* to a fully loaded
version it expected to replace, under the publish lock it still holds, so a stale retry can never
move it back; only :meth:`RedisVersions.flip` with ``rollback=True`` moves it to an older one.
Works on a standalone server and on a Cluster (``redis.cluster.RedisCluster``): every key a script
touches carries the ``{ns}`` hash tag. See :mod:`batchscore.redis_layout` for the keys.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from batchscore import redis_layout as layout
from batchscore.errors import InfrastructureError, PublishRefusedError

# KEYS: meta, run key, versions zset. ARGV: version, then field/value pairs of the meta.
_CREATE = """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('SET', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[1])
return 1
"""

# KEYS: pointer, new meta, lock, meta of the expected current version.
# ARGV: expected current ('' = none), new, now, lock token, mode ('publish' | 'rollback').
_FLIP = """
if redis.call('GET', KEYS[3]) ~= ARGV[4] then return -2 end
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[2] then return 1 end
if not ((cur == false and ARGV[1] == '') or cur == ARGV[1]) then return 0 end
local state = redis.call('HGET', KEYS[2], 'state')
if ARGV[5] == 'publish' then
  if state ~= 'loaded' then return -1 end
  if cur and tonumber(cur) >= tonumber(ARGV[2]) then return 0 end
elseif state ~= 'loaded' and state ~= 'published' and state ~= 'retired' then
  return -1
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'state', 'published', 'published_at', ARGV[3])
if cur then redis.call('HSET', KEYS[4], 'state', 'retired', 'retired_at', ARGV[3]) end
return 1
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


@dataclass(frozen=True)
class Version:
    number: int
    buckets: int
    state: str  # loading | loaded | published | retired
    previous: int | None  # the pointer when this publish began (the CAS's expected value)


def _text(raw: dict[Any, Any]) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else str(v))
            for k, v in raw.items()}


class RedisVersions:
    """The versions of one model namespace ``ns`` on a client (standalone or Cluster)."""

    def __init__(self, client: Any, ns: str) -> None:
        self.r = client
        self.ns = ns
        self._token: str | None = None
        self._stop = threading.Event()

    def current(self) -> int | None:
        raw = self.r.get(layout.pointer_key(self.ns))
        return int(raw) if raw is not None else None

    def meta(self, number: int) -> dict[str, str]:
        """A version's metadata ({} when it does not exist, e.g. collected)."""
        return _text(self.r.hgetall(layout.meta_key(self.ns, number)))

    def version_of_run(self, run_id: str) -> int | None:
        raw = self.r.get(layout.run_key(self.ns, run_id))
        return int(raw) if raw is not None else None

    def known_versions(self) -> list[int]:
        return sorted(int(v) for v in self.r.zrange(layout.versions_key(self.ns), 0, -1))

    def resume(self, *, run_id: str, rows: int, columns: list[str]) -> Version | None:
        """The version an earlier try of this run began (same rows and columns), if it still exists."""
        existing = self.version_of_run(run_id)
        if existing is None:
            return None
        meta = self.meta(existing)
        if meta and int(meta["count"]) == rows and meta["columns"] == ",".join(columns):
            return Version(existing, int(meta["buckets"]), meta["state"], self.current())
        return None

    def allocate(self, *, run_id: str, rows: int, columns: list[str], model_version: str,
                 extra: dict[str, str] | None = None) -> Version:
        """A fresh version number (above every known one) in state ``loading``."""
        previous = self.current()
        floor = max([previous or 0, *self.known_versions()])
        n = int(self.r.incr(layout.seq_key(self.ns)))
        while n <= floor or self.r.exists(layout.meta_key(self.ns, n)):
            n = int(self.r.incr(layout.seq_key(self.ns)))  # the counter was lost (restored server)
        buckets = layout.bucket_count(rows)
        fields = {"state": "loading", "count": rows, "buckets": buckets, "columns": ",".join(columns),
                  "model_version": model_version, "run_id": run_id, "created_at": time.time(), **(extra or {})}
        flat = [str(x) for kv in fields.items() for x in kv]
        self.r.eval(_CREATE, 3, layout.meta_key(self.ns, n), layout.run_key(self.ns, run_id),
                    layout.versions_key(self.ns), str(n), *flat)
        return Version(n, buckets, "loading", previous)

    def bucket_sizes(self, number: int, buckets: int) -> list[int]:
        """``HLEN`` of every bucket of a version, pipelined."""
        pipe = self.r.pipeline(transaction=False)
        for b in range(buckets):
            pipe.hlen(layout.data_key(self.ns, number, b))
        return [int(n) for n in pipe.execute()]

    def verify(self, version: Version, expected: dict[int, int], *, rows: int) -> None:
        """Every bucket holds exactly the expected number of entities (absent = 0), and the
        expected counts add up to ``rows`` (the Delta version's row count); then mark it loaded."""
        where = f"Redis version {version.number} of {self.ns}"
        if sum(expected.values()) != rows:
            raise InfrastructureError(f"{where}: the load wrote {sum(expected.values())} entities but the "
                                      f"Delta version has {rows}; rerun the publish to reload it")
        got = self.bucket_sizes(version.number, version.buckets)
        bad = [(b, n, expected.get(b, 0)) for b, n in enumerate(got) if n != expected.get(b, 0)]
        if bad:
            b, n, want = bad[0]
            raise InfrastructureError(f"{where}: bucket {b} holds {n} entities, expected {want} "
                                      f"({len(bad)} bucket(s) differ); rerun the publish to reload it")
        self.r.hset(layout.meta_key(self.ns, version.number), "state", "loaded")

    def annotate(self, number: int, **fields: Any) -> None:
        self.r.hset(layout.meta_key(self.ns, number), mapping={k: str(v) for k, v in fields.items()})

    def flip(self, version: Version, *, rollback: bool = False) -> None:
        """Compare-and-set the pointer from ``version.previous`` to ``version.number``."""
        if self._token is None:
            raise InfrastructureError(f"{self.ns}: flip without holding the publish lock")
        expected = "" if version.previous is None else str(version.previous)
        ok = self.r.eval(
            _FLIP, 4, layout.pointer_key(self.ns), layout.meta_key(self.ns, version.number),
            layout.lock_key(self.ns), layout.meta_key(self.ns, version.previous or 0),
            expected, str(version.number), str(time.time()), self._token, "rollback" if rollback else "publish",
        )
        if ok == -2:
            raise InfrastructureError(f"{self.ns}: this run lost the publish lock (it expired or another try "
                                      "took it over); not flipping, rerun the publish")
        if ok == -1:
            raise InfrastructureError(f"{self.ns}: version {version.number} is not fully loaded; rerun the publish")
        if ok != 1:
            raise PublishRefusedError(
                f"{self.ns}: the pointer is at {self.current()} (this run expected {version.previous}) and "
                f"version {version.number} may not replace it; a newer publish or a rollback happened"
            )
        self.r.publish(layout.channel(self.ns), str(version.number))

    def delete(self, number: int, meta: dict[str, str]) -> None:
        """UNLINK one version's buckets (listed from its metadata, no SCAN), then its control keys."""
        keys = [layout.data_key(self.ns, number, b) for b in range(int(meta.get("buckets", 0)))]
        for i in range(0, len(keys), 1000):
            pipe = self.r.pipeline(transaction=False)
            for k in keys[i : i + 1000]:
                pipe.unlink(k)
            pipe.execute()
        if meta.get("run_id") and self.version_of_run(meta["run_id"]) == number:
            self.r.unlink(layout.run_key(self.ns, meta["run_id"]))
        self.r.zrem(layout.versions_key(self.ns), str(number))
        self.r.unlink(layout.meta_key(self.ns, number))

    # -- the publish lock ---------------------------------------------------------------------

    def lock(self, *, run_id: str, ttl_s: int = 120) -> str:
        """Take the model's publish lock (one publish at a time) or refuse clearly.

        The lock expires after ``ttl_s`` unless renewed (a background thread renews it every third
        of that), so a crashed holder blocks others for at most ``ttl_s``. A retry of the *same*
        run id takes over its own lock at once: orchestrators retry a run only after its earlier
        attempt died. The flip checks the token, so a superseded attempt can never flip.
        """
        key = layout.lock_key(self.ns)
        token = f"{run_id}:{uuid.uuid4().hex}"
        ms = ttl_s * 1000
        if not self.r.set(key, token, nx=True, px=ms):
            holder = (self.r.get(key) or b"").decode()
            if not (holder.startswith(f"{run_id}:") and self.r.set(key, token, xx=True, px=ms)):
                raise InfrastructureError(
                    f"{self.ns}: run {holder.split(':')[0] or '?'} is publishing this model (lock expires in "
                    f"{self.r.ttl(key)}s); wait for it to finish, one publish per model at a time"
                )
        self._token = token
        self._stop.clear()
        threading.Thread(target=self._renew, args=(token, ms), daemon=True, name="batchscore-lock").start()
        return token

    def _renew(self, token: str, ms: int) -> None:
        while not self._stop.wait(ms / 3000):
            try:
                if not self.r.eval(_RENEW, 1, layout.lock_key(self.ns), token, str(ms)):
                    return
            except Exception:  # a transient error: the next beat retries; the flip checks the token
                continue

    def unlock(self) -> None:
        self._stop.set()
        if self._token is not None:
            try:
                self.r.eval(_UNLOCK, 1, layout.lock_key(self.ns), self._token)
            finally:
                self._token = None
